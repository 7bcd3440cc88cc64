package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Info is what `syncrelay check` reports about a database, read without
// changing it (no migration).
type Info struct {
	ServerVersion string
	// SchemaVersion is the database's migration level (0: never opened
	// by syncrelay); Binary the level this binary carries.
	SchemaVersion, Binary int
	// SynchronousCommit is the session's synchronous_commit; Standbys is
	// synchronous_standby_names ("" : commits wait for no replica).
	SynchronousCommit, Standbys string
}

// Inspect connects to dsn once and reads Info. Errors never contain the
// DSN's password.
func Inspect(ctx context.Context, dsn string) (*Info, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("invalid dsn")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", scrub(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	in := &Info{Binary: SchemaVersion()}
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('synchronous_commit'),
		current_setting('synchronous_standby_names')`).Scan(&in.ServerVersion, &in.SynchronousCommit, &in.Standbys)
	if err != nil {
		return nil, err
	}
	var has bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&has); err != nil {
		return nil, err
	}
	if has {
		if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&in.SchemaVersion); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// scrub keeps a connection error's cause but not its wrapper, which may
// name the server and user; a password never appears in pgconn errors.
func scrub(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) && ce.Unwrap() != nil {
		return ce.Unwrap()
	}
	return err
}
