package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestDSN checks that the cluster runs with fsync off (a throwaway
// cluster), synchronous_commit on (what production's checks look for) and
// that each DSN is its own empty database.
func TestDSN(t *testing.T) {
	ctx := context.Background()
	a, b := DSN(t), DSN(t)
	if a == b {
		t.Fatalf("two tests share database %s", a)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var fsync, syncCommit string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &syncCommit); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" {
		t.Errorf("fsync = %s, want off", fsync)
	}
	if syncCommit != "on" {
		t.Errorf("synchronous_commit = %s, want on", syncCommit)
	}
}

// TestDSNFrom checks that prepare runs once per template, that each DSN
// is a database of its own holding what prepare made, and that a database
// a test is done with is handed out again only as the template left it.
func TestDSNFrom(t *testing.T) {
	ctx := context.Background()
	// A template of its own per run: with -count=N the cluster (and its
	// prepared templates) outlives one run of the test.
	template := fmt.Sprintf("seeded_%d", time.Now().UnixNano())
	calls := 0
	prepare := func(ctx context.Context, dsn string) error {
		calls++
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `CREATE TABLE seed (n int); INSERT INTO seed VALUES (1);
			CREATE TABLE parent (id serial PRIMARY KEY); CREATE TABLE child (p int REFERENCES parent)`)
		return err
	}
	exec := func(t *testing.T, dsn, sql string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// state is what a test sees: seed's rows, parent's and child's row
	// counts and the id the next parent gets.
	state := func(t *testing.T, dsn string) string {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var seed string
		var parents, children, next int
		err = conn.QueryRow(ctx, `SELECT (SELECT string_agg(n::text, ',' ORDER BY n) FROM seed),
			(SELECT count(*) FROM parent), (SELECT count(*) FROM child), nextval('parent_id_seq')`).Scan(&seed, &parents, &children, &next)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("seed=%s parents=%d children=%d next=%d", seed, parents, children, next)
	}
	const fresh = "seed=1 parents=0 children=0 next=1"
	var used []string
	run := func(name string, fn func(t *testing.T, dsn string)) string {
		var dsn string
		t.Run(name, func(t *testing.T) {
			dsn = DSNFrom(t, template, prepare)
			if got := state(t, dsn); got != fresh {
				t.Errorf("new database: %s, want %s", got, fresh)
			}
			fn(t, dsn)
		})
		used = append(used, dsn)
		return dsn
	}
	a := run("writes rows", func(t *testing.T, dsn string) {
		if b := DSNFrom(t, template, prepare); b == dsn {
			t.Errorf("two databases in use at once are both %s", b)
		}
		exec(t, dsn, "INSERT INTO parent DEFAULT VALUES; INSERT INTO parent DEFAULT VALUES; INSERT INTO child VALUES (2)")
	})
	if calls != 1 {
		t.Errorf("prepare ran %d times, want once", calls)
	}
	// Rows written and sequences moved are undone: the database is used
	// again (the check above saw it as new).
	if b := run("reuses", func(*testing.T, string) {}); b != a {
		t.Errorf("the database of a test that only wrote rows was not used again (%s, then %s)", a, b)
	}
	// A database whose template rows or sessions are not as the template
	// left them is never handed out again.
	var leaked *pgx.Conn
	for _, tc := range []struct {
		name  string
		fn    func(t *testing.T, dsn string)
		grace time.Duration // for the sessions to end (0: the default)
	}{
		{"changes a template row", func(t *testing.T, dsn string) { exec(t, dsn, "UPDATE seed SET n = 2") }, 0},
		{"leaves a session open", func(t *testing.T, dsn string) {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			leaked = conn // closed only after the next test got its database
		}, 200 * time.Millisecond}, // the session stays: no need to wait the whole grace
	} {
		Shared(t).sessionGrace = tc.grace
		dirty := run(tc.name, tc.fn)
		Shared(t).sessionGrace = 0
		if next := run("after "+tc.name, func(*testing.T, string) {}); next == dirty {
			t.Errorf("%s: the database was handed out again", tc.name)
		}
	}
	if leaked == nil {
		t.Fatal("no session was left open")
	}
	leaked.Close(ctx)
	// Every change reset does not undo is seen by the check recycle makes
	// (each tried in a transaction that is rolled back, on one database:
	// a database per case would cost a copy each).
	want := Shared(t).templates[template].state
	dsn := DSNFrom(t, template, prepare)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, tc := range []struct{ name, sql string }{
		{"nothing", ""},
		{"changes a template row", "UPDATE seed SET n = 2"},
		{"adds a template row", "INSERT INTO seed VALUES (1)"},
		{"adds a column", "ALTER TABLE parent ADD COLUMN x int"},
		{"renames a column", "ALTER TABLE seed RENAME COLUMN n TO m"},
		{"adds a table", "CREATE TABLE more (x int)"},
		{"adds a sequence", "CREATE SEQUENCE more_ids"},
		{"adds a constraint", "ALTER TABLE seed ADD CONSTRAINT pos CHECK (n > 0)"},
		{"adds a function", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"},
		{"adds a trigger", "CREATE TRIGGER t BEFORE UPDATE ON seed FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"},
		{"adds a schema", "CREATE SCHEMA other"},
		{"rewrites a table", "TRUNCATE child"},
	} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tc.sql != "" {
			if _, err := tx.Exec(ctx, tc.sql); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		same, err := matchesTemplate(ctx, tx, want)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if same != (tc.sql == "") {
			t.Errorf("%s: same as the template = %v", tc.name, same)
		}
		tx.Rollback(ctx)
	}
	if _, err := Shared(t).CreateDBFrom(ctx, "Bad-Name", prepare); err == nil {
		t.Error("template name with upper case and '-' accepted")
	}
}

// TestStartCopiesKeptInitdb: the cluster's data directory is a copy of
// the one kept from an earlier initdb: they share PostgreSQL's system
// identifier, which initdb makes new every time.
func TestStartCopiesKeptInitdb(t *testing.T) {
	ctx := context.Background()
	c := Shared(t)
	conn, err := pgx.Connect(ctx, c.dsnFor("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var running string
	if err := conn.QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&running); err != nil {
		t.Fatal(err)
	}
	kept, err := initdbCache()
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.run(filepath.Join(BinDir, "pg_controldata"), kept).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_controldata %s: %v\n%s", kept, err, out)
	}
	m := regexp.MustCompile(`Database system identifier:\s*(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pg_controldata %s: no system identifier in\n%s", kept, out)
	}
	if string(m[1]) != running {
		t.Errorf("the cluster's system identifier is %s, the kept directory's %s: the cluster ran initdb again", running, m[1])
	}
}
