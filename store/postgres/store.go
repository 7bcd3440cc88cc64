// Package postgres is the PostgreSQL backend of the store contract (SPEC
// §11): several syncrelay nodes share one database. Records are kept as
// their JSON encoding beside the columns that index them; raw message
// bytes are a bytea committed in the same transaction as their record.
// pgx types do not leave this package.
package postgres

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"syncrelay/store"
	"syncrelay/store/groupcommit"
)

var _ store.Store = (*Store)(nil)

//go:embed migrations/*.sql
var migrations embed.FS

// Options configure Open.
type Options struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Node names this process in per-node rows (counters); the host name
	// and process id when empty.
	Node string
	// Log receives the store's own notices (migrations).
	Log *slog.Logger
	// CacheTTL bounds how long a cached tenant or user is used without a
	// notice from the database (DefaultCacheTTL when 0). Notices make
	// changes visible on every node at once; the TTL only covers a lost one.
	CacheTTL time.Duration

	// trace, in this package's tests, sees every statement sent.
	trace func(ctx context.Context, sql string)
	// catchUp, in this package's tests, replaces keyCatchUp (so that a
	// test of the catch-up need not wait for it at its production pace).
	catchUp time.Duration
}

// Store is the PostgreSQL-backed store.
type Store struct {
	pool   *pgxpool.Pool
	now    func() time.Time
	node   string
	logger *slog.Logger

	commits      *groupcommit.Queue[*commitReq]
	counts       *counterBuf
	cache        *nodeCache
	catchUpEvery time.Duration // keyCatchUp but in tests

	stopListen context.CancelFunc
	listening  sync.WaitGroup

	closeOnce sync.Once
}

// Open connects to the database at dsn, applies pending migrations and
// starts the group-commit loop.
func Open(ctx context.Context, dsn string, o Options) (*Store, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Node == "" {
		host, _ := os.Hostname()
		o.Node = host + "/" + strconv.Itoa(os.Getpid())
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The DSN may hold a password: never echo it.
		return nil, errors.New("postgres: invalid dsn")
	}
	if o.trace != nil {
		cfg.ConnConfig.Tracer = traceFunc(o.trace)
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.catchUp <= 0 {
		o.catchUp = keyCatchUp
	}
	lcfg := cfg.ConnConfig.Copy()
	lcfg.RuntimeParams["application_name"] = "syncrelay-listener " + o.Node
	lcfg.Tracer = nil
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	clock := o.Now
	// PostgreSQL keeps microseconds: times in records and in columns agree.
	now := func() time.Time { return clock().Truncate(time.Microsecond) }
	s := &Store{pool: pool, now: now, node: o.Node, logger: o.Log, counts: newCounterBuf(), cache: newNodeCache(o.CacheTTL),
		catchUpEvery: o.catchUp, commits: groupcommit.New[*commitReq](1024)}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	go s.commits.RunN(maxBatch, commitsInFlight(), 10*time.Second, s.tick, s.runBatch)
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopListen = stop
	s.listening.Add(1)
	go func() {
		defer s.listening.Done()
		s.listen(lctx, lcfg)
	}()
	return s, nil
}

// Close stops the commit loop, flushes counters and closes the pool. It is
// safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.commits.Close()
		s.stopListen()
		s.listening.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.flushCounters(ctx)
		s.pool.Close()
	})
	return err
}

// Ping reports whether the database answers (readiness).
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// --- migrations ---

// advisoryKey serialises migrations of nodes starting together.
const advisoryKey = 0x73796e6372656c // "syncrel"

// SchemaVersion is the highest migration this binary carries.
func SchemaVersion() int {
	files, _ := migrationFiles()
	if len(files) == 0 {
		return 0
	}
	return files[len(files)-1].version
}

type migration struct {
	version int
	name    string
}

func migrationFiles() ([]migration, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, n := range names {
		base := strings.TrimPrefix(n, "migrations/")
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("migration %s: bad name", n)
		}
		out = append(out, migration{v, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// migrate applies the embedded migrations newer than the database's
// schema_version, each in its own transaction, under an advisory lock.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", advisoryKey); err != nil {
		return fmt.Errorf("postgres: migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", advisoryKey) //nolint:errcheck
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version int PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"); err != nil {
		return fmt.Errorf("postgres: schema_version: %w", err)
	}
	var cur int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&cur); err != nil {
		return fmt.Errorf("postgres: schema_version: %w", err)
	}
	files, err := migrationFiles()
	if err != nil {
		return err
	}
	if latest := SchemaVersion(); cur > latest {
		return fmt.Errorf("postgres: schema version %d is newer than this binary's %d; upgrade syncrelay", cur, latest)
	}
	for _, m := range files {
		if m.version <= cur {
			continue
		}
		if err := applyMigration(ctx, conn.Conn(), m); err != nil {
			return err
		}
		s.logger.Info("store: schema migrated", "version", m.version)
	}
	return nil
}

func applyMigration(ctx context.Context, conn *pgx.Conn, m migration) error {
	sql, err := migrations.ReadFile(m.name)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, string(sql)); err != nil {
			return fmt.Errorf("postgres: migration %d: %w", m.version, err)
		}
		_, err := tx.Exec(ctx, "INSERT INTO schema_version (version) VALUES ($1)", m.version)
		return err
	})
}

// DatabaseSchemaVersion is the version the database is at.
func (s *Store) DatabaseSchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&v)
	return v, err
}

// --- small helpers ---

// retryable reports a deadlock or serialization failure: the transaction
// did nothing and may be run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// uniqueViolation reports a unique index refusing a row.
func uniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	return err
}

func encode(v any) ([]byte, error) { return json.Marshal(v) }

func decode(data []byte, v any) error { return json.Unmarshal(data, v) }

// getJSON reads one record's data column into v (ErrNotFound if none).
func getJSON(ctx context.Context, q querier, v any, sql string, args ...any) error {
	var data []byte
	if err := q.QueryRow(ctx, sql, args...).Scan(&data); err != nil {
		return notFound(err)
	}
	return decode(data, v)
}

// scanJSON decodes a row's one data column into v (ErrNotFound if none).
func scanJSON(r pgx.Row, v any) error {
	var data []byte
	if err := r.Scan(&data); err != nil {
		return notFound(err)
	}
	return decode(data, v)
}

// listJSON reads the data column of every row into a new T each.
func listJSON[T any](ctx context.Context, q querier, sql string, args ...any) ([]*T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var out []*T
	var data []byte
	_, err = pgx.ForEachRow(rows, []any{&data}, func() error {
		v := new(T)
		if err := decode(data, v); err != nil {
			return err
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

// querier is what pgxpool.Pool and pgx.Tx share.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// traceFunc hands every statement's text, with the context it was sent
// under, to a test.
type traceFunc func(ctx context.Context, sql string)

func (f traceFunc) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	f(ctx, d.SQL)
	return ctx
}

func (traceFunc) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (f traceFunc) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	for _, q := range d.Batch.QueuedQueries {
		f(ctx, q.SQL)
	}
	return ctx
}

func (traceFunc) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (traceFunc) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}
