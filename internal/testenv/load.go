package testenv

// srload and store checks for the crash and fault tests.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/testutil"
	"syncrelay/mailhdr"
	"syncrelay/store/bolt"
)

// LoadConfig writes the config of the crash and fault tests in dir: data
// in dir/data, DNS from dir/zone.txt unless extra has its own [dns]
// section, a 5 s shutdown bound and a 30 s command timeout (srload sends
// large messages). It returns the config path and the data dir.
func LoadConfig(t testing.TB, dir, extra string) (cfg, data string) {
	t.Helper()
	return DirConfig(t, dir, Config{ShutdownTimeout: "5s", CommandTimeout: "30s", Extra: extra})
}

// Prepare runs "srload prepare" (the daemon must be stopped) and returns
// the manifest.
func (b *Bins) Prepare(t testing.TB, cfg, dir string, threads int) *loadgen.Manifest {
	t.Helper()
	man := filepath.Join(dir, "manifest.json")
	// A fixed key (internal/dkimtest's): srload would generate one, 50-500
	// ms of CPU each time.
	key, _ := dkimtest.RSA(t, dkimtest.RSAKeys-1)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "srload-dkim.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(b.Srload, "prepare", "-config", cfg, "-manifest", man,
		"-zone", filepath.Join(dir, "zone.txt"), "-threads", strconv.Itoa(threads), "-dkim-key", keyPath).CombinedOutput()
	if err != nil {
		t.Fatalf("srload prepare: %v\n%s", err, out)
	}
	m, err := loadgen.LoadManifest(man)
	if err != nil {
		t.Fatal(err)
	}
	return m
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
	onThread := map[uint64][]uint64{}
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
		onThread[m.Thread] = append(onThread[m.Thread], m.ID)
	}
	// Every acknowledged message is listed on its thread (the bbolt
	// store's thread index is partly rebuilt at open: threadtail.go).
	for th, ids := range onThread {
		msgs, err := st.ThreadMessages(ctx, tenant, th)
		if err != nil {
			fail("thread %d: %v", th, err)
			continue
		}
		listed := map[uint64]bool{}
		for _, m := range msgs {
			listed[m.ID] = true
		}
		for _, id := range ids {
			if !listed[id] {
				fail("message %d is not listed on its thread %d (%d listed)", id, th, len(msgs))
			}
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
