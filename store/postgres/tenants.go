package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// CreateTenant stores a new tenant; its InboundAddress must already be set
// and be unique.
func (s *Store) CreateTenant(ctx context.Context, t *store.Tenant) error {
	if t.Created.IsZero() {
		t.Created = s.now().UTC()
	}
	data, err := encode(t)
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM tenants WHERE id = $1", t.ID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("tenant %q: %w", t.ID, store.ErrExists)
		}
		_, err := tx.Exec(ctx, "INSERT INTO tenants (id, inbound, data) VALUES ($1, $2, $3)",
			t.ID, strings.ToLower(t.InboundAddress), data)
		if uniqueViolation(err) {
			return fmt.Errorf("tenant %q or its inbound address: %w", t.ID, store.ErrExists)
		}
		return err
	})
	if err == nil {
		s.ownChange("t\t" + t.ID)
	}
	return err
}

// ownChange applies to this node's cache at once the notice its own
// committed change sends: the listener gets the notice a moment later, and
// meanwhile a cached "unknown" for a tenant just created would answer 550
// (seen in TestConformance/Tenants/InboundTenantAfterMiss on a loaded
// machine). A read that began before the commit is not cached after it:
// the notice bumps the cache's generation.
func (s *Store) ownChange(notice string) { s.cache.apply(notice) }

// UpdateTenant applies fn to the stored tenant and saves it. The ID and
// inbound address cannot change.
func (s *Store) UpdateTenant(ctx context.Context, id string, fn func(*store.Tenant) error) (*store.Tenant, error) {
	var out store.Tenant
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		out = store.Tenant{}
		if err := getJSON(ctx, tx, &out, "SELECT data FROM tenants WHERE id = $1 FOR UPDATE", id); err != nil {
			return fmt.Errorf("tenant %q: %w", id, err)
		}
		id, addr := out.ID, out.InboundAddress
		if err := fn(&out); err != nil {
			return err
		}
		out.ID, out.InboundAddress = id, addr
		data, err := encode(&out)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE tenants SET data = $2 WHERE id = $1", id, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.ownChange("t\t" + id)
	return &out, nil
}

// Tenant returns one tenant (from this node's cache while the listener
// keeps it current).
func (s *Store) Tenant(ctx context.Context, id string) (*store.Tenant, error) {
	now := time.Now()
	data, found, err := s.cached(ctx, tenantsOf, id, now, func() ([]byte, error) {
		var data []byte
		err := s.pool.QueryRow(ctx, "SELECT data FROM tenants WHERE id = $1", id).Scan(&data)
		return data, err
	})
	if err != nil {
		return nil, fmt.Errorf("tenant %q: %w", id, err)
	}
	if !found {
		return nil, fmt.Errorf("tenant %q: %w", id, store.ErrNotFound)
	}
	var t store.Tenant
	if err := decode(data, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// cached answers a one-row read from the node cache m (under k), or runs
// read and caches its answer, found or not (pgx.ErrNoRows: not found).
// Records are cached as their encoding, so every caller gets its own copy.
func (s *Store) cached(ctx context.Context, m func(*nodeCache) map[string]cacheEntry, k string, now time.Time, read func() ([]byte, error)) ([]byte, bool, error) {
	if e, ok := s.cache.get(m, k, now); ok {
		return e.data, e.data != nil, nil
	}
	gen := s.cache.generation()
	data, err := read()
	if errors.Is(err, pgx.ErrNoRows) {
		data, err = nil, nil
	}
	if err != nil {
		return nil, false, err
	}
	if data == nil {
		s.cache.put(m, gen, k, nil, now)
		return nil, false, nil
	}
	s.cache.put(m, gen, k, data, now)
	return data, true, nil
}

// Tenants lists all tenants by id.
func (s *Store) Tenants(ctx context.Context) ([]*store.Tenant, error) {
	return listJSON[store.Tenant](ctx, s.pool, "SELECT data FROM tenants ORDER BY id")
}

// InboundTenant resolves a tenant's inbound address (case-insensitive).
// Answers, known or unknown, are cached while the listener is connected:
// a tenant created on any node announces itself (NOTIFY from the tenants
// trigger), which drops this node's unknown answers at once.
func (s *Store) InboundTenant(ctx context.Context, addr string) (string, bool, error) {
	addr = strings.ToLower(addr)
	data, found, err := s.cached(ctx, inboundOf, addr, time.Now(), func() ([]byte, error) {
		var id string
		err := s.pool.QueryRow(ctx, "SELECT id FROM tenants WHERE inbound = $1", addr).Scan(&id)
		return []byte(id), err
	})
	if err != nil {
		return "", false, fmt.Errorf("inbound tenant: %w", err)
	}
	return string(data), found, nil
}

// CreateUser stores a new user; emails are unique within a tenant.
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if u.Created.IsZero() {
		u.Created = s.now().UTC()
	}
	data, err := encode(u)
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := s.tenantExists(ctx, tx, u.Tenant); err != nil {
			return err
		}
		var idTaken, emailTaken bool
		if err := tx.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND id = $2),
			EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND email = $3)`,
			u.Tenant, u.ID, strings.ToLower(u.Email)).Scan(&idTaken, &emailTaken); err != nil {
			return err
		}
		if idTaken {
			return fmt.Errorf("user %q: %w", u.ID, store.ErrExists)
		}
		if emailTaken {
			return fmt.Errorf("user email %q: %w", u.Email, store.ErrExists)
		}
		_, err := tx.Exec(ctx, "INSERT INTO users (tenant, id, email, data) VALUES ($1, $2, $3, $4)",
			u.Tenant, u.ID, strings.ToLower(u.Email), data)
		if uniqueViolation(err) {
			return fmt.Errorf("user %q: %w", u.ID, store.ErrExists)
		}
		return err
	})
	if err == nil {
		s.ownChange("u\t" + u.Tenant)
	}
	return err
}

func (s *Store) tenantExists(ctx context.Context, q querier, tenant string) error {
	var ok bool
	if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", tenant).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("tenant %q: %w", tenant, store.ErrNotFound)
	}
	return nil
}

// User returns one user of a tenant.
func (s *Store) User(ctx context.Context, tenant, id string) (*store.User, error) {
	var u store.User
	if err := getJSON(ctx, s.pool, &u, "SELECT data FROM users WHERE tenant = $1 AND id = $2", tenant, id); err != nil {
		return nil, fmt.Errorf("user %q: %w", id, err)
	}
	u.Tenant = tenant
	return &u, nil
}

// UserByEmail finds a tenant user by address (case-insensitive). Answers,
// found or not, are cached while the listener is connected (every kept
// message asks about its From).
func (s *Store) UserByEmail(ctx context.Context, tenant, email string) (*store.User, error) {
	email = strings.ToLower(email)
	data, found, err := s.cached(ctx, usersOf(tenant), email, time.Now(), func() ([]byte, error) {
		var data []byte
		err := s.pool.QueryRow(ctx, "SELECT data FROM users WHERE tenant = $1 AND email = $2", tenant, email).Scan(&data)
		return data, err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, store.ErrNotFound
	}
	var u store.User
	if err := decode(data, &u); err != nil {
		return nil, err
	}
	u.Tenant = tenant
	return &u, nil
}

// Users lists a tenant's users by id.
func (s *Store) Users(ctx context.Context, tenant string) ([]*store.User, error) {
	out, err := listJSON[store.User](ctx, s.pool, "SELECT data FROM users WHERE tenant = $1 ORDER BY id", tenant)
	for _, u := range out {
		u.Tenant = tenant
	}
	return out, err
}

// CreateCandidate stores a new candidate; an email already used by another
// candidate of the tenant is refused.
func (s *Store) CreateCandidate(ctx context.Context, c *store.Candidate) error {
	if c.Created.IsZero() {
		c.Created = s.now().UTC()
	}
	data, err := encode(c)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := s.tenantExists(ctx, tx, c.Tenant); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "INSERT INTO candidates (tenant, id, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", c.Tenant, c.ID, data)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("candidate %q: %w", c.ID, store.ErrExists)
		}
		for _, e := range c.Emails {
			tag, err := tx.Exec(ctx, "INSERT INTO candidate_emails (tenant, email, candidate) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
				c.Tenant, strings.ToLower(e), c.ID)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fmt.Errorf("candidate email %q: %w", e, store.ErrExists)
			}
		}
		return nil
	})
}

// Candidate returns one candidate of a tenant.
func (s *Store) Candidate(ctx context.Context, tenant, id string) (*store.Candidate, error) {
	var c store.Candidate
	if err := getJSON(ctx, s.pool, &c, "SELECT data FROM candidates WHERE tenant = $1 AND id = $2", tenant, id); err != nil {
		return nil, fmt.Errorf("candidate %q: %w", id, err)
	}
	c.Tenant = tenant
	return &c, nil
}

// Candidates lists a tenant's candidates by id.
func (s *Store) Candidates(ctx context.Context, tenant string) ([]*store.Candidate, error) {
	out, err := listJSON[store.Candidate](ctx, s.pool, "SELECT data FROM candidates WHERE tenant = $1 ORDER BY id", tenant)
	for _, c := range out {
		c.Tenant = tenant
	}
	return out, err
}
