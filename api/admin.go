package api

import (
	"context"
	"io"
	"net/http"
	"time"

	"syncrelay/store"
)

// GET /v1/admin/backup streams a consistent backup of the store (the tar
// archive described in store/backup.go) while the daemon runs: the daemon
// holds the database's exclusive lock, so `syncrelay backup` goes through
// here. Errors before the first byte are problem documents; an error in
// the middle aborts the response, so the client never mistakes a
// truncated archive for a complete one (the archive's end marker and its
// manifest's counts are checked by `syncrelay backup` as well).

// BackupSource writes a consistent backup archive of the store.
type BackupSource interface {
	Backup(ctx context.Context, w io.Writer) (*store.BackupManifest, error)
}

// countingWriter counts what reached the client.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *Server) adminBackup(w http.ResponseWriter, r *http.Request) {
	bs := s.o.Backup
	if bs == nil {
		writeProblem(w, http.StatusNotImplemented, "not-implemented", "Not implemented", "this store is not backed up through the API (with PostgreSQL, use pg_dump or point-in-time recovery)")
		return
	}
	start := time.Now()
	h := w.Header()
	h.Set("Content-Type", "application/x-tar")
	h.Set("Content-Disposition", `attachment; filename="syncrelay-backup-`+start.UTC().Format("20060102T150405Z")+`.tar"`)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	cw := &countingWriter{w: w}
	m, err := bs.Backup(r.Context(), cw)
	if err != nil {
		if cw.n == 0 {
			h.Del("Content-Disposition")
			s.o.Log.ErrorContext(r.Context(), "backup failed", "err", err)
			writeProblem(w, http.StatusServiceUnavailable, "backup-failed", "Backup failed", "the snapshot could not be taken; see the daemon's log and retry")
			return
		}
		s.o.Log.ErrorContext(r.Context(), "backup failed while streaming; response aborted", "bytes", cw.n, "err", err)
		panic(http.ErrAbortHandler)
	}
	s.o.Log.Info("backup streamed", "bytes", cw.n, "db_bytes", m.DBBytes, "raw_files", m.RawFiles,
		"messages", m.Messages, "duration_ms", time.Since(start).Milliseconds())
}

// GET /v1/admin/key-fingerprint returns the fingerprint of the secret key
// recorded with the data (never the key). `syncrelay check` compares its
// key file with it while the daemon runs and holds the store's lock, so a
// key that would not match the data at the next start is found before
// that start.

type keyFingerprintStore interface {
	KeyFingerprint(ctx context.Context) (string, bool, error)
}

func (s *Server) adminKeyFingerprint(w http.ResponseWriter, r *http.Request) {
	fp, ok, err := s.o.Store.KeyFingerprint(r.Context())
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	if !ok {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no secret key fingerprint is recorded with this data yet")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"key_fingerprint": fp})
}
