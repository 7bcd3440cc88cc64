// Package devmode lets a newcomer try syncrelay on one machine, never in
// production: `serve -dev` runs the providertest OAuth/Gmail/Graph
// stand-ins and a DKIM zone for a demo candidate domain on loopback, and
// `demo` drives the whole loop through the public API and real SMTP.
package devmode

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"syncrelay/config"
	"syncrelay/outbound/providertest"
)

// The demo candidate's domain and the DKIM selector of its generated key.
const (
	CandidateDomain = "cand.test"
	Selector        = "dev"
)

// StateFileName is the file in store.dir through which `serve -dev` tells
// `demo` where it listens; it exists only while a dev daemon is ready.
const StateFileName = "dev-mode.json"

// State is the content of StateFileName.
type State struct {
	PID             int    `json:"pid"`
	SMTP            string `json:"smtp"`
	HTTP            string `json:"http"`
	Hostname        string `json:"hostname"`
	CandidateDomain string `json:"candidate_domain"`
	Selector        string `json:"selector"`
	DKIMKeyFile     string `json:"dkim_key_file"`
	GoogleSentURL   string `json:"google_sent_url"`
	MSSentURL       string `json:"microsoft_sent_url"`
}

// StatePath is where `serve -dev` with config c writes its State.
func StatePath(c *config.Config) string { return filepath.Join(c.Store.Dir, StateFileName) }

// Env is a running dev mode: the stand-ins and the generated files.
type Env struct {
	state     State
	statePath string
	dir       string // temporary: DKIM key and zone file
	stubs     []*providertest.Stub
	wrote     bool
}

// Setup refuses a non-loopback config, picks free ports where the
// configured ones are taken, starts the provider stand-ins, generates the
// candidate domain's DKIM key and rewrites c to use all of them. Close
// undoes it.
func Setup(c *config.Config, log *slog.Logger) (*Env, error) {
	for _, l := range []struct{ key, addr string }{{"smtp.listen", c.SMTP.Listen}, {"http.listen", c.HTTP.Listen}} {
		if err := CheckLoopback(l.addr); err != nil {
			return nil, fmt.Errorf("dev mode listens on loopback only: %s: %w", l.key, err)
		}
	}
	e := &Env{statePath: StatePath(c)}
	if err := e.setup(c, log); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *Env) setup(c *config.Config, log *slog.Logger) error {
	var err error
	for _, a := range []*string{&c.SMTP.Listen, &c.HTTP.Listen} {
		was := *a
		if *a, err = freeAddr(*a); err != nil {
			return err
		}
		if was != *a && !strings.HasSuffix(was, ":0") {
			log.Warn("dev mode: address in use, listening elsewhere", "configured", was, "using", *a)
		}
	}
	if e.dir, err = os.MkdirTemp("", "syncrelay-dev-"); err != nil {
		return fmt.Errorf("dev mode: %w", err)
	}
	if err := e.startProviders(c, log); err != nil {
		return err
	}
	zone, err := e.writeDKIM(c.DNS.ZoneFile)
	if err != nil {
		return err
	}
	c.DNS.ZoneFile = zone
	e.state.PID, e.state.SMTP, e.state.HTTP, e.state.Hostname = os.Getpid(), c.SMTP.Listen, c.HTTP.Listen, c.SMTP.Hostname
	return nil
}

// CheckLoopback accepts host:port whose host is a loopback IP or
// "localhost"; a missing host means every interface and is refused.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address (use 127.0.0.1)", addr)
}

// freeAddr returns addr if it can be listened on now, else the same host
// on a free port; port 0 gets a concrete port because the OAuth redirect
// URL and the demo need it before the daemon listens.
func freeAddr(addr string) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	if port != "0" {
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr, nil
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("dev mode: find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startProviders runs the Google and Microsoft stand-ins and points
// [providers.*] at them.
func (e *Env) startProviders(c *config.Config, log *slog.Logger) error {
	fw := &forwarder{c: c, log: log}
	for _, p := range []struct {
		name string
		cfg  *config.Provider
		sent *string
	}{{"google", &c.Providers.Google, &e.state.GoogleSentURL}, {"microsoft", &c.Providers.Microsoft, &e.state.MSSentURL}} {
		s, err := providertest.Listen(p.name)
		if err != nil {
			return fmt.Errorf("dev mode: %w", err)
		}
		e.stubs = append(e.stubs, s)
		s.SetOnSend(fw.onSend)
		p.cfg.ClientID, p.cfg.ClientSecret, p.cfg.ClientSecretFile = providertest.ClientID, providertest.ClientSecret, ""
		p.cfg.AuthURL, p.cfg.TokenURL, p.cfg.APIBase = s.AuthURL(), s.TokenURL(), s.APIBase()
		p.cfg.RedirectURL = "http://" + c.HTTP.Listen + "/oauth/" + p.name + "/callback"
		*p.sent = s.SentURL()
	}
	return nil
}

// writeDKIM generates the candidate domain's key and writes it and a zone
// file serving its public half (after the records of the configured zone
// file, if any). It returns the zone file's path.
func (e *Env) writeDKIM(userZone string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("dev mode: DKIM key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("dev mode: DKIM key: %w", err)
	}
	e.state.CandidateDomain, e.state.Selector = CandidateDomain, Selector
	e.state.DKIMKeyFile = filepath.Join(e.dir, CandidateDomain+".key")
	if err := os.WriteFile(e.state.DKIMKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", fmt.Errorf("dev mode: %w", err)
	}
	var zone []byte
	if userZone != "" {
		if zone, err = os.ReadFile(userZone); err != nil {
			return "", fmt.Errorf("dev mode: dns.zone_file: %w", err)
		}
		zone = append(zone, '\n')
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", fmt.Errorf("dev mode: DKIM key: %w", err)
	}
	zone = append(zone, zoneRecord(Selector+"._domainkey."+CandidateDomain, "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(pub))...)
	path := filepath.Join(e.dir, "zone.txt")
	if err := os.WriteFile(path, zone, 0o600); err != nil {
		return "", fmt.Errorf("dev mode: %w", err)
	}
	return path, nil
}

// zoneRecord is a TXT line of the zone file, split into the 255-byte
// character-strings DNS requires.
func zoneRecord(name, txt string) string {
	var parts []string
	for len(txt) > 0 {
		n := min(len(txt), 200)
		parts = append(parts, `"`+txt[:n]+`"`)
		txt = txt[n:]
	}
	return name + " TXT " + strings.Join(parts, " ") + "\n"
}

// Close stops the stand-ins and removes the generated files and the state
// file.
func (e *Env) Close() {
	for _, s := range e.stubs {
		s.Close()
	}
	if e.wrote {
		os.Remove(e.statePath)
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// Banner is printed on stdout before anything else in dev mode.
func Banner(w io.Writer) {
	fmt.Fprint(w, `
 ******************************************************************
 *  syncrelay DEV MODE -- NOT FOR PRODUCTION                      *
 *  Google/Microsoft OAuth, Gmail and Graph are local stand-ins   *
 *  (consent approves at once, sends are only recorded); DKIM     *
 *  keys come from a generated zone; loopback only.               *
 ******************************************************************

`)
}

// AnnounceWhenReady waits until the daemon answers /readyz, then writes
// the state file for `demo` and tells the user what to do next. The file
// is written only once ready so a second `serve -dev` that fails on the
// store lock cannot replace the first one's.
func (e *Env) AnnounceWhenReady(ctx context.Context, stdout io.Writer, log *slog.Logger) {
	if err := waitReady(ctx, "http://"+e.state.HTTP); err != nil {
		return
	}
	if err := writeState(e.statePath, e.state); err != nil {
		log.Error("dev mode: cannot write the state file; demo will not find this daemon", "err", err)
		return
	}
	e.wrote = true
	fmt.Fprintf(stdout, `syncrelay dev mode is ready (SMTP %s, HTTP http://%s).
Next, in another terminal, from this directory:

    go run ./cmd/syncrelay demo

It creates a tenant, a user with a Gmail grant and a candidate, sends through
the API, delivers the candidate's DKIM-signed reply and an unrelated message
over SMTP, and prints the timeline. Stop this daemon with Ctrl-C.
`, e.state.SMTP, e.state.HTTP)
}

func waitReady(ctx context.Context, base string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeState writes the file atomically (mode 0600: it names the key).
func writeState(path string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadState reads what a ready `serve -dev` wrote.
func ReadState(path string) (State, error) {
	var s State
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("no dev-mode daemon found (%s is missing): start one first with `go run ./cmd/syncrelay serve -dev`", path)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
