package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"syncrelay/config"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/testenv"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

// fixture is a daemon running in-process on loopback, with a tenant, a
// thread started by a (recorded) outbound message, and a DKIM key for the
// candidate's domain in a zone file.
type fixture struct {
	smtpAddr string
	inbound  string
	refs     string
	signer   *dkim.SignOptions
	stop     func()
}

func startFixture(tb testing.TB) *fixture {
	tb.Helper()
	dir := tb.TempDir()
	key, txt := dkimtest.RSA(tb, 0)
	zone := filepath.Join(dir, "zone.txt")
	if err := os.WriteFile(zone, []byte(fmt.Sprintf("s1._domainkey.cand.test TXT %q\n", txt)), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Parse([]byte(testenv.Config{Data: filepath.Join(dir, "data"), Zone: zone,
		SMTP: "max_connections_per_ip = 200"}.TOML()), "bench.toml")
	if err != nil {
		tb.Fatal(err)
	}

	// Seed the store before the daemon locks it, as the ATS would have
	// through the API: a tenant, a candidate and a sent message.
	st, err := bolt.Open(cfg.Store.Dir, bolt.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	keys, _, err := LoadKeys(cfg, true)
	if err != nil {
		tb.Fatal(err)
	}
	kr, _ := token.New(keys.Token, cfg.SMTP.Hostname)
	ctx := context.Background()
	ten := &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: "acme-bench@relay.test", DKIMPolicy: store.PolicyRequire}
	mustT(tb, st.CreateTenant(ctx, ten))
	mustT(tb, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}))
	th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec"}
	m := store.Message{From: "rec@acme.test", SentBy: "u-rec", Status: "sent"}
	mustT(tb, st.CreateOutbound(ctx, &th, &m, func(t, id uint64) (string, string) {
		conv := kr.ConversationIndex("acme", t)
		return strings.Trim(kr.MessageID(token.ID{Tenant: "acme", Thread: t, Message: id}), "<>"), hex.EncodeToString(conv[:])
	}))
	st.Close()

	d := testenv.StartInProcess(tb, func(ctx context.Context, logs io.Writer) error {
		return Run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)), io.Discard)
	})
	addr := d.SMTP
	return &fixture{
		smtpAddr: addr, inbound: ten.InboundAddress, refs: "<" + m.InternetMessageID + ">",
		signer: &dkim.SignOptions{Domain: "cand.test", Selector: "s1", Signer: key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed},
		stop: func() { d.Stop(tb) },
	}
}

func mustT(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

func (f *fixture) message(tb testing.TB, i int, matching bool, body string) []byte {
	refs := "<unrelated@else.test>"
	if matching {
		refs = f.refs
	}
	raw := fmt.Sprintf("From: carl@cand.test\r\nTo: rec@acme.test\r\nSubject: Re: hello\r\nMessage-ID: <m%d@cand.test>\r\nReferences: %s\r\n\r\n%s", i, refs, body)
	var out bytes.Buffer
	mustT(tb, dkim.Sign(&out, strings.NewReader(raw), f.signer))
	return out.Bytes()
}

// send delivers msgs over one reused connection and returns the reply texts.
func (f *fixture) send(tb testing.TB, msgs [][]byte) []string {
	c, err := smtp.Dial(f.smtpAddr)
	mustT(tb, err)
	defer c.Close()
	mustT(tb, c.Hello("bench.test"))
	var texts []string
	for _, raw := range msgs {
		mustT(tb, c.Mail("fwd@acme.test", nil))
		mustT(tb, c.Rcpt(f.inbound, nil))
		w, err := c.Data()
		mustT(tb, err)
		w.Write(raw)
		resp, err := w.CloseWithResponse()
		mustT(tb, err)
		texts = append(texts, resp.StatusText)
	}
	return texts
}

func TestEndToEndOverSMTP(t *testing.T) {
	f := startFixture(t)
	defer f.stop()
	got := f.send(t, [][]byte{
		f.message(t, 1, true, "See you Tuesday.\r\n"),
		f.message(t, 1, true, "See you Tuesday.\r\n"),
		f.message(t, 2, false, "Unrelated.\r\n"),
	})
	want := []string{"2.0.0 OK: stored", "2.0.0 OK: duplicate", "2.0.0 OK: discarded"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("replies %q, want %q", got, want)
		}
	}
}

// BenchmarkSMTPEndToEnd measures the whole inbound path over a real TCP
// connection (go-smtp client, one reused connection, 4 KiB bodies).
func BenchmarkSMTPEndToEnd(b *testing.B) {
	body := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 64)
	for _, tc := range []struct {
		name     string
		matching bool
	}{{"discard", false}, {"stored", true}} {
		b.Run(tc.name, func(b *testing.B) {
			f := startFixture(b)
			defer f.stop()
			const pool = 256
			msgs := make([][]byte, pool)
			for i := range msgs {
				msgs[i] = f.message(b, i, tc.matching, body)
			}
			c, err := smtp.Dial(f.smtpAddr)
			mustT(b, err)
			defer c.Close()
			mustT(b, c.Hello("bench.test"))
			i := 0
			for b.Loop() {
				mustT(b, c.Mail("fwd@acme.test", nil))
				mustT(b, c.Rcpt(f.inbound, nil))
				w, err := c.Data()
				mustT(b, err)
				w.Write(msgs[i%pool])
				mustT(b, w.Close())
				i++
			}
		})
	}
}
