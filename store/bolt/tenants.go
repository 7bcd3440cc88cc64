package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// CreateTenant stores a new tenant; its InboundAddress must already be set
// (the caller generates it) and be unique.
func (s *Store) CreateTenant(ctx context.Context, t *Tenant) error {
	if t.Created.IsZero() {
		t.Created = s.now().UTC()
	}
	addr := strings.ToLower(t.InboundAddress)
	defer s.inbound.invalidate()
	return s.db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bTenants)
		if tb.Get([]byte(t.ID)) != nil {
			return fmt.Errorf("tenant %q: %w", t.ID, ErrExists)
		}
		ib := tx.Bucket(bInbound)
		if ib.Get([]byte(addr)) != nil {
			return fmt.Errorf("inbound address: %w", ErrExists)
		}
		if err := ib.Put([]byte(addr), []byte(t.ID)); err != nil {
			return err
		}
		return putJSON(tb, []byte(t.ID), t)
	})
}

// UpdateTenant applies fn to the stored tenant and saves it. The ID and
// inbound address cannot change.
func (s *Store) UpdateTenant(ctx context.Context, id string, fn func(*Tenant) error) (*Tenant, error) {
	var out Tenant
	defer s.tenants.invalidate()
	err := s.db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bTenants)
		if err := getJSON(tb, []byte(id), &out); err != nil {
			return fmt.Errorf("tenant %q: %w", id, err)
		}
		id, addr := out.ID, out.InboundAddress
		if err := fn(&out); err != nil {
			return err
		}
		out.ID, out.InboundAddress = id, addr
		return putJSON(tb, []byte(id), &out)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Tenant returns one tenant (the caller's own copy).
func (s *Store) Tenant(ctx context.Context, id string) (*Tenant, error) {
	t0, ok, gen := s.tenants.get(id)
	if ok {
		return t0, nil
	}
	var t Tenant
	err := s.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bTenants), []byte(id), &t)
	})
	if err != nil {
		return nil, fmt.Errorf("tenant %q: %w", id, err)
	}
	s.tenants.put(id, &t, gen)
	return &t, nil
}

// tenantCache remembers Tenant's records: every message of interest reads
// its tenant's, and a bbolt read transaction with a JSON decode was 2.6 %
// of the full pipeline's CPU. Only UpdateTenant changes a tenant record
// (CreateTenant adds one, and a missing tenant is not cached), and this
// process holds the database exclusively, so the cache is exact:
// UpdateTenant invalidates it once its transaction is over, and a record
// read while one ran is not kept (gen), as in inboundCache. It hands out
// copies, so a caller that changes its Tenant changes nothing here.
type tenantCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[string]*Tenant
}

// maxTenantCache bounds the cache (there are few tenants; Tenant is also
// called with ids from API requests).
const maxTenantCache = 10000

// get returns a copy of id's record if the cache holds it, and the
// generation to put a record read now with.
func (c *tenantCache) get(id string) (t *Tenant, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ct, ok := c.m[id]; ok {
		return copyTenant(ct), true, c.gen
	}
	return nil, false, c.gen
}

// put keeps a copy of t, read at generation gen.
func (c *tenantCache) put(id string, t *Tenant, gen uint64) {
	ct := copyTenant(t)
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) >= maxTenantCache {
		c.m = make(map[string]*Tenant)
	}
	c.m[id] = ct
}

func (c *tenantCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.m = nil
}

// copyTenant is a deep copy of t (nil and empty slices stay as they are).
func copyTenant(t *Tenant) *Tenant {
	c := *t
	c.Domains = slices.Clone(t.Domains)
	c.TrustedForwarders = slices.Clone(t.TrustedForwarders)
	c.SigningDomains = slices.Clone(t.SigningDomains)
	return &c
}

// Tenants lists all tenants by id.
func (s *Store) Tenants(ctx context.Context) ([]*Tenant, error) {
	var out []*Tenant
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bTenants).ForEach(func(k, v []byte) error {
			var t Tenant
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, &t)
			return nil
		})
	})
	return out, err
}

// InboundTenant resolves a tenant's secret inbound address (case-insensitive).
func (s *Store) InboundTenant(ctx context.Context, addr string) (string, bool, error) {
	addr = strings.ToLower(addr)
	id, ok, gen := s.inbound.get(addr)
	if ok {
		return id, id != "", nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		id = string(tx.Bucket(bInbound).Get([]byte(addr)))
		return nil
	})
	if err != nil {
		return "", false, err
	}
	s.inbound.put(addr, id, gen)
	return id, id != "", nil
}

// inboundCache remembers InboundTenant's answers: one is needed for every
// RCPT, and a bbolt read transaction per recipient was a measurable share
// of the discard path. Addresses are only ever added (CreateTenant), and
// this process holds the database exclusively, so the cache is exact:
// CreateTenant invalidates it (unknown addresses are cached too), and an
// answer read while a tenant was being created is not kept (gen).
type inboundCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[string]string // lower(address) → tenant id; "" for none
}

// maxInboundCache bounds the cache against RCPTs to random addresses.
const maxInboundCache = 10000

func (c *inboundCache) get(addr string) (id string, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok = c.m[addr]
	return id, ok, c.gen
}

func (c *inboundCache) put(addr, id string, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) >= maxInboundCache {
		c.m = make(map[string]string)
	}
	c.m[addr] = id
}

func (c *inboundCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.m = nil
}

// CreateUser stores a new user; emails are unique within a tenant.
func (s *Store) CreateUser(ctx context.Context, u *User) error {
	if u.Created.IsZero() {
		u.Created = s.now().UTC()
	}
	email := strings.ToLower(u.Email)
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bTenants).Get([]byte(u.Tenant)) == nil {
			return fmt.Errorf("tenant %q: %w", u.Tenant, ErrNotFound)
		}
		ub := tx.Bucket(bUsers)
		k := key(u.Tenant, u.ID)
		if ub.Get(k) != nil {
			return fmt.Errorf("user %q: %w", u.ID, ErrExists)
		}
		eb := tx.Bucket(bUserEmail)
		ek := key(u.Tenant, email)
		if eb.Get(ek) != nil {
			return fmt.Errorf("user email %q: %w", u.Email, ErrExists)
		}
		if err := eb.Put(ek, []byte(u.ID)); err != nil {
			return err
		}
		return putJSON(ub, k, u)
	})
}

// User returns one user of a tenant.
func (s *Store) User(ctx context.Context, tenant, id string) (*User, error) {
	var u User
	err := s.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bUsers), key(tenant, id), &u)
	})
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", id, err)
	}
	u.Tenant = tenant
	return &u, nil
}

// UserByEmail finds a tenant user by address (case-insensitive).
func (s *Store) UserByEmail(ctx context.Context, tenant, email string) (*User, error) {
	var u User
	err := s.db.View(func(tx *bolt.Tx) error {
		id := tx.Bucket(bUserEmail).Get(key(tenant, strings.ToLower(email)))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bUsers), key(tenant, string(id)), &u)
	})
	if err != nil {
		return nil, err
	}
	u.Tenant = tenant
	return &u, nil
}

// Users lists a tenant's users by id.
func (s *Store) Users(ctx context.Context, tenant string) ([]*User, error) {
	var out []*User
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bUsers), []byte(tenant+"/"), func(_, v []byte) error {
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return err
			}
			u.Tenant = tenant
			out = append(out, &u)
			return nil
		})
	})
	return out, err
}

// CreateCandidate stores a new candidate. An email already used by another
// candidate of the tenant is refused: replies are matched by thread, but the
// timeline must not be ambiguous about whose address it is.
func (s *Store) CreateCandidate(ctx context.Context, c *Candidate) error {
	if c.Created.IsZero() {
		c.Created = s.now().UTC()
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bTenants).Get([]byte(c.Tenant)) == nil {
			return fmt.Errorf("tenant %q: %w", c.Tenant, ErrNotFound)
		}
		cb := tx.Bucket(bCands)
		k := key(c.Tenant, c.ID)
		if cb.Get(k) != nil {
			return fmt.Errorf("candidate %q: %w", c.ID, ErrExists)
		}
		eb := tx.Bucket(bCandEmail)
		for _, e := range c.Emails {
			ek := key(c.Tenant, strings.ToLower(e))
			if eb.Get(ek) != nil {
				return fmt.Errorf("candidate email %q: %w", e, ErrExists)
			}
			if err := eb.Put(ek, []byte(c.ID)); err != nil {
				return err
			}
		}
		return putJSON(cb, k, c)
	})
}

// Candidate returns one candidate of a tenant.
func (s *Store) Candidate(ctx context.Context, tenant, id string) (*Candidate, error) {
	var c Candidate
	err := s.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bCands), key(tenant, id), &c)
	})
	if err != nil {
		return nil, fmt.Errorf("candidate %q: %w", id, err)
	}
	c.Tenant = tenant
	return &c, nil
}

// Candidates lists a tenant's candidates by id.
func (s *Store) Candidates(ctx context.Context, tenant string) ([]*Candidate, error) {
	var out []*Candidate
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bCands), []byte(tenant+"/"), func(_, v []byte) error {
			var c Candidate
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			c.Tenant = tenant
			out = append(out, &c)
			return nil
		})
	})
	return out, err
}

func forPrefix(b *bolt.Bucket, prefix []byte, fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}
