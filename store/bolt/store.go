// Package store keeps syncrelay's durable state: a bbolt database of domain
// records plus the raw messages, in an append-only segment log (small and
// medium messages) or a file each (large ones). See contract.go for the
// backend-neutral contract and segment.go for the layout of raw bytes.
//
// Its API is made of domain operations (create a tenant, commit a matched
// message, look up a Message-ID ...), never of buckets, so that a shared
// PostgreSQL backend can implement the same operations later. bbolt types
// do not leave this package.
package bolt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"syncrelay/store/groupcommit"
)

// SchemaVersion is the version this code writes. Older stores are migrated
// forward at Open; newer ones are refused (a downgrade would misread them).
//
// 1: raw messages in content-addressed files, one per message.
// 2: raw messages in the segment log (or a file of their own when large),
// each owned by one record and indexed to it.
// 3: message, outbox-event and thread records may be binary (codec.go).
// No data changes: a schema-2 store is raised at Open and its JSON
// records still read; the number is raised so that an older binary
// refuses the store instead of failing on every binary record.
// 4: new messages reach thread_msg in bulk (threadtail.go); the messages
// above meta "thread_msg_merged" are indexed only in memory, which an
// older binary would not know, so it must refuse the store. A schema-3
// store is raised at Open with the mark at its last message.
const SchemaVersion = 4

var (
	bMeta       = []byte("meta")
	bTenants    = []byte("tenants")
	bInbound    = []byte("inbound")     // lower(address) -> tenant
	bUsers      = []byte("users")       // tenant/user -> User
	bUserEmail  = []byte("user_email")  // tenant/lower(email) -> user
	bCands      = []byte("candidates")  // tenant/cand -> Candidate
	bCandEmail  = []byte("cand_email")  // tenant/lower(email) -> cand
	bThreads    = []byte("threads")     // tenant/u64 -> Thread
	bCandThread = []byte("cand_thread") // tenant/cand/u64 -> ""
	bMessages   = []byte("messages")    // tenant/u64 -> Message
	bThreadMsg  = []byte("thread_msg")  // tenant/u64 thread/u64 msg -> ""
	// bMsgID holds two kinds of keys, side by side so that one message's
	// entries share a page (each random page a commit dirties is 4 KiB
	// written):
	//   tenant/msgid                 -> Ref: issued, learned and received ids; the first holder keeps it
	//   tenant/dedup key 0x00 thread -> u64 msg: duplicates are per thread (copyKey)
	bMsgID = []byte("msgid")
	// bSentIdx lists the messages sent through the API by time, so that the
	// status reads the sends of its window, not every message of it.
	bSentIdx    = []byte("sent_idx")   // tenant/ u64 unix ns / u64 msg -> ""
	bConvIndex  = []byte("conv_index") // tenant/hex -> thread u64
	bCounters   = []byte("counters")   // tenant/hour/decision/reason -> u64
	bOutbox     = []byte("outbox")     // u64 seq -> Event
	bKV         = []byte("kv")         // small cross-request state (oauth state, idempotency ...)
	bQuarantine = []byte("quarantine") // tenant/u64 -> Quarantined
	// bQuarantineActs is the bounded audit of releases and deletions.
	bQuarantineActs = []byte("quarantine_actions") // tenant/u64 seq -> QuarantineAction

	allBuckets = [][]byte{bMeta, bTenants, bInbound, bUsers, bUserEmail, bCands, bCandEmail,
		bThreads, bCandThread, bMessages, bThreadMsg, bMsgID, bSentIdx, bConvIndex, bCounters, bOutbox, bKV, bQuarantine,
		bGrants, bDelegations, bDelegPair, bOutboxIdx, bSegs, bSegRecs, bBigFiles, bQuarantineActs, bDelegEmail}

	keySchema = []byte("schema_version")
)

// Options configure Open.
type Options struct {
	// LockTimeout bounds the wait for the database file lock.
	LockTimeout time.Duration
	// ReadOnly opens the database with a shared lock (for check/backup tools).
	ReadOnly bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Scratch opens a copy of a database without its raw bytes (DryRun):
	// records keep their locators, whose bytes read as ErrNotFound.
	Scratch bool
	// CompactNow lets Compact take segments the moment they are sealed
	// (a store no daemon writes to: `syncrelay compact`, tests).
	CompactNow bool
	// Log receives the store's own notices (migrations, compaction).
	Log *slog.Logger
	// TailMerge is how many new messages the thread index holds in
	// memory before they are written to thread_msg in one commit
	// (threadtail.go); 0 means 8,192. Tests set it low.
	TailMerge int
}

// Store is the bbolt-backed store.
type Store struct {
	db     *bolt.DB
	raw    *rawDir // schema 1's content-addressed files, until migrated
	segs   *segLog // nil when read-only
	big    *bigDir
	dir    string
	now    func() time.Time
	logger *slog.Logger

	commits *groupcommit.Queue[*commitReq] // nil when read-only
	counts  *counterBuf
	inbound inboundCache
	tenants tenantCache
	tail    *threadTail

	compactMu sync.Mutex    // one compaction at a time
	grace     time.Duration // compactGrace, 0 for a store nobody else writes

	cleanup func() // DryRun: remove the scratch copy after Close

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the store in dir: dir/syncrelay.db and
// dir/raw/. A schema-1 store is migrated, after a backup of it is written
// to dir (see migrateV1).
func Open(dir string, o Options) (*Store, error) {
	if o.LockTimeout <= 0 {
		o.LockTimeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if !o.ReadOnly {
		if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o700); err != nil {
			return nil, fmt.Errorf("store: create data dir: %w", err)
		}
	}
	path := filepath.Join(dir, "syncrelay.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      o.LockTimeout,
		ReadOnly:     o.ReadOnly,
		FreelistType: bolt.FreelistMapType,
		// bbolt otherwise writes its whole freelist on every commit: on the
		// benchmark's 1M-message store (81,340 free pages) that was a
		// 300 KB pwrite per batch, 60% of the database's writes (strace),
		// and c1M fell to 0.37 of the empty store's rate. The cost is a
		// scan of the file at open to rebuild the list (0.1 to 0.4 s at
		// 2 GB here).
		NoFreelistSync: true,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: %s: %w (waited %s for its lock; stop the other process or use another store.dir)", path, ErrLocked, o.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{db: db, raw: &rawDir{root: filepath.Join(dir, "raw")}, dir: dir, now: o.Now, logger: o.Log, grace: compactGrace,
		big:  &bigDir{root: filepath.Join(dir, "raw", "big"), tmp: filepath.Join(dir, "raw", "tmp")},
		tail: newThreadTail(o.TailMerge)}
	if o.ReadOnly {
		err := s.checkSchema()
		if err == nil {
			err = s.loadTail()
		}
		if err != nil {
			db.Close()
			return nil, err
		}
		return s, nil
	}
	from, err := s.migrate()
	if err != nil {
		db.Close()
		return nil, err
	}
	committed, err := s.committedSegments()
	if err == nil {
		s.segs, err = openSegLog(s.segDir(), committed, o.Scratch)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	s.segs.register = s.registerSegment
	s.segs.now = s.now
	if o.CompactNow {
		s.grace = 0
	}
	if from == 1 {
		if err := s.migrateV1(); err != nil {
			s.segs.close()
			db.Close()
			return nil, err
		}
	}
	if err := s.loadTail(); err != nil {
		s.segs.close()
		db.Close()
		return nil, fmt.Errorf("store: thread index: %w", err)
	}
	s.counts = newCounterBuf()
	s.commits = groupcommit.New[*commitReq](1024)
	go s.commits.Run(maxBatch, 10*time.Second, func() { _ = s.flushCounters() }, s.runBatch)
	s.tail.start(s.mergeTail)
	return s, nil
}

// Dir is the data directory.
func (s *Store) Dir() string { return s.dir }

// Close flushes buffered counters and closes the database.
// It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.tail.stop()
		if s.commits != nil {
			s.commits.Close()
			_ = s.flushCounters()
		}
		s.closeErr = s.db.Close()
		if s.segs != nil {
			s.segs.close()
		}
		if s.cleanup != nil {
			s.cleanup()
		}
	})
	return s.closeErr
}

func (s *Store) checkSchema() error {
	return s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bMeta)
		if m == nil {
			return fmt.Errorf("store: %s is not initialised (run the daemon once)", s.dir)
		}
		v := int(getU64(m.Get(keySchema)))
		if v > SchemaVersion {
			return fmt.Errorf("store: schema version %d is newer than this binary's %d; upgrade syncrelay", v, SchemaVersion)
		}
		return nil
	})
}

// migrate creates missing buckets and returns the schema version the
// store had (SchemaVersion for a new store). Data migrations run after the
// segment log is open (migrateV1); the version is raised by them.
func (s *Store) migrate() (from int, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("store: create bucket %s: %w", b, err)
			}
		}
		if err := mergeRoot(tx); err != nil {
			return err
		}
		m := tx.Bucket(bMeta)
		from = SchemaVersion
		if raw := m.Get(keySchema); raw != nil {
			from = int(getU64(raw))
		}
		if from > SchemaVersion {
			return fmt.Errorf("store: schema version %d is newer than this binary's %d; upgrade syncrelay", from, SchemaVersion)
		}
		// Up to schema 3 every message was in thread_msg: the mark starts
		// at the last one (0 for a new store).
		if m.Get(keyMerged) == nil {
			if err := m.Put(keyMerged, putU64(tx.Bucket(bMessages).Sequence())); err != nil {
				return err
			}
		}
		if from >= 2 { // nothing to migrate from 2 (see SchemaVersion)
			return m.Put(keySchema, putU64(SchemaVersion))
		}
		return nil
	})
	return from, err
}

// mergeRoot lets bbolt merge the root bucket's pages. The root holds one
// entry per bucket (about 30, 1 to 2 KiB with the small buckets stored
// inline in it), which fits a page; but while a new store's buckets grow,
// several inline ones reach their 1 KiB limit at once and the root splits
// into a branch and two leaves, and bbolt merges pages only after a
// deletion. Every commit rewrites the root pages holding the headers of
// the buckets it changed: split, an inbound batch wrote 3 root pages
// instead of 1 (TestPageAccounting), 8 KiB more per batch. Deleting a
// bucket marks its page for rebalancing, which merges it with its sibling
// when it is under a quarter page: a scratch bucket is created and deleted
// next to every bucket, so that every root page is rebalanced, and a split
// root is merged back that way at every Open. It stays split when its
// pages are fuller than that.
func mergeRoot(tx *bolt.Tx) error {
	var names [][]byte
	if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		names = append(names, append(slicesClone(name), 0))
		return nil
	}); err != nil {
		return fmt.Errorf("store: merge root: %w", err)
	}
	for _, n := range names {
		if _, err := tx.CreateBucket(n); err != nil {
			return fmt.Errorf("store: merge root: %w", err)
		}
	}
	for _, n := range names {
		if err := tx.DeleteBucket(n); err != nil {
			return fmt.Errorf("store: merge root: %w", err)
		}
	}
	return nil
}

// --- small helpers ---

func putU64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func key(parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p) + 1
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, '/')
		}
		b = append(b, p...)
	}
	return b
}

func keyU64(prefix string, v uint64) []byte {
	b := make([]byte, 0, len(prefix)+9)
	b = append(b, prefix...)
	b = append(b, '/')
	return binary.BigEndian.AppendUint64(b, v)
}

func getJSON(b *bolt.Bucket, k []byte, v any) error {
	data := b.Get(k)
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}
