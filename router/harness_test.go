package router

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/dnsres"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/dnstest"
	"syncrelay/internal/pgtest"
	"syncrelay/smtpd"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/store/postgres"
	"syncrelay/token"
	"syncrelay/trust"
)

// testKey is the fixed server secret used by router tests and the fixture
// corpus, so tokens in templates are reproducible.
var testKey = bytes.Repeat([]byte{0x5a}, 32)

const testHost = "relay.test"

// env is a real pipeline: a bbolt store in a temp dir (or a PostgreSQL
// database, newEnvOn), a token keyring, a DNS server on loopback serving
// DKIM keys, and the router.
type env struct {
	t      testing.TB
	st     store.Store
	dir    string
	kr     *token.Keyring
	dns    *dnstest.Server
	r      *Router
	logbuf *bytes.Buffer
	// signers by domain
	signers map[string]crypto.Signer
	// txt is the DKIM key record served for each domain (name -> TXT),
	// for the corpus's zone file.
	txt map[string]string
}

func newEnv(t testing.TB, provider string) *env {
	t.Helper()
	return newEnvOn(t, provider, "bbolt")
}

// newEnvOn is newEnv on the named backend: "bbolt", or "postgres" (a new
// database on internal/pgtest's cluster; skipped without PostgreSQL).
func newEnvOn(t testing.TB, provider, backend string) *env {
	t.Helper()
	dir := t.TempDir()
	var st store.Store
	var err error
	switch backend {
	case "postgres":
		st, err = postgres.Open(context.Background(), pgtest.DSN(t), postgres.Options{})
	default:
		st, err = bolt.Open(dir, bolt.Options{})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	kr, err := token.New(testKey, testHost)
	if err != nil {
		t.Fatal(err)
	}
	srv := dnstest.Start(t)
	res, err := dnsres.New(dnsres.Options{Server: srv.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	logbuf := &bytes.Buffer{}
	e := &env{t: t, st: st, dir: dir, kr: kr, dns: srv, logbuf: logbuf, signers: map[string]crypto.Signer{}, txt: map[string]string{}}
	e.r = &Router{
		Store: st, Keys: kr, Verifier: &trust.Verifier{Resolver: res, MaxSignatures: 5},
		Hostname: testHost, MaxHeaderBytes: 1 << 20, MaxMIMEDepth: 20, Salt: []byte("salt"),
		Log: slog.New(slog.NewTextHandler(logbuf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	ctx := context.Background()
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: provider,
		InboundAddress: "acme-secret@relay.test", DKIMPolicy: store.PolicyRequire}))
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "beta", Name: "Beta", Domains: []string{"beta.test"}, Provider: provider,
		InboundAddress: "beta-secret@relay.test", DKIMPolicy: store.PolicyRequire}))
	for _, u := range []store.User{
		{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Role: store.RoleTeamMember},
		{Tenant: "acme", ID: "u-hm", Email: "hm@acme.test", Role: store.RoleTeamMember},
		{Tenant: "beta", ID: "u-b", Email: "b@beta.test", Role: store.RoleAdmin},
	} {
		must(t, st.CreateUser(ctx, &u))
	}
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Name: "Carl", Emails: []string{"carl@cand.test"}}))
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "beta", ID: "c-b", Name: "Bea", Emails: []string{"bea@cand.test"}}))
	for i, d := range []string{"cand.test", "acme.test", "beta.test", "google.com", "microsoft.com", "mailer.test"} {
		e.addKey(d, i)
	}
	return e
}

// addKey serves fixed test key i (internal/dkimtest) for domain: generating
// RSA-2048 keys per test was most of this package's test time. Past the
// fixed keys it generates one, so every domain still has its own key.
func (e *env) addKey(domain string, i int) {
	var key *rsa.PrivateKey
	var txt string
	if i < dkimtest.RSAKeys {
		key, txt = dkimtest.RSA(e.t, i)
	} else {
		key, txt = dnstest.GenRSA(e.t, 2048)
	}
	e.dns.SetTXT("s1._domainkey."+domain, txt)
	e.txt["s1._domainkey."+domain] = txt
	e.signers[domain] = key
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sent records an outbound message on a new thread (or on thread th when
// non-zero) as issue 4's sender will, and returns its ids and Message-ID.
func (e *env) sent(tenant, cand, user string, th uint64) (store.Thread, store.Message) {
	e.t.Helper()
	thread := store.Thread{ID: th, Tenant: tenant, Candidate: cand, Subject: "Interview", CreatedBy: user}
	msg := store.Message{From: user + "@" + tenant + ".test", Subject: "Interview", SentBy: user, Status: "sent"}
	err := e.st.CreateOutbound(context.Background(), &thread, &msg, func(t, m uint64) (string, string) {
		id := strings.Trim(e.kr.MessageID(token.ID{Tenant: tenant, Thread: t, Message: m}), "<>")
		conv := e.kr.ConversationIndex(tenant, t)
		return id, hex.EncodeToString(conv[:])
	})
	must(e.t, err)
	return thread, msg
}

// sign DKIM-signs raw (CRLF) as domain with the env's key for it.
func (e *env) sign(domain string, raw string) string {
	e.t.Helper()
	raw = crlf(raw)
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{
		Domain: domain, Selector: "s1", Signer: e.signers[domain],
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
	})
	must(e.t, err)
	return out.String()
}

func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

type memBody []byte

func (b memBody) Open() io.Reader { return bytes.NewReader(b) }
func (b memBody) Size() int64     { return int64(len(b)) }

func (e *env) route(tenant, raw string) routed {
	e.t.Helper()
	out, _ := e.routeIn(context.Background(), Input{Tenant: tenant, Body: memBody(crlf(raw))})
	return out
}

// routed is an Outcome with the SMTP reply smtpd's reply table gives it:
// what the forwarding server is told.
type routed struct {
	Outcome
	Code     int
	Enhanced [3]int
	Text     string
}

// routeIn runs Route as the daemon does: the decision's log line is
// written (on the session's "message" line there), the reply comes from
// smtpd's table.
func (e *env) routeIn(ctx context.Context, in Input) (routed, error) {
	out, err := e.r.Route(ctx, in)
	if out.Decision != "" && !slices.Contains(Outcomes(), [2]string{out.Decision, out.Reason}) {
		// The daemon's metrics would miss this series until it first happens.
		e.t.Errorf("outcome %s/%s is not listed in Outcomes()", out.Decision, out.Reason)
	}
	if len(out.Log) > 0 {
		e.r.Log.InfoContext(ctx, "message", out.Log...)
	}
	r, _ := smtpd.ReplyFor(smtpd.Verdict{Decision: out.Decision, Reason: out.Reason, Detail: out.Detail})
	return routed{Outcome: out, Code: r.Code, Enhanced: [3]int(r.EnhancedCode), Text: r.Message}, err
}

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
