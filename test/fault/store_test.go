package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/internal/testenv"
	"syncrelay/internal/testutil"
	"syncrelay/smtpd"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// runDaemon runs daemon.Run in this process (so that the test can reach
// its file descriptors) and returns the SMTP address and a stop function.
func runDaemon(t *testing.T, cfgPath string) (addr string, logs *testutil.SyncBuf, stop func()) {
	t.Helper()
	c, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.StartInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return daemon.Run(ctx, c, daemon.NewLogger(c, logs), io.Discard)
	})
	return d.SMTP, d.Logs, func() { d.Stop(t) }
}

// fdOf finds this process's descriptor open on path.
func fdOf(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == path {
			fd, _ := strconv.Atoi(e.Name())
			return fd
		}
	}
	t.Fatalf("no descriptor open on %s", path)
	return -1
}

// swapFD points descriptor fd at dev until restore is called: every later
// write, fdatasync and truncate bbolt makes on its database hits dev.
func swapFD(t *testing.T, fd int, dev string) (restore func()) {
	t.Helper()
	saved, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Dup3(int(f.Fd()), fd, syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := syscall.Dup3(saved, fd, syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		syscall.Close(saved)
	}
}

func TestStoreFaults(t *testing.T) {
	t.Parallel() // its own directory, store, daemon and ports; they wait on the daemon or DNS
	dir := t.TempDir()
	cfgPath, data := testenv.LoadConfig(t, dir, "")
	man := bins.Prepare(t, cfgPath, dir, 8)
	addr, logs, stop := runDaemon(t, cfgPath)
	cl := newClient(t, addr, man, 2048)
	led := ledger{}

	healthy := cl.sendN(5, loadgen.Match)
	expectOK(t, "healthy", healthy, "stored")
	led.add(healthy)

	dbPath, err := filepath.EvalSymlinks(filepath.Join(data, "syncrelay.db"))
	if err != nil {
		t.Fatal(err)
	}
	fd := fdOf(t, dbPath)
	for _, f := range []struct{ name, dev string }{
		{"bbolt write fails (ENOSPC)", "/dev/full"},
		{"bbolt fdatasync fails after its writes were lost", "/dev/null"},
	} {
		restore := swapFD(t, fd, f.dev)
		failed := cl.sendN(5, loadgen.Match)
		dups := cl.sendN(3, loadgen.Dup) // a duplicate commits its mailbox
		discards := cl.sendN(3, loadgen.Unrelated)
		restore()
		expectTempfail(t, f.name, append(failed, dups...))
		expectOK(t, f.name+": unrelated mail (no commit needed)", discards, "discarded")
		// The forwarder retries: "stored", not "duplicate", proves the
		// failed attempt committed nothing.
		retried := cl.resend(failed)
		expectOK(t, f.name+": cleared, retried", retried, "stored")
		led.add(retried)
		after := cl.sendN(5, loadgen.Match)
		expectOK(t, f.name+": cleared, new mail", after, "stored")
		led.add(after)
	}

	// The segment log fails: its active file's writes hit a full disk, or
	// its data is lost and the flush fails. A kept message whose bytes are
	// not durable is refused with a 4xx and nothing of it is committed (its
	// retry is "stored", not "duplicate"); duplicates (no raw bytes) are
	// still answered. After a failed flush the file is never appended to
	// again: the log moves to a new segment, so the messages after the
	// failing one may already be stored, durably (they join the ledger).
	segs, err := filepath.Glob(filepath.Join(data, "raw", "seg", "*"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment file: %v %v", segs, err)
	}
	active, err := filepath.EvalSymlinks(segs[len(segs)-1])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name, dev string
		heals     bool // the log moves on by itself after the first failure
	}{
		{"segment write fails (ENOSPC)", "/dev/full", false},
		{"segment fdatasync fails after its writes were lost", "/dev/null", true},
	} {
		restore := swapFD(t, fdOf(t, active), f.dev)
		failed := cl.sendN(5, loadgen.Match)
		dups := cl.sendN(3, loadgen.Dup) // a duplicate needs no raw bytes
		restore()
		var refused, stored []sent
		for _, s := range failed {
			if s.err == nil && s.reply.Code == 250 && f.heals && len(refused) > 0 {
				stored = append(stored, s)
			} else {
				refused = append(refused, s)
			}
		}
		expectTempfail(t, f.name, refused)
		expectOK(t, f.name+": after the log moved on", stored, "stored")
		led.add(stored)
		expectOK(t, f.name+": duplicates", dups, "duplicate")
		retried := cl.resend(refused)
		expectOK(t, f.name+": cleared, retried", retried, "stored")
		led.add(retried)
		segs, _ = filepath.Glob(filepath.Join(data, "raw", "seg", "*"))
		if active, err = filepath.EvalSymlinks(segs[len(segs)-1]); err != nil {
			t.Fatal(err)
		}
	}

	stop()
	if t.Failed() {
		t.Logf("daemon log:\n%s", logs)
	}
	testenv.CheckBolt(t, data)
	t.Logf("%d acknowledged messages verified", testenv.VerifyAcked(t, data, man.Tenant, led))
}

// --- injected writer -------------------------------------------------------

// faultStore is the real store with injectable faults on the raw writer
// and on the commit's result.
type faultStore struct {
	*bolt.Store
	mu     sync.Mutex
	rawErr func(ctx context.Context, in *store.Incoming) (store.CommitResult, error)
	lost   atomic.Bool // commit, then report failure
}

func (f *faultStore) setRaw(fn func(ctx context.Context, in *store.Incoming) (store.CommitResult, error)) {
	f.mu.Lock()
	f.rawErr = fn
	f.mu.Unlock()
}

func (f *faultStore) CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
	f.mu.Lock()
	fn := f.rawErr
	f.mu.Unlock()
	if fn != nil && in.Raw != nil {
		return fn(ctx, in)
	}
	res, err := f.Store.CommitInbound(ctx, in)
	if err == nil && f.lost.Load() {
		return store.CommitResult{}, errors.New("injected: commit result lost")
	}
	return res, err
}

// failingReader yields n bytes of r, then fails like a full disk.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	k, err := f.r.Read(p)
	f.n -= k
	return k, err
}

func countFiles(t *testing.T, root string) (raw, tmp int) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		switch filepath.Base(filepath.Dir(p)) {
		case "tmp":
			tmp++
		case "spool":
		default:
			raw++
		}
		return nil
	})
	return raw, tmp
}

func TestInjectedWriter(t *testing.T) {
	t.Parallel() // its own directory, store, daemon and ports; they wait on the daemon or DNS
	dir := t.TempDir()
	cfgPath, data := testenv.LoadConfig(t, dir, "")
	man := bins.Prepare(t, cfgPath, dir, 8)
	c, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	keys, _, err := daemon.LoadKeys(c, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(data, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStore{Store: st}
	p, err := daemon.NewPipeline(c, fs, keys, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := smtpd.New(smtpd.Options{Hostname: c.SMTP.Hostname, SpoolDir: t.TempDir()}, st, &daemon.Deliverer{Router: p.Router})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the server's shutdown: cleanups run last first
	cl := newClient(t, testenv.ServeSMTP(t, srv), man, 8192)
	led := ledger{}
	rawDir := filepath.Join(data, "raw")

	ok := cl.sendN(5, loadgen.Match)
	expectOK(t, "healthy", ok, "stored")
	led.add(ok)

	for _, f := range []struct {
		name string
		fn   func(ctx context.Context, in *store.Incoming) (store.CommitResult, error)
	}{
		{"raw write fails part-way (ENOSPC)", func(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
			// The real store writes 3 KiB, then its source fails the way
			// a full disk fails a write; it must clean up after itself.
			in.Raw.Body = &failingReader{r: in.Raw.Body, n: 3 << 10,
				err: &os.PathError{Op: "write", Path: filepath.Join(rawDir, "seg"), Err: syscall.ENOSPC}}
			return st.CommitInbound(ctx, in)
		}},
		{"raw fsync fails (EIO)", func(context.Context, *store.Incoming) (store.CommitResult, error) {
			return store.CommitResult{}, fmt.Errorf("raw: fsync: %w", &os.PathError{Op: "fsync", Path: rawDir, Err: syscall.EIO})
		}},
	} {
		raw0, _ := countFiles(t, rawDir)
		fs.setRaw(f.fn)
		failed := cl.sendN(5, loadgen.Match)
		fs.setRaw(nil)
		expectTempfail(t, f.name, failed)
		if raw1, tmp1 := countFiles(t, rawDir); raw1 != raw0 || tmp1 != 0 {
			t.Errorf("%s: raw files %d -> %d, %d temp files left", f.name, raw0, raw1, tmp1)
		}
		retried := cl.resend(failed)
		expectOK(t, f.name+": cleared, retried", retried, "stored")
		led.add(retried)
	}

	// The commit succeeds but its result is lost: a 4xx is still safe,
	// the retry is a duplicate and nothing is stored twice.
	fs.lost.Store(true)
	lost := cl.sendN(5, loadgen.Match)
	fs.lost.Store(false)
	expectTempfail(t, "commit result lost", lost)
	retried := cl.resend(lost)
	expectOK(t, "commit result lost: retried", retried, "duplicate")
	led.add(retried)

	n := testenv.VerifyIn(t, st, man.Tenant, led)
	t.Logf("%d acknowledged messages verified", n)
}
