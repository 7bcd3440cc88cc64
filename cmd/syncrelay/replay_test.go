package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"syncrelay/internal/testenv"
)

// The replay tests run the real binary on the shipped corpus
// (testdata/corpus), rendered by the router's corpus test
// (go test ./router -run '^TestCorpus$' -render DIR), as QA would.

const moduleRoot = "../.."

// corpusTenants are the corpus's tenants: the render step writes each
// one's files into DIR/<tenant>/.
var corpusTenants = []string{"acme", "beta"}

// renderCorpus renders the corpus into a new directory and returns it: the
// router's TestCorpus with -render, from a kept test binary (the README's
// block, which TestReadmeReplayCorpus runs as written, uses go test).
func renderCorpus(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin, err := testenv.BuildTestShared("router")
	must(t, err)
	cmd := exec.Command(bin, "-test.count=1", "-test.run", "^TestCorpus$", "-render", dir)
	cmd.Dir = filepath.Join(moduleRoot, "router")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render the corpus: %v\n%s", err, out)
	}
	return dir
}

// replayTenants runs `syncrelay replay args... *.eml` in dir/<tenant> for
// each corpus tenant, and returns every output line, sorted (the files'
// NN- prefixes make that file order, as in golden.jsonl).
func replayTenants(t *testing.T, dir string, args ...string) []string {
	t.Helper()
	var lines []string
	for _, ten := range corpusTenants {
		files, err := filepath.Glob(filepath.Join(dir, ten, "*.eml"))
		must(t, err)
		if len(files) == 0 {
			t.Fatalf("no files in %s", filepath.Join(dir, ten))
		}
		for i, f := range files {
			files[i] = filepath.Base(f)
		}
		cmd := exec.Command(bins.Syncrelay, append(append(append([]string{"replay"}, args...), "-tenant", ten), files...)...)
		cmd.Dir = filepath.Join(dir, ten)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("replay %v (tenant %s): %v\n%s", args, ten, err, stderr.String())
		}
		lines = append(lines, strings.Split(strings.TrimRight(string(out), "\n"), "\n")...)
	}
	slices.Sort(lines)
	return lines
}

func goldenLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "testdata", "corpus", "golden.jsonl"))
	must(t, err)
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	n := 0
	for i := 0; i < max(len(got), len(want)) && n < 10; i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("%s, line %d:\n  got  %s\n  want %s", what, i+1, g, w)
			n++
		}
	}
	if n == 0 {
		t.Errorf("%s: %d lines, want %d", what, len(got), len(want))
	}
}

// inProcessOnly are the fields of a replay line that only in-process
// replay knows: the daemon's reply carries the decision and the reason,
// not the thread, the candidate or the authentication results.
var inProcessOnly = map[string]any{"thread": "", "candidate": "", "direction": "", "matched_by": "", "auto_reply": false, "dkim": []any{}, "arc": ""}

// blankInProcessOnly returns line with the in-process-only fields emptied,
// re-encoded with sorted keys.
func blankInProcessOnly(t *testing.T, line string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("replay line %q: %v", line, err)
	}
	for k, v := range inProcessOnly {
		m[k] = v
	}
	b, err := json.Marshal(m)
	must(t, err)
	return string(b)
}

// The README's corpus commands, run as written (from the repository's
// root, with the binary on PATH), end with an empty diff against
// golden.jsonl.
func TestReadmeReplayCorpus(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "README.md"))
	must(t, err)
	const marker = "<!-- replay-corpus: run by TestReadmeReplayCorpus -->\n```sh\n"
	_, block, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README has no %q block", strings.TrimSpace(marker))
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok || !strings.Contains(block, "syncrelay replay") || !strings.Contains(block, "golden.jsonl") {
		t.Fatalf("README's replay block is not closed or does not replay and diff:\n%s", block)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bins.Syncrelay)+string(os.PathListSeparator)+os.Getenv("PATH"), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README replay block: %v\n%s\n--- the block:\n%s", err, out, block)
	}
	if !strings.Contains(string(out), "replay agrees with golden.jsonl") {
		t.Fatalf("README replay block printed:\n%s", out)
	}
}

// The rendered corpus replays in-process exactly as golden.jsonl says;
// over SMTP to a daemon on the same store, with -tenant naming the
// tenant's id, every line is the same but for the in-process-only fields;
// a backup of it replays as golden.jsonl too, in one command, while the
// daemon runs on the live store.
func TestReplayCorpusInProcessSMTPAndBackup(t *testing.T) {
	t.Parallel()
	dir := renderCorpus(t)
	cfg := filepath.Join(dir, "syncrelay.toml")
	golden := goldenLines(t)

	local := replayTenants(t, dir, "-config", cfg)
	diffLines(t, "in-process replay vs golden.jsonl", local, golden)

	// In-process, -tenant may be the inbound address too; the line names
	// the id.
	eml := filepath.Join(dir, "acme", "21-unrelated-personal-mail.eml")
	if code, stdout, stderr := replayCmd(t, "-config", cfg, "-tenant", "acme-secret@relay.test", eml); code != 0 ||
		!strings.Contains(stdout, `"decision":"discarded","reason":"no_match","smtp_code":250,"tenant":"acme"`) {
		t.Errorf("in-process, inbound address as -tenant: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// Files the daemon's SMTP server judges itself: an over-long line is
	// refused before the router in both modes; a bare LF is no refusal in
	// either, because replay normalises line endings to CRLF as an MTA
	// would. Replayed in-process now (the daemon will hold the store).
	wire := t.TempDir()
	wireFiles := map[string]string{
		"bare-lf.eml":   "From: Stranger <s@elsewhere.test>\nTo: Alice <alice@acme.test>\r\nSubject: lunch\nMessage-ID: <bare-lf@elsewhere.test>\n\nmixed\nline endings\r\n",
		"long-line.eml": "From: Stranger <s@elsewhere.test>\r\nTo: Alice <alice@acme.test>\r\nSubject: lunch\r\nMessage-ID: <long@elsewhere.test>\r\n\r\n" + strings.Repeat("y", 2000) + "\r\n",
	}
	var wireArgs []string
	for name, body := range wireFiles {
		must(t, os.WriteFile(filepath.Join(wire, name), []byte(body), 0o600))
		wireArgs = append(wireArgs, filepath.Join(wire, name))
	}
	slices.Sort(wireArgs)
	code, wireLocal, stderr := replayCmd(t, append([]string{"-config", cfg, "-tenant", "acme"}, wireArgs...)...)
	if code != 0 {
		t.Fatalf("in-process replay of %v: exit %d, %s", wireArgs, code, stderr)
	}
	for _, want := range []string{`"file":"` + wireArgs[0] + `","decision":"discarded","reason":"no_match","smtp_code":250`,
		`"file":"` + wireArgs[1] + `","decision":"rejected","reason":"line_too_long","smtp_code":554`} {
		if !strings.Contains(wireLocal, want) {
			t.Errorf("in-process replay lacks %s:\n%s", want, wireLocal)
		}
	}

	// A daemon on the rendered store, on free ports.
	dcfg := testenv.WriteConfig(t, filepath.Join(dir, "daemon.toml"), testenv.Config{
		Data: filepath.Join(dir, "data"), Zone: filepath.Join(dir, "zone.txt")})
	d := startDaemon(t, dir, "-config", dcfg)

	// -backup: the live store is locked by the daemon, the archive (taken
	// through its API) is replayed in a temporary directory.
	archive := filepath.Join(t.TempDir(), "corpus.backup")
	if out, err := exec.Command(bins.Syncrelay, "backup", "-config", dcfg, "-url", "http://"+d.HTTP, "-o", archive).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	fromBackup := replayTenants(t, dir, "-config", dcfg, "-backup", archive)
	diffLines(t, "replay -backup vs golden.jsonl", fromBackup, golden)
	// With another server's secret key no token would verify and every
	// reply would look discarded: refused instead, exit 1.
	wrongKey := exec.Command(bins.Syncrelay, "replay", "-config", dcfg, "-backup", archive, "-tenant", "acme", eml)
	wrongKey.Env = append(os.Environ(), "SYNCRELAY_SECRET_KEY="+strings.Repeat("ab", 32))
	if out, err := wrongKey.CombinedOutput(); wrongKey.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "does not match the data") {
		t.Errorf("-backup with another secret key: %v\n%s", err, out)
	}

	// -smtp with the tenant's id: the inbound address comes from the API.
	viaSMTP := replayTenants(t, dir, "-config", dcfg, "-smtp", d.SMTP, "-url", "http://"+d.HTTP)
	want := make([]string, len(local))
	for i, l := range local {
		want[i] = blankInProcessOnly(t, l)
	}
	got := make([]string, len(viaSMTP))
	for i, l := range viaSMTP {
		got[i] = blankInProcessOnly(t, l)
		if strings.Contains(l, "@relay.test") {
			t.Errorf("replay -smtp line names an inbound address: %s", l)
		}
	}
	diffLines(t, "replay -smtp vs in-process (in-process-only fields blanked)", got, want)

	// The wire files: the same decision, reason and code over SMTP.
	code, wireSMTP, stderr := replayCmd(t, append([]string{"-config", dcfg, "-smtp", d.SMTP, "-url", "http://" + d.HTTP, "-tenant", "acme"}, wireArgs...)...)
	if code != 0 {
		t.Fatalf("replay -smtp of %v: exit %d, %s", wireArgs, code, stderr)
	}
	var wantWire, gotWire []string
	for _, l := range strings.Split(strings.TrimSpace(wireLocal), "\n") {
		wantWire = append(wantWire, blankInProcessOnly(t, l))
	}
	for _, l := range strings.Split(strings.TrimSpace(wireSMTP), "\n") {
		gotWire = append(gotWire, blankInProcessOnly(t, l))
	}
	diffLines(t, "replay -smtp vs in-process, refused by smtpd", gotWire, wantWire)

	// 01 again: now the daemon has it, so it is a duplicate (the store
	// really was written over SMTP). Only 01's line is asserted, so only
	// 01 is sent again, not both tenants' corpus.
	again := exec.Command(bins.Syncrelay, "replay", "-config", dcfg, "-smtp", d.SMTP, "-url", "http://"+d.HTTP, "-tenant", "acme", "01-gmail-web-reply.eml")
	again.Dir = filepath.Join(dir, "acme")
	var againErr bytes.Buffer
	again.Stderr = &againErr
	out, err := again.Output()
	if err != nil {
		t.Fatalf("second replay over SMTP: %v\n%s", err, againErr.String())
	}
	if !strings.Contains(string(out), `"file":"01-gmail-web-reply.eml","decision":"duplicate"`) {
		t.Errorf("second replay over SMTP: 01 is not a duplicate:\n%s", out)
	}

	// A wrong inbound address: refused at RCPT TO (550 5.1.1), exit 4,
	// and the message says -tenant is probably wrong.
	code, stdout, stderr := replayCmd(t, "-config", dcfg, "-smtp", d.SMTP, "-tenant", "nobody-123@relay.test", eml)
	if code != 4 || stdout != "" || !strings.Contains(stderr, "550 5.1.1") || !strings.Contains(stderr, "-tenant is probably wrong") {
		t.Errorf("wrong inbound address: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// A tenant id the daemon does not have: named, exit 1.
	code, _, stderr = replayCmd(t, "-config", dcfg, "-smtp", d.SMTP, "-url", "http://"+d.HTTP, "-tenant", "gamma", eml)
	if code != 1 || !strings.Contains(stderr, `"gamma"`) || !strings.Contains(stderr, "acme, beta") {
		t.Errorf("unknown tenant id: exit %d, stderr %q", code, stderr)
	}
	// The inbound address itself still works, and the line names the id.
	code, stdout, stderr = replayCmd(t, "-config", dcfg, "-smtp", d.SMTP, "-url", "http://"+d.HTTP, "-tenant", "acme-secret@relay.test", eml)
	if code != 0 || !strings.Contains(stdout, `"tenant":"acme"`) || strings.Contains(stdout, "@relay.test") {
		t.Errorf("inbound address as -tenant: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func replayCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(bins.Syncrelay, append([]string{"replay"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, o.String(), e.String()
}

// Against a daemon that is not there, replay -smtp prints no decision and
// exits 3 saying so: a CI job must not pass against a dead daemon.
func TestReplaySMTPDeadDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "")
	eml := filepath.Join(dir, "m.eml")
	must(t, os.WriteFile(eml, []byte("From: a@b.test\nMessage-ID: <d@b.test>\nSubject: x\n\nhi\n"), 0o600))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	dead := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"inbound address", []string{"-tenant", "acme-x@relay.test"}},
		// The id needs the daemon's API, which is not there either.
		{"tenant id", []string{"-tenant", "acme", "-url", "http://" + dead}},
	} {
		code, stdout, stderr := replayCmd(t, append(append([]string{"-config", cfg, "-smtp", dead}, tc.args...), eml)...)
		if code != 3 || stdout != "" || !strings.Contains(stderr, "cannot reach the daemon") || !strings.Contains(stderr, dead) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", tc.name, code, stdout, stderr)
		}
	}
	// Usage errors stay 2.
	if code, _, _ := replayCmd(t, "-config", cfg, "-smtp", dead, "-backup", "x.tar", eml); code != 2 {
		t.Errorf("-smtp with -backup: exit %d, want 2", code)
	}
}
