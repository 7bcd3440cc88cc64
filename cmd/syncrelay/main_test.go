package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/internal/pgtest"
	"syncrelay/internal/testenv"
)

// The tests in this file run the real binary, as ops would.

var bins *testenv.Bins

func TestMain(m *testing.M) {
	// Most tests here wait on the daemons they start; they run in parallel
	// (each in its own directory on its own ports) except those that set
	// the environment, bound a shutdown's time, or need the default ports.
	testenv.DefaultParallel(4)
	// srload too, though these tests do not run it: one go build for
	// both here spares test/crash and test/fault a go command of their
	// own later in the same go test run (testenv builds once per run).
	code := testenv.Main(m, &bins, "syncrelay", "srload")
	pgtest.StopShared() // the PostgreSQL tests' cluster, if they started it
	os.Exit(code)
}

// portsMu is held by the tests whose daemon wants the embedded default
// ports (127.0.0.1:2525 and :8025: no config, or serve -dev, which takes
// them when free): two at once would race for them.
var portsMu sync.Mutex

// defaultPorts runs t in parallel with the other tests but not with the
// others that call it.
func defaultPorts(t *testing.T) {
	t.Parallel()
	portsMu.Lock()
	t.Cleanup(portsMu.Unlock) // registered first, so it runs after the daemon is stopped
}

// writeConfig writes a config on free loopback ports in dir.
func writeConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	return testenv.WriteConfig(t, filepath.Join(dir, "syncrelay.toml"), testenv.Config{
		Data: filepath.Join(dir, "data"), ShutdownTimeout: "10s", CommandTimeout: "5s", Extra: extra})
}

// startDaemon runs "syncrelay serve args..." in wd.
func startDaemon(t *testing.T, wd string, args ...string) *testenv.Daemon {
	t.Helper()
	return testenv.StartBinary(t, bins.Syncrelay, testenv.Proc{Dir: wd, Args: args})
}

func readToken(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestServeEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// In-process replay against the running daemon gives up on the store's
	// lock after store.open_timeout (2 s by default); 200 ms tells as much.
	cfg := writeConfig(t, dir, "open_timeout = \"200ms\"\n") // in [store], the config's last section
	d := startDaemon(t, dir, "-config", cfg)

	// First start: secrets generated 0600, the token printed once.
	data := filepath.Join(dir, "data")
	for _, f := range []string{"secret.key", "api-token"} {
		st, err := os.Stat(filepath.Join(data, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v", f, err, st.Mode())
		}
	}
	d.Token = readToken(t, data)
	// The token is printed before the serving line, but on stdout, which
	// another goroutine copies: under load it can lag the log (seen once,
	// failing with stdout empty), so wait for it.
	waitStdout(t, d, d.Token)

	if code, _ := d.API(t, "GET", "/readyz", ""); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	code, ten := d.API(t, "POST", "/v1/tenants", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`)
	if code != 201 {
		t.Fatalf("create tenant %d %v", code, ten)
	}
	inbound := ten["inbound_address"].(string)

	c, err := smtp.Dial(d.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	must(t, c.Hello("client.test"))
	must(t, c.Mail("sender@elsewhere.test", nil))
	err = c.Rcpt("postmaster@relay.test", nil)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("unknown rcpt: %v", err)
	}
	// The tenant created a moment ago is accepted at once.
	must(t, c.Rcpt(inbound, nil))
	w, err := c.Data()
	must(t, err)
	io.WriteString(w, "From: someone@elsewhere.test\r\nSubject: hello\r\nMessage-ID: <x1@elsewhere.test>\r\n\r\nnot of interest\r\n")
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.Contains(resp.StatusText, "discarded") {
		t.Fatalf("unrelated mail: %v %v", resp, err)
	}
	c.Quit()

	// replay -smtp delivers to the running daemon (whose store is locked,
	// so the tenant is named by its inbound address) and reads the decision.
	eml0 := filepath.Join(dir, "over-smtp.eml")
	os.WriteFile(eml0, []byte("From: a@b.test\nMessage-ID: <s@b.test>\nSubject: x\n\nhi\n"), 0o600)
	rout, err := exec.Command(bins.Syncrelay, "replay", "-config", cfg, "-smtp", d.SMTP, "-tenant", inbound, eml0).Output()
	var rl map[string]any
	if err != nil || json.Unmarshal(rout, &rl) != nil || rl["decision"] != "discarded" || rl["smtp_code"].(float64) != 250 {
		t.Fatalf("replay -smtp: %v %s", err, rout)
	}
	// In-process replay explains why it cannot open the locked store.
	if out, err := exec.Command(bins.Syncrelay, "replay", "-config", cfg, eml0).CombinedOutput(); err == nil || !strings.Contains(string(out), "-smtp") {
		t.Fatalf("replay against a running daemon: %v %s", err, out)
	}

	// SIGTERM with a session in flight: it finishes and gets its reply.
	c2, err := smtp.Dial(d.SMTP)
	must(t, err)
	defer c2.Close()
	must(t, c2.Hello("client.test"))
	must(t, c2.Mail("sender@elsewhere.test", nil))
	must(t, c2.Rcpt(inbound, nil))
	w2, err := c2.Data()
	must(t, err)
	io.WriteString(w2, "From: someone@elsewhere.test\r\nSubject: in flight\r\n\r\n")
	must(t, d.Signal(syscall.SIGTERM))
	// New connections are refused while draining. The line is logged just
	// before the SMTP listener is closed, so one may still be greeted for
	// a moment: poll until one is not, rather than sleep a fixed 300 ms
	// first (the drain lasts until w2 ends, or shutdown_timeout, 10 s).
	d.WaitLog(t, "shutting down: no new connections")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		nc, err := net.DialTimeout("tcp", d.SMTP, time.Second)
		if err != nil {
			break
		}
		line, _ := bufio.NewReader(nc).ReadString('\n')
		nc.Close()
		if !strings.HasPrefix(line, "220") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("accepted a new session while draining: %q", line)
		}
	}
	io.WriteString(w2, "body\r\n")
	resp, err = w2.CloseWithResponse()
	if err != nil {
		t.Fatalf("in-flight message lost its reply: %v", err)
	}
	c2.Quit()
	if code := d.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, d.Logs)
	}

	// Second start: the token is not printed again.
	d2 := startDaemon(t, dir, "-config", cfg)
	if strings.Contains(d2.Stdout.String(), d.Token) {
		t.Fatal("token printed again")
	}
	d2.Signal(syscall.SIGTERM)
	if code := d2.Wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// replay reproduces the decision against the stopped daemon's store.
	eml := filepath.Join(dir, "unrelated.eml")
	os.WriteFile(eml, []byte("From: a@b.test\nMessage-ID: <r@b.test>\nSubject: x\n\nhi\n"), 0o600)
	out, err := exec.Command(bins.Syncrelay, "replay", "-config", cfg, eml, filepath.Join(dir, "missing.eml")).Output()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(ee.Stderr), "missing.eml") {
		t.Fatalf("replay with a missing file: err %v", err)
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(out), &line); err != nil {
		t.Fatalf("replay output %q: %v", out, err)
	}
	if line["decision"] != "discarded" || line["tenant"] != "acme" || line["file"] != eml || line["smtp_code"].(float64) != 250 {
		t.Fatalf("replay line %v", line)
	}
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

func TestStoreLockedBySecondDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The second daemon gives up on the lock after store.open_timeout (2 s
	// by default): waiting that long tells nothing more.
	cfg := writeConfig(t, dir, "open_timeout = \"200ms\"\n") // in [store], the config's last section
	startDaemon(t, dir, "-config", cfg)
	out, err := exec.Command(bins.Syncrelay, "serve", "-config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "locked by another syncrelay") {
		t.Fatalf("second daemon: %v\n%s", err, out)
	}
}

func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[smtp]\nlisten = \"127.0.0.1:0\"\nmax_recipent = 5\n"), 0o600)
	out, err := exec.Command(bins.Syncrelay, "serve", "-config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.toml:3") || !strings.Contains(string(out), "smtp.max_recipent") {
		t.Fatalf("unknown key: %v\n%s", err, out)
	}
	os.WriteFile(bad, []byte("[smtp]\ncommand_timeout = \"5 minutes\"\n"), 0o600)
	out, _ = exec.Command(bins.Syncrelay, "serve", "-config", bad).CombinedOutput()
	if !strings.Contains(string(out), "bad.toml:2") || !strings.Contains(string(out), "command_timeout") {
		t.Fatalf("bad duration: %s", out)
	}
	out, _ = exec.Command(bins.Syncrelay, "serve", "-config", filepath.Join(dir, "nope.toml")).CombinedOutput()
	if !strings.Contains(string(out), "nope.toml") {
		t.Fatalf("missing file: %s", out)
	}
}

func TestCommandsAndHelp(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(bins.Syncrelay, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "syncrelay ") {
		t.Fatalf("version: %v %q", err, out)
	}
	for _, c := range []string{"serve", "version", "replay"} {
		out, err := exec.Command(bins.Syncrelay, c, "-h").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "usage: syncrelay "+c) {
			t.Fatalf("%s -h: %v %s", c, err, out)
		}
	}
	out, err = exec.Command(bins.Syncrelay, "frobnicate").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %v %s", err, out)
	}
}

// TestDefaultsNoConfig runs `serve` with no config at all, as the README
// tells a newcomer to, on the embedded default ports.
func TestDefaultsNoConfig(t *testing.T) {
	defaultPorts(t)
	for _, a := range []string{"127.0.0.1:2525", "127.0.0.1:8025"} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("default port %s busy: %v", a, err)
		}
		l.Close()
	}
	dir := t.TempDir()
	d := startDaemon(t, dir)
	if d.SMTP != "127.0.0.1:2525" || d.HTTP != "127.0.0.1:8025" {
		t.Fatalf("listening on %s / %s", d.SMTP, d.HTTP)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "syncrelay.db")); err != nil {
		t.Fatal("no ./data store:", err)
	}
	d.Signal(syscall.SIGINT)
	if code := d.Wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
