package outbound_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/mail"
	"strings"
	"testing"

	"syncrelay/outbound"
	"syncrelay/outbound/providertest"
)

func notice() outbound.Notice {
	return outbound.Notice{Tenant: "acme", Sender: "u-rec", To: mail.Address{Name: "Hugo", Address: "hm@acme.test"},
		Subject: "Rita asks to send email for you", Text: "Approve: http://127.0.0.1:1/p/delegation?t=abc\n",
		HTML: `<p><a href="http://127.0.0.1:1/p/delegation?t=abc">Approve</a></p>`}
}

// TestNoticeSentThroughSendersGrant: a notice (the Send For approval email)
// goes out through the sender's own mailbox, with both providers' shapes,
// and is not a thread: no thread token, no syncrelay Message-ID, nothing
// recorded on any profile (its sent copy, if a rule forwards it, matches
// nothing and is discarded).
func TestNoticeSentThroughSendersGrant(t *testing.T) {
	t.Parallel()
	for _, prov := range []string{"google", "microsoft"} {
		t.Run(prov, func(t *testing.T) {
			e := newEnv(t, prov, nil)
			e.connect("u-rec")
			if err := e.svc.SendNotice(context.Background(), notice()); err != nil {
				t.Fatal(err)
			}
			reqs := e.stub.Requests()
			if len(reqs) != 1 || reqs[0].AccessToken == "" || reqs[0].Status >= 300 {
				t.Fatalf("provider requests %+v", reqs)
			}
			m := lastSent(t, e.stub)
			if m.Header.Get("From") != `"Rita" <rec@acme.test>` || m.Header.Get("To") != `"Hugo" <hm@acme.test>` ||
				m.Header.Get("Subject") != "Rita asks to send email for you" {
				t.Fatalf("From %q To %q Subject %q", m.Header.Get("From"), m.Header.Get("To"), m.Header.Get("Subject"))
			}
			id := m.Header.Get("Message-Id")
			if id == "" || strings.HasPrefix(id, "<sr.") || m.Header.Get("X-Syncrelay-Thread") != "" || m.Header.Get("References") != "" {
				t.Fatalf("notice carries thread headers: Message-Id %q X-Syncrelay-Thread %q", id, m.Header.Get("X-Syncrelay-Thread"))
			}
			if _, ok := e.kr.ParseMessageID(id); ok {
				t.Fatalf("notice Message-ID %q parses as a syncrelay thread id", id)
			}
			body, _ := io.ReadAll(m.Body)
			if !strings.Contains(string(body), "http://127.0.0.1:1/p/delegation?t=3Dabc") && !strings.Contains(string(body), "/p/delegation?t=abc") {
				t.Fatalf("link missing from body:\n%s", body)
			}
			ths, err := e.st.CandidateThreads(context.Background(), "acme", "c-1")
			must(t, err)
			if len(ths) != 0 {
				t.Fatalf("a notice was recorded as a thread: %+v", ths[0])
			}
		})
	}
}

func TestNoticeRefusedWithoutWorkingGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	var rf *outbound.Refusal
	err := e.svc.SendNotice(context.Background(), notice())
	if !errors.As(err, &rf) || rf.Type != "grant-missing" || rf.Status != http.StatusConflict {
		t.Fatalf("no grant: %v", err)
	}
	e.connect("u-rec")
	g, err := e.st.Grant(context.Background(), "acme", "u-rec")
	must(t, err)
	if _, err := e.st.MarkGrantBroken(context.Background(), "acme", "u-rec", g.Version, "invalid_grant"); err != nil {
		t.Fatal(err)
	}
	err = e.svc.SendNotice(context.Background(), notice())
	if !errors.As(err, &rf) || rf.Type != "grant-broken" || !strings.Contains(rf.Detail, "u-rec") {
		t.Fatalf("broken grant: %v", err)
	}
	n := notice()
	n.Sender = "ghost"
	if err := e.svc.SendNotice(context.Background(), n); !errors.As(err, &rf) || rf.Type != "unknown-sender" {
		t.Fatalf("unknown sender: %v", err)
	}
	n = notice()
	n.To.Address = "not an address"
	if err := e.svc.SendNotice(context.Background(), n); !errors.As(err, &rf) || rf.Type != "invalid" {
		t.Fatalf("bad recipient: %v", err)
	}
	if len(e.stub.Sent()) != 0 {
		t.Fatalf("%d sent", len(e.stub.Sent()))
	}
}

func TestNoticeRetriesAndFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	e.stub.FailSend(providertest.Failure{Status: 503})
	if err := e.svc.SendNotice(context.Background(), notice()); err != nil {
		t.Fatalf("a 503 then 200: %v", err)
	}
	if len(e.sleeps) != 1 || len(e.stub.Sent()) != 1 {
		t.Fatalf("sleeps %v, sent %d", e.sleeps, len(e.stub.Sent()))
	}
	e.stub.FailSend(providertest.Failure{Status: 400})
	err := e.svc.SendNotice(context.Background(), notice())
	var pe *outbound.Error
	if !errors.As(err, &pe) || pe.Status != 400 {
		t.Fatalf("permanent failure: %v", err)
	}
}
