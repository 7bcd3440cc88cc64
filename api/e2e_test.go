package api_test

// End to end over the real pipeline: SMTP server -> router (DKIM against a
// zone file) -> store -> HTTP API, and the webhook deliverer draining the
// outbox to a local receiver.

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"syncrelay/api"
	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/internal/dnstest"
	"syncrelay/internal/testenv"
	"syncrelay/smtpd"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
	"syncrelay/webhook"
)

const (
	e2eToken  = "e2e-token"
	e2eSecret = "e2e-webhook-secret"
)

type hookReceiver struct {
	mu   sync.Mutex
	got  [][]byte
	hdrs []http.Header
}

type e2e struct {
	t        *testing.T
	st       *bolt.Store
	api      *httptest.Server
	smtpAddr string
	keys     *token.Keyring
	sign     func(raw string) string
	signAcme func(raw string) string // as the tenant's own domain, acme.test
	hooks    *hookReceiver
}

func startE2E(t *testing.T) *e2e {
	t.Helper()
	dir := t.TempDir()
	key, txt := dnstest.GenEd25519(t)
	acmeKey, acmeTXT := dnstest.GenEd25519(t)
	zone := filepath.Join(dir, "zone.txt")
	if err := os.WriteFile(zone, []byte(fmt.Sprintf("s1._domainkey.cand.test TXT %q\ns1._domainkey.acme.test TXT %q\n", txt, acmeTXT)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	c.Store.Dir = filepath.Join(dir, "data")
	c.SMTP.Hostname = "relay.test"
	c.DNS.ZoneFile = zone
	log := slog.New(slog.DiscardHandler)

	st, err := bolt.Open(c.Store.Dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keys, _, err := daemon.LoadKeys(c, true)
	if err != nil {
		t.Fatal(err)
	}
	p, err := daemon.NewPipeline(c, st, keys, log)
	if err != nil {
		t.Fatal(err)
	}

	srv, err := smtpd.New(smtpd.Options{Hostname: "relay.test", SpoolDir: t.TempDir()}, st, &daemon.Deliverer{Router: p.Router})
	if err != nil {
		t.Fatal(err)
	}
	smtpAddr := testenv.ServeSMTP(t, srv)

	hs := httptest.NewServer(api.New(api.Options{Store: st, Tokens: []string{e2eToken}, Hostname: "relay.test"}))
	t.Cleanup(hs.Close)

	hooks := &hookReceiver{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooks.mu.Lock()
		hooks.got = append(hooks.got, b)
		hooks.hdrs = append(hooks.hdrs, r.Header.Clone())
		hooks.mu.Unlock()
		w.WriteHeader(204)
	}))
	t.Cleanup(rcv.Close)
	d, err := webhook.New(st, webhook.Options{URL: rcv.URL, Secret: e2eSecret, PollInterval: 10 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	e := &e2e{t: t, st: st, api: hs, smtpAddr: smtpAddr, keys: p.Keys, hooks: hooks}
	signer := func(domain string, key crypto.Signer) func(string) string {
		return func(raw string) string {
			var out bytes.Buffer
			if err := dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: domain, Selector: "s1", Signer: key,
				HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}); err != nil {
				t.Fatal(err)
			}
			return out.String()
		}
	}
	e.sign, e.signAcme = signer("cand.test", key), signer("acme.test", acmeKey)
	return e
}

func (e *e2e) apiCall(method, path, actor, body string) (int, map[string]any) {
	e.t.Helper()
	code, m, raw := testenv.Call(e.t, e.api.URL, e2eToken, actor, method, path, body)
	if len(raw) > 0 && m == nil {
		e.t.Fatalf("%s %s: %q", method, path, raw)
	}
	return code, m
}

// deliver sends raw over SMTP to rcpt and returns the final reply text
// (a refusal as go-smtp's client words it).
func (e *e2e) deliver(rcpt, raw string) string {
	e.t.Helper()
	code, text := testenv.Send(e.t, e.smtpAddr, testenv.Envelope{Helo: "mx.forwarder.test", From: "fwd@acme.test", To: []string{rcpt}}, raw)
	if code != 250 {
		return (&smtp.SMTPError{Code: code, Message: text}).Error()
	}
	// "OK: stored": these tests check the decision; smtpd's tests check
	// the reason token after it.
	text, _, _ = strings.Cut(text, " (reason=")
	return text
}

func (e *e2e) hookBodies() [][]byte {
	e.hooks.mu.Lock()
	defer e.hooks.mu.Unlock()
	return append([][]byte(nil), e.hooks.got...)
}

func TestE2ERemovalSurvivesRedeliveryOverSMTP(t *testing.T) {
	t.Parallel()
	e := startE2E(t)
	code, ten := e.apiCall("POST", "/v1/tenants", "", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`)
	if code != 201 {
		t.Fatalf("tenant %d %v", code, ten)
	}
	inbound := ten["inbound_address"].(string)
	for _, b := range []string{`{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`,
		`{"id":"u-hm","email":"hm@acme.test","name":"Hank","role":"team_member"}`} {
		if code, _ := e.apiCall("POST", "/v1/tenants/acme/users", "", b); code != 201 {
			t.Fatal("user", code)
		}
	}
	if code, _ := e.apiCall("POST", "/v1/tenants/acme/candidates", "", `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`); code != 201 {
		t.Fatal("candidate")
	}

	// The ATS sent a message (issue 4's sender records it like this).
	th := store.Thread{Tenant: "acme", Candidate: "c-1", Subject: "Interview", CreatedBy: "u-rec"}
	sent := store.Message{From: "hm@acme.test", To: []string{"carl@cand.test"}, Subject: "Interview", SentBy: "u-rec", SendFor: "u-hm", Status: "sent"}
	var sentID string
	if err := e.st.CreateOutbound(context.Background(), &th, &sent, func(tid, mid uint64) (string, string) {
		sentID = e.keys.MessageID(token.ID{Tenant: "acme", Thread: tid, Message: mid})
		return strings.Trim(sentID, "<>"), ""
	}); err != nil {
		t.Fatal(err)
	}

	reply := e.sign(strings.ReplaceAll(`From: Carl <carl@cand.test>
To: hm@acme.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 10:00:00 +0000
Message-ID: <reply-1@cand.test>
In-Reply-To: `+sentID+`
References: `+sentID+`
Content-Type: text/plain; charset=utf-8

Thursday works for me.
`, "\n", "\r\n"))
	if got := e.deliver(inbound, reply); got != "OK: stored" {
		t.Fatalf("first copy: %q", got)
	}

	// The candidate's reply is on the timeline...
	code, tl := e.apiCall("GET", "/v1/tenants/acme/candidates/c-1/threads", "u-rec", "")
	if code != 200 {
		t.Fatal(code, tl)
	}
	msgs := tl["threads"].([]any)[0].(map[string]any)["messages"].([]any)
	if len(msgs) != 2 {
		t.Fatalf("messages %v", msgs)
	}
	rm := msgs[1].(map[string]any)
	replyID := rm["id"].(string)
	if rm["text"] != "Thursday works for me." || rm["direction"] != "inbound" || rm["dkim"].([]any)[0].(map[string]any)["result"] != "pass" {
		t.Fatalf("reply %v", rm)
	}

	// ... and the ATS was told, with a signed webhook naming whom to notify.
	deadline := time.Now().Add(10 * time.Second)
	for len(e.hookBodies()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no webhook")
		}
		time.Sleep(10 * time.Millisecond)
	}
	body := e.hookBodies()[0]
	e.hooks.mu.Lock()
	h := e.hooks.hdrs[0]
	e.hooks.mu.Unlock()
	if err := webhook.Verify([]byte(e2eSecret), h, body, time.Now(), 0); err != nil {
		t.Fatalf("webhook signature: %v", err)
	}
	var ev struct {
		ID, Type, Tenant string
		Data             map[string]any
	}
	_ = json.Unmarshal(body, &ev)
	if ev.Type != "message.received" || ev.Tenant != "acme" || ev.Data["message_id"] != replyID || ev.Data["candidate"] != "c-1" {
		t.Fatalf("webhook %s", body)
	}
	if nu := fmt.Sprint(ev.Data["notify_users"]); nu != "[u-rec u-hm]" {
		t.Fatalf("notify_users %s (thread owner and Send For grantor)", nu)
	}

	// Removed from the profile...
	if code, _ := e.apiCall("DELETE", "/v1/tenants/acme/messages/"+replyID, "u-hm", ""); code != 204 {
		t.Fatal("delete", code)
	}
	// ... it stays removed when the forwarder delivers it again, or another
	// mailbox's copy arrives.
	if got := e.deliver(inbound, reply); got != "OK: duplicate" {
		t.Fatalf("redelivery: %q", got)
	}
	if got := e.deliver(inbound, "X-Original-To: rec@acme.test\r\n"+reply); got != "OK: duplicate" {
		t.Fatalf("second mailbox copy: %q", got)
	}
	if code, _ := e.apiCall("GET", "/v1/tenants/acme/messages/"+replyID, "u-rec", ""); code != 404 {
		t.Fatal("removed message is back", code)
	}
	_, tl = e.apiCall("GET", "/v1/tenants/acme/candidates/c-1/threads", "u-rec", "")
	msgs = tl["threads"].([]any)[0].(map[string]any)["messages"].([]any)
	if len(msgs) != 1 {
		t.Fatalf("timeline after redelivery: %v", msgs)
	}
	// Duplicates raise no second event.
	time.Sleep(100 * time.Millisecond)
	if n := len(e.hookBodies()); n != 1 {
		t.Fatalf("%d webhooks, want 1", n)
	}
}
