package postgres

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// Raw bytes are rows of raw_blobs, written in the transaction of the
// record that points at them with the locator "pg:<id>", and deleted with
// it: there are no orphans to collect and nothing to compact.

const rawPrefix = "pg:"

// readRaw reads a Raw's bytes (Head, then Size bytes of Body; all of Body
// when Size is negative) before its commit is queued, so that a slow
// client never holds the commit loop.
func readRaw(raw *store.Raw) ([]byte, error) {
	if raw == nil {
		return nil, nil
	}
	if raw.Size < 0 {
		body, err := io.ReadAll(raw.Body)
		if err != nil {
			return nil, fmt.Errorf("read message: %w", err)
		}
		return append(bytes.Clone(raw.Head), body...), nil
	}
	buf := make([]byte, int64(len(raw.Head))+raw.Size)
	copy(buf, raw.Head)
	if _, err := io.ReadFull(raw.Body, buf[len(raw.Head):]); err != nil {
		return nil, fmt.Errorf("read message: %w", err)
	}
	return buf, nil
}

// putRaw stores bytes and returns their locator.
func putRaw(ctx context.Context, tx pgx.Tx, b []byte) (string, error) {
	var id int64
	if err := tx.QueryRow(ctx, "INSERT INTO raw_blobs (bytes) VALUES ($1) RETURNING id", b).Scan(&id); err != nil {
		return "", fmt.Errorf("store raw: %w", err)
	}
	return rawPrefix + strconv.FormatInt(id, 10), nil
}

// dropRaw deletes the bytes behind loc (nothing for "" or a foreign locator).
func dropRaw(ctx context.Context, tx pgx.Tx, loc string) error {
	id, ok := parseLoc(loc)
	if !ok {
		return nil
	}
	_, err := tx.Exec(ctx, "DELETE FROM raw_blobs WHERE id = $1", id)
	return err
}

func parseLoc(loc string) (int64, bool) {
	rest, ok := strings.CutPrefix(loc, rawPrefix)
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	return id, err == nil && id > 0
}

// OpenRaw opens the bytes behind a record's Raw locator.
func (s *Store) OpenRaw(ctx context.Context, loc string) (store.RawFile, error) {
	id, ok := parseLoc(loc)
	if !ok {
		return nil, fmt.Errorf("raw %q: %w", loc, store.ErrNotFound)
	}
	var b []byte
	if err := s.pool.QueryRow(ctx, "SELECT bytes FROM raw_blobs WHERE id = $1", id).Scan(&b); err != nil {
		return nil, fmt.Errorf("raw %s: %w", loc, notFound(err))
	}
	return &rawFile{Reader: bytes.NewReader(b)}, nil
}

// rawFile is a stored message held in memory.
type rawFile struct{ *bytes.Reader }

func (r *rawFile) Close() error { return nil }

func (r *rawFile) Size() int64 { return r.Reader.Size() }
