// Package store keeps syncrelay's durable state: a bbolt database of domain
// records plus a content-addressed directory of raw messages.
//
// Its API is made of domain operations (create a tenant, commit a matched
// message, look up a Message-ID ...), never of buckets, so that a shared
// PostgreSQL backend can implement the same operations later. bbolt types
// do not leave this package.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrLocked   = errors.New("database is locked by another syncrelay")
	ErrClosed   = errors.New("store is closed")
)

// SchemaVersion is the version this code writes. Older stores are migrated
// forward at Open; newer ones are refused (a downgrade would misread them).
const SchemaVersion = 1

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
	bMsgID      = []byte("msgid")       // tenant/msgid -> Ref (issued, learned and received ids; first holder keeps it)
	bThreadCopy = []byte("thread_copy") // tenant/u64 thread/dedup key -> u64 msg (duplicates are per thread)
	bConvIndex  = []byte("conv_index")  // tenant/hex -> thread u64
	bCounters   = []byte("counters")    // tenant/hour/decision/reason -> u64
	bOutbox     = []byte("outbox")      // u64 seq -> Event
	bKV         = []byte("kv")          // small cross-request state (oauth state, idempotency ...)
	bQuarantine = []byte("quarantine")  // tenant/u64 -> Quarantined

	allBuckets = [][]byte{bMeta, bTenants, bInbound, bUsers, bUserEmail, bCands, bCandEmail,
		bThreads, bCandThread, bMessages, bThreadMsg, bMsgID, bThreadCopy, bConvIndex, bCounters, bOutbox, bKV, bQuarantine,
		bGrants, bDelegations, bDelegPair, bOutboxIdx}

	keySchema = []byte("schema_version")
)

// migrations[v] upgrades a store from version v to v+1.
var migrations = map[int]func(tx *bolt.Tx) error{}

// Options configure Open.
type Options struct {
	// LockTimeout bounds the wait for the database file lock.
	LockTimeout time.Duration
	// ReadOnly opens the database with a shared lock (for check/backup tools).
	ReadOnly bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Store is the bbolt-backed store.
type Store struct {
	db  *bolt.DB
	raw *rawDir
	dir string
	now func() time.Time

	commits chan *commitReq
	stop    chan struct{}
	done    chan struct{}
	counts  *counterBuf
	inbound inboundCache

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the store in dir: dir/syncrelay.db and dir/raw/.
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
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: %s: %w (waited %s for its lock; stop the other process or use another store.dir)", path, ErrLocked, o.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{db: db, raw: &rawDir{root: filepath.Join(dir, "raw")}, dir: dir, now: o.Now}
	if o.ReadOnly {
		if err := s.checkSchema(); err != nil {
			db.Close()
			return nil, err
		}
		return s, nil
	}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, err
	}
	s.counts = newCounterBuf()
	s.commits = make(chan *commitReq, 1024)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	go s.commitLoop()
	return s, nil
}

// Dir is the data directory.
func (s *Store) Dir() string { return s.dir }

// Close flushes buffered counters and closes the database.
// It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			close(s.stop)
			<-s.done
			_ = s.flushCounters()
		}
		s.closeErr = s.db.Close()
		s.raw.close()
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

func (s *Store) migrate() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("store: create bucket %s: %w", b, err)
			}
		}
		m := tx.Bucket(bMeta)
		raw := m.Get(keySchema)
		v := SchemaVersion
		if raw != nil {
			v = int(getU64(raw))
		}
		if v > SchemaVersion {
			return fmt.Errorf("store: schema version %d is newer than this binary's %d; upgrade syncrelay", v, SchemaVersion)
		}
		for ; v < SchemaVersion; v++ {
			if f := migrations[v]; f != nil {
				if err := f(tx); err != nil {
					return fmt.Errorf("store: migrate %d->%d: %w", v, v+1, err)
				}
			}
		}
		return m.Put(keySchema, putU64(SchemaVersion))
	})
}

// WriteTo writes a consistent snapshot of the database (bbolt Tx.WriteTo).
func (s *Store) WriteTo(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// RawSums lists the raw-file addresses referenced by committed messages.
func (s *Store) RawSums() (map[string]bool, error) {
	sums := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bMessages).ForEach(func(k, v []byte) error {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			if m.Raw != "" {
				sums[m.Raw] = true
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bQuarantine).ForEach(func(k, v []byte) error {
			var q Quarantined
			if err := json.Unmarshal(v, &q); err != nil {
				return err
			}
			sums[q.Raw] = true
			return nil
		})
	})
	return sums, err
}

// CollectOrphans removes raw files no committed message refers to (left by a
// crash between the file write and the commit) and stale temp files.
func (s *Store) CollectOrphans() (int, error) {
	_ = os.RemoveAll(s.raw.tmpDir())
	s.raw.forget(s.raw.tmpDir())
	refs, err := s.RawSums()
	if err != nil {
		return 0, err
	}
	n := 0
	err = s.raw.walk(func(sum string) error {
		if !refs[sum] {
			if err := s.raw.remove(sum); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// OpenRaw opens a stored raw message by address.
func (s *Store) OpenRaw(sum string) (*os.File, error) { return s.raw.open(sum) }

// PutRaw durably writes a raw message (head then r) and returns its address.
// The caller must commit a record referring to it, else the file is an orphan.
func (s *Store) PutRaw(head []byte, r io.Reader) (string, int64, error) {
	return s.raw.put(head, r)
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
