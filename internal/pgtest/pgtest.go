// Package pgtest runs a throwaway PostgreSQL 15 cluster for tests: initdb
// in a temporary directory (in memory, /dev/shm, where there is one),
// postgres on 127.0.0.1 and a free port, one fresh database per test. The cluster is throwaway, so it runs with fsync
// and full_page_writes off (synchronous_commit stays on, as production's
// checks expect): only an operating-system crash could tell the difference,
// and no test makes one; a test that halts the server stops it cleanly.
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
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
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

	// tmplMu guards templates and serialises CREATE DATABASE ... TEMPLATE
	// (PostgreSQL refuses to copy a database another session is using).
	tmplMu    sync.Mutex
	templates map[string]*preparedTemplate
	free      map[string][]string // template -> copies ready to hand out
	// resetConns holds the session reset used on each database, kept
	// for that database's next reset: a new session costs the server a
	// process (about 3.5 ms of CPU), and reset runs after every test.
	resetConns map[string]*pgx.Conn

	// sessionGrace is how long a recycled database's other sessions get
	// to end (sessionGrace when 0); pgtest's own test of a leaked session
	// sets it short, so as not to wait out the whole grace.
	sessionGrace time.Duration
}

// sessionGrace: a closed pool's sessions end a moment after it returns.
const sessionGrace = 2 * time.Second

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
	dir, err := os.MkdirTemp(baseDir(), "syncrelay-pg-")
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
	if err := c.initdb(); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.port = port
	return c.Resume()
}

var initdbArgs = []string{"-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"}

// initdb creates the cluster's data directory: a copy of a pristine one
// that an earlier run made and kept in the temporary directory, or a new
// one, which is then kept for the next runs. Every test binary that uses
// PostgreSQL starts a cluster, and initdb takes seconds (6 to 10 on a busy
// machine) where copying its result takes a fraction. The kept directory
// is named after the server binary (size, time) and initdb's arguments, so
// an upgraded PostgreSQL makes a new one; it is made under another name
// and renamed into place whole, so a crash never leaves half of one.
func (c *Cluster) initdb() error {
	kept, err := initdbCache()
	if err != nil {
		kept = ""
	}
	if kept != "" {
		if _, err := os.Stat(kept); err == nil {
			if exec.Command("cp", "-a", kept, c.data()).Run() == nil {
				return nil
			}
			_ = os.RemoveAll(c.data()) // and run initdb
		}
	}
	if out, err := c.run(filepath.Join(BinDir, "initdb"), append([]string{"-D", c.data()}, initdbArgs...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	if kept != "" {
		// Keeping a copy is an optimisation: any failure only costs the
		// next run an initdb.
		tmp := fmt.Sprintf("%s.tmp%d", kept, os.Getpid())
		if exec.Command("cp", "-a", c.data(), tmp).Run() == nil && os.Rename(tmp, kept) == nil {
			return nil
		}
		_ = os.RemoveAll(tmp)
	}
	return nil
}

// initdbCache is where the pristine data directory for this PostgreSQL
// and these initdb arguments is kept.
func initdbCache() (string, error) {
	fi, err := os.Stat(filepath.Join(BinDir, "postgres"))
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s %d %d %q", BinDir, fi.Size(), fi.ModTime().UnixNano(), initdbArgs))
	return filepath.Join(baseDir(), fmt.Sprintf("syncrelay-pgtest-initdb-%d-%x", os.Geteuid(), h[:8])), nil
}

// shmDir is Linux's memory file system, where it is mounted.
const shmDir = "/dev/shm"

// baseDir is where clusters live: in memory (/dev/shm) when the machine
// has it, else the temporary directory. A throwaway cluster gains nothing
// from a disk: fsync is off, and writing its pages back (the copied data
// directory, the WAL of every CREATE DATABASE) cost the suite seconds of
// kernel time on a 2-core machine.
func baseDir() string {
	var st syscall.Statfs_t
	// 0x01021994 is TMPFS_MAGIC.
	if syscall.Statfs(shmDir, &st) == nil && st.Type == 0x01021994 && syscall.Access(shmDir, 2 /* W_OK */) == nil {
		return shmDir
	}
	return os.TempDir()
}

func (c *Cluster) data() string { return filepath.Join(c.dir, "data") }

// Resume starts the server (again, after Halt) on the same port.
func (c *Cluster) Resume() error {
	// fsync and full_page_writes off: a throwaway cluster needs no
	// protection from an operating-system crash (a killed or halted server
	// loses nothing that is in the page cache), and each fsynced commit,
	// CREATE DATABASE and checkpoint costs CPU and seconds on a loaded
	// machine. synchronous_commit stays on: commits still wait for their
	// WAL write, and `syncrelay check` reads the setting. autovacuum off:
	// a cluster that lives for one package's tests has nothing to reclaim,
	// and no test depends on statistics or vacuum.
	c.cmd = c.run(filepath.Join(BinDir, "postgres"), "-D", c.data(),
		"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(c.port),
		"-c", "unix_socket_directories="+c.dir, "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "autovacuum=off",
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
		time.Sleep(20 * time.Millisecond) // a refused connect costs little; a start takes 0.1-0.3 s
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

// DSNFrom returns the DSN of a database of this test's own that is a copy
// of template: a database the cluster prepares once, the first time the
// name is asked for, by calling prepare with its DSN (typically opening a
// store, which applies the migrations, and closing it again). prepare must
// leave no connection open. Tests of the migrations themselves use DSN.
//
// When the test ends its database is put back as the template left it and
// handed to the next test that asks: copying a database costs a fsynced
// write of its every page (about a second on a busy machine, more than
// most tests take), emptying the few rows a test wrote costs
// milliseconds. See Cluster.recycle for what "as the template left it"
// checks; a database that fails a check is never handed out again. It
// skips like DSN.
func DSNFrom(t testing.TB, template string, prepare func(ctx context.Context, dsn string) error) string {
	t.Helper()
	c := Shared(t)
	ctx := context.Background()
	name, err := c.acquire(ctx, template, prepare)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// Registered before the test opens anything on the database, so it
	// runs after the test's own cleanups have closed its connections.
	t.Cleanup(func() { c.recycle(ctx, template, name) })
	return c.dsnFor(name)
}

// CreateDBFrom returns the DSN of a new copy of template (prepared as
// DSNFrom does), for the caller to keep.
func (c *Cluster) CreateDBFrom(ctx context.Context, template string, prepare func(ctx context.Context, dsn string) error) (string, error) {
	c.tmplMu.Lock()
	defer c.tmplMu.Unlock()
	name, err := c.copyTemplate(ctx, template, prepare)
	if err != nil {
		return "", err
	}
	return c.dsnFor(name), nil
}

// templateState is what a template database holds after prepare, to
// check and restore a copy against.
type templateState struct {
	empty  []string          // tables prepare left empty (quoted names)
	filled map[string]string // table (quoted) -> md5 of its rows
	seqs   []seqState
	shape  string // md5 of the schema's catalog rows
}

type seqState struct {
	name   string // quoted
	value  int64
	called bool
}

func (c *Cluster) acquire(ctx context.Context, template string, prepare func(ctx context.Context, dsn string) error) (string, error) {
	c.tmplMu.Lock()
	defer c.tmplMu.Unlock()
	if free := c.free[template]; len(free) > 0 {
		name := free[len(free)-1]
		c.free[template] = free[:len(free)-1]
		return name, nil
	}
	return c.copyTemplate(ctx, template, prepare)
}

// copyTemplate prepares template if needed and creates a copy of it.
// tmplMu must be held: PostgreSQL refuses to copy a database another
// session is using, so copies are made one at a time.
func (c *Cluster) copyTemplate(ctx context.Context, template string, prepare func(ctx context.Context, dsn string) error) (string, error) {
	if !validName(template) {
		return "", fmt.Errorf("template name %q: want [a-z_][a-z0-9_]*", template)
	}
	tmpl := "tmpl_" + template
	conn, err := pgx.Connect(ctx, c.dsnFor("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if c.templates == nil {
		c.templates = map[string]*preparedTemplate{}
		c.free = map[string][]string{}
	}
	pt, done := c.templates[template]
	if !done {
		pt = &preparedTemplate{}
		pt.err = func() error {
			if _, err := conn.Exec(ctx, "CREATE DATABASE "+tmpl); err != nil {
				return fmt.Errorf("create template %s: %w", tmpl, err)
			}
			if err := prepare(ctx, c.dsnFor(tmpl)); err != nil {
				return fmt.Errorf("prepare template %s: %w", tmpl, err)
			}
			tconn, err := pgx.Connect(ctx, c.dsnFor(tmpl))
			if err != nil {
				return fmt.Errorf("template %s: %w", tmpl, err)
			}
			defer tconn.Close(ctx)
			pt.state, err = readState(ctx, tconn)
			if err != nil {
				return fmt.Errorf("template %s: %w", tmpl, err)
			}
			return nil
		}()
		c.templates[template] = pt
	}
	if pt.err != nil {
		return "", pt.err
	}
	name := fmt.Sprintf("d%d_%d", os.Getpid(), c.dbs.Add(1))
	// WAL_LOG (PostgreSQL 15's default, named so it stays): the copy goes
	// through the WAL, with no checkpoint, as FILE_COPY would need.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tmpl+" STRATEGY WAL_LOG"); err != nil {
		return "", fmt.Errorf("create database from %s: %w", tmpl, err)
	}
	return name, nil
}

type preparedTemplate struct {
	state *templateState
	err   error
}

// userRels selects the relations of the database's own schemas.
const userRels = `FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'`

// querier is a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// readState reads what the database holds: its tables (the filled ones'
// rows hashed), its sequences and a hash of its schema. The schema hash
// covers relations (with their storage: a rewritten table, e.g. after
// TRUNCATE or ALTER TABLE, counts as changed), columns, constraints,
// functions, types and triggers (a test may disable one, e.g. the
// notices'), so a test that altered the schema is seen.
func readState(ctx context.Context, conn querier) (*templateState, error) {
	st := &templateState{filled: map[string]string{}}
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname) `+userRels+` AND c.relkind IN ('r', 'p') ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	for _, tb := range tables {
		var n int64
		var sum string
		if err := conn.QueryRow(ctx, fmt.Sprintf(tableSumSQL, tb)).Scan(&n, &sum); err != nil {
			return nil, fmt.Errorf("read %s: %w", tb, err)
		}
		if n == 0 {
			st.empty = append(st.empty, tb)
		} else {
			st.filled[tb] = sum
		}
	}
	rows, err = conn.Query(ctx, `SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), last_value IS NOT NULL
		FROM pg_sequences ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var s seqState
		if err := rows.Scan(&s.name, &s.value, &s.called); err != nil {
			rows.Close()
			return nil, err
		}
		st.seqs = append(st.seqs, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	err = conn.QueryRow(ctx, "SELECT "+shapeSQL).Scan(&st.shape)
	if err != nil {
		return nil, fmt.Errorf("schema hash: %w", err)
	}
	return st, nil
}

// shapeSQL hashes the schema (see readState).
const shapeSQL = `md5(concat_ws(E'\n',
		(SELECT string_agg(concat_ws(' ', c.oid, c.relname, c.relkind, c.relfilenode, c.relnatts), ',' ORDER BY c.oid) ` + userRels + `),
		(SELECT string_agg(concat_ws(' ', a.attrelid, a.attnum, a.attname, a.atttypid, a.attnotnull, a.atthasdef, a.attisdropped), ',' ORDER BY a.attrelid, a.attnum)
			FROM pg_attribute a WHERE a.attrelid IN (SELECT c.oid ` + userRels + `)),
		(SELECT string_agg(concat_ws(' ', o.oid, o.conname, o.contype), ',' ORDER BY o.oid) FROM pg_constraint o
			JOIN pg_namespace n ON n.oid = o.connamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
		(SELECT string_agg(concat_ws(' ', p.oid, p.proname, md5(p.prosrc)), ',' ORDER BY p.oid) FROM pg_proc p
			JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
		(SELECT string_agg(concat_ws(' ', y.oid, y.typname), ',' ORDER BY y.oid) FROM pg_type y
			JOIN pg_namespace n ON n.oid = y.typnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
		(SELECT string_agg(concat_ws(' ', g.oid, g.tgname, g.tgenabled), ',' ORDER BY g.oid) FROM pg_trigger g
			WHERE g.tgrelid IN (SELECT c.oid ` + userRels + `)),
		(SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace)))`

// tableSumSQL hashes a table's rows (%s: its quoted name).
const tableSumSQL = "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t"

// matchesTemplate reports whether a database that reset has just emptied
// and whose sequences it has set back is as the template left it: the
// same schema hash, and the same rows in the tables prepare filled. The
// emptied tables and the sequences need no reading back (the DELETEs and
// setvals ran in the same transaction, with triggers off; a table or
// sequence a test added changes the schema hash). One query, as reset
// runs after every test that took a database.
func matchesTemplate(ctx context.Context, q querier, want *templateState) (bool, error) {
	filled := make([]string, 0, len(want.filled))
	for tb := range want.filled {
		filled = append(filled, tb)
	}
	sort.Strings(filled)
	var b strings.Builder
	b.WriteString("SELECT " + shapeSQL)
	for _, tb := range filled {
		fmt.Fprintf(&b, ", (SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t)", tb)
	}
	got := make([]string, 1+len(filled))
	dest := make([]any, len(got))
	for i := range got {
		dest[i] = &got[i]
	}
	if err := q.QueryRow(ctx, b.String()).Scan(dest...); err != nil {
		return false, err
	}
	if got[0] != want.shape {
		return false, nil
	}
	for i, tb := range filled {
		if got[1+i] != want.filled[tb] {
			return false, nil
		}
	}
	return true, nil
}

// recycle puts database name back as template's prepare left it and
// returns it to the free list; a database it cannot vouch for is left
// alone (the cluster is removed when the test binary ends). The checks:
// no other session is connected (a leaked store could write later); the
// schema hash is the template's; the tables prepare left empty are
// emptied; the tables prepare filled hold the same rows; sequences are
// set back. The emptying and the checks run in one transaction.
func (c *Cluster) recycle(ctx context.Context, template, name string) {
	c.tmplMu.Lock()
	pt := c.templates[template]
	c.tmplMu.Unlock()
	if pt == nil || pt.state == nil {
		return
	}
	if err := c.reset(ctx, name, pt.state); err != nil {
		return // not handed out again
	}
	c.tmplMu.Lock()
	c.free[template] = append(c.free[template], name)
	c.tmplMu.Unlock()
}

// errDirty says a database differs from its template in a way reset does
// not undo.
var errDirty = errors.New("database differs from its template")

func (c *Cluster) reset(ctx context.Context, name string, want *templateState) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c.tmplMu.Lock()
	conn := c.resetConns[name]
	delete(c.resetConns, name)
	c.tmplMu.Unlock()
	if conn == nil {
		if conn, err = pgx.Connect(ctx, c.dsnFor(name)); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			conn.Close(ctx)
			return
		}
		c.tmplMu.Lock()
		if c.resetConns == nil {
			c.resetConns = map[string]*pgx.Conn{}
		}
		c.resetConns[name] = conn
		c.tmplMu.Unlock()
	}()
	grace := c.sessionGrace
	if grace <= 0 {
		grace = sessionGrace
	}
	for deadline := time.Now().Add(grace); ; {
		var others int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&others); err != nil {
			return err
		}
		if others == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d sessions still connected", errDirty, others)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// One round trip for the emptying (no arguments: pgx sends it as a
	// simple query, so several statements go at once) and one for the
	// check: this runs after every test that took a database.
	var reset strings.Builder
	// Rows go in any order: foreign keys are not checked while the whole
	// content is removed.
	reset.WriteString("SET LOCAL session_replication_role = replica;")
	for _, tb := range want.empty {
		reset.WriteString("DELETE FROM " + tb + ";")
	}
	for _, sq := range want.seqs {
		fmt.Fprintf(&reset, "SELECT setval('%s'::regclass, %d, %t);", strings.ReplaceAll(sq.name, "'", "''"), sq.value, sq.called)
	}
	reset.WriteString("SET LOCAL session_replication_role = DEFAULT")
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, reset.String()); err != nil {
			return err
		}
		same, err := matchesTemplate(ctx, tx, want)
		if err != nil {
			return err
		}
		if !same {
			return errDirty
		}
		return nil
	})
}

func validName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// Port is the TCP port the server listens on (127.0.0.1).
func (c *Cluster) Port() int { return c.port }

// Halt stops the server (fast shutdown: clients are disconnected) and
// keeps its data; Resume starts it again.
func (c *Cluster) Halt() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	// SIGINT is PostgreSQL's fast shutdown. It goes to the postmaster
	// itself (its pid is postmaster.pid's first line): signalling runuser
	// would not reliably reach postgres. pg_ctl stop does the same but
	// checks for the end only every 100 ms, which every package's last
	// test waited for; here the Wait below returns when postgres exits.
	if pid := c.postmasterPID(); pid <= 0 || syscall.Kill(pid, syscall.SIGINT) != nil {
		_ = c.run(filepath.Join(BinDir, "pg_ctl"), "stop", "-D", c.data(), "-m", "fast", "-w").Run()
	}
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

// postmasterPID is the pid in the data directory's postmaster.pid if that
// is the server this Cluster started (the process itself, or runuser's
// child), else 0: a file left by a crash must not make Halt signal
// whatever process has the pid now.
func (c *Cluster) postmasterPID() int {
	b, err := os.ReadFile(filepath.Join(c.data(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	if pid == c.cmd.Process.Pid {
		return pid
	}
	// /proc/<pid>/stat: "pid (comm) state ppid ...", comm in parentheses.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(stat, ')')
	if f := strings.Fields(string(stat[i+1:])); i < 0 || len(f) < 2 || f[1] != strconv.Itoa(c.cmd.Process.Pid) {
		return 0
	}
	return pid
}

// Stop stops the server and removes its directory.
func (c *Cluster) Stop() {
	c.Halt()
	if c.dir != "" && strings.HasPrefix(filepath.Base(c.dir), "syncrelay-pg-") {
		_ = os.RemoveAll(c.dir)
	}
}
