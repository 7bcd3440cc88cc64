// Package harness runs the real syncrelay and srload binaries for the crash
// and fault tests: it builds them, writes a config on loopback port 0,
// starts the daemon and parses its "syncrelay serving" line, and checks a
// store against the replies srload recorded.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/internal/testutil"
	"syncrelay/mailhdr"
	"syncrelay/store/bolt"
)

// Bins are the paths of the built binaries.
type Bins struct {
	Dir       string
	Syncrelay string
	Srload    string
}

// Build builds cmd/syncrelay and cmd/srload (one go build, shared
// dependencies) into a new temporary directory. Call it from TestMain.
func Build() (*Bins, error) {
	dir, err := os.MkdirTemp("", "syncrelay-harness-")
	if err != nil {
		return nil, err
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./cmd/syncrelay", "./cmd/srload")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return &Bins{Dir: dir, Syncrelay: filepath.Join(dir, "syncrelay"), Srload: filepath.Join(dir, "srload")}, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the syncrelay module")
	}
	return filepath.Dir(mod), nil
}

// Config writes syncrelay.toml in dir: SMTP and HTTP on 127.0.0.1 port 0,
// hostname relay.test, data in dir/data, DNS from dir/zone.txt unless extra
// has its own [dns] section. extra is appended (TOML). It returns the
// config path and the data dir.
func Config(t testing.TB, dir, extra string) (cfg, data string) {
	t.Helper()
	data = filepath.Join(dir, "data")
	dns := fmt.Sprintf("[dns]\nzone_file = %q\n", filepath.Join(dir, "zone.txt"))
	if strings.Contains(extra, "[dns]") {
		dns = ""
	}
	body := fmt.Sprintf(`[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
shutdown_timeout = "5s"
command_timeout = "30s"
[http]
listen = "127.0.0.1:0"
[store]
dir = %q
%s%s`, data, dns, extra)
	cfg = filepath.Join(dir, "syncrelay.toml")
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if dns != "" {
		if f, err := os.OpenFile(filepath.Join(dir, "zone.txt"), os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	return cfg, data
}

// Prepare runs "srload prepare" (the daemon must be stopped) and returns
// the manifest.
func (b *Bins) Prepare(t testing.TB, cfg, dir string, threads int) *loadgen.Manifest {
	t.Helper()
	man := filepath.Join(dir, "manifest.json")
	out, err := exec.Command(b.Srload, "prepare", "-config", cfg, "-manifest", man,
		"-zone", filepath.Join(dir, "zone.txt"), "-threads", strconv.Itoa(threads)).CombinedOutput()
	if err != nil {
		t.Fatalf("srload prepare: %v\n%s", err, out)
	}
	m, err := loadgen.LoadManifest(man)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Daemon is a running "syncrelay serve".
type Daemon struct {
	Cmd      *exec.Cmd
	SMTP     string
	HTTP     string
	Stderr   *testutil.SyncBuf
	exited   chan struct{}
	exitCode int
}

var servingRE = regexp.MustCompile(`syncrelay serving.*smtp=(\S+) http=(\S+)`)

// Start starts the daemon on cfg and waits (up to 20 s) for it to serve.
// It is killed when the test ends if still running.
func (b *Bins) Start(t testing.TB, cfg string) *Daemon {
	t.Helper()
	d := &Daemon{Stderr: &testutil.SyncBuf{}, exited: make(chan struct{})}
	d.Cmd = exec.Command(b.Syncrelay, "serve", "-config", cfg)
	d.Cmd.Stdout = io.Discard
	d.Cmd.Stderr = d.Stderr
	if err := d.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.Cmd.Wait()
		d.exitCode = d.Cmd.ProcessState.ExitCode()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.Cmd.Process.Kill()
		<-d.exited
	})
	deadline := time.After(20 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(d.Stderr.String()); m != nil {
			d.SMTP, d.HTTP = m[1], m[2]
			return d
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited %d:\n%s", d.exitCode, d.Stderr)
		case <-deadline:
			t.Fatalf("daemon did not start:\n%s", d.Stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill9 kills the daemon with SIGKILL and waits for it.
func (d *Daemon) Kill9(t testing.TB) {
	t.Helper()
	d.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not die after SIGKILL")
	}
}

// Stop sends SIGTERM and returns the exit code (fails after 30 s).
func (d *Daemon) Stop(t testing.TB) int {
	t.Helper()
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.exitCode
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not exit after SIGTERM:\n%s", d.Stderr)
		return -1
	}
}

// Load is a running "srload run".
type Load struct {
	Cmd     *exec.Cmd
	Replies string
	Out     *testutil.SyncBuf
	done    chan struct{}
}

// Run starts "srload run -addr addr -manifest dir/manifest.json -replies
// replies" with the extra flags. It is killed when the test ends.
func (b *Bins) Run(t testing.TB, addr, dir, replies string, flags ...string) *Load {
	t.Helper()
	args := append([]string{"run", "-addr", addr, "-manifest", filepath.Join(dir, "manifest.json"), "-replies", replies}, flags...)
	l := &Load{Cmd: exec.Command(b.Srload, args...), Replies: replies, Out: &testutil.SyncBuf{}, done: make(chan struct{})}
	l.Cmd.Stdout, l.Cmd.Stderr = l.Out, l.Out
	if err := l.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		l.Cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() {
		l.Cmd.Process.Kill()
		<-l.done
	})
	return l
}

// Stop interrupts the load (it finishes the transaction in flight and
// prints its summary) and waits up to 15 s.
func (l *Load) Stop(t testing.TB) {
	t.Helper()
	l.Cmd.Process.Signal(os.Interrupt)
	l.Wait(t, 15*time.Second)
}

// Wait waits for the load to end by itself.
func (l *Load) Wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(d):
		l.Cmd.Process.Kill()
		<-l.done
		t.Fatalf("srload did not finish in %s:\n%s", d, l.Out)
	}
}

// Reply is one line of srload's -replies file.
type Reply struct {
	Code   int
	MsgID  string // with <>
	Kind   string
	Thread uint64
	Text   string
}

// ReadReplies parses a -replies file.
func ReadReplies(path string) ([]Reply, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Reply
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.SplitN(sc.Text(), "\t", 5)
		if len(p) != 5 {
			continue // a line cut short by a kill
		}
		code, err1 := strconv.Atoi(p[0])
		th, err2 := strconv.ParseUint(p[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, Reply{Code: code, MsgID: p[1], Kind: p[2], Thread: th, Text: p[4]})
	}
	return out, sc.Err()
}

// CountLines is the number of complete lines in path (0 if missing).
func CountLines(path string) int {
	data, _ := os.ReadFile(path)
	return bytes.Count(data, []byte("\n"))
}

// CheckBolt checks the stopped store in data: bbolt's consistency check,
// and every record's raw bytes present and hashing to what was recorded.
func CheckBolt(t testing.TB, data string) {
	t.Helper()
	if err := bolt.VerifyDir(data); err != nil {
		t.Errorf("store check: %v", err)
	}
}

// VerifyAcked opens the store read-only (the daemon must be stopped) and
// checks that every message answered 250 is on its thread, not removed,
// with a raw file whose content matches its address and carries its
// Message-ID. It returns how many were checked.
func VerifyAcked(t testing.TB, data, tenant string, acked map[string]Reply) int {
	t.Helper()
	st, err := bolt.Open(data, bolt.Options{ReadOnly: true, LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("store does not open: %v", err)
	}
	defer st.Close()
	return verify(t, st, tenant, acked)
}

// VerifyIn is VerifyAcked on an open store.
func VerifyIn(t testing.TB, st *bolt.Store, tenant string, acked map[string]Reply) int {
	t.Helper()
	return verify(t, st, tenant, acked)
}

func verify(t testing.TB, st *bolt.Store, tenant string, acked map[string]Reply) int {
	t.Helper()
	ctx := context.Background()
	bad := 0
	fail := func(format string, args ...any) {
		bad++
		if bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for id, r := range acked {
		norm, ok := mailhdr.NormalizeMsgID(id)
		if !ok {
			fail("unparseable acked Message-ID %q", id)
			continue
		}
		ref, ok, err := st.LookupMsgID(ctx, tenant, norm)
		if err != nil || !ok {
			fail("LOST: %s got %d %q but is not in the store (err %v)", id, r.Code, r.Text, err)
			continue
		}
		if ref.Thread != r.Thread {
			fail("%s is on thread %d, want %d", id, ref.Thread, r.Thread)
		}
		m, err := st.Message(ctx, tenant, ref.Message)
		if err != nil {
			fail("%s: message %d: %v", id, ref.Message, err)
			continue
		}
		if m.Thread != r.Thread || m.Removed {
			fail("%s: message %d thread %d removed %v", id, m.ID, m.Thread, m.Removed)
		}
		if m.Raw == "" {
			fail("%s: message %d has no raw file", id, m.ID)
			continue
		}
		f, err := st.OpenRaw(context.Background(), m.Raw)
		if err != nil {
			fail("%s: raw %s: %v", id, m.Raw, err)
			continue
		}
		h := sha256.New()
		var head bytes.Buffer
		_, err = io.Copy(io.MultiWriter(h, &limitWriter{w: &head, n: 64 << 10}), f)
		f.Close()
		if err != nil {
			fail("%s: read raw: %v", id, err)
			continue
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != bolt.RawSum(m.Raw) {
			fail("%s: raw file %s holds content hashing to %s", id, m.Raw, got)
		}
		if r.Kind == "match" && !bytes.Contains(head.Bytes(), []byte("Message-ID: "+id+"\r\n")) {
			fail("%s: raw file %s does not carry its Message-ID", id, m.Raw)
		}
	}
	if bad > 20 {
		t.Errorf("... %d problems in all", bad)
	}
	return len(acked)
}

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
