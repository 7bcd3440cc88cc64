package postgres

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Node-local caches kept coherent across nodes with LISTEN/NOTIFY.
//
// One connection per node (outside the pool, application_name
// syncrelay-listener NODE) LISTENs on syncrelay_inval; triggers on the cached
// tables NOTIFY it (0002_notify.sql). The caches are used only while that
// connection is up and has resynchronised since it (re)connected: on
// connection loss every lookup goes to the database until the listener is
// back, has cleared the caches and rebuilt the key filter. Cached records
// also expire after a short TTL, a fallback should a notice ever be lost.
//
// What is cached:
//   - tenants by id (their record) and inbound addresses (known or
//     unknown) — the RCPT path and every kept message read them;
//   - users by (tenant, email), found or not — From of every kept message;
//   - the filter of known Message-IDs and duplicate keys (filter.go).

// DefaultCacheTTL bounds how long a cached tenant or user can outlive a
// lost notice.
const DefaultCacheTTL = 5 * time.Second

const notifyChannel = "syncrelay_inval"

type cacheEntry struct {
	data    []byte // a record's JSON, or a tenant id; nil: not found
	expires time.Time
}

type nodeCache struct {
	ttl   time.Duration
	ready atomic.Bool               // the listener is connected and resynchronised
	keys  atomic.Pointer[keyFilter] // never nil
	prev  atomic.Pointer[keyFilter] // the one keys replaced, or nil
	// rebuild asks the listener to reconnect and rebuild the filter.
	rebuild chan struct{}

	mu      sync.Mutex
	gen     uint64 // bumped by every invalidation: a read older than it is not cached
	tenants map[string]cacheEntry
	inbound map[string]cacheEntry
	users   map[string]map[string]cacheEntry // tenant -> lower(email)
}

const maxCacheEntries = 10000

func newNodeCache(ttl time.Duration) *nodeCache {
	c := &nodeCache{ttl: ttl, rebuild: make(chan struct{}, 1)}
	c.keys.Store(newKeyFilter(minFilterCap))
	c.reset()
	return c
}

// reset forgets everything (the listener lost or regained its connection).
func (c *nodeCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.tenants = map[string]cacheEntry{}
	c.inbound = map[string]cacheEntry{}
	c.users = map[string]map[string]cacheEntry{}
}

// generation is read before a database read whose result may be cached.
func (c *nodeCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *nodeCache) get(m func(c *nodeCache) map[string]cacheEntry, k string, now time.Time) (cacheEntry, bool) {
	if !c.ready.Load() {
		return cacheEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := m(c)[k]
	if !ok || now.After(e.expires) {
		return cacheEntry{}, false
	}
	return e, true
}

// put caches data under k unless an invalidation came after gen was read
// (the read may predate the change it announced).
func (c *nodeCache) put(m func(c *nodeCache) map[string]cacheEntry, gen uint64, k string, data []byte, now time.Time) {
	if !c.ready.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	mm := m(c)
	if len(mm) >= maxCacheEntries {
		clear(mm)
	}
	mm[k] = cacheEntry{data: data, expires: now.Add(c.ttl)}
}

func tenantsOf(c *nodeCache) map[string]cacheEntry { return c.tenants }
func inboundOf(c *nodeCache) map[string]cacheEntry { return c.inbound }
func usersOf(tenant string) func(c *nodeCache) map[string]cacheEntry {
	return func(c *nodeCache) map[string]cacheEntry {
		m := c.users[tenant]
		if m == nil {
			m = map[string]cacheEntry{}
			if len(c.users) >= maxCacheEntries {
				clear(c.users)
			}
			c.users[tenant] = m
		}
		return m
	}
}

// apply handles one notice.
func (c *nodeCache) apply(payload string) (rebuild bool) {
	kind, rest, _ := strings.Cut(payload, "\t")
	if strings.HasPrefix(payload, "k") {
		kind = "k"
	}
	switch kind {
	case "k":
		f := c.keys.Load()
		if !parseKeys(payload[1:], f.add) {
			return true
		}
		return f.full()
	case "t":
		c.mu.Lock()
		defer c.mu.Unlock()
		c.gen++
		delete(c.tenants, rest)
		// Its inbound address may be one this node was told is unknown.
		for a, e := range c.inbound {
			if e.data == nil || string(e.data) == rest {
				delete(c.inbound, a)
			}
		}
		return false
	case "u":
		c.mu.Lock()
		defer c.mu.Unlock()
		c.gen++
		delete(c.users, rest)
		return false
	}
	// "r" or anything this binary does not know: start over.
	return true
}

// noteKey adds a key this node is about to commit to the filter, before
// the commit is sent: a rolled back write leaves a false positive, never a
// false negative.
func (s *Store) noteKey(tenant, key string) {
	if key == "" {
		return
	}
	f := s.cache.keys.Load()
	f.add(tenant, key)
	if f.full() {
		s.cache.askRebuild()
	}
}

func (c *nodeCache) askRebuild() {
	select {
	case c.rebuild <- struct{}{}:
	default:
	}
}

// unknownKey reports that the database certainly holds no row for
// (tenant, key) in msgids or thread_copies.
func (s *Store) unknownKey(tenant, key string) bool {
	if !s.cache.ready.Load() {
		return false
	}
	if s.cache.keys.Load().mayContain(tenant, key) {
		return false
	}
	p := s.cache.prev.Load()
	return p == nil || !p.mayContain(tenant, key)
}

// listen keeps the listener connected until ctx ends.
func (s *Store) listen(ctx context.Context, cfg *pgx.ConnConfig) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, cfg)
		s.cache.ready.Store(false)
		s.cache.reset()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.logger.Warn("store: cache listener lost its connection; reconnecting", "err", err)
		} else {
			backoff = 50 * time.Millisecond // a deliberate rebuild
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	// LISTEN first: everything committed after it is announced, everything
	// before it is in the load below.
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	s.cache.reset()
	// The catch-up (keys.go) starts from a snapshot taken before the load:
	// it reads again what the load may have missed, never less.
	var snap string
	if err := conn.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&snap); err != nil {
		return err
	}
	if err := s.loadKeys(ctx, conn); err != nil {
		return err
	}
	s.cache.ready.Store(true)
	due := time.Now().Add(s.catchUpEvery)
	for {
		if !time.Now().Before(due) {
			next, rebuild, err := s.catchUp(ctx, conn, snap)
			if err != nil {
				return err
			}
			if rebuild {
				s.cache.ready.Store(false)
				return nil
			}
			snap, due = next, time.Now().Add(s.catchUpEvery)
		}
		wctx, cancel := context.WithDeadline(ctx, due)
		stop := make(chan struct{})
		go func() {
			select {
			case <-s.cache.rebuild:
				cancel()
			case <-stop:
			}
		}()
		n, err := conn.WaitForNotification(wctx)
		close(stop)
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		rebuilding := wctx.Err() != nil && ctx.Err() == nil && !timedOut
		cancel()
		if rebuilding {
			return nil
		}
		if err != nil {
			if !timedOut {
				return err
			}
			if n == nil {
				continue // time for the catch-up (the connection stays usable)
			}
		}
		if s.cache.apply(n.Payload) {
			s.cache.ready.Store(false)
			return nil
		}
	}
}

// loadKeys adds every known key to the filter. The filter is kept across
// reconnects (keys are never removed, so adding them again is harmless and
// catches up on notices missed while disconnected). It is replaced by a
// larger one when it is too small; the one it replaces stays consulted
// (prev): a key this node noted in it just before the swap, for a commit
// that ends after the load below, would otherwise be missing until its
// notice arrives.
func (s *Store) loadKeys(ctx context.Context, conn *pgx.Conn) error {
	var est float64
	if err := conn.QueryRow(ctx, `SELECT greatest((SELECT reltuples FROM pg_class WHERE oid = 'msgids'::regclass), 0)
		+ greatest((SELECT reltuples FROM pg_class WHERE oid = 'thread_copies'::regclass), 0)`).Scan(&est); err != nil {
		return err
	}
	need := int64(est)
	for {
		f := s.cache.keys.Load()
		if f.full() || f.cap < need {
			s.cache.grow(2 * max(need, f.n.Load()))
			f = s.cache.keys.Load()
		}
		rows, err := conn.Query(ctx, "SELECT tenant, msgid FROM msgids UNION ALL SELECT tenant, dk FROM thread_copies")
		if err != nil {
			return err
		}
		var tenant, key string
		n := int64(0)
		if _, err := pgx.ForEachRow(rows, []any{&tenant, &key}, func() error {
			f.add(tenant, key)
			n++
			return nil
		}); err != nil {
			return err
		}
		if !f.full() {
			return nil
		}
		need = 2 * n
	}
}

// grow installs an empty filter for capacity keys; the current one
// becomes prev.
func (c *nodeCache) grow(capacity int64) {
	c.prev.Store(c.keys.Load())
	c.keys.Store(newKeyFilter(capacity))
}
