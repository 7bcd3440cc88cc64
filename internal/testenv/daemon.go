package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"syncrelay/internal/testutil"
)

// Daemon is a running syncrelay, the real binary or daemon.Run in this
// process, behind one handle. It is stopped (killed, for the binary) when
// the test ends if still running.
type Daemon struct {
	SMTP, HTTP string
	// Logs is the daemon's log output (the binary's stderr).
	Logs *testutil.SyncBuf
	// Stdout is the binary's standard output (empty in-process).
	Stdout *testutil.SyncBuf
	// Cmd is the binary's process (nil in-process).
	Cmd *exec.Cmd
	// Token is the bearer token API sends.
	Token string

	cancel   context.CancelFunc // in-process
	exited   chan struct{}
	exitCode int
	err      error // in-process: what daemon.Run returned
	stopOnce sync.Once
}

// Proc says how to run the binary.
type Proc struct {
	Dir  string   // working directory ("" = the test's)
	Env  []string // added to the environment
	Args []string // after "serve"
}

// StartBinary runs "bin serve p.Args..." and waits for it to serve.
func StartBinary(t testing.TB, bin string, p Proc) *Daemon {
	t.Helper()
	d := newDaemon()
	d.Cmd = exec.Command(bin, append([]string{"serve"}, p.Args...)...)
	d.Cmd.Dir = p.Dir
	if p.Env != nil {
		d.Cmd.Env = append(os.Environ(), p.Env...)
	}
	d.Cmd.Stdout, d.Cmd.Stderr = d.Stdout, d.Logs
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
	d.waitServing(t)
	return d
}

// RunFunc runs the daemon until ctx ends, logging to logs; it is
// daemon.Run with its config and logger (daemon.NewLogger(c, logs)).
type RunFunc func(ctx context.Context, logs io.Writer) error

// StartInProcess calls run in a goroutine (so that the test can reach the
// daemon's file descriptors, or wrap its store) and waits for it to serve.
func StartInProcess(t testing.TB, run RunFunc) *Daemon {
	t.Helper()
	d := newDaemon()
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() {
		d.err = run(ctx, d.Logs)
		if d.err != nil {
			d.exitCode = 1
		}
		close(d.exited)
	}()
	t.Cleanup(func() { d.Stop(t) })
	d.waitServing(t)
	return d
}

func newDaemon() *Daemon {
	return &Daemon{Logs: &testutil.SyncBuf{}, Stdout: &testutil.SyncBuf{}, exited: make(chan struct{})}
}

// waitServing waits up to 20 s for the "syncrelay serving" line.
func (d *Daemon) waitServing(t testing.TB) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if s, h, ok := ServingAddrs(d.Logs.String()); ok {
			d.SMTP, d.HTTP = s, h
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited %d (%v):\n%s", d.exitCode, d.err, d.Logs)
		case <-deadline:
			t.Fatalf("daemon did not start:\n%s", d.Logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

var servingRE = regexp.MustCompile(`syncrelay serving.*smtp=(\S+) http=(\S+)`)

// ServingAddrs finds the SMTP and HTTP addresses in the daemon's
// "syncrelay serving" log line, in the text or the JSON log format.
func ServingAddrs(logs string) (smtp, http string, ok bool) {
	if m := servingRE.FindStringSubmatch(logs); m != nil {
		return m[1], m[2], true
	}
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `"syncrelay serving"`) {
			continue
		}
		var m struct{ Msg, SMTP, HTTP string }
		if json.Unmarshal([]byte(l), &m) == nil && m.Msg == "syncrelay serving" {
			return m.SMTP, m.HTTP, true
		}
	}
	return "", "", false
}

// Signal sends sig to the binary; in-process, SIGTERM and SIGINT cancel
// daemon.Run's context (what the binary's signal handler does).
func (d *Daemon) Signal(sig os.Signal) error {
	if d.Cmd != nil {
		return d.Cmd.Process.Signal(sig)
	}
	if sig != syscall.SIGTERM && sig != os.Interrupt {
		return fmt.Errorf("testenv: in-process daemon cannot take %v", sig)
	}
	d.cancel()
	return nil
}

// Wait waits (up to 30 s) for the daemon to end by itself or after a
// signal and returns its exit code; in-process, a daemon.Run error fails
// the test and is exit code 1.
func (d *Daemon) Wait(t testing.TB) int {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not exit:\n%s", d.Logs)
		return -1
	}
	if d.err != nil {
		t.Errorf("daemon.Run: %v", d.err)
	}
	return d.exitCode
}

// Stop sends SIGTERM (cancels, in-process) once and returns Wait's exit
// code; later calls return at once.
func (d *Daemon) Stop(t testing.TB) int {
	t.Helper()
	code := -1
	d.stopOnce.Do(func() {
		d.Signal(syscall.SIGTERM)
		code = d.Wait(t)
	})
	return code
}

// Kill9 kills the binary with SIGKILL and waits for it.
func (d *Daemon) Kill9(t testing.TB) {
	t.Helper()
	d.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not die after SIGKILL")
	}
}

// Start runs the built syncrelay on cfg and waits for it to serve.
func (b *Bins) Start(t testing.TB, cfg string) *Daemon {
	t.Helper()
	return StartBinary(t, b.Syncrelay, Proc{Args: []string{"-config", cfg}})
}

// WaitLog waits (up to 20 s) for s to appear in the daemon's logs. A test
// that must see a state the daemon logs (draining began, a reload happened)
// waits for the line rather than sleeping a fixed time, which a loaded
// machine can outlast.
func (d *Daemon) WaitLog(t testing.TB, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(d.Logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the daemon's logs after 20s:\n%s", s, d.Logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
