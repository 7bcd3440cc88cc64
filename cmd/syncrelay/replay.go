package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/router"
	"syncrelay/smtpd"
	"syncrelay/spool"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// replayLine is one line of replay's output.
type replayLine struct {
	File string `json:"file"`
	router.Outcome
	// SMTPCode is the reply code the daemon gives (smtpd's reply table).
	SMTPCode int `json:"smtp_code"`
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("replay", "replay [-config FILE] [-tenant T] [-zone FILE] [-smtp ADDR] [-commit] FILE.eml...", stderr)
	cfgPath := fs.String("config", "", "config file (TOML)")
	tenant := fs.String("tenant", "", "tenant whose inbound address receives the files (id, or the inbound address itself with -smtp)")
	zone := fs.String("zone", "", "DNS zone file for DKIM keys (overrides dns.zone_file)")
	smtpAddr := fs.String("smtp", "", "deliver to a running daemon at host:port instead of running in-process")
	commit := fs.Bool("commit", false, "write kept messages to the real store (default: a temporary snapshot)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "syncrelay replay: no .eml files given")
		fs.Usage()
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	if *zone != "" {
		c.DNS.ZoneFile = *zone
		c.DNS.Resolver = ""
	}
	if c.Store.Backend == config.BackendPostgres && (*smtpAddr == "" || !strings.Contains(*tenant, "@")) {
		// In-process replay works on a snapshot of a bbolt store.
		fmt.Fprintln(stderr, `syncrelay replay: store.backend is "postgres": replay against a running node with -smtp ADDR -tenant INBOUND-ADDRESS`)
		return 1
	}
	if *smtpAddr != "" {
		return replaySMTP(ctx, c, *smtpAddr, *tenant, fs.Args(), stdout, stderr)
	}
	return replayLocal(ctx, c, *tenant, *commit, fs.Args(), stdout, stderr)
}

// readEML reads a file and normalises line endings to CRLF, as an MTA
// submitting it would.
func readEML(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	b = bytes.ReplaceAll(b, []byte("\r"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")), nil
}

func openForReplay(c *config.Config, commit bool, stderr io.Writer) (store.Store, func(), error) {
	timeout := c.Store.OpenTimeout.Duration
	if commit {
		st, err := bolt.Open(c.Store.Dir, bolt.Options{LockTimeout: timeout})
		if err != nil {
			return nil, nil, explainLocked(err)
		}
		return st, func() { st.Close() }, nil
	}
	if _, err := os.Stat(filepath.Join(c.Store.Dir, config.DBFileName)); errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("no store at %s (run the daemon once and create a tenant, or pass -config)", c.Store.Dir)
	}
	ro, err := bolt.Open(c.Store.Dir, bolt.Options{LockTimeout: timeout, ReadOnly: true})
	if err != nil {
		return nil, nil, explainLocked(err)
	}
	st, err := ro.DryRun(context.Background())
	ro.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot store: %w", err)
	}
	return st, func() { st.Close() }, nil
}

func explainLocked(err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w\n  the daemon holds the store: replay against it with -smtp ADDR, or replay against a backup copy", err)
	}
	return err
}

func pickTenant(ctx context.Context, st store.Tenants, want string) (string, error) {
	if want != "" {
		if _, err := st.Tenant(ctx, want); err != nil {
			return "", fmt.Errorf("-tenant: %w", err)
		}
		return want, nil
	}
	ts, err := st.Tenants(ctx)
	if err != nil {
		return "", err
	}
	switch len(ts) {
	case 0:
		return "", errors.New("the store has no tenant; create one with POST /v1/tenants")
	case 1:
		return ts[0].ID, nil
	}
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
	}
	return "", fmt.Errorf("the store has %d tenants (%s): pick one with -tenant", len(ts), strings.Join(ids, ", "))
}

func replayLocal(ctx context.Context, c *config.Config, tenant string, commit bool, files []string, stdout, stderr io.Writer) int {
	st, closeStore, err := openForReplay(c, commit, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return 1
	}
	defer closeStore()
	tenant, err = pickTenant(ctx, st, tenant)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return 1
	}
	keys, _, err := daemon.LoadKeys(c, false)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return 1
	}
	p, err := daemon.NewPipeline(c, st, keys, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return 1
	}
	d := &daemon.Deliverer{Router: p.Router}
	enc := json.NewEncoder(stdout)
	status := 0
	for _, f := range files {
		raw, err := readEML(f)
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %s: %v\n", f, err)
			status = 1
			continue
		}
		line := replayOne(ctx, d, tenant, raw)
		line.File = f
		_ = enc.Encode(line)
	}
	return status
}

// replayOne runs raw through the daemon's Deliverer as a transaction to
// tenant's inbound address, and answers it as the daemon's SMTP server
// would.
func replayOne(ctx context.Context, d *daemon.Deliverer, tenant string, raw []byte) replayLine {
	sp := spool.New("", 0)
	defer sp.Close()
	_, err := sp.Write(raw)
	var out router.Outcome
	if err == nil {
		out, err = d.Route(ctx, &smtpd.Delivery{SessionID: "replay", Tenants: []string{tenant}, Message: sp, Received: time.Now()})
	}
	if out.Decision == "" { // the spool failed: what the session would answer
		out = router.Outcome{Decision: router.Tempfail, Reason: "local_error", Tenant: tenant, DKIM: []store.AuthResult{}}
	}
	return replayLine{Outcome: out, SMTPCode: smtpd.DataReply(slog.New(slog.DiscardHandler), err).Code}
}

func replaySMTP(ctx context.Context, c *config.Config, addr, tenant string, files []string, stdout, stderr io.Writer) int {
	rcpt := tenant
	if !strings.Contains(rcpt, "@") {
		st, err := bolt.Open(c.Store.Dir, bolt.Options{LockTimeout: 500 * time.Millisecond, ReadOnly: true})
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %v\n  with -smtp, pass the tenant's inbound address as -tenant\n", err)
			return 1
		}
		id, err := pickTenant(ctx, st, tenant)
		var t *store.Tenant
		if err == nil {
			t, err = st.Tenant(ctx, id)
		}
		st.Close()
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
			return 1
		}
		rcpt, tenant = t.InboundAddress, t.ID
	}
	enc := json.NewEncoder(stdout)
	status := 0
	for _, f := range files {
		raw, err := readEML(f)
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %s: %v\n", f, err)
			status = 1
			continue
		}
		out := replayLine{File: f, Outcome: router.Outcome{Tenant: tenant, DKIM: []store.AuthResult{}}}
		text, err := deliverSMTP(addr, "replay@"+c.SMTP.Hostname, rcpt, raw)
		var se *smtp.SMTPError
		switch {
		case err == nil:
			// The daemon names its decision in the 250 text: "OK: stored".
			out.SMTPCode, out.Decision = 250, decisionFromReply(text)
		case errors.As(err, &se):
			out.SMTPCode, out.Reason = se.Code, se.Message
			out.Decision = router.Rejected
			if se.Code/100 == 4 {
				out.Decision = router.Tempfail
			}
		default:
			fmt.Fprintf(stderr, "syncrelay replay: %s: deliver to %s: %v\n", f, addr, err)
			out.Decision, out.Reason = router.Tempfail, "connection: "+err.Error()
		}
		_ = enc.Encode(out)
	}
	return status
}

// deliverSMTP sends one message and returns the text of the final reply.
func deliverSMTP(addr, from, rcpt string, raw []byte) (string, error) {
	cl, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	if err := cl.Hello("replay.localhost"); err != nil {
		return "", err
	}
	if err := cl.Mail(from, nil); err != nil {
		return "", err
	}
	if err := cl.Rcpt(rcpt, nil); err != nil {
		return "", err
	}
	w, err := cl.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(raw); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_ = cl.Quit()
	return resp.StatusText, nil
}

// decisionFromReply reads the decision from a daemon's 250 text,
// "2.0.0 OK: stored"; another server's text gives "accepted".
func decisionFromReply(text string) string {
	_, d, ok := strings.Cut(text, "OK: ")
	switch d = strings.TrimSpace(d); d {
	case router.Stored, router.Duplicate, router.Discarded, router.Quarantined:
		if ok {
			return d
		}
	}
	return "accepted"
}
