package bolt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// migrateV1 moves a schema-1 store's content-addressed raw files into the
// segment log (or a file per large message), one owner per copy, and then
// raises the schema to 2. A backup of the store as it was is written to
// the data dir first. A crash part-way is safe: records are switched to
// their new locators in batches whose bytes are flushed first, the
// schema-1 files are deleted only after the version is raised, and a rerun
// carries on with the records still holding a schema-1 address.
func (s *Store) migrateV1() error {
	start := time.Now()
	backup, err := s.writeMigrationBackup()
	if err != nil {
		return fmt.Errorf("store: migrate to schema 2: backup first: %w", err)
	}
	moved, missing := 0, 0
	for _, bucket := range [][]byte{bMessages, bQuarantine} {
		var after []byte
		for {
			n, miss, next, err := s.migrateChunk(bucket, after, 256)
			if err != nil {
				return fmt.Errorf("store: migrate to schema 2 (a backup of the old store is at %s): %w", backup, err)
			}
			moved += n
			missing += miss
			if next == nil {
				break
			}
			after = next
		}
	}
	if err := s.indexSentV1(); err != nil {
		return fmt.Errorf("store: migrate to schema 2 (a backup of the old store is at %s): index sent messages: %w", backup, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bMeta).Put(keySchema, putU64(SchemaVersion)) // 2 to 3 changes no data
	}); err != nil {
		return fmt.Errorf("store: migrate to schema 2: %w", err)
	}
	// The version is durable: the schema-1 files are no one's now.
	shards, _ := os.ReadDir(s.raw.root)
	for _, sh := range shards {
		if sh.IsDir() && len(sh.Name()) == 2 {
			_ = os.RemoveAll(filepath.Join(s.raw.root, sh.Name()))
		}
	}
	s.log().Warn("store migrated from schema 1", "to", SchemaVersion, "dir", s.dir, "backup", backup,
		"raw_messages_moved", moved, "raw_files_missing", missing, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// writeMigrationBackup writes a backup of the unmigrated store into the
// data dir (durably) and returns its path.
func (s *Store) writeMigrationBackup() (string, error) {
	p := filepath.Join(s.dir, fmt.Sprintf("pre-schema-2-backup-%s.tar", s.now().UTC().Format("20060102T150405Z")))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = s.backupDirect(context.Background(), f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		os.Remove(p)
		return "", err
	}
	return p, nil
}

type legacyRaw struct {
	key []byte // in its bucket
	sum string
	loc string // new locator, once written
}

// migrateChunk moves the raw bytes of up to limit records of bucket after
// key after. next is the key to continue after, nil at the end.
func (s *Store) migrateChunk(bucket, after []byte, limit int) (moved, missing int, next []byte, err error) {
	var todo []legacyRaw
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, v := c.First()
		if after != nil {
			k, v = c.Seek(after)
			if k != nil && string(k) == string(after) {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			raw, err := recordRaw(v)
			if err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			if validSum(raw) {
				todo = append(todo, legacyRaw{key: append([]byte(nil), k...), sum: raw})
			}
			if len(todo) == limit {
				next = append([]byte(nil), k...)
				return nil
			}
		}
		return nil
	})
	if err != nil || len(todo) == 0 {
		return 0, 0, next, err
	}
	for i := range todo {
		loc, err := s.copyLegacy(todo[i].sum)
		if errors.Is(err, os.ErrNotExist) {
			missing++ // left as it was: it reads as not found, as before
			continue
		}
		if err != nil {
			return 0, 0, nil, err
		}
		todo[i].loc = loc
	}
	if err := s.segs.flush(); err != nil {
		return 0, 0, nil, err
	}
	kind := byte(ownerMessage)
	if string(bucket) == string(bQuarantine) {
		kind = ownerQuarantine
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, t := range todo {
			if t.loc == "" {
				continue
			}
			data, err := withRaw(b.Get(t.key), t.loc)
			if err != nil {
				return err
			}
			if err := linkRaw(tx, t.loc, append([]byte{kind}, t.key...)); err != nil {
				return err
			}
			if err := b.Put(t.key, data); err != nil {
				return err
			}
			moved++
		}
		return nil
	})
	return moved, missing, next, err
}

// indexSentV1 fills bSentIdx, which schema 1 did not have, with the
// messages sent through the API, so the tenant status counts the sends
// made before the upgrade. Puts are idempotent: a rerun after a crash
// writes the same keys. Chunks keep each transaction small.
func (s *Store) indexSentV1() error {
	var after []byte
	for {
		type sent struct {
			tenant string
			id     uint64
			at     time.Time
		}
		var todo []sent
		var next []byte
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bMessages).Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); k != nil && string(k) == string(after) {
					k, v = c.Next()
				}
			}
			for ; k != nil; k, v = c.Next() {
				var m Message
				if err := decodeMessage(v, &m); err != nil {
					return fmt.Errorf("record %q: %w", k, err)
				}
				if m.Status != "" { // as CreateOutbound indexes it
					todo = append(todo, sent{m.Tenant, m.ID, m.Received})
				}
				if len(todo) == 1024 {
					next = append([]byte(nil), k...)
					return nil
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(todo) > 0 {
			if err := s.db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket(bSentIdx)
				for _, m := range todo {
					if err := b.Put(sentKey(m.tenant, m.at, m.id), nil); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		after = next
	}
}

// copyLegacy copies one schema-1 file into the new layout.
func (s *Store) copyLegacy(sum string) (string, error) {
	f, err := os.Open(s.raw.path(sum))
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	loc, _, err := s.writeRaw(&Raw{Body: f, Size: fi.Size()})
	return loc, err
}

func (s *Store) log() *slog.Logger {
	if s.logger != nil {
		return s.logger
	}
	return slog.New(slog.DiscardHandler)
}
