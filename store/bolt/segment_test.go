package bolt

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// commitMarked commits an inbound message whose body carries marker.
func commitMarked(t *testing.T, s *Store, thread uint64, marker string) *Message {
	t.Helper()
	ctx := context.Background()
	body := "Subject: hello\r\nMessage-ID: <" + marker + "@cand.test>\r\n\r\nbody BODY-" + marker + "\r\n"
	res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: thread, Direction: Inbound,
		InternetMessageID: marker + "@cand.test"}, Raw: testRaw("X-Head: 1\r\n", body)})
	if err != nil || res.Decision != Stored {
		t.Fatalf("commit %s: %+v %v", marker, res, err)
	}
	m, err := s.Message(ctx, "acme", res.Ref.Message)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readRaw(t *testing.T, s *Store, loc string) (string, error) {
	t.Helper()
	f, err := s.OpenRaw(context.Background(), loc)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// grepDir lists the files under dir that contain needle.
func grepDir(t *testing.T, dir, needle string) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(needle)) {
			hits = append(hits, p)
		}
		return nil
	})
	return hits
}

// TestSegmentBatchOneFile: small messages share one segment file; each
// reads back exactly, with the head first, and hashes to its locator.
func TestSegmentBatchOneFile(t *testing.T) {
	t.Parallel()
	s, dir := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	var msgs []*Message
	for i := range 20 {
		msgs = append(msgs, commitMarked(t, s, th.ID, fmt.Sprintf("seg-%02d", i)))
	}
	segs, _ := os.ReadDir(filepath.Join(dir, "raw", "seg"))
	if len(segs) != 1 {
		t.Fatalf("%d segment files, want 1", len(segs))
	}
	for i, m := range msgs {
		got, err := readRaw(t, s, m.Raw)
		if err != nil || !strings.HasPrefix(got, "X-Head: 1\r\nSubject: hello\r\n") || !strings.Contains(got, fmt.Sprintf("seg-%02d", i)) {
			t.Fatalf("message %d: %q %v", i, got, err)
		}
		if int64(len(got)) != m.Size {
			t.Fatalf("message %d: %d bytes, record says %d", i, len(got), m.Size)
		}
		if err := s.checkRaw(context.Background(), m.Raw); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// TestSegmentCrashLeftovers: bytes written after the last commit (a crash
// between a session's write and its commit) and a segment file created but
// never registered are gone at the next open; committed bytes stay, and new
// messages go to a new segment.
func TestSegmentCrashLeftovers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s)
	th, _ := newThread(t, s)
	kept := commitMarked(t, s, th.ID, "kept-1")
	// A write that never got its commit.
	if _, err := s.segs.append(nil, strings.NewReader("UNCOMMITTED-TAIL"), 16); err != nil {
		t.Fatal(err)
	}
	s.Close()
	segDir := filepath.Join(dir, "raw", "seg")
	orphan := filepath.Join(segDir, segName(99))
	if err := os.WriteFile(orphan, []byte("UNREGISTERED-SEGMENT"), 0o600); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if hits := grepDir(t, dir, "UNCOMMITTED-TAIL"); len(hits) != 0 {
		t.Fatalf("uncommitted bytes survived the reopen: %v", hits)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatal("unregistered segment survived the reopen")
	}
	if got, err := readRaw(t, s, kept.Raw); err != nil || !strings.Contains(got, "kept-1") {
		t.Fatalf("committed message after reopen: %q %v", got, err)
	}
	next := commitMarked(t, s, th.ID, "after-1")
	if l, _ := parseSegLoc(next.Raw); l.seg <= 99 {
		t.Fatalf("new segment id %d reuses an old one", l.seg)
	}
	if err := s.Verify(); err != nil {
		t.Fatal(err)
	}
}

// TestCompactFreesRemovedBytes greps the data dir: after removal and
// compaction the removed message's bytes are nowhere on disk, quarantine
// expiry likewise, and every other message still reads back.
func TestCompactFreesRemovedBytes(t *testing.T) {
	t.Parallel()
	now := time.Now()
	dir := t.TempDir()
	s, err := Open(dir, Options{CompactNow: true, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	var keep []*Message
	for i := range 5 {
		keep = append(keep, commitMarked(t, s, th.ID, fmt.Sprintf("KEEP-MARKER-%d", i)))
	}
	gone := commitMarked(t, s, th.ID, "REMOVED-MARKER-7f3a")
	keep = append(keep, commitMarked(t, s, th.ID, "KEEP-MARKER-last"))
	q := &Quarantined{Tenant: "acme", Reason: "test", Thread: th.ID}
	if err := s.Quarantine(ctx, q, testRaw("", "Subject: q\r\n\r\nQUARANTINE-MARKER-91c2\r\n"), time.Hour); err != nil {
		t.Fatal(err)
	}
	large := "Subject: big\r\n\r\nLARGE-REMOVED-MARKER-55d1\r\n" + strings.Repeat("y", largeMessage)
	res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, Direction: Inbound,
		InternetMessageID: "large@cand.test"}, Raw: testRaw("", large)})
	if err != nil {
		t.Fatal(err)
	}
	for _, marker := range []string{"BODY-REMOVED-MARKER-7f3a", "QUARANTINE-MARKER-91c2", "LARGE-REMOVED-MARKER-55d1"} {
		if len(grepDir(t, dir, marker)) == 0 {
			t.Fatalf("%s not on disk before removal: the test would prove nothing", marker)
		}
	}

	if err := s.RemoveMessage(ctx, "acme", gone.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveMessage(ctx, "acme", res.Ref.Message); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if n, err := s.ExpireQuarantine(ctx); err != nil || n != 1 {
		t.Fatalf("ExpireQuarantine = %d %v", n, err)
	}
	if hits := grepDir(t, dir, "LARGE-REMOVED-MARKER-55d1"); len(hits) != 0 {
		t.Fatalf("a removed large message's file is still there: %v", hits)
	}
	st, err := s.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Segments != 1 || st.Moved != 6 || st.FreedBytes <= 0 {
		t.Fatalf("compaction %+v", st)
	}
	for _, marker := range []string{"BODY-REMOVED-MARKER-7f3a", "QUARANTINE-MARKER-91c2"} {
		if hits := grepDir(t, dir, marker); len(hits) != 0 {
			t.Fatalf("%s still on disk after compaction: %v", marker, hits)
		}
	}
	for _, m := range keep {
		cur, err := s.Message(ctx, "acme", m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Raw == m.Raw {
			t.Fatalf("message %d was not moved", m.ID)
		}
		got, err := readRaw(t, s, cur.Raw)
		if err != nil || !strings.Contains(got, "KEEP-MARKER") {
			t.Fatalf("message %d after compaction: %q %v", m.ID, got, err)
		}
	}
	// Nothing left to do: a second pass moves nothing.
	if st, err := s.Compact(ctx); err != nil || st.Segments != 0 {
		t.Fatalf("second compaction %+v %v", st, err)
	}
	if err := s.Verify(); err != nil {
		t.Fatal(err)
	}
}

// TestCompactKeepsOpenReaders: a reader opened before compaction keeps
// reading the old bytes after the segment is deleted.
func TestCompactKeepsOpenReaders(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	m := commitMarked(t, s, th.ID, "reader-1")
	gone := commitMarked(t, s, th.ID, "reader-2")
	f, err := s.OpenRaw(ctx, m.Raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.RemoveMessage(ctx, "acme", gone.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Compact(ctx); err != nil || st.Segments != 1 {
		t.Fatalf("compact %+v %v", st, err)
	}
	b, err := io.ReadAll(f)
	if err != nil || !strings.Contains(string(b), "reader-1") {
		t.Fatalf("open reader after compaction: %q %v", b, err)
	}
}

// TestCommitIntoCompactedSegmentFails: bytes written to a segment that
// compaction deleted before their commit must not be committed (the record
// would point at nothing): the commit fails and the caller retries.
func TestCommitIntoCompactedSegmentFails(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	gone := commitMarked(t, s, th.ID, "c-1")
	loc, err := s.segs.append(nil, strings.NewReader("late body\r\n"), 11) // a session mid-way
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveMessage(ctx, "acme", gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	err = s.group(ctx, func(tx *bolt.Tx) error {
		return linkRaw(tx, loc, ownerKey(ownerMessage, "acme", 999))
	})
	if !errors.Is(err, errSegmentGone) {
		t.Fatalf("commit into a compacted segment: %v", err)
	}
}

// TestMigrateFromSchema1 opens a store written by the schema-1 code (made
// by testdata/v1gen.go.txt at commit 6ba4fd9): a backup of it is written
// first, every message's bytes move to the new layout and read back the
// same, the removed message stays removed, the old files are gone, and
// the backup restores to a store that migrates again.
func TestMigrateFromSchema1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	untar(t, "testdata/v1-store.tar.gz", dir)
	want := map[string]string{} // marker -> bytes, read through the v1 layout
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	msgs := allMessages(t, ro)
	for _, m := range msgs {
		if m.Raw == "" {
			continue
		}
		b, err := readRaw(t, ro, m.Raw)
		if err != nil {
			t.Fatalf("v1 read %d: %v", m.ID, err)
		}
		want[m.InternetMessageID] = b
	}
	ro.Close()
	if len(want) != 3 {
		t.Fatalf("fixture has %d messages with raw bytes, want 3", len(want))
	}

	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range allMessages(t, s) {
		if m.Removed {
			if m.Raw != "" {
				t.Fatalf("removed message %d got bytes back", m.ID)
			}
			continue
		}
		if !strings.HasPrefix(m.Raw, "s:") && !strings.HasPrefix(m.Raw, "f:") {
			t.Fatalf("message %d not migrated: %q", m.ID, m.Raw)
		}
		got, err := readRaw(t, s, m.Raw)
		if err != nil || got != want[m.InternetMessageID] {
			t.Fatalf("message %s after migration: %d bytes, %v", m.InternetMessageID, len(got), err)
		}
	}
	if qs, _ := s.QuarantinedMessages(context.Background(), "acme"); len(qs) != 1 || !strings.HasPrefix(qs[0].Raw, "s:") {
		t.Fatalf("quarantine after migration: %+v", qs)
	}
	// Schema 1 had no index of sent messages: the migration builds it, so
	// the tenant status counts sends made before the upgrade.
	if n, _, err := s.sentSince("acme", time.Time{}); err != nil || n != 1 {
		t.Fatalf("sent messages indexed after migration: %d, %v (want the fixture's 1)", n, err)
	}
	if err := s.Verify(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	shards, _ := filepath.Glob(filepath.Join(dir, "raw", "??"))
	if len(shards) != 0 {
		t.Fatalf("schema-1 directories left: %v", shards)
	}
	backups, _ := filepath.Glob(filepath.Join(dir, "pre-schema-2-backup-*.tar"))
	if len(backups) != 1 {
		t.Fatalf("backups written before migrating: %v", backups)
	}
	// The backup is a format-1 archive of the old store; it restores and
	// migrates again.
	f, err := os.Open(backups[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := Restore(context.Background(), f, filepath.Join(t.TempDir(), "r"))
	if err != nil || res.Manifest.Format != 1 || res.Manifest.SchemaVersion != 1 || res.Manifest.RawFiles != 4 {
		t.Fatalf("restore of the pre-migration backup: %+v %v", res, err)
	}
}

func allMessages(t *testing.T, s *Store) []*Message {
	t.Helper()
	ths, err := s.CandidateThreads(context.Background(), "acme", "c-1")
	if err != nil {
		t.Fatal(err)
	}
	var out []*Message
	for _, th := range ths {
		ms, err := s.ThreadMessages(context.Background(), "acme", th.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ms...)
	}
	return out
}

func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o700)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o700)
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompactDropsEmptySegments: every start registers a new segment; one
// that stored nothing before the next start is deleted by compaction rather
// than kept forever.
func TestCompactDropsEmptySegments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open := func() *Store {
		s, err := Open(dir, Options{CompactNow: true})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	seed(t, s)
	th, _ := newThread(t, s)
	kept := commitMarked(t, s, th.ID, "kept")
	s.Close()
	for range 3 { // starts that store nothing: each registers a new segment
		s = open()
		if _, _, err := s.segs.reserve(0); err != nil { // what the first append of a start does: a new, registered segment
			t.Fatal(err)
		}
		s.Close()
	}
	s = open()
	defer s.Close()
	before, _ := os.ReadDir(filepath.Join(dir, "raw", "seg"))
	st, err := s.Compact(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadDir(filepath.Join(dir, "raw", "seg"))
	if len(before) != 4 || len(after) != 1 || st.Segments != 3 || st.Moved != 0 {
		t.Fatalf("segment files %d -> %d, compaction %+v", len(before), len(after), st)
	}
	if got, err := readRaw(t, s, kept.Raw); err != nil || !strings.Contains(got, "kept") {
		t.Fatalf("kept message: %q %v", got, err)
	}
}

// TestCommitWaitsForSegmentFlush: the segment's fdatasync runs while the
// batch's transaction is built, but nothing commits before it ends: while
// it is held, no record of the batch is visible and no commit returns; a
// failed flush fails the batch and commits none of it.
func TestCommitWaitsForSegmentFlush(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	entered := make(chan struct{}, 16)
	release := make(chan error)
	// On failure, let a held flush go, so that Close (an earlier cleanup)
	// does not wait for it forever.
	t.Cleanup(func() { close(release) })
	s.segs.syncFile = func(f *os.File) error {
		entered <- struct{}{}
		if err := <-release; err != nil {
			return err
		}
		return fdatasync(f)
	}
	commit := func(marker string) chan error {
		done := make(chan error, 1)
		go func() {
			body := "Subject: hello\r\n\r\nbody " + marker + "\r\n"
			res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, Direction: Inbound,
				InternetMessageID: marker + "@cand.test"}, Raw: testRaw("", body)})
			if err == nil && res.Decision != Stored {
				err = fmt.Errorf("decision %s", res.Decision)
			}
			done <- err
		}()
		return done
	}
	visible := func(marker string) bool {
		_, ok, err := s.LookupMsgID(ctx, "acme", marker+"@cand.test")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	done := commit("held")
	<-entered
	time.Sleep(50 * time.Millisecond) // time enough to build and commit, were it not held
	select {
	case err := <-done:
		t.Fatalf("commit returned (%v) while its segment flush was held", err)
	default:
	}
	if visible("held") {
		t.Fatal("record committed before its segment bytes were flushed")
	}
	release <- nil
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !visible("held") {
		t.Fatal("record not committed after the flush")
	}

	done = commit("failed")
	<-entered
	release <- errors.New("disk on fire")
	if err := <-done; err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("commit after a failed flush: %v, want the flush error", err)
	}
	if visible("failed") {
		t.Fatal("record committed although its segment flush failed")
	}
}
