package loadgen

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/internal/dkimtest"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

func TestParseMix(t *testing.T) {
	m, err := ParseMix("match=80, dup=10,unrelated=10")
	if err != nil || m != (Mix{80, 10, 10}) {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"", "match=0", "x=1", "match=-1", "match"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q): no error", bad)
		}
	}
	r := mrand.New(mrand.NewPCG(1, 2))
	n := map[Kind]int{}
	for range 10000 {
		n[Mix{1, 0, 3}.Pick(r)]++
	}
	if n[Dup] != 0 || n[Match] < 2000 || n[Match] > 3000 {
		t.Errorf("Pick: %v", n)
	}
}

func TestBody(t *testing.T) {
	for _, size := range []int{1, 2, 3, 77, 78, 79, 4096, 100000} {
		b := Body(size)
		if len(b) < size || len(b) > size+1 {
			t.Errorf("Body(%d) is %d bytes", size, len(b))
		}
		if !bytes.HasSuffix(b, []byte("\r\n")) {
			t.Errorf("Body(%d) does not end with CRLF", size)
		}
		for i, l := range strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
			if strings.ContainsAny(l, "\r\n") || len(l) > 76 || strings.HasPrefix(l, ".") {
				t.Fatalf("Body(%d) line %d: %q", size, i, l)
			}
		}
	}
}

// TestGeneratedMailVerifies: the messages are what syncrelay must accept —
// their DKIM signature verifies with the manifest's published key and they
// reference the minted threads.
func TestGeneratedMailVerifies(t *testing.T) {
	key, _ := dkimtest.RSA(t, 0)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	m := &Manifest{Tenant: "load", Inbound: "load-x@relay.test", CandidateEmail: "carl@cand.test", UserEmail: "rec@acme.test",
		SenderDomain: "cand.test", Selector: "s1", DKIMKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		Threads: []Thread{{ID: 7, MessageID: "<sr.abc@relay.test>"}}}
	name, value, err := m.DKIMRecord()
	if err != nil {
		t.Fatal(err)
	}
	if zone, _ := m.ZoneText(); !strings.Contains(zone, name+". IN TXT") {
		t.Fatalf("zone: %s", zone)
	}
	g, err := NewGenerator(GeneratorOptions{Manifest: m, BodySize: 3000})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(domain string) ([]string, error) {
		if domain != name {
			t.Errorf("lookup %q", domain)
		}
		return []string{value}, nil
	}
	r := mrand.New(mrand.NewPCG(1, 1))
	seen := map[string]bool{}
	for _, k := range []Kind{Match, Match, Unrelated} {
		msg := g.Next(k, r)
		if seen[msg.MessageID] {
			t.Errorf("Message-ID %s reused", msg.MessageID)
		}
		seen[msg.MessageID] = true
		raw := msg.Bytes()
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "cand.test" {
			t.Fatalf("%s: verify: %v %+v", k, err, vs)
		}
		refs := bytes.Contains(raw, []byte("References: <sr.abc@relay.test>\r\n"))
		if refs != (k == Match) || msg.Thread != map[Kind]uint64{Match: 7}[k] {
			t.Errorf("%s: references thread: %v, thread %d", k, refs, msg.Thread)
		}
		g.Accepted(&msg)
	}
	// A Dup resends an accepted Match.
	d := g.Next(Dup, r)
	if d.Kind != Dup || !seen[d.MessageID] || d.Thread != 7 {
		t.Errorf("dup: %+v", d)
	}
}

// newStore is a bbolt store, closed when t ends, and a keyring.
func newStore(t *testing.T) (*bolt.Store, *token.Keyring) {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	kr, err := token.New(bytes.Repeat([]byte{7}, 32), "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	return st, kr
}

func TestPrepare(t *testing.T) {
	st, kr := newStore(t)
	ctx := context.Background()
	m, err := Prepare(ctx, st, kr, PrepareOptions{Threads: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Threads) != 5 || !strings.HasSuffix(m.Inbound, "@relay.test") || !strings.HasPrefix(m.Inbound, "load-") {
		t.Fatalf("%+v", m)
	}
	for _, th := range m.Threads {
		id, ok := kr.ParseMessageID(th.MessageID)
		if !ok || id.Tenant != "load" || id.Thread != th.ID {
			t.Errorf("thread %d: %s does not parse", th.ID, th.MessageID)
		}
		ref, ok, err := st.LookupMsgID(ctx, "load", strings.Trim(th.MessageID, "<>"))
		if err != nil || !ok || ref.Thread != th.ID {
			t.Errorf("thread %d: issued id not in the store: %v %v %v", th.ID, ref, ok, err)
		}
	}
	if tn, ok, err := st.InboundTenant(ctx, m.Inbound); err != nil || !ok || tn != "load" {
		t.Errorf("inbound address: %q %v %v", tn, ok, err)
	}
	if _, err := Prepare(ctx, st, kr, PrepareOptions{}); err == nil {
		t.Error("second Prepare of the same tenant: no error")
	}
}

// TestPrepareWithKey: a given DKIM key (srload prepare -dkim-key) is the
// manifest's, read from PEM in either encoding; anything else is refused.
func TestPrepareWithKey(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edDER, err := x509.MarshalPKCS8PrivateKey(ed)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{write("k8.pem", "PRIVATE KEY", pkcs8), write("k1.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))} {
		got, err := ReadRSAKey(path)
		if err != nil || !got.Equal(key) {
			t.Errorf("%s: %v", path, err)
		}
	}
	for _, path := range []string{write("ed.pem", "PRIVATE KEY", edDER), write("junk.pem", "PRIVATE KEY", []byte("junk")), filepath.Join(dir, "missing.pem")} {
		if _, err := ReadRSAKey(path); err == nil {
			t.Errorf("%s: read as an RSA key", path)
		}
	}

	st, kr := newStore(t)
	m, err := Prepare(context.Background(), st, kr, PrepareOptions{Threads: 1, DKIMKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Signer(); err != nil || !got.Equal(key) {
		t.Errorf("manifest's key is not the given one (%v)", err)
	}
}
