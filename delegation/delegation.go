// Package delegation holds the Send For rules shared by the HTTP API and the
// hosted approval page (SPEC §6, §7a): only the grantor approves or
// declines, and, for tenants with delegation_approval "email", the grantor
// is emailed (through the requester's own grant) a signed, expiring,
// single-use link to a page that does so.
package delegation

import (
	"context"
	"errors"
	"fmt"

	"syncrelay/store"
)

// Transitioner changes a delegation's state (the store).
type Transitioner interface {
	TransitionDelegation(ctx context.Context, tenant string, id uint64, by, to string, check func(*store.Delegation) error) (*store.Delegation, error)
}

// NotAllowedError is a permission refusal raised inside a transition.
type NotAllowedError struct{ Detail string }

func (e *NotAllowedError) Error() string { return e.Detail }

// Decide approves (to = store.DelegationActive) or declines
// (store.DelegationDeclined) delegation id on behalf of actor, who must be
// its grantor. The store appends the change to the history and enqueues
// delegation.changed in the same commit; deciding the same way twice is a
// no-op, any other change of a decided delegation is store.ErrTransition.
func Decide(ctx context.Context, st Transitioner, tenant string, id uint64, actor, to string) (*store.Delegation, error) {
	if to != store.DelegationActive && to != store.DelegationDeclined {
		return nil, fmt.Errorf("delegation: decide: %q is neither approve nor decline", to)
	}
	return st.TransitionDelegation(ctx, tenant, id, actor, to, func(d *store.Delegation) error {
		if d.Grantor != actor {
			return &NotAllowedError{fmt.Sprintf("only the grantor (%s) can approve or decline this Send For request", d.Grantor)}
		}
		return nil
	})
}

// IsNotAllowed reports whether err is a permission refusal.
func IsNotAllowed(err error) bool {
	var na *NotAllowedError
	return errors.As(err, &na)
}
