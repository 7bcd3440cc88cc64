package api

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"syncrelay/store"
)

// Forwarding health: GET /v1/tenants/{t}/status (SPEC §7).
//
// The forwarding verdict answers the email admin's question "is my routing
// rule working?":
//
//   - never_seen: no message has ever reached the tenant's inbound address
//     (the rule was never created, or points elsewhere);
//   - stale: the last one arrived longer ago than status.stale_after
//     although the tenant sent mail through syncrelay within that period
//     (the routing rule forwards each sent copy, so silence means the rule
//     broke);
//   - ok: otherwise (recent mail, or nothing sent that should have come back).

// Forwarding verdicts.
const (
	ForwardingOK        = "ok"
	ForwardingNeverSeen = "never_seen"
	ForwardingStale     = "stale"
)

// DefaultStaleAfter is status.stale_after's default.
const DefaultStaleAfter = 24 * time.Hour

// statusStore is what the status endpoint needs beyond Store.
type statusStore interface {
	TenantActivity(ctx context.Context, tenant string, now, sentSince time.Time) (*store.TenantActivity, error)
	Grants(ctx context.Context, tenant string) ([]*store.Grant, error)
}

type statusJSON struct {
	Tenant         string     `json:"tenant"`
	Provider       string     `json:"provider"`
	InboundAddress string     `json:"inbound_address"`
	DKIMPolicy     string     `json:"dkim_policy"`
	Forwarding     string     `json:"forwarding"`
	Detail         string     `json:"detail"`
	Action         string     `json:"action,omitempty"`
	StaleAfter     string     `json:"stale_after"`
	LastForwarded  *time.Time `json:"last_forwarded_at"`
	Sent           sentJSON   `json:"sent"`
	LastHour       windowJSON `json:"last_hour"`
	LastDay        windowJSON `json:"last_day"`
	Authentication authJSON   `json:"authentication"`
	BrokenGrants   []grantRef `json:"broken_grants"`
	CheckedAt      time.Time  `json:"checked_at"`
}

type sentJSON struct {
	Since    time.Time  `json:"since"`
	Count    int        `json:"count"`
	LastSent *time.Time `json:"last_sent_at"`
}

type windowJSON struct {
	Since     time.Time         `json:"since"`
	Total     uint64            `json:"total"`
	Decisions map[string]uint64 `json:"decisions"`
	Reasons   map[string]uint64 `json:"reasons"`
}

type authJSON struct {
	Since    time.Time `json:"since"`
	Checked  uint64    `json:"checked"`
	DKIMPass uint64    `json:"dkim_pass"`
	ARCPass  uint64    `json:"arc_pass"`
	Passed   uint64    `json:"passed"`
	// PassRate is passed/checked (DKIM or ARC passing), null when nothing
	// was checked.
	PassRate *float64 `json:"pass_rate"`
}

type grantRef struct {
	User     string     `json:"user"`
	Email    string     `json:"email,omitempty"`
	Provider string     `json:"provider"`
	BrokenAt *time.Time `json:"broken_at,omitempty"`
	Reason   string     `json:"reason,omitempty"`
}

func (s *Server) opsRoutes() {
	s.handle("GET /v1/tenants/{t}/status", s.auth(s.tenantStatus))
	s.handle("GET /v1/admin/backup", s.auth(s.adminBackup))
	s.handle("GET /v1/admin/key-fingerprint", s.auth(s.adminKeyFingerprint))
}

func (s *Server) staleAfter() time.Duration {
	if s.o.StaleAfter > 0 {
		return s.o.StaleAfter
	}
	return DefaultStaleAfter
}

func (s *Server) tenantStatus(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.o.Store.(statusStore)
	if !ok {
		writeProblem(w, http.StatusNotImplemented, "not-implemented", "Not implemented", "this store does not report forwarding health")
		return
	}
	ctx := r.Context()
	t, err := s.o.Store.Tenant(ctx, r.PathValue("t"))
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	now := time.Now().UTC()
	stale := s.staleAfter()
	a, err := ss.TenantActivity(ctx, t.ID, now, now.Add(-stale))
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	broken, err := s.brokenGrants(ctx, ss, t.ID)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := statusJSON{
		Tenant: t.ID, Provider: t.Provider, InboundAddress: t.InboundAddress, DKIMPolicy: t.DKIMPolicy,
		StaleAfter: formatDuration(stale),
		Sent:       sentJSON{Since: a.SentSince.UTC(), Count: a.Sent, LastSent: timePtr(a.LastSent)},
		LastHour:   windowOut(a.LastHour), LastDay: windowOut(a.LastDay),
		Authentication: authJSON{Since: a.LastDay.Since, Checked: a.LastDay.AuthChecked, DKIMPass: a.LastDay.AuthDKIMPass,
			ARCPass: a.LastDay.AuthARCPass, Passed: a.LastDay.AuthPassed},
		LastForwarded: timePtr(a.LastForwarded),
		BrokenGrants:  broken,
		CheckedAt:     now,
	}
	if a.LastDay.AuthChecked > 0 {
		rate := math.Round(float64(a.LastDay.AuthPassed)/float64(a.LastDay.AuthChecked)*1000) / 1000
		out.Authentication.PassRate = &rate
	}
	out.Forwarding, out.Detail, out.Action = forwardingVerdict(t, a, now, stale)
	writeJSON(w, http.StatusOK, out)
}

// forwardingVerdict decides ok / never_seen / stale and explains it, with
// what to do when it is not ok.
func forwardingVerdict(t *store.Tenant, a *store.TenantActivity, now time.Time, stale time.Duration) (verdict, detail, action string) {
	rule := "Google Workspace content compliance rule"
	if t.Provider == "microsoft" {
		rule = "Exchange Online mail flow rules"
	}
	fix := fmt.Sprintf("check the %s for %s (`syncrelay check -tenant %s` prints it) and see docs/admin-setup.md, Troubleshooting", rule, t.InboundAddress, t.ID)
	sent := fmt.Sprintf("%d %s sent through syncrelay in the last %s", a.Sent, plural(a.Sent, "message was", "messages were"), formatDuration(stale))
	switch {
	case a.LastForwarded.IsZero():
		if a.Sent > 0 {
			return ForwardingNeverSeen, "no message has ever reached the inbound address although " + sent, fix
		}
		return ForwardingNeverSeen, "no message has ever reached the inbound address", "create the " + rule + ": " + fix
	case now.Sub(a.LastForwarded) > stale && a.Sent > 0:
		return ForwardingStale, fmt.Sprintf("the last forwarded message arrived %s ago although %s", formatDuration(now.Sub(a.LastForwarded)), sent), fix
	case now.Sub(a.LastForwarded) > stale:
		return ForwardingOK, fmt.Sprintf("the last forwarded message arrived %s ago; no mail was sent through syncrelay since, so none was expected", formatDuration(now.Sub(a.LastForwarded))), ""
	}
	return ForwardingOK, fmt.Sprintf("the last forwarded message arrived %s ago", formatDuration(now.Sub(a.LastForwarded))), ""
}

func (s *Server) brokenGrants(ctx context.Context, ss statusStore, tenant string) ([]grantRef, error) {
	gs, err := ss.Grants(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := []grantRef{}
	for _, g := range gs {
		if g.Status != store.GrantBroken {
			continue
		}
		ref := grantRef{User: g.User, Provider: g.Provider, BrokenAt: timePtr(g.BrokenAt), Reason: g.BrokenReason}
		if u, err := s.o.Store.User(ctx, tenant, g.User); err == nil {
			ref.Email = u.Email
		}
		out = append(out, ref)
	}
	return out, nil
}

func windowOut(w store.WindowCounts) windowJSON {
	out := windowJSON{Since: w.Since, Total: w.Total, Decisions: w.Decisions, Reasons: w.Reasons}
	if out.Decisions == nil {
		out.Decisions = map[string]uint64{}
	}
	if out.Reasons == nil {
		out.Reasons = map[string]uint64{}
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// formatDuration writes d for people: "24h", "3h5m", "42s".
func formatDuration(d time.Duration) string {
	if d >= time.Hour {
		d = d.Round(time.Minute)
	} else {
		d = d.Round(time.Second)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
