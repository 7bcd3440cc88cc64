package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

func delegationEventData(d *store.Delegation) map[string]any {
	return map[string]any{
		"delegation_id": store.DelegationRef(d.ID), "requester": d.Requester, "grantor": d.Grantor, "status": d.Status,
	}
}

func putDelegation(ctx context.Context, tx pgx.Tx, d *store.Delegation) error {
	data, err := encode(d)
	if err != nil {
		return err
	}
	// email_due: when a queued approval email is next due (NULL: none).
	var due *time.Time
	if e := d.ApprovalEmail; e != nil && e.Status == store.EmailQueued {
		t := e.NextAttempt
		due = &t
	}
	_, err = tx.Exec(ctx, `INSERT INTO delegations (tenant, id, requester, grantor, live, data, email_due) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (tenant, id) DO UPDATE SET live = excluded.live, data = excluded.data, email_due = excluded.email_due`,
		d.Tenant, d.ID, d.Requester, d.Grantor, d.Live(), data, due)
	return err
}

// CreateDelegation records a new Send For request by (acting user) by and
// enqueues delegation.requested in the same commit. Both users must exist;
// a pair has at most one live delegation (ErrExists; a unique index keeps
// this across nodes).
func (s *Store) CreateDelegation(ctx context.Context, d *store.Delegation, by string) error {
	now := s.now().UTC()
	var out store.Delegation
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		for _, u := range []string{d.Requester, d.Grantor} {
			var ok bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND id = $2)", d.Tenant, u).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("user %q: %w", u, store.ErrNotFound)
			}
		}
		var cur store.Delegation
		err := getJSON(ctx, tx, &cur, "SELECT data FROM delegations WHERE tenant = $1 AND requester = $2 AND grantor = $3 AND live", d.Tenant, d.Requester, d.Grantor)
		if err == nil {
			return fmt.Errorf("delegation %s from %q to %q is %s: %w", store.DelegationRef(cur.ID), d.Requester, d.Grantor, cur.Status, store.ErrExists)
		}
		if err != store.ErrNotFound {
			return err
		}
		out = store.Delegation{Tenant: d.Tenant, Requester: d.Requester, Grantor: d.Grantor,
			Status: store.DelegationRequested, Created: now, Updated: now,
			History: []store.DelegationEvent{{At: now, By: by, To: store.DelegationRequested}}}
		if d.ApprovalEmail != nil {
			e := *d.ApprovalEmail
			out.ApprovalEmail = &e
		}
		if err := tx.QueryRow(ctx, "SELECT nextval('delegation_ids')").Scan(&out.ID); err != nil {
			return err
		}
		if err := putDelegation(ctx, tx, &out); err != nil {
			if uniqueViolation(err) {
				return fmt.Errorf("delegation from %q to %q: %w", d.Requester, d.Grantor, store.ErrExists)
			}
			return err
		}
		data := delegationEventData(&out)
		data["requested_by"] = by
		return enqueue(ctx, tx, d.Tenant, "delegation.requested", data, now)
	})
	if err != nil {
		return err
	}
	*d = out
	return nil
}

// delegationTransitions lists the allowed state changes.
var delegationTransitions = map[string][]string{
	store.DelegationRequested: {store.DelegationActive, store.DelegationDeclined, store.DelegationRevoked},
	store.DelegationActive:    {store.DelegationRevoked},
}

// TransitionDelegation moves a delegation to state to on behalf of by,
// after check passes; the change is appended to the audit trail and
// delegation.changed is enqueued in the same commit. Moving to the current
// state is a no-op; a move the state machine forbids is ErrTransition.
func (s *Store) TransitionDelegation(ctx context.Context, tenant string, id uint64, by, to string, check func(*store.Delegation) error) (*store.Delegation, error) {
	now := s.now().UTC()
	var out store.Delegation
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		var d store.Delegation
		if err := getJSON(ctx, tx, &d, "SELECT data FROM delegations WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, id); err != nil {
			return fmt.Errorf("delegation %s: %w", store.DelegationRef(id), err)
		}
		if check != nil {
			if err := check(&d); err != nil {
				return err
			}
		}
		if d.Status == to {
			out = d
			return nil
		}
		if !slices.Contains(delegationTransitions[d.Status], to) {
			return fmt.Errorf("delegation %s is %s, cannot become %s: %w", store.DelegationRef(id), d.Status, to, store.ErrTransition)
		}
		from := d.Status
		d.Status, d.Updated = to, now
		d.History = append(d.History, store.DelegationEvent{At: now, By: by, From: from, To: to})
		if err := putDelegation(ctx, tx, &d); err != nil {
			return err
		}
		out = d
		data := delegationEventData(&d)
		data["previous_status"], data["changed_by"] = from, by
		return enqueue(ctx, tx, tenant, "delegation.changed", data, now)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Delegation returns one delegation of a tenant.
func (s *Store) Delegation(ctx context.Context, tenant string, id uint64) (*store.Delegation, error) {
	var d store.Delegation
	if err := getJSON(ctx, s.pool, &d, "SELECT data FROM delegations WHERE tenant = $1 AND id = $2", tenant, id); err != nil {
		return nil, fmt.Errorf("delegation %s: %w", store.DelegationRef(id), err)
	}
	return &d, nil
}

// Delegations lists a tenant's delegations, oldest first.
func (s *Store) Delegations(ctx context.Context, tenant string) ([]*store.Delegation, error) {
	return listJSON[store.Delegation](ctx, s.pool, "SELECT data FROM delegations WHERE tenant = $1 ORDER BY id", tenant)
}

// OpenDelegation returns the requested or active delegation from requester
// to grantor, or ErrNotFound.
func (s *Store) OpenDelegation(ctx context.Context, tenant, requester, grantor string) (*store.Delegation, error) {
	var d store.Delegation
	if err := getJSON(ctx, s.pool, &d, "SELECT data FROM delegations WHERE tenant = $1 AND requester = $2 AND grantor = $3 AND live", tenant, requester, grantor); err != nil {
		return nil, fmt.Errorf("delegation from %q to %q: %w", requester, grantor, err)
	}
	return &d, nil
}

// ClaimApprovalEmails takes up to limit queued approval emails due at now,
// leasing each until now+lease; rows another node is claiming are skipped.
func (s *Store) ClaimApprovalEmails(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*store.Delegation, error) {
	var out []*store.Delegation
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		out = nil
		ds, err := listJSON[store.Delegation](ctx, tx, `SELECT data FROM delegations WHERE email_due <= $1
			ORDER BY email_due LIMIT $2 FOR UPDATE SKIP LOCKED`, now, limit)
		if err != nil {
			return err
		}
		for _, d := range ds {
			e := d.ApprovalEmail
			if e == nil || e.Status != store.EmailQueued {
				continue
			}
			e.Attempts++
			e.NextAttempt = now.Add(lease).UTC()
			if err := putDelegation(ctx, tx, d); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FinishApprovalEmail records the outcome of attempt of a queued email.
func (s *Store) FinishApprovalEmail(ctx context.Context, tenant string, id uint64, attempt int, e *store.ApprovalMail) (*store.Delegation, error) {
	var out store.Delegation
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		var d store.Delegation
		if err := getJSON(ctx, tx, &d, "SELECT data FROM delegations WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, id); err != nil {
			return fmt.Errorf("delegation %s: %w", store.DelegationRef(id), err)
		}
		cur := d.ApprovalEmail
		if cur == nil || cur.Status != store.EmailQueued || cur.Attempts != attempt {
			return fmt.Errorf("approval email of %s: attempt %d is not the current one: %w", store.DelegationRef(id), attempt, store.ErrStale)
		}
		ne := *e
		ne.Attempts = attempt
		d.ApprovalEmail = &ne
		out = d
		return putDelegation(ctx, tx, &d)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}
