package postgres

import (
	"context"
	"fmt"
	"strings"
	"sync"

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
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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
}

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
	return &out, nil
}

// Tenant returns one tenant.
func (s *Store) Tenant(ctx context.Context, id string) (*store.Tenant, error) {
	var t store.Tenant
	if err := getJSON(ctx, s.pool, &t, "SELECT data FROM tenants WHERE id = $1", id); err != nil {
		return nil, fmt.Errorf("tenant %q: %w", id, err)
	}
	return &t, nil
}

// Tenants lists all tenants by id.
func (s *Store) Tenants(ctx context.Context) ([]*store.Tenant, error) {
	return listJSON[store.Tenant](ctx, s.pool, "SELECT data FROM tenants ORDER BY id")
}

// InboundTenant resolves a tenant's inbound address (case-insensitive).
// Only known addresses are cached (addresses never change or go away), so
// a tenant created on another node is found at its first RCPT: unknown
// addresses always ask the database (one index lookup).
func (s *Store) InboundTenant(ctx context.Context, addr string) (string, bool, error) {
	addr = strings.ToLower(addr)
	if id, ok := s.inbound.get(addr); ok {
		return id, true, nil
	}
	var id string
	err := s.pool.QueryRow(ctx, "SELECT id FROM tenants WHERE inbound = $1", addr).Scan(&id)
	if err == pgx.ErrNoRows {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("inbound tenant: %w", err)
	}
	s.inbound.put(addr, id)
	return id, true, nil
}

// inboundCache remembers known inbound addresses (one lookup per RCPT
// otherwise). Bounded against a flood of distinct addresses.
type inboundCache struct {
	mu sync.Mutex
	m  map[string]string
}

const maxInboundCache = 10000

func (c *inboundCache) get(addr string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := c.m[addr]
	return id, ok
}

func (c *inboundCache) put(addr, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxInboundCache {
		c.m = make(map[string]string)
	}
	c.m[addr] = id
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
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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

// UserByEmail finds a tenant user by address (case-insensitive).
func (s *Store) UserByEmail(ctx context.Context, tenant, email string) (*store.User, error) {
	var u store.User
	if err := getJSON(ctx, s.pool, &u, "SELECT data FROM users WHERE tenant = $1 AND email = $2", tenant, strings.ToLower(email)); err != nil {
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
