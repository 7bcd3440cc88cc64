package bolt

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// commitOne writes a raw file and commits it as a new inbound message.
func commitOne(ctx context.Context, s *Store, thread uint64, i int) (uint64, error) {
	body := fmt.Sprintf("Message-ID: <load%d@cand.test>\r\n\r\nbody %d %s\r\n", i, i, strings.Repeat("x", i%300))
	res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: thread, Direction: Inbound,
		InternetMessageID: fmt.Sprintf("load%d@cand.test", i), From: "carl@cand.test"},
		Raw: testRaw("Authentication-Results: relay.test; dkim=pass\r\n", body)})
	if err != nil {
		return 0, err
	}
	return res.Ref.Message, nil
}

// snapshotOf lists a store's messages (id -> raw bytes, "" if removed).
func snapshotOf(t *testing.T, s *Store, thread uint64) map[uint64]string {
	t.Helper()
	msgs, err := s.ThreadMessages(context.Background(), "acme", thread)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, m := range msgs {
		if m.Raw == "" {
			out[m.ID] = ""
			continue
		}
		f, err := s.OpenRaw(context.Background(), m.Raw)
		if err != nil {
			t.Fatalf("message %d: raw %s: %v", m.ID, m.Raw, err)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		out[m.ID] = string(b)
	}
	return out
}

func restoreInto(t *testing.T, archive []byte) (*Store, *RestoreResult) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "restored")
	res, err := Restore(context.Background(), bytes.NewReader(archive), dir)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, res
}

// TestBackupUnderWriteLoad backs up while writers commit messages and
// remove some (which deletes raw files), restores, and checks that the
// restored store is a consistent snapshot: every message committed before
// the backup began is there, every message it has is identical to the
// source's (raw bytes included), nothing refers to a missing raw file.
func TestBackupUnderWriteLoad(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, _ := newThread(t, s)

	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		n       atomic.Int64
		mu      sync.Mutex
		done    = map[uint64]time.Time{} // message -> commit returned
		errs    = make(chan error, 16)
		removed = map[uint64]bool{}
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := int(n.Add(1))
				id, err := commitOne(ctx, s, th.ID, i)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				done[id] = time.Now()
				mu.Unlock()
				if i%7 == 0 { // removals delete raw files while the backup pins them
					if err := s.RemoveMessage(ctx, "acme", id); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					removed[id] = true
					mu.Unlock()
				}
			}
		}()
	}
	for n.Load() < 200 {
		time.Sleep(time.Millisecond)
	}
	started := time.Now()
	var buf bytes.Buffer
	m, err := s.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	for n.Load() < int64(m.Messages)+100 { // keep writing after the backup too
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	r, res := restoreInto(t, buf.Bytes())
	if res.Manifest.RawFiles == 0 || res.Manifest.Messages != m.Messages || res.Manifest.Format != BackupFormat {
		t.Fatalf("manifest %+v vs %+v", res.Manifest, m)
	}
	got := snapshotOf(t, r, th.ID)
	src := snapshotOf(t, s, th.ID)
	mu.Lock()
	defer mu.Unlock()
	for id, at := range done {
		if at.Before(started) {
			if _, ok := got[id]; !ok {
				t.Fatalf("message %d committed before the backup is missing from it", id)
			}
		}
	}
	kept := 0
	for id, raw := range got {
		srcRaw, ok := src[id]
		if !ok {
			t.Fatalf("restored message %d does not exist in the source", id)
		}
		if raw != "" && srcRaw != "" && raw != srcRaw {
			t.Fatalf("message %d: restored raw differs from the source", id)
		}
		if raw != "" {
			kept++
		}
	}
	if kept == 0 {
		t.Fatal("no message with raw bytes restored")
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}

	// A second backup of the quiescent store restores to exactly the source.
	buf.Reset()
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	r2, _ := restoreInto(t, buf.Bytes())
	got2 := snapshotOf(t, r2, th.ID)
	if len(got2) != len(src) {
		t.Fatalf("quiescent backup: %d messages, source %d", len(got2), len(src))
	}
	for id, raw := range src {
		if got2[id] != raw {
			t.Fatalf("quiescent backup: message %d differs", id)
		}
	}
	// Staging leaves nothing behind.
	if ents, _ := os.ReadDir(s.big.tmp); len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("staging left %v", names)
	}
}

func TestBackupReadOnlyStoreAndRestoreChecks(t *testing.T) {
	t.Parallel()
	s, dir := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, _ := newThread(t, s)
	for i := 1; i <= 5; i++ {
		if _, err := commitOne(ctx, s, th.ID, i); err != nil {
			t.Fatal(err)
		}
	}
	want := snapshotOf(t, s, th.ID)
	s.Close()

	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	m, err := ro.Backup(ctx, &buf)
	ro.Close()
	if err != nil {
		t.Fatal(err)
	}
	if m.RawFiles != 1 || m.Tenants != 1 { // five messages in one segment
		t.Fatalf("manifest %+v", m)
	}
	archive := buf.Bytes()
	if vm, err := VerifyBackup(ctx, bytes.NewReader(archive)); err != nil || vm.RawFiles != 1 {
		t.Fatalf("VerifyBackup: %+v %v", vm, err)
	}
	r, _ := restoreInto(t, archive)
	got := snapshotOf(t, r, th.ID)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored %v\nwant %v", got, want)
	}

	// Restore refuses a directory that holds a store, and leaves it alone.
	if _, err := Restore(ctx, bytes.NewReader(archive), dir); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("restore over a store: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "syncrelay.db")); err != nil {
		t.Fatal("existing store touched:", err)
	}

	// A truncated archive fails and leaves nothing behind.
	empty := filepath.Join(t.TempDir(), "d")
	_, err = Restore(ctx, bytes.NewReader(archive[:len(archive)-3000]), empty)
	if err == nil {
		t.Fatal("truncated archive restored")
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("failed restore left %d entries", len(ents))
	}

	// A damaged segment is detected by the content hashes of its records.
	damaged := rewriteArchive(t, archive, func(name string, b []byte) []byte {
		if strings.HasPrefix(name, "seg/") {
			b = bytes.Clone(b)
			b[len(b)-3] ^= 1
		}
		return b
	})
	if _, err := Restore(ctx, bytes.NewReader(damaged), filepath.Join(t.TempDir(), "d")); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("damaged raw file: %v", err)
	}
	if _, err := VerifyBackup(ctx, bytes.NewReader(damaged)); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("VerifyBackup of a damaged archive: %v", err)
	}
	if _, err := VerifyBackup(ctx, bytes.NewReader(archive[:len(archive)-3000])); err == nil {
		t.Fatal("VerifyBackup of a truncated archive passed")
	}

	// Anything but the expected entries is refused (no path tricks).
	evil := rewriteArchive(t, archive, func(name string, b []byte) []byte { return b }, "../../etc/evil")
	if _, err := Restore(ctx, bytes.NewReader(evil), filepath.Join(t.TempDir(), "d")); err == nil || !strings.Contains(err.Error(), "unexpected entry") {
		t.Fatalf("unexpected entry: %v", err)
	}
	if _, err := Restore(ctx, strings.NewReader("not a tar"), filepath.Join(t.TempDir(), "d")); err == nil {
		t.Fatal("garbage restored")
	}
}

// rewriteArchive copies a tar archive through fn, adding empty entries
// named extra at the end.
func rewriteArchive(t *testing.T, archive []byte, fn func(string, []byte) []byte, extra ...string) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		b = fn(h.Name, b)
		h.Size = int64(len(b))
		tw.WriteHeader(h)
		tw.Write(b)
	}
	for _, name := range extra {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600})
	}
	tw.Close()
	return out.Bytes()
}

// TestBackupRetriesWhenRawFileRemovedAfterSnapshot removes a message and
// compacts (which deletes the segment the snapshot refers to) between the
// snapshot and the pinning: the backup starts over and the archive agrees
// with itself.
func TestBackupRetriesWhenRawFileRemovedAfterSnapshot(t *testing.T) {
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, _ := newThread(t, s)
	var ids []uint64
	for i := 1; i <= 3; i++ {
		id, err := commitOne(ctx, s, th.ID, i)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	calls := 0
	testHookBeforePin = func() {
		calls++
		if calls == 1 {
			if err := s.RemoveMessage(ctx, "acme", ids[1]); err != nil {
				t.Error(err)
			}
			if st, err := s.Compact(ctx); err != nil || st.Segments != 1 || st.Moved != 2 {
				t.Errorf("compact: %+v %v", st, err)
			}
		}
	}
	defer func() { testHookBeforePin = nil }()
	var buf bytes.Buffer
	m, err := s.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if calls != 2 || m.RawFiles != 1 {
		t.Fatalf("attempts %d, raw files %d; want 2 and 1", calls, m.RawFiles)
	}
	r, _ := restoreInto(t, buf.Bytes())
	got := snapshotOf(t, r, th.ID)
	if got[ids[1]] != "" || got[ids[0]] == "" || got[ids[2]] == "" {
		t.Fatalf("restored %v", got)
	}
}
