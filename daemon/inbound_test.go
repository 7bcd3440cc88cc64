package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"syncrelay/router"
	"syncrelay/smtpd"
	"syncrelay/spool"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

// Every decision the router makes has a reply in smtpd's table.
func TestEveryDecisionHasAReply(t *testing.T) {
	for _, d := range []string{router.Stored, router.Duplicate, router.Discarded, router.Quarantined, router.Rejected, router.Tempfail} {
		if _, ok := smtpd.ReplyFor(smtpd.Verdict{Decision: d, Reason: "x"}); !ok {
			t.Errorf("no reply for %q", d)
		}
	}
}

// Deliver routes once per distinct tenant, answers with the worst outcome
// as a Verdict (or the routing error), and puts the decisions' log lines
// on the delivery.
func TestDeliverer(t *testing.T) {
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range []string{"acme", "beta"} {
		if err := st.CreateTenant(ctx, &store.Tenant{ID: id, Name: id, Domains: []string{id + ".test"},
			InboundAddress: id + "-x@relay.test"}); err != nil {
			t.Fatal(err)
		}
	}
	kr, err := token.New(bytes.Repeat([]byte{1}, 32), "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	d := &Deliverer{Router: &router.Router{Store: st, Keys: kr, Hostname: "relay.test", Salt: []byte("s")}}
	unrelated := "From: x@cand.test\r\nMessage-ID: <m@cand.test>\r\nSubject: hi\r\n\r\nhello\r\n"
	for _, tc := range []struct {
		name    string
		tenants []string
		raw     string
		want    string // the reply
		logs    string // the LogArgs, formatted
	}{
		{"one tenant", []string{"acme"}, unrelated, "250 OK: discarded (reason=no_match)", "[decision discarded reason no_match msgid_hash "},
		{"two tenants", []string{"acme", "beta"}, unrelated, "250 OK: discarded (reason=no_match)", "[tenant_acme=[decision=discarded"},
		{"a tenant twice", []string{"acme", "acme"}, unrelated, "250 OK: discarded (reason=no_match)", "[tenant_acme=["},
		{"refused", []string{"acme"}, "no header at all", "554 Malformed message header (reason=malformed_header)", "[]"},
	} {
		del := delivery(t, tc.tenants, tc.raw)
		err := d.Deliver(ctx, del)
		r := smtpd.DataReply(slog.New(slog.DiscardHandler), err)
		if got := fmt.Sprintf("%d %s", r.Code, r.Message); got != tc.want {
			t.Errorf("%s: reply %q, want %q", tc.name, got, tc.want)
		}
		if got := fmt.Sprint(del.LogArgs); !strings.HasPrefix(got, tc.logs) || strings.Count(got, "tenant_acme") > 1 {
			t.Errorf("%s: log %s, want %s...", tc.name, got, tc.logs)
		}
		var v *smtpd.Verdict
		if !errors.As(err, &v) {
			t.Errorf("%s: %v is no Verdict", tc.name, err)
		}
	}
	// Storage trouble: the error, not a verdict (451 by smtpd's mapError).
	st.Close()
	err = d.Deliver(ctx, delivery(t, []string{"acme"}, strings.Replace(unrelated, "From:", "X-Syncrelay-Thread: x\r\nFrom:", 1)))
	var v *smtpd.Verdict
	if err == nil || errors.As(err, &v) || !strings.Contains(err.Error(), "acme") {
		t.Fatalf("closed store: %v", err)
	}
	if r := smtpd.DataReply(slog.New(slog.DiscardHandler), err); r.Code != 451 {
		t.Fatalf("closed store: %d", r.Code)
	}
}

func delivery(t *testing.T, tenants []string, raw string) *smtpd.Delivery {
	t.Helper()
	sp := spool.New(t.TempDir(), 0)
	t.Cleanup(func() { sp.Close() })
	if _, err := sp.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	return &smtpd.Delivery{SessionID: "s1", Tenants: tenants, Message: sp}
}
