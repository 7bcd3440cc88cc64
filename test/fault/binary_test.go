package fault

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/internal/dnstest"
	"syncrelay/internal/testenv"
)

// mountTmpfs mounts a tmpfs of size bytes on dir, or skips the test.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("disk-full test needs root to mount a tmpfs (TestInjectedWriter covers the writer)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v); TestInjectedWriter covers the writer", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a file until the filesystem is full.
func fill(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// Fill the last partial page too.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return f
}

func TestDiskFullTmpfs(t *testing.T) {
	t.Parallel() // its own directory, store, daemon and ports; they wait on the daemon or DNS
	dir := t.TempDir()
	cfgPath, data := testenv.LoadConfig(t, dir, "")
	mountTmpfs(t, data, 8<<20)
	man := bins.Prepare(t, cfgPath, dir, 8)
	d := bins.Start(t, cfgPath)
	cl := newClient(t, d.SMTP, man, 4096)
	led := ledger{}

	ok := cl.sendN(10, loadgen.Match)
	expectOK(t, "healthy", ok, "stored")
	led.add(ok)

	filler := filepath.Join(data, "filler")
	f := fill(t, filler)
	full := cl.sendN(10, loadgen.Match)
	dups := cl.sendN(3, loadgen.Dup)
	discards := cl.sendN(3, loadgen.Unrelated)
	big := newClient(t, d.SMTP, man, 600<<10) // spills to the spool on the full disk
	bigs := big.sendN(2, loadgen.Match)
	expectTempfail(t, "disk full", append(full, bigs...))
	// A duplicate's commit may still fit in the database's free pages:
	// either way it must not be a 5xx, and a 250 must be committed.
	for _, s := range dups {
		if s.err != nil || s.reply.Code/100 == 5 {
			t.Errorf("disk full: duplicate %s: %v %v", s.msg.MessageID, s.reply, s.err)
		}
	}
	led.add(dups)
	t.Logf("disk full: duplicates %s", codes(dups))
	expectOK(t, "disk full: unrelated mail", discards, "discarded")

	// Free the disk a few pages at a time, so that some messages find room
	// for their raw file but not for the database commit (or the reverse).
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	size := st.Size()
	var partial []sent
	for step := 1; step <= 24; step++ {
		size -= 4096
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		ss := cl.sendN(2, loadgen.Match)
		for _, s := range ss {
			if s.err != nil || (s.reply.Code/100 != 4 && s.reply.Code != 250) {
				t.Errorf("nearly full: %s: %v %v (want 4xx or 250)", s.msg.MessageID, s.reply, s.err)
			}
		}
		led.add(ss)
		partial = append(partial, ss...)
	}
	t.Logf("freeing 4 KiB at a time: %s", codes(partial))
	logText := d.Logs.String()
	t.Logf("daemon log: %d errors at the raw write, %d at the database commit",
		strings.Count(logText, "router: raw"), strings.Count(logText, "router: commit"))

	f.Close()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	retried := cl.resend(append(full, bigs...))
	expectOK(t, "space freed, retried", retried, "stored")
	led.add(retried)
	after := cl.sendN(10, loadgen.Match)
	expectOK(t, "space freed, new mail", after, "stored")
	led.add(after)

	if code := d.Stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if t.Failed() {
		t.Logf("daemon log:\n%s", d.Logs)
	}
	testenv.CheckBolt(t, data)
	t.Logf("%d acknowledged messages verified", testenv.VerifyAcked(t, data, man.Tenant, led))
}

func TestDNSFailures(t *testing.T) {
	t.Parallel() // its own directory, store, daemon and ports; they wait on the daemon or DNS
	srv := dnstest.Start(t)
	srv.SetTTL(0) // nothing cached: each message asks, so faults show at once
	dir := t.TempDir()
	cfgPath, data := testenv.LoadConfig(t, dir, fmt.Sprintf("[dns]\nresolver = %q\ntimeout = \"1s\"\n", srv.Addr()))
	man := bins.Prepare(t, cfgPath, dir, 8)
	name, value, err := man.DKIMRecord()
	if err != nil {
		t.Fatal(err)
	}
	srv.SetTXT(name, value)
	d := bins.Start(t, cfgPath)
	cl := newClient(t, d.SMTP, man, 2048)
	led := ledger{}

	ok := cl.sendN(5, loadgen.Match)
	expectOK(t, "healthy", ok, "stored")
	led.add(ok)

	// The daemon's DNS timeout is 1 s (generous, for loaded CI machines);
	// the slow server answers after 2.5 s. The messages that wait for the
	// timeout are sent at once (each on its own connection), so that the
	// test waits for one timeout, not one per message.
	for _, f := range []struct {
		name         string
		n            int
		fault, clear func()
		settle       time.Duration // for answers still in flight to arrive
		atOnce       bool
	}{
		{"SERVFAIL", 5, func() { srv.SetServfail(name) }, func() { srv.SetTXT(name, value) }, 0, false},
		{"timeout", 3, func() { srv.SetDelay(2500 * time.Millisecond) }, func() { srv.SetDelay(0) }, 200 * time.Millisecond, true}, // SetDelay(0) sends the held answers at once
	} {
		f.fault()
		send := cl.sendN
		if f.atOnce {
			send = cl.sendNAtOnce
		}
		failed := send(f.n, loadgen.Match)
		discards := cl.sendN(3, loadgen.Unrelated)
		f.clear()
		time.Sleep(f.settle)
		expectTempfail(t, "DNS "+f.name, failed)
		for _, s := range failed {
			if !strings.HasPrefix(s.reply.Text, "4.4.3 ") {
				t.Errorf("DNS %s: %s: %v, want 451 4.4.3", f.name, s.msg.MessageID, s.reply)
			}
		}
		expectOK(t, "DNS "+f.name+": unrelated mail (no DNS needed)", discards, "discarded")
		retried := cl.resend(failed)
		expectOK(t, "DNS "+f.name+" cleared, retried", retried, "stored")
		led.add(retried)
	}

	if code := d.Stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if t.Failed() {
		t.Logf("daemon log:\n%s", d.Logs)
	}
	testenv.CheckBolt(t, data)
	t.Logf("%d acknowledged messages verified", testenv.VerifyAcked(t, data, man.Tenant, led))
}
