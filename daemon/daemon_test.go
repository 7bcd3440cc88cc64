package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"syncrelay/config"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/pgtest"
	"syncrelay/internal/testenv"
	"syncrelay/store"
	"syncrelay/token"
)

// fixture is a daemon running in-process on loopback, with a tenant, a
// thread started by a (recorded) outbound message, and a DKIM key for the
// candidate's domain in a zone file.
type fixture struct {
	cfg      *config.Config
	httpAddr string
	smtpAddr string
	inbound  string
	refs     string
	signer   *dkim.SignOptions
	stop     func()
}

func startFixture(tb testing.TB) *fixture { return startFixtureOn(tb, "", 0) }

// startFixtureOn starts the fixture on the PostgreSQL database at dsn, or
// ("") on bbolt in a temp dir; a database is probed every probe (the
// daemon's default when 0).
func startFixtureOn(tb testing.TB, dsn string, probe time.Duration) *fixture {
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
	if dsn != "" {
		cfg.Store.Backend, cfg.Store.DSN = config.BackendPostgres, dsn
	}
	cfg.Store.ProbeInterval = probe

	// Seed the store before the daemon locks it, as the ATS would have
	// through the API: a tenant, a candidate and a sent message.
	st, err := OpenStore(context.Background(), cfg, slog.New(slog.DiscardHandler))
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
		cfg:      cfg,
		httpAddr: d.HTTP,
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

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestEndToEndOverSMTP runs the daemon on each backend: a matching reply
// is stored (once) on the thread, an unrelated message is not.
func TestEndToEndOverSMTP(t *testing.T) {
	t.Parallel() // own data directory and database; mostly waits
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) string
	}{
		{"bbolt", func(*testing.T) string { return "" }},
		{"postgres", func(t *testing.T) string {
			return pgtest.DSN(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFixtureOn(t, tc.store(t), 0)
			got := f.send(t, [][]byte{
				f.message(t, 1, true, "See you Tuesday.\r\n"),
				f.message(t, 1, true, "See you Tuesday.\r\n"),
				f.message(t, 2, false, "Unrelated.\r\n"),
			})
			f.stop()
			want := []string{"2.0.0 OK: stored (reason=token)", "2.0.0 OK: duplicate (reason=duplicate)", "2.0.0 OK: discarded (reason=no_match)"}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("replies %q, want %q", got, want)
				}
			}
			// The backend the config names holds the stored reply.
			st, err := OpenStore(context.Background(), f.cfg, slog.New(slog.DiscardHandler))
			mustT(t, err)
			defer st.Close()
			ths, err := st.CandidateThreads(context.Background(), "acme", "c-1")
			mustT(t, err)
			msgs, err := st.ThreadMessages(context.Background(), "acme", ths[0].ID)
			mustT(t, err)
			if len(msgs) != 2 || msgs[1].InternetMessageID != "m1@cand.test" {
				t.Errorf("thread holds %d messages: %+v", len(msgs), msgs)
			}
		})
	}
}

// TestPostgresOutage: while the database is down /readyz is 503 and mail
// is refused with a 4xx (the sender retries); when it is back the node is
// ready again by itself and stores mail.
func TestPostgresOutage(t *testing.T) {
	t.Parallel() // its own PostgreSQL cluster, which it stops and starts; mostly waits
	pg := pgtest.Own(t)
	dsn, err := pg.CreateDB(context.Background())
	mustT(t, err)
	// Probed every 100 ms, not every second: the test waits for the probe
	// to see the database go and come back.
	f := startFixtureOn(t, dsn, 100*time.Millisecond)
	defer f.stop()
	waitReady := func(want int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			code := 0
			if resp, err := http.Get("http://" + f.httpAddr + "/readyz"); err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			if code == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz = %d, want %d", code, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitReady(http.StatusOK)
	pg.Halt()
	waitReady(http.StatusServiceUnavailable)
	if code, _ := f.try(t, f.message(t, 1, true, "During the outage.\r\n")); code < 400 || code >= 500 {
		t.Errorf("delivery during the outage: %d, want 4xx", code)
	}
	mustT(t, pg.Resume())
	waitReady(http.StatusOK)
	if got := f.send(t, [][]byte{f.message(t, 1, true, "After the outage.\r\n")}); got[0] != "2.0.0 OK: stored (reason=token)" {
		t.Errorf("delivery after the outage: %q", got)
	}
}

// try delivers one message and returns the SMTP code of the first
// refusal (at RCPT or DATA), or 250.
func (f *fixture) try(tb testing.TB, raw []byte) (int, string) {
	c, err := smtp.Dial(f.smtpAddr)
	mustT(tb, err)
	defer c.Close()
	mustT(tb, c.Hello("test.test"))
	mustT(tb, c.Mail("fwd@acme.test", nil))
	var se *smtp.SMTPError
	if err := c.Rcpt(f.inbound, nil); errors.As(err, &se) {
		return se.Code, se.Message
	} else if err != nil {
		tb.Fatal(err)
	}
	w, err := c.Data()
	mustT(tb, err)
	w.Write(raw)
	resp, err := w.CloseWithResponse()
	if errors.As(err, &se) {
		return se.Code, se.Message
	}
	mustT(tb, err)
	return 250, resp.StatusText
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
