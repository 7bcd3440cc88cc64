package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"syncrelay/metrics"
	"syncrelay/router"
	"syncrelay/smtpd"
)

// Deliverer is the production smtpd.Deliverer, the adapter from smtpd to
// the router: one Route per distinct tenant among the recipients, and one
// answer for the transaction. serve, in-process replay and the tests that
// run the inbound path use it, so they all take the same path.
type Deliverer struct {
	Router *router.Router
	// Metrics counts decisions, DKIM/ARC results and the time to answer
	// (nil: not counted).
	Metrics *metrics.Metrics
	// Auth counts DKIM/ARC outcomes per tenant for the status endpoint
	// (nil: not counted).
	Auth AuthCounter
}

// Outcomes is the one list of every decision × reason an inbound message
// can get: the router's (router.Outcomes) and those smtpd makes itself
// before any router sees the message (smtpd.Outcomes: its refusals of a
// body, a spool it cannot write), without repeats. serve exports each as
// a syncrelay_messages_total series at 0 from start.
func Outcomes() [][2]string {
	var all [][2]string
	seen := map[[2]string]bool{}
	for _, o := range append(router.Outcomes(), smtpd.Outcomes()...) {
		if !seen[o] {
			seen[o] = true
			all = append(all, o)
		}
	}
	return all
}

// AuthCounter is store.Store.CountAuth.
type AuthCounter interface {
	CountAuth(tenant string, dkimPass, arcPass bool)
}

// severity orders outcomes: the worst one answers the transaction. A
// tempfail for one tenant makes the sender retry the whole message, which is
// safe because a second copy is a duplicate for the tenants that kept it.
func severity(d string) int {
	switch d {
	case router.Tempfail:
		return 3
	case router.Rejected:
		return 2
	}
	return 1
}

// Deliver answers del with Route's verdict (smtpd's reply table says it in
// SMTP), or its error (451, or 452 for a full disk).
func (d *Deliverer) Deliver(ctx context.Context, del *smtpd.Delivery) error {
	_, err := d.Route(ctx, del)
	return err
}

// Route routes del for each distinct tenant among its recipients. It
// returns the outcome that answers the transaction (the worst) and what
// Deliver returns: a *smtpd.Verdict for it, or the first tenant's routing
// error. The decisions' log lines go on del.LogArgs, for the session's
// "message" line; with several tenants, each under its own name.
func (d *Deliverer) Route(ctx context.Context, del *smtpd.Delivery) (router.Outcome, error) {
	start := time.Now()
	// Every log line written while deciding this message (the router's
	// too) carries the session id of its connection.
	ctx = WithLogAttrs(ctx, slog.String("session", del.SessionID))
	var worst router.Outcome
	var routeErr error
	for i, t := range del.Tenants {
		if seenBefore(del.Tenants[:i], t) {
			continue
		}
		out, err := d.Router.Route(ctx, router.Input{Tenant: t, Body: del.Message})
		if err != nil && routeErr == nil {
			routeErr = fmt.Errorf("route for tenant %s: %w", t, err)
		}
		if len(del.Tenants) == 1 {
			del.LogArgs = append(del.LogArgs, out.Log...)
		} else if len(out.Log) > 0 {
			del.LogArgs = append(del.LogArgs, slog.Group("tenant_"+t, out.Log...))
		}
		d.observe(t, &out)
		if worst.Decision == "" || severity(out.Decision) > severity(worst.Decision) {
			worst = out
		}
	}
	d.Metrics.DataReply(time.Since(start))
	switch {
	case routeErr != nil:
		return worst, routeErr
	case worst.Decision == "":
		return worst, nil
	}
	return worst, &smtpd.Verdict{Decision: worst.Decision, Reason: worst.Reason, Detail: worst.Detail}
}

// seenBefore reports whether t is among the tenants already routed (a
// transaction has a handful of recipients at most: no map needed).
func seenBefore(tenants []string, t string) bool {
	for _, s := range tenants {
		if s == t {
			return true
		}
	}
	return false
}

// observe counts one tenant's outcome: the decision, and for a message of
// interest that was authenticated (the router sets ARC only then) its
// DKIM and ARC results.
func (d *Deliverer) observe(tenant string, out *router.Outcome) {
	d.Metrics.Decision(out.Decision, out.Reason)
	if out.ARC == "" {
		return
	}
	dkimPass := false
	for _, r := range out.DKIM {
		d.Metrics.DKIMResult(r.Result)
		dkimPass = dkimPass || r.Result == "pass"
	}
	d.Metrics.ARCResult(out.ARC)
	if d.Auth != nil {
		d.Auth.CountAuth(tenant, dkimPass, out.ARC == "pass")
	}
}
