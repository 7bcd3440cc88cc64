// Package pgtest runs a throwaway PostgreSQL 15 cluster for tests: initdb
// in a temporary directory, postgres on 127.0.0.1 and a free port (fsync
// on, as in production), one fresh database per test.
//
// A test package uses it from TestMain so that the cluster is started at
// most once per package and always stopped:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) { dsn := pgtest.DSN(t); ... }
//
// Without PostgreSQL installed DSN skips the test, unless CI=true and
// SYNCRELAY_REQUIRE_POSTGRES=1 (set by .ci/run), where it fails.
package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDir is where Debian's postgresql-15 package installs the server.
const BinDir = "/usr/lib/postgresql/15/bin"

// Cluster is one running PostgreSQL server.
type Cluster struct {
	dir  string
	port int
	cmd  *exec.Cmd
	dbs  atomic.Int64
}

// cluster is the package's shared server, started on first use by DSN and
// stopped by Main: a test binary is one process, so this is per package.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Main runs the tests and stops the cluster if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}

// StopShared stops the package's cluster if one was started (for a
// TestMain that runs the tests some other way).
func StopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
}

// Required reports whether a missing PostgreSQL must fail the tests
// rather than skip them.
func Required() bool {
	return os.Getenv("CI") == "true" && os.Getenv("SYNCRELAY_REQUIRE_POSTGRES") == "1"
}

// Available reports whether the PostgreSQL binaries are installed.
func Available() bool {
	_, err := os.Stat(filepath.Join(BinDir, "initdb"))
	return err == nil
}

// DSN returns the connection string of a new, empty schema on the
// package's cluster (started on first use; see CreateDB). It skips the
// test when PostgreSQL is not installed (fails when Required).
func DSN(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	dsn, err := c.CreateDB(context.Background())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

// Shared returns the package's cluster, starting it on first use.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	skipUnavailable(t)
	shared.once.Do(func() { shared.c, shared.err = Start() })
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.c
}

// Own starts a cluster for this test alone (one that the test may Halt and
// Resume), stopped when the test ends. It skips like DSN.
func Own(t testing.TB) *Cluster {
	t.Helper()
	skipUnavailable(t)
	c, err := Start()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

func skipUnavailable(t testing.TB) {
	t.Helper()
	if !Available() {
		msg := "pgtest: PostgreSQL 15 not installed (" + BinDir + "/initdb missing; apt-get install postgresql-15)"
		if Required() {
			t.Fatal(msg + ", and SYNCRELAY_REQUIRE_POSTGRES=1")
		}
		t.Skip(msg)
	}
}

// Start initialises and starts a cluster in a new temporary directory.
func Start() (*Cluster, error) {
	dir, err := os.MkdirTemp("", "syncrelay-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	if err := c.start(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start() error {
	if err := c.ownDir(); err != nil {
		return err
	}
	if out, err := c.run(filepath.Join(BinDir, "initdb"), "-D", c.data(), "-U", "postgres",
		"--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.port = port
	return c.Resume()
}

func (c *Cluster) data() string { return filepath.Join(c.dir, "data") }

// Resume starts the server (again, after Halt) on the same port.
func (c *Cluster) Resume() error {
	// fsync stays on: the tests must see the durability production has.
	c.cmd = c.run(filepath.Join(BinDir, "postgres"), "-D", c.data(),
		"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(c.port),
		"-c", "unix_socket_directories="+c.dir, "-c", "fsync=on",
		"-c", "max_connections=200", "-c", "shared_buffers=32MB")
	var logBuf bytes.Buffer
	c.cmd.Stdout, c.cmd.Stderr = &logBuf, &logBuf
	// A test binary that dies (panic, timeout) must not leave a server
	// behind: runuser passes SIGTERM on to postgres, which then stops.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		return fmt.Errorf("%w\n%s", err, logBuf.String())
	}
	return nil
}

// ownDir hands the directory to the postgres system user when running as
// root: PostgreSQL refuses to run as root.
func (c *Cluster) ownDir() error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs the postgres system user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(c.dir, uid, gid)
}

// run prepares a command, as the postgres user when we are root.
func (c *Cluster) run(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, c.dsnFor("postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after %s: %w", limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) dsnFor(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// CreateDB returns the DSN of a new, empty schema of its own in the
// cluster's database: its search_path is set in the DSN, so a store sees
// only its own tables. A schema costs milliseconds where CREATE DATABASE
// costs a fsynced copy of the template.
func (c *Cluster) CreateDB(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.dbs.Add(1))
	conn, err := pgx.Connect(ctx, c.dsnFor("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		return "", fmt.Errorf("create schema: %w", err)
	}
	return c.dsnFor("postgres") + "&search_path=" + name, nil
}

// Port is the TCP port the server listens on (127.0.0.1).
func (c *Cluster) Port() int { return c.port }

// Halt stops the server (fast shutdown: clients are disconnected) and
// keeps its data; Resume starts it again.
func (c *Cluster) Halt() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	// pg_ctl as the server's user: signalling runuser would not reliably
	// reach postgres.
	_ = c.run(filepath.Join(BinDir, "pg_ctl"), "stop", "-D", c.data(), "-m", "fast", "-w").Run()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
}

// Stop stops the server and removes its directory.
func (c *Cluster) Stop() {
	c.Halt()
	if c.dir != "" && strings.HasPrefix(filepath.Base(c.dir), "syncrelay-pg-") {
		_ = os.RemoveAll(c.dir)
	}
}
