package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"syncrelay/internal/testenv"
	"syncrelay/internal/testutil"

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
		{"refused", []string{"acme"}, "no header at all", "554 Malformed message header (reason=malformed_header)", "[decision rejected reason malformed_header]"},
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
	del := delivery(t, []string{"acme"}, strings.Replace(unrelated, "From:", "X-Syncrelay-Thread: x\r\nFrom:", 1))
	err = d.Deliver(ctx, del)
	// Its message line says so too (the 451 is a decision: tempfail).
	if got := fmt.Sprint(del.LogArgs); !strings.HasPrefix(got, "[decision tempfail reason local_error") {
		t.Errorf("closed store: log %s", got)
	}
	var v *smtpd.Verdict
	if err == nil || errors.As(err, &v) || !strings.Contains(err.Error(), "acme") {
		t.Fatalf("closed store: %v", err)
	}
	if r := smtpd.DataReply(slog.New(slog.DiscardHandler), err); r.Code != 451 {
		t.Fatalf("closed store: %d", r.Code)
	}
}

// The "message" log line of every refusal carries the decision and its
// reason, like the 250 lines, whoever refused it: the router (552 header
// too large, 554 malformed header), smtpd (552 message too large, 550 bare
// LF, 554 line too long), and a tempfail (451) too. Real SMTP over TCP,
// the daemon's Deliverer and router over a real bbolt store, and the slog
// output as the daemon writes it (JSON).
func TestRefusalLogLinesOverSMTP(t *testing.T) {
	st, kr := acmeStore(t)
	var logs testutil.SyncBuf
	log := withContextAttrs(slog.New(slog.NewJSONHandler(&logs, nil)))
	rt := &router.Router{Store: st, Keys: kr, Hostname: "relay.test", Salt: []byte("s"), MaxHeaderBytes: 200, Log: log}
	srv, err := smtpd.New(smtpd.Options{Hostname: "relay.test", MaxMessageBytes: 2000, MaxLineLength: 1000,
		SpoolDir: t.TempDir(), Logger: log}, st, &Deliverer{Router: rt})
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.ServeSMTP(t, srv)

	for _, tc := range []struct {
		name, raw, want string
	}{
		{"header too large", "X-Pad: " + strings.Repeat("p", 300) + "\r\nSubject: x\r\n\r\nbody\r\n", "552 rejected header_too_large"},
		{"malformed header", "no header at all\r\n", "554 rejected malformed_header"},
		{"message too large", "Subject: x\r\n\r\n" + strings.Repeat("0123456789\r\n", 300), "552 rejected message_too_large"},
		{"line too long", "Subject: x\r\n\r\n" + strings.Repeat("y", 1500) + "\r\n", "554 rejected line_too_long"},
		{"bare LF", "Subject: x\r\n\r\nbare\nLF\r\n", "550 rejected bare_eol"},
		{"discarded", "Subject: x\r\nMessage-ID: <m@cand.test>\r\n\r\nhi\r\n", "250 discarded no_match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(messageLines(t, &logs))
			// A raw connection: an SMTP client library would turn the
			// bare LF into CRLF.
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "EHLO fwd.test\r\nMAIL FROM:<a@cand.test>\r\nRCPT TO:<acme-x@relay.test>\r\nDATA\r\n")
			// DATA is a synchronisation point (RFC 2920): the body follows
			// the 354.
			br := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("no 354: %v", err)
				}
				if strings.HasPrefix(l, "354") {
					break
				}
			}
			io.WriteString(c, tc.raw+".\r\n")
			var line map[string]any
			deadline := time.Now().Add(5 * time.Second)
			for {
				if ls := messageLines(t, &logs); len(ls) > before {
					line = ls[before]
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no message line:\n%s", logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if got := fmt.Sprintf("%v %v %v", line["code"], line["decision"], line["reason"]); got != tc.want {
				t.Errorf("message line %v: got %q, want %q", line, got, tc.want)
			}
		})
	}
}

func messageLines(t *testing.T, logs *testutil.SyncBuf) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "message" {
			out = append(out, m)
		}
	}
	return out
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

// acmeStore is a real bbolt store holding tenant acme (inbound address
// acme-x@relay.test), closed when the test ends, and a token keyring for
// relay.test.
func acmeStore(t *testing.T) (*bolt.Store, *token.Keyring) {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateTenant(context.Background(), &store.Tenant{ID: "acme", Name: "acme", Domains: []string{"acme.test"},
		InboundAddress: "acme-x@relay.test"}); err != nil {
		t.Fatal(err)
	}
	kr, err := token.New(bytes.Repeat([]byte{1}, 32), "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	return st, kr
}
