package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"syncrelay/delegation"
	"syncrelay/outbound"
	"syncrelay/outbound/providertest"
	"syncrelay/signedlink"
	"syncrelay/store"
)

var linkKey = bytes.Repeat([]byte{0x5a}, 32)

// newApprovalEnv is the outbound environment with Send For approval by
// email wired as the daemon does: links signed with the links key, pointing
// at the API's own listener.
func newApprovalEnv(t *testing.T, provider string, opts ...func(*delegation.Options)) (*obEnv, *delegation.Approvals) {
	t.Helper()
	var ap *delegation.Approvals
	e := &obEnv{t: t, dir: t.TempDir(), prov: provider}
	e.stub = providertest.Start(t, provider)
	e.apiTweak = func(o *Options, svc *outbound.Service) {
		var err error
		do := delegation.Options{Store: e.st, Sender: svc, Signer: signedlink.New(linkKey, nil), BaseURL: e.hs.URL}
		for _, f := range opts {
			f(&do)
		}
		ap, err = delegation.New(do)
		if err != nil {
			t.Fatal(err)
		}
		o.Outbound.Approvals = ap
	}
	e.start()
	e.seed()
	return e, ap
}

var linkRE = regexp.MustCompile(`https?://\S+/p/delegation\?t=[A-Za-z0-9_.%-]+`)

// emailedLink parses the approval link out of the text part of a sent email.
func emailedLink(t *testing.T, raw []byte) (string, *gomail.Reader) {
	t.Helper()
	mr, err := gomail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var text []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h, ok := p.Header.(*gomail.InlineHeader); ok {
			if ct, _, _ := h.ContentType(); ct == "text/plain" {
				text, _ = io.ReadAll(p.Body)
			}
		}
	}
	link := linkRE.FindString(string(text))
	if link == "" {
		t.Fatalf("no approval link in the email's text:\n%s", text)
	}
	return link, mr
}

func TestApprovalByEmail(t *testing.T) {
	t.Parallel()
	for _, prov := range []string{"google", "microsoft"} {
		t.Run(prov, func(t *testing.T) {
			e, ap := newApprovalEnv(t, prov)
			ctx := context.Background()
			e.problem(e.do("PATCH", "/v1/tenants/acme", "", `{"delegation_approval":"sms"}`), 400, "invalid")
			if r := e.must(e.do("GET", "/v1/tenants/acme", "", ""), 200); r.str("delegation_approval") != "webhook" {
				t.Fatalf("default delegation_approval %q", r.str("delegation_approval"))
			}
			if r := e.must(e.do("PATCH", "/v1/tenants/acme", "", `{"delegation_approval":"email"}`), 200); r.str("delegation_approval") != "email" {
				t.Fatalf("patched delegation_approval %q", r.str("delegation_approval"))
			}
			e.connect("u-rec")
			before := len(e.stub.Sent())

			d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
			id := d.str("id")
			ae, _ := d.body["approval_email"].(map[string]any)
			if ae["status"] != "sent" || ae["via"] != "u-rec" || ae["to"] != "u-hm" || ae["error"] != nil {
				t.Fatalf("approval_email %v", ae)
			}
			exp, err := time.Parse(time.RFC3339, ae["expires_at"].(string))
			if err != nil || exp.Before(time.Now().Add(7*24*time.Hour-time.Minute)) || exp.After(time.Now().Add(7*24*time.Hour+time.Minute)) {
				t.Fatalf("expires_at %v (%v): want in 7 days", ae["expires_at"], err)
			}
			if n := len(e.events("delegation.requested")); n != 1 {
				t.Fatalf("%d delegation.requested events: the webhook is sent as well", n)
			}

			// Sent once, through the requester's (the only connected) grant,
			// to the grantor, naming the requester.
			sent := e.stub.Sent()
			if len(sent)-before != 1 {
				t.Fatalf("%d emails sent", len(sent)-before)
			}
			link, mr := emailedLink(t, sent[len(sent)-1])
			from, _ := mr.Header.AddressList("From")
			to, _ := mr.Header.AddressList("To")
			subj, _ := mr.Header.Subject()
			if len(from) != 1 || from[0].Address != "rec@acme.test" || len(to) != 1 || to[0].Address != "hm@acme.test" || !strings.Contains(subj, "Rita") {
				t.Fatalf("From %v To %v Subject %q", from, to, subj)
			}
			if mr.Header.Get("X-Syncrelay-Thread") != "" {
				t.Fatal("the approval email carries a thread token")
			}
			u, err := url.Parse(link)
			if err != nil || u.Scheme+"://"+u.Host != e.hs.URL || u.Path != "/p/delegation" {
				t.Fatalf("link %q is not this server's /p/delegation", link)
			}
			tok := u.Query().Get("t")
			c, err := signedlink.New(linkKey, nil).Verify(tok, signedlink.PurposeDelegation)
			if err != nil || c.Tenant != "acme" || c.Subject != id || c.Nonce == "" {
				t.Fatalf("link claims %+v, %v", c, err)
			}
			if _, err := signedlink.New(linkKey, nil).Verify(tok, signedlink.PurposeAdmin); err == nil {
				t.Fatal("a delegation link verifies as an admin link")
			}

			// Viewing does not use the link; approving does, once.
			l, err := ap.Open(ctx, tok)
			if err != nil || !l.Pending() || l.Requester.ID != "u-rec" || l.Grantor.ID != "u-hm" {
				t.Fatalf("open: %+v %v", l, err)
			}
			if l, err := ap.Act(ctx, tok, delegation.Approve); err != nil || l.Delegation.Status != store.DelegationActive {
				t.Fatalf("approve: %+v %v", l, err)
			}
			g := e.must(e.do("GET", "/v1/tenants/acme/delegations/"+id, "", ""), 200)
			hist := g.body["history"].([]any)
			if g.str("status") != "active" || hist[len(hist)-1].(map[string]any)["by"] != "u-hm" {
				t.Fatalf("after approval by link: %s", g.raw)
			}
			ch := e.events("delegation.changed")
			if data, _ := json.Marshal(ch); len(ch) != 1 || !bytes.Contains(data, []byte(`"changed_by":"u-hm"`)) {
				t.Fatalf("delegation.changed events %d", len(ch))
			}
			if l, err := ap.Act(ctx, tok, delegation.Decline); !errors.Is(err, delegation.ErrUsed) || l.Delegation.Status != store.DelegationActive || l.Used.Action != delegation.Approve {
				t.Fatalf("second use: %+v %v", l, err)
			}
			// Send For now works (through the grantor's grant).
			e.connect("u-hm")
			r := e.must(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"Hi","text":"Hello","send_for":"u-hm"}`), 201)
			if r.str("status") != "sent" {
				t.Fatalf("send for after approval: %s", r.raw)
			}
		})
	}
}

// TestApprovalEmailNotSentStillRequests: without a working grant of the
// requester the request stands, the webhook is queued, and the answer says
// the email was not sent and why.
func TestApprovalEmailNotSentStillRequests(t *testing.T) {
	t.Parallel()
	e, _ := newApprovalEnv(t, "google")
	e.must(e.do("PATCH", "/v1/tenants/acme", "", `{"delegation_approval":"email"}`), 200)
	d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	ae, _ := d.body["approval_email"].(map[string]any)
	if d.str("status") != "requested" || ae["status"] != "not_sent" || !strings.Contains(ae["error"].(string), "u-rec has not connected") || ae["expires_at"] != nil {
		t.Fatalf("%s", d.raw)
	}
	if len(e.events("delegation.requested")) != 1 || len(e.stub.Sent()) != 0 {
		t.Fatalf("webhook events %d, sent %d", len(e.events("delegation.requested")), len(e.stub.Sent()))
	}
}

// TestApprovalWebhookOnlyByDefault: a tenant that did not ask for email
// gets only the webhook.
func TestApprovalWebhookOnlyByDefault(t *testing.T) {
	t.Parallel()
	e, _ := newApprovalEnv(t, "google")
	e.connect("u-rec")
	d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	if _, ok := d.body["approval_email"]; ok || len(e.stub.Sent()) != 0 || len(e.events("delegation.requested")) != 1 {
		t.Fatalf("%s; sent %d", d.raw, len(e.stub.Sent()))
	}
}

// TestApprovalEmailProviderDownThenUp: the provider answers 503 through
// all the outbound retries when the request is made: the 201 says the
// email is queued (with the error and the next attempt), the queue sends
// it once the provider is back, and GET of the delegation shows it sent.
func TestApprovalEmailProviderDownThenUp(t *testing.T) {
	t.Parallel()
	e, ap := newApprovalEnv(t, "google", func(o *delegation.Options) {
		o.RetryBase, o.PollInterval = 50*time.Millisecond, 10*time.Millisecond
	})
	e.must(e.do("PATCH", "/v1/tenants/acme", "", `{"delegation_approval":"email"}`), 200)
	e.connect("u-rec")
	before := len(e.stub.Sent())
	e.stub.FailSend(providertest.Failure{Status: 503}, providertest.Failure{Status: 503}, providertest.Failure{Status: 503}, providertest.Failure{Status: 503})
	d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	ae, _ := d.body["approval_email"].(map[string]any)
	if d.str("status") != "requested" || ae["status"] != "queued" || !strings.Contains(fmt.Sprint(ae["error"]), "503") || ae["next_attempt_at"] == nil {
		t.Fatalf("201 while the provider is down: %s", d.raw)
	}
	if len(e.stub.Sent()) != before {
		t.Fatal("an email was recorded while the provider failed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ap.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	id := d.str("id")
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := e.must(e.do("GET", "/v1/tenants/acme/delegations/"+id, "", ""), 200)
		ge, _ := g.body["approval_email"].(map[string]any)
		if ge["status"] == "sent" {
			if ge["error"] != nil || ge["sent_at"] == nil || ge["expires_at"] == nil {
				t.Fatalf("sent: %s", g.raw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not sent: %s", g.raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would be sent by now
	if n := len(e.stub.Sent()) - before; n != 1 {
		t.Fatalf("%d approval emails sent, want 1", n)
	}
	link, _ := emailedLink(t, e.stub.Sent()[len(e.stub.Sent())-1])
	if !strings.Contains(link, "/p/delegation?t=") {
		t.Fatalf("link %q", link)
	}
}
