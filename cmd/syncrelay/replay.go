package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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

// Exit statuses of replay (README, "replay notes"): scripts tell "the
// files were replayed, read the decisions" (0) from "something kept them
// from being replayed" (any other).
const (
	replayOK = 0
	// replayFailed: a file could not be read (named on stderr, the others
	// are replayed), or the config, store, backup, secret key or tenant
	// could not be used (nothing is replayed).
	replayFailed = 1
	replayUsage  = 2
	// replayUnreachable (-smtp): the daemon's SMTP server, or its API when
	// it was needed for -tenant, could not be reached, did not greet, or
	// broke off; files from the first one not answered on are not replayed.
	replayUnreachable = 3
	// replayNoRecipient (-smtp): the daemon refused the inbound address at
	// RCPT TO (550 5.1.1): -tenant is probably wrong. Nothing is replayed.
	replayNoRecipient = 4
)

// replayLine is one line of replay's output: SPEC §8's fields, in its
// order (golden.jsonl has the same, so the two can be diffed as text).
type replayLine struct {
	File     string `json:"file"`
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	// SMTPCode is the reply code the daemon gives (smtpd's reply table).
	SMTPCode int `json:"smtp_code"`
	// Tenant is the tenant's id in both modes, never its inbound address
	// (a secret).
	Tenant string `json:"tenant"`
	// The rest is known only in-process: over SMTP the daemon's reply
	// carries the decision and the reason, and these stay empty.
	Thread    string             `json:"thread"`
	Candidate string             `json:"candidate"`
	Direction string             `json:"direction"`
	MatchedBy string             `json:"matched_by"`
	AutoReply bool               `json:"auto_reply"`
	DKIM      []store.AuthResult `json:"dkim"`
	ARC       string             `json:"arc"`
}

func lineFrom(file string, out router.Outcome, code int) replayLine {
	dkim := out.DKIM
	if dkim == nil {
		dkim = []store.AuthResult{}
	}
	return replayLine{File: file, Decision: out.Decision, Reason: out.Reason, SMTPCode: code, Tenant: out.Tenant,
		Thread: out.Thread, Candidate: out.Candidate, Direction: out.Direction, MatchedBy: out.MatchedBy,
		AutoReply: out.AutoReply, DKIM: dkim, ARC: out.ARC}
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("replay", "replay [-config FILE] [-tenant T] [-zone FILE] [-smtp ADDR [-url URL] | -backup FILE | -commit] FILE.eml...", stderr)
	cfgPath := fs.String("config", "", "config file (TOML)")
	tenant := fs.String("tenant", "", "tenant whose inbound address receives the files: its id (with -smtp resolved through the daemon's API), or its inbound address")
	zone := fs.String("zone", "", "DNS zone file for DKIM keys (overrides dns.zone_file)")
	smtpAddr := fs.String("smtp", "", "deliver to a running daemon at host:port instead of running in-process")
	base := fs.String("url", "", "with -smtp: base URL of the daemon's API, to resolve -tenant ID (default: from http.listen)")
	backup := fs.String("backup", "", "replay against this backup archive (restored into a temporary directory; the live store is not opened)")
	commit := fs.Bool("commit", false, "write kept messages to the real store (default: a temporary snapshot)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	usage := func(msg string) int {
		fmt.Fprintln(stderr, "syncrelay replay: "+msg)
		fs.Usage()
		return replayUsage
	}
	switch {
	case fs.NArg() == 0:
		return usage("no .eml files given")
	case *smtpAddr != "" && (*backup != "" || *commit):
		return usage("-smtp replays against a running daemon: it does not go with -backup or -commit")
	case *backup != "" && *commit:
		return usage("-backup replays against a temporary copy: -commit would write nothing that lasts")
	case *base != "" && *smtpAddr == "":
		return usage("-url is for -smtp")
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return replayFailed
	}
	if *zone != "" {
		c.DNS.ZoneFile = *zone
		c.DNS.Resolver = ""
	}
	switch {
	case *smtpAddr != "":
		return replaySMTP(ctx, c, *smtpAddr, *base, *tenant, fs.Args(), stdout, stderr)
	case *backup != "":
		return replayBackup(ctx, c, *backup, *tenant, fs.Args(), stdout, stderr)
	case c.Store.Backend == config.BackendPostgres:
		// In-process replay works on a snapshot of a bbolt store.
		fmt.Fprintln(stderr, `syncrelay replay: store.backend is "postgres": replay against a running node with -smtp ADDR -tenant TENANT`)
		return replayFailed
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

func openForReplay(c *config.Config, commit bool) (store.Store, func(), error) {
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
		return fmt.Errorf("%w\n  the daemon holds the store: replay against it with -smtp ADDR, or against a backup with -backup FILE", err)
	}
	return err
}

// pickTenant finds the tenant want names, by id or inbound address, among
// ts; with want empty, the only one.
func pickTenant(ts []*store.Tenant, want string) (*store.Tenant, error) {
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
		if want != "" && (t.ID == want || strings.EqualFold(t.InboundAddress, want)) {
			return t, nil
		}
	}
	switch {
	case want != "" && strings.Contains(want, "@"):
		return nil, fmt.Errorf("-tenant: no tenant has that inbound address (tenants: %s)", strings.Join(ids, ", "))
	case want != "":
		return nil, fmt.Errorf("-tenant: no tenant %q (tenants: %s)", want, strings.Join(ids, ", "))
	case len(ts) == 0:
		return nil, errors.New("there is no tenant; create one with POST /v1/tenants")
	case len(ts) == 1:
		return ts[0], nil
	}
	return nil, fmt.Errorf("there are %d tenants (%s): pick one with -tenant", len(ts), strings.Join(ids, ", "))
}

// replayBackup restores the archive into a temporary directory and
// replays in-process against it; the live store.dir is never opened.
func replayBackup(ctx context.Context, c *config.Config, archive, tenant string, files []string, stdout, stderr io.Writer) int {
	f, err := os.Open(archive)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: -backup: %v\n", err)
		return replayFailed
	}
	defer f.Close()
	tmp, err := os.MkdirTemp("", "syncrelay-replay-")
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return replayFailed
	}
	defer os.RemoveAll(tmp)
	if _, err := bolt.Restore(ctx, bufferedReader(f), tmp); err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: -backup %s: %v\n", archive, err)
		return replayFailed
	}
	// The secret key is not in the archive: it stays where the config
	// says (by default next to the live store).
	if c.Secrets.Key == nil {
		c.Secrets.KeyFile = c.SecretKeyPath()
	}
	c.Store.Backend, c.Store.Dir = config.BackendBolt, tmp
	// The restored copy is thrown away afterwards: write to it directly.
	return replayLocal(ctx, c, tenant, true, files, stdout, stderr)
}

func replayLocal(ctx context.Context, c *config.Config, tenant string, commit bool, files []string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		return replayFailed
	}
	st, closeStore, err := openForReplay(c, commit)
	if err != nil {
		return fail(err)
	}
	defer closeStore()
	ts, err := st.Tenants(ctx)
	if err != nil {
		return fail(err)
	}
	t, err := pickTenant(ts, tenant)
	if err != nil {
		return fail(err)
	}
	keys, _, err := daemon.LoadKeys(c, false)
	if err != nil {
		return fail(err)
	}
	// With another server's key no token verifies and every reply is
	// discarded: say so instead of printing plausible decisions.
	if match, known, err := daemon.KeyMatches(ctx, keys, st); err == nil && known && !match {
		return fail(fmt.Errorf("the secret key at %s does not match the data (use the key of the server the store or backup came from)", c.SecretKeyPath()))
	}
	p, err := daemon.NewPipeline(c, st, keys, slog.New(slog.DiscardHandler))
	if err != nil {
		return fail(err)
	}
	d := &daemon.Deliverer{Router: p.Router}
	enc := json.NewEncoder(stdout)
	status := replayOK
	for _, f := range files {
		raw, err := readEML(f)
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %s: %v\n", f, err)
			status = replayFailed
			continue
		}
		_ = enc.Encode(replayOne(ctx, d, &c.SMTP, t.ID, f, raw))
	}
	return status
}

// replayOne runs raw through the daemon's Deliverer as a transaction to
// tenant's inbound address, and answers it as the daemon's SMTP server
// would: first the checks the server makes as a message arrives (size and
// line length as in lim; raw's line endings are CRLF already, so a bare
// CR or LF is never refused here), whose refusals no router sees.
func replayOne(ctx context.Context, d *daemon.Deliverer, lim *config.SMTP, tenant, file string, raw []byte) replayLine {
	if v := smtpd.CheckMessage(bytes.NewReader(raw), lim.MaxMessageBytes, lim.MaxLineLength); v != nil {
		out := router.Outcome{Decision: v.Decision, Reason: v.Reason, Tenant: tenant}
		return lineFrom(file, out, smtpd.DataReply(slog.New(slog.DiscardHandler), v).Code)
	}
	sp := spool.New("", 0)
	defer sp.Close()
	_, err := sp.Write(raw)
	var out router.Outcome
	if err == nil {
		out, err = d.Route(ctx, &smtpd.Delivery{SessionID: "replay", Tenants: []string{tenant}, Message: sp, Received: time.Now()})
	}
	if out.Decision == "" { // the spool failed: what the session would answer
		out = router.Outcome{Decision: router.Tempfail, Reason: "local_error", Tenant: tenant}
	}
	return lineFrom(file, out, smtpd.DataReply(slog.New(slog.DiscardHandler), err).Code)
}

// unreachableError is a failure to talk to the daemon at all (exit 3).
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// resolveInbound turns -tenant into the tenant's id and inbound address
// through the daemon's authenticated API (the store is the daemon's, and
// may be on another machine or in PostgreSQL). An inbound address given as
// -tenant is used as is; its id is looked up when the API answers, and
// left empty (with a warning) when it does not.
func resolveInbound(ctx context.Context, c *config.Config, base, tenant string, stderr io.Writer) (id, rcpt string, err error) {
	list := func() ([]*store.Tenant, string, error) {
		cl, err := newAdminClient(c)
		if err != nil {
			return nil, "", err
		}
		if base != "" {
			cl.base = strings.TrimSuffix(base, "/")
		}
		ts, err := cl.tenants(ctx)
		var ne net.Error
		if errors.As(err, &ne) {
			err = &unreachableError{fmt.Errorf("cannot reach the daemon's API at %s: %w", cl.base, err)}
		}
		return ts, cl.base, err
	}
	if strings.Contains(tenant, "@") {
		ts, _, err := list()
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: warning: the output's tenant is left empty: its id could not be looked up: %v\n", err)
			return "", tenant, nil
		}
		t, err := pickTenant(ts, tenant)
		if err != nil {
			// The daemon will refuse it at RCPT TO: say so there.
			return "", tenant, nil
		}
		return t.ID, tenant, nil
	}
	ts, where, err := list()
	if err != nil {
		return "", "", fmt.Errorf("%w\n  -tenant %q needs the daemon's API (an API token: api.tokens_file, %s, or the dev token file; -url URL); or pass the tenant's inbound address as -tenant", err, tenant, config.EnvAPITokens)
	}
	t, err := pickTenant(ts, tenant)
	if err != nil {
		return "", "", fmt.Errorf("the daemon at %s: %w", where, err)
	}
	return t.ID, t.InboundAddress, nil
}

func replaySMTP(ctx context.Context, c *config.Config, addr, base, tenant string, files []string, stdout, stderr io.Writer) int {
	// A dead daemon first: it is the one answer that matters then, before
	// any complaint about API tokens.
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: cannot reach the daemon at %s: %v (is it running? -smtp is its smtp.listen address)\n", addr, err)
		return replayUnreachable
	}
	conn.Close()
	id, rcpt, err := resolveInbound(ctx, c, base, tenant, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay replay: %v\n", err)
		var ue *unreachableError
		if errors.As(err, &ue) {
			return replayUnreachable
		}
		return replayFailed
	}
	enc := json.NewEncoder(stdout)
	status := replayOK
	for _, f := range files {
		raw, err := readEML(f)
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay replay: %s: %v\n", f, err)
			status = replayFailed
			continue
		}
		line, code := deliverForReplay(addr, "replay@"+c.SMTP.Hostname, rcpt, raw)
		if code != replayOK {
			fmt.Fprintf(stderr, "syncrelay replay: %s: %s\n", f, line.Reason)
			return code
		}
		line.File, line.Tenant = f, id
		_ = enc.Encode(line)
	}
	return status
}

// deliverForReplay sends one message to the daemon and reads its decision
// from the reply (smtpd's reply table: "250 2.0.0 OK: stored
// (reason=token)"). A code other than replayOK means no decision: the
// line's Reason then says why, for stderr.
func deliverForReplay(addr, from, rcpt string, raw []byte) (replayLine, int) {
	line := replayLine{DKIM: []store.AuthResult{}}
	stop := func(code int, format string, args ...any) (replayLine, int) {
		line.Reason = fmt.Sprintf(format, args...)
		return line, code
	}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return stop(replayUnreachable, "cannot reach the daemon at %s: %v (is it running? -smtp is its smtp.listen address)", addr, err)
	}
	// Generous: a reply waits for the commit to disk, and DKIM lookups.
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	cl := smtp.NewClient(conn)
	defer cl.Close()
	if err := cl.Hello("replay.localhost"); err != nil {
		return stop(replayUnreachable, "cannot reach the daemon at %s: no usable greeting: %v", addr, err)
	}
	if err := cl.Mail(from, nil); err != nil {
		return stop(replayUnreachable, "cannot reach the daemon at %s: MAIL FROM refused: %v", addr, err)
	}
	var se *smtp.SMTPError
	if err := cl.Rcpt(rcpt, nil); err != nil {
		switch {
		case errors.As(err, &se) && se.Code == 550 && se.EnhancedCode == (smtp.EnhancedCode{5, 1, 1}):
			return stop(replayNoRecipient, "the daemon at %s refused the inbound address (550 5.1.1 %s): -tenant is probably wrong "+
				"(give the tenant's id, or its inbound_address from GET /v1/tenants/ID)", addr, se.Message)
		case errors.As(err, &se) && se.Code/100 == 4 && se.Code != 421:
			// A temporary refusal is the daemon's answer to this message.
			line.SMTPCode, line.Decision, line.Reason = se.Code, router.Tempfail, replyReason(se)
			return line, replayOK
		}
		return stop(replayUnreachable, "the daemon at %s: RCPT TO: %v", addr, err)
	}
	w, err := cl.Data()
	if err != nil {
		return stop(replayUnreachable, "the daemon at %s: DATA: %v", addr, err)
	}
	if _, err := w.Write(raw); err != nil {
		return stop(replayUnreachable, "the daemon at %s broke off while the message was sent: %v", addr, err)
	}
	resp, err := w.CloseWithResponse()
	switch {
	case err == nil:
		_ = cl.Quit()
		line.SMTPCode, line.Decision, line.Reason = 250, decisionFromReply(resp.StatusText), smtpd.ReasonOf(resp.StatusText)
		return line, replayOK
	case errors.As(err, &se) && se.Code == 421:
		// Shutting down or timed out: the connection is closing and the
		// message's fate is the next attempt's.
		return stop(replayUnreachable, "the daemon at %s closed the session: %d %s", addr, se.Code, se.Message)
	case errors.As(err, &se):
		line.SMTPCode, line.Reason = se.Code, replyReason(se)
		line.Decision = router.Rejected
		if se.Code/100 == 4 {
			line.Decision = router.Tempfail
		}
		return line, replayOK
	}
	return stop(replayUnreachable, "the daemon at %s broke off before answering the message (its decision is unknown): %v", addr, err)
}

// replyReason is the reason token a refusal carries (the router's, and
// smtpd's own refusals of a body: message_too_large, bare_eol,
// line_too_long); smtpd's "451 4.3.0 / 452 4.3.1" local trouble, which
// carries none, is local_error, as in-process.
func replyReason(se *smtp.SMTPError) string {
	if r := smtpd.ReasonOf(se.Message); r != "" {
		return r
	}
	if (se.Code == 451 && se.EnhancedCode == smtp.EnhancedCode{4, 3, 0}) || (se.Code == 452 && se.EnhancedCode == smtp.EnhancedCode{4, 3, 1}) {
		return "local_error"
	}
	return ""
}

// decisionFromReply reads the decision from a daemon's 250 text,
// "2.0.0 OK: stored (reason=token)"; another server's text gives
// "accepted".
func decisionFromReply(text string) string {
	_, d, ok := strings.Cut(text, "OK: ")
	d, _, _ = strings.Cut(strings.TrimSpace(d), " ")
	switch d {
	case router.Stored, router.Duplicate, router.Discarded, router.Quarantined:
		if ok {
			return d
		}
	}
	return "accepted"
}
