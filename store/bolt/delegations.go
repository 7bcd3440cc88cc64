package bolt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bDelegations = []byte("delegations") // tenant/u64 -> Delegation
	bDelegPair   = []byte("deleg_pair")  // tenant/requester/grantor -> u64 of the open delegation
	// bDelegEmail indexes the queued approval emails (few at any time:
	// a claim scans it whole).
	bDelegEmail = []byte("deleg_email") // tenant/u64 -> "" while the delegation's approval email is queued
)

// indexEmail keeps d's entry in bDelegEmail in step with its approval email.
func indexEmail(tx *bolt.Tx, d *Delegation) error {
	b := tx.Bucket(bDelegEmail)
	k := keyU64(d.Tenant, d.ID)
	if d.ApprovalEmail != nil && d.ApprovalEmail.Status == EmailQueued {
		return b.Put(k, nil)
	}
	return b.Delete(k)
}

func delegationEventData(d *Delegation) map[string]any {
	return map[string]any{
		"delegation_id": DelegationRef(d.ID), "requester": d.Requester, "grantor": d.Grantor, "status": d.Status,
	}
}

// CreateDelegation records a new Send For request by (acting user) by and
// enqueues delegation.requested in the same transaction. Both users must
// exist; a pair can have only one open (requested or active) delegation
// (ErrExists). Role rules are the caller's.
func (s *Store) CreateDelegation(ctx context.Context, d *Delegation, by string) error {
	now := s.now().UTC()
	var out Delegation
	err := s.group(ctx, func(tx *bolt.Tx) error {
		ub := tx.Bucket(bUsers)
		for _, u := range []string{d.Requester, d.Grantor} {
			if ub.Get(key(d.Tenant, u)) == nil {
				return fmt.Errorf("user %q: %w", u, ErrNotFound)
			}
		}
		db, pb := tx.Bucket(bDelegations), tx.Bucket(bDelegPair)
		pk := key(d.Tenant, d.Requester, d.Grantor)
		if id := getU64(pb.Get(pk)); id != 0 {
			var cur Delegation
			if err := getJSON(db, keyU64(d.Tenant, id), &cur); err == nil && cur.Live() {
				return fmt.Errorf("delegation %s from %q to %q is %s: %w", DelegationRef(cur.ID), d.Requester, d.Grantor, cur.Status, ErrExists)
			}
		}
		seq, err := db.NextSequence()
		if err != nil {
			return err
		}
		out = Delegation{Tenant: d.Tenant, ID: seq, Requester: d.Requester, Grantor: d.Grantor,
			Status: DelegationRequested, Created: now, Updated: now,
			History: []DelegationEvent{{At: now, By: by, To: DelegationRequested}}}
		if d.ApprovalEmail != nil {
			e := *d.ApprovalEmail
			out.ApprovalEmail = &e
		}
		if err := pb.Put(pk, putU64(seq)); err != nil {
			return err
		}
		if err := indexEmail(tx, &out); err != nil {
			return err
		}
		if err := putJSON(db, keyU64(d.Tenant, seq), &out); err != nil {
			return err
		}
		data := delegationEventData(&out)
		data["requested_by"] = by
		return s.enqueue(tx, d.Tenant, "delegation.requested", data, now)
	})
	if err != nil {
		return err
	}
	*d = out
	return nil
}

// delegationTransitions lists the allowed state changes.
var delegationTransitions = map[string][]string{
	DelegationRequested: {DelegationActive, DelegationDeclined, DelegationRevoked},
	DelegationActive:    {DelegationRevoked},
}

// TransitionDelegation moves a delegation to state to on behalf of by,
// after check (the caller's permission rule, given the current record)
// passes; the change is appended to the audit trail and delegation.changed
// is enqueued in the same transaction. Moving to the current state again is
// a no-op that returns the record unchanged (retries are safe); any other
// move the state machine does not allow is ErrTransition.
func (s *Store) TransitionDelegation(ctx context.Context, tenant string, id uint64, by, to string, check func(*Delegation) error) (*Delegation, error) {
	now := s.now().UTC()
	var out Delegation
	err := s.group(ctx, func(tx *bolt.Tx) error {
		db := tx.Bucket(bDelegations)
		var d Delegation
		if err := getJSON(db, keyU64(tenant, id), &d); err != nil {
			return fmt.Errorf("delegation %s: %w", DelegationRef(id), err)
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
		allowed := false
		for _, next := range delegationTransitions[d.Status] {
			allowed = allowed || next == to
		}
		if !allowed {
			return fmt.Errorf("delegation %s is %s, cannot become %s: %w", DelegationRef(id), d.Status, to, ErrTransition)
		}
		from := d.Status
		d.Status, d.Updated = to, now
		d.History = append(d.History, DelegationEvent{At: now, By: by, From: from, To: to})
		if err := putJSON(db, keyU64(tenant, id), &d); err != nil {
			return err
		}
		if !d.Live() {
			pb := tx.Bucket(bDelegPair)
			pk := key(tenant, d.Requester, d.Grantor)
			if getU64(pb.Get(pk)) == d.ID {
				if err := pb.Delete(pk); err != nil {
					return err
				}
			}
		}
		out = d
		data := delegationEventData(&d)
		data["previous_status"], data["changed_by"] = from, by
		return s.enqueue(tx, tenant, "delegation.changed", data, now)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Delegation returns one delegation of a tenant.
func (s *Store) Delegation(ctx context.Context, tenant string, id uint64) (*Delegation, error) {
	var d Delegation
	err := s.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bDelegations), keyU64(tenant, id), &d)
	})
	if err != nil {
		return nil, fmt.Errorf("delegation %s: %w", DelegationRef(id), err)
	}
	return &d, nil
}

// Delegations lists a tenant's delegations, oldest first.
func (s *Store) Delegations(ctx context.Context, tenant string) ([]*Delegation, error) {
	var out []*Delegation
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bDelegations), []byte(tenant+"/"), func(_, v []byte) error {
			var d Delegation
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, &d)
			return nil
		})
	})
	return out, err
}

// OpenDelegation returns the requested or active delegation from requester
// to grantor, or ErrNotFound.
func (s *Store) OpenDelegation(ctx context.Context, tenant, requester, grantor string) (*Delegation, error) {
	var d Delegation
	err := s.db.View(func(tx *bolt.Tx) error {
		id := getU64(tx.Bucket(bDelegPair).Get(key(tenant, requester, grantor)))
		if id == 0 {
			return ErrNotFound
		}
		if err := getJSON(tx.Bucket(bDelegations), keyU64(tenant, id), &d); err != nil {
			return err
		}
		if !d.Live() {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delegation from %q to %q: %w", requester, grantor, err)
	}
	return &d, nil
}

// ClaimApprovalEmails takes up to limit queued approval emails due at now,
// leasing each until now+lease.
func (s *Store) ClaimApprovalEmails(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*Delegation, error) {
	var out []*Delegation
	err := s.group(ctx, func(tx *bolt.Tx) error {
		out = nil
		db := tx.Bucket(bDelegations)
		c := tx.Bucket(bDelegEmail).Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			var d Delegation
			if err := getJSON(db, k, &d); err != nil {
				return fmt.Errorf("queued approval email %q: %w", k, err)
			}
			e := d.ApprovalEmail
			if e == nil || e.Status != EmailQueued || e.NextAttempt.After(now) {
				continue
			}
			e.Attempts++
			e.NextAttempt = now.Add(lease).UTC()
			if err := putJSON(db, k, &d); err != nil {
				return err
			}
			out = append(out, &d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FinishApprovalEmail records the outcome of attempt of a queued email.
func (s *Store) FinishApprovalEmail(ctx context.Context, tenant string, id uint64, attempt int, e *ApprovalMail) (*Delegation, error) {
	var out Delegation
	err := s.group(ctx, func(tx *bolt.Tx) error {
		db := tx.Bucket(bDelegations)
		var d Delegation
		if err := getJSON(db, keyU64(tenant, id), &d); err != nil {
			return fmt.Errorf("delegation %s: %w", DelegationRef(id), err)
		}
		cur := d.ApprovalEmail
		if cur == nil || cur.Status != EmailQueued || cur.Attempts != attempt {
			return fmt.Errorf("approval email of %s: attempt %d is not the current one: %w", DelegationRef(id), attempt, ErrStale)
		}
		ne := *e
		ne.Attempts = attempt
		d.ApprovalEmail = &ne
		if err := putJSON(db, keyU64(tenant, id), &d); err != nil {
			return err
		}
		out = d
		return indexEmail(tx, &d)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}
