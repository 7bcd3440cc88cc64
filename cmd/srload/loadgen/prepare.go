// Package loadgen is the machinery of srload, syncrelay's load tool: it mints
// real threads in a store (Prepare), builds DKIM-signed replies that match
// them (Generator), and drives any SMTP server with N concurrent sessions
// that reuse their connections (Run), measuring the time from the final "."
// to the reply.
//
// It lives beside cmd/srload (rather than in package main) so that the crash
// and fault tests can build the same messages in process.
package loadgen

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"syncrelay/store"
	"syncrelay/token"
)

// Manifest describes a prepared load: the tenant, the address the load is
// sent to, the threads minted in the store and the DKIM key of the
// candidate's domain (a throwaway test key, kept in the manifest).
type Manifest struct {
	Tenant         string    `json:"tenant"`
	TenantDomain   string    `json:"tenant_domain"`
	Inbound        string    `json:"inbound_address"`
	Hostname       string    `json:"hostname"`
	User           string    `json:"user"`
	UserEmail      string    `json:"user_email"`
	Candidate      string    `json:"candidate"`
	CandidateEmail string    `json:"candidate_email"`
	SenderDomain   string    `json:"sender_domain"`
	Selector       string    `json:"selector"`
	DKIMKeyPEM     string    `json:"dkim_key_pem"`
	Threads        []Thread  `json:"threads"`
	Created        time.Time `json:"created"`
}

// Thread is one thread minted by Prepare and the Message-ID (with <>) of
// the outbound message that started it: replies reference it.
type Thread struct {
	ID        uint64 `json:"id"`
	MessageID string `json:"message_id"`
}

// PrepareOptions say what Prepare creates. Zero fields take the defaults
// shown in DefaultPrepareOptions.
type PrepareOptions struct {
	Tenant         string
	TenantDomain   string
	User           string
	UserEmail      string
	Candidate      string
	CandidateEmail string
	Selector       string
	Threads        int
	// Hostname is the relay hostname (smtp.hostname): the domain of the
	// inbound address and of minted Message-IDs.
	Hostname string
	// DKIMKey signs the candidate's mail; nil: a new RSA-2048 key.
	DKIMKey *rsa.PrivateKey
}

// DefaultPrepareOptions are used for zero fields of PrepareOptions.
var DefaultPrepareOptions = PrepareOptions{
	Tenant:         "load",
	TenantDomain:   "acme.test",
	User:           "u-rec",
	UserEmail:      "rec@acme.test",
	Candidate:      "c-load",
	CandidateEmail: "carl@cand.test",
	Selector:       "s1",
	Threads:        64,
}

func (o *PrepareOptions) fill() {
	d := DefaultPrepareOptions
	set := func(p *string, def string) {
		if *p == "" {
			*p = def
		}
	}
	set(&o.Tenant, d.Tenant)
	set(&o.TenantDomain, d.TenantDomain)
	set(&o.User, d.User)
	set(&o.UserEmail, d.UserEmail)
	set(&o.Candidate, d.Candidate)
	set(&o.CandidateEmail, d.CandidateEmail)
	set(&o.Selector, d.Selector)
	if o.Threads <= 0 {
		o.Threads = d.Threads
	}
}

// Prepare creates a tenant (DKIM policy require), a user, a candidate and
// o.Threads threads in st, each started by an outbound message whose
// Message-ID is minted with kr exactly as the sender does, and a fresh
// RSA-2048 DKIM key for the candidate's domain. The store must not already
// hold the tenant.
func Prepare(ctx context.Context, st store.Store, kr *token.Keyring, o PrepareOptions) (*Manifest, error) {
	o.fill()
	if o.Hostname == "" {
		o.Hostname = kr.Hostname()
	}
	at := strings.LastIndexByte(o.CandidateEmail, '@')
	if at < 0 {
		return nil, fmt.Errorf("candidate email %q has no domain", o.CandidateEmail)
	}
	senderDomain := o.CandidateEmail[at+1:]

	inbound, err := newInboundAddress(o.Tenant, o.Hostname)
	if err != nil {
		return nil, err
	}
	err = st.CreateTenant(ctx, &store.Tenant{ID: o.Tenant, Name: "srload " + o.Tenant, Domains: []string{o.TenantDomain},
		Provider: "google", InboundAddress: inbound, DKIMPolicy: store.PolicyRequire})
	if errors.Is(err, store.ErrExists) {
		return nil, fmt.Errorf("tenant %q already exists in the store: prepare a fresh store (%w)", o.Tenant, err)
	}
	if err != nil {
		return nil, err
	}
	if err := st.CreateUser(ctx, &store.User{Tenant: o.Tenant, ID: o.User, Email: o.UserEmail, Name: "Rita Recruiter",
		Role: store.RoleTeamMember}); err != nil {
		return nil, err
	}
	if err := st.CreateCandidate(ctx, &store.Candidate{Tenant: o.Tenant, ID: o.Candidate, Name: "Carl Candidate",
		Emails: []string{o.CandidateEmail}}); err != nil {
		return nil, err
	}

	// Threads are created concurrently so their commits share fsyncs.
	threads := make([]Thread, o.Threads)
	errs := make([]error, o.Threads)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range threads {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			th := store.Thread{Tenant: o.Tenant, Candidate: o.Candidate, Subject: "Interview", CreatedBy: o.User}
			msg := store.Message{From: o.UserEmail, To: []string{o.CandidateEmail}, Subject: "Interview",
				SentBy: o.User, Status: "sent"}
			var msgid string
			errs[i] = st.CreateOutbound(ctx, &th, &msg, func(t, m uint64) (string, string) {
				msgid = kr.MessageID(token.ID{Tenant: o.Tenant, Thread: t, Message: m})
				conv := kr.ConversationIndex(o.Tenant, t)
				return strings.Trim(msgid, "<>"), hex.EncodeToString(conv[:])
			})
			threads[i] = Thread{ID: th.ID, MessageID: msgid}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("mint threads: %w", err)
	}

	key := o.DKIMKey
	if key == nil {
		if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return nil, err
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Manifest{
		Tenant: o.Tenant, TenantDomain: o.TenantDomain, Inbound: inbound, Hostname: o.Hostname,
		User: o.User, UserEmail: o.UserEmail, Candidate: o.Candidate, CandidateEmail: o.CandidateEmail,
		SenderDomain: senderDomain, Selector: o.Selector,
		DKIMKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		Threads:    threads, Created: time.Now().UTC(),
	}, nil
}

// newInboundAddress follows the README's format:
// <tenant id>-<16 base32 chars (80 random bits)>@<hostname>.
func newInboundAddress(tenant, host string) (string, error) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	r := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
	return tenant + "-" + r + "@" + host, nil
}

// ReadRSAKey reads an RSA private key from a PEM file (PKCS#8, as
// openssl genpkey writes, or PKCS#1).
func ReadRSAKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: %T, not an RSA key", path, k)
	}
	return rk, nil
}

// Signer returns the manifest's DKIM private key.
func (m *Manifest) Signer() (*rsa.PrivateKey, error) {
	blk, _ := pem.Decode([]byte(m.DKIMKeyPEM))
	if blk == nil {
		return nil, errors.New("manifest: no DKIM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("manifest: DKIM key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("manifest: DKIM key is not RSA")
	}
	return rk, nil
}

// DKIMRecord returns the DNS name and TXT value publishing the manifest's
// DKIM public key.
func (m *Manifest) DKIMRecord() (name, value string, err error) {
	k, err := m.Signer()
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return "", "", err
	}
	return m.Selector + "._domainkey." + m.SenderDomain,
		"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
}

// ZoneText is a dnsres zone file publishing the DKIM key: one TXT record,
// split into quoted strings of at most 250 bytes.
func (m *Manifest) ZoneText() (string, error) {
	name, value, err := m.DKIMRecord()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# srload DKIM key for %s (generated %s)\n%s. IN TXT", m.SenderDomain, m.Created.Format(time.RFC3339), name)
	for len(value) > 0 {
		n := min(len(value), 250)
		fmt.Fprintf(&b, " %q", value[:n])
		value = value[n:]
	}
	b.WriteString("\n")
	return b.String(), nil
}

// Save writes the manifest as JSON with mode 0600 (it holds a private key).
func (m *Manifest) Save(path string) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o600)
}

// LoadManifest reads a manifest written by Save.
func LoadManifest(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	if m.Inbound == "" || len(m.Threads) == 0 {
		return nil, fmt.Errorf("manifest %s: no inbound address or no threads", path)
	}
	return &m, nil
}
