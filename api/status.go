package api

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"syncrelay/setup"
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
//   - over_forwarding: mail arrives, but most of it over the last day was
//     not of interest (discarded): the rule copies mail it should not, a
//     privacy problem at the company;
//   - ok: otherwise (recent mail, or nothing sent that should have come back).
//
// The detail and action texts are for the company's email admin: what to
// do in the Google Admin console or the Exchange admin center, or what to
// ask the ATS for; never a shell command they cannot run.

// Forwarding verdicts.
const (
	ForwardingOK             = "ok"
	ForwardingNeverSeen      = "never_seen"
	ForwardingStale          = "stale"
	ForwardingOverForwarding = "over_forwarding"
)

// Status issue codes (StatusIssue.Code).
const (
	IssueOverForwarding = "over_forwarding"
	IssueDKIMUnaligned  = "dkim_unaligned"
)

// overForwardingMin is how many messages the last day must hold before
// their discarded share says anything about the rule.
const overForwardingMin = 10

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
	// Issues are the problems found over the last day, each with what to
	// do (empty when none).
	Issues    []StatusIssue `json:"issues"`
	CheckedAt time.Time     `json:"checked_at"`
}

// StatusIssue is one problem of a tenant's setup that the status (and
// `syncrelay check -tenant`) reports, explained for its email admin.
type StatusIssue struct {
	Code  string `json:"code"`  // over_forwarding | dkim_unaligned
	Count uint64 `json:"count"` // messages concerned over the last day
	// SigningDomains are, for dkim_unaligned, the domains the refused
	// mail was validly signed by, most frequent first.
	SigningDomains []string `json:"signing_domains,omitempty"`
	Detail         string   `json:"detail"`
	Action         string   `json:"action"`
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
	ss := s.o.Store
	ctx := r.Context()
	rq, ok := s.begin(w, r, prelude{tenant: true})
	if !ok {
		return
	}
	t := rq.tenant
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
	rules := setup.For(s.o.Hostname, t)
	out.Forwarding, out.Detail, out.Action = forwardingVerdict(t, a, now, stale, rules)
	out.Issues = TenantIssues(t, a, rules)
	writeJSON(w, http.StatusOK, out)
}

// forwardingVerdict decides ok / never_seen / stale / over_forwarding and
// explains it, with what to do when it is not ok.
func forwardingVerdict(t *store.Tenant, a *store.TenantActivity, now time.Time, stale time.Duration, rules *setup.Rules) (verdict, detail, action string) {
	fix := checkRuleAction(t, rules)
	sent := fmt.Sprintf("%d %s sent through syncrelay in the last %s", a.Sent, plural(a.Sent, "message was", "messages were"), formatDuration(stale))
	switch {
	case a.LastForwarded.IsZero():
		if a.Sent > 0 {
			return ForwardingNeverSeen, "no message has ever reached the inbound address although " + sent, fix
		}
		return ForwardingNeverSeen, "no message has ever reached the inbound address", createRuleAction(t, rules)
	case now.Sub(a.LastForwarded) > stale && a.Sent > 0:
		return ForwardingStale, fmt.Sprintf("the last forwarded message arrived %s ago although %s", formatDuration(now.Sub(a.LastForwarded)), sent), fix
	case now.Sub(a.LastForwarded) > stale:
		return ForwardingOK, fmt.Sprintf("the last forwarded message arrived %s ago; no mail was sent through syncrelay since, so none was expected", formatDuration(now.Sub(a.LastForwarded))), ""
	}
	if is, ok := overForwarding(t, a, rules); ok {
		return ForwardingOverForwarding, is.Detail, is.Action
	}
	return ForwardingOK, fmt.Sprintf("the last forwarded message arrived %s ago", formatDuration(now.Sub(a.LastForwarded))), ""
}

// TenantIssues lists the problems a tenant's activity over the last day
// shows, for the status endpoint and `syncrelay check -tenant`; rules are
// the tenant's routing rules (setup.For).
func TenantIssues(t *store.Tenant, a *store.TenantActivity, rules *setup.Rules) []StatusIssue {
	out := []StatusIssue{}
	if is, ok := overForwarding(t, a, rules); ok {
		out = append(out, is)
	}
	if is, ok := dkimUnaligned(t, a); ok {
		out = append(out, is)
	}
	return out
}

// overForwarding: most of the last day's forwarded mail was not of
// interest, so the routing rule copies mail out of the company that it
// should not (syncrelay discards it unread, but it has left the company).
func overForwarding(t *store.Tenant, a *store.TenantActivity, rules *setup.Rules) (StatusIssue, bool) {
	total := a.LastDay.Total
	discarded := a.LastDay.Reasons["discarded/no_match"]
	if total < overForwardingMin || discarded*2 <= total {
		return StatusIssue{}, false
	}
	return StatusIssue{
		Code:  IssueOverForwarding,
		Count: discarded,
		Detail: fmt.Sprintf("%d of the %d messages forwarded in the last 24h (%d%%) were not part of an ATS conversation and were discarded unread: "+
			"the routing rule copies more mail than it should", discarded, total, discarded*100/total),
		Action: narrowRuleAction(t, rules),
	}, true
}

// dkimUnaligned: mail of the tenant's own users was refused (or
// quarantined) although validly DKIM-signed, by a domain that is neither
// aligned with the sender's nor one of the tenant's signing domains: the
// company has no custom DKIM, or sends through a provider not declared.
func dkimUnaligned(t *store.Tenant, a *store.TenantActivity) (StatusIssue, bool) {
	var n uint64
	for k, c := range a.LastDay.Reasons {
		if strings.HasSuffix(k, "/"+IssueDKIMUnaligned) {
			n += c
		}
	}
	if n == 0 {
		return StatusIssue{}, false
	}
	signers := topKeys(a.LastDay.UnalignedSigners, 5)
	by := "a domain"
	if len(signers) > 0 {
		by = strings.Join(signers, ", ")
	}
	return StatusIssue{
		Code:           IssueDKIMUnaligned,
		Count:          n,
		SigningDomains: signers,
		Detail: fmt.Sprintf("%d %s from the company's own users in the last 24h %s not accepted: DKIM-signed only by %s, "+
			"which is neither the sender's domain nor one of the tenant's signing domains", n, plural(int(n), "message", "messages"),
			plural(int(n), "was", "were"), by),
		Action: dkimAction(t, by),
	}, true
}

// topKeys returns at most n keys of m, largest count first.
func topKeys(m map[string]uint64, n int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	if len(keys) > n {
		keys = keys[:n]
	}
	return keys
}

// --- what the company's email admin does (admin consoles, not shells) ---

const (
	googleCompliance = "In the Google Admin console (Apps > Google Workspace > Gmail > Compliance)"
	exchangeRules    = "In the Exchange admin center (Mail flow > Rules)"
)

func exchangeNames(rules *setup.Rules) string {
	var names []string
	for _, r := range rules.Exchange.Rules {
		names = append(names, strconv.Quote(r.Name))
	}
	return strings.Join(names, ", ")
}

func exchangePattern(rules *setup.Rules) string {
	if len(rules.Exchange.Rules) == 0 {
		return ""
	}
	return rules.Exchange.Rules[0].Pattern
}

func createRuleAction(t *store.Tenant, rules *setup.Rules) string {
	if t.Provider == "microsoft" {
		return fmt.Sprintf("%s, create the mail flow rules %s: each applies when \"A message header matches\" its header's pattern "+
			"(References and In-Reply-To: %s) and does \"Bcc the message to\" %s. Your ATS's setup instructions list every setting.",
			exchangeRules, exchangeNames(rules), exchangePattern(rules), t.InboundAddress)
	}
	return fmt.Sprintf("%s, add the content compliance rule %q: all four directions, Advanced content match, location Full headers, "+
		"Matches regex %s, action Also deliver to %s. Your ATS's setup instructions list every setting.",
		googleCompliance, rules.Google.Name, rules.Google.Regex, t.InboundAddress)
}

func checkRuleAction(t *store.Tenant, rules *setup.Rules) string {
	if t.Provider == "microsoft" {
		return fmt.Sprintf("%s, check that the rules %s exist, are enabled, match their header's pattern (References and In-Reply-To: %s) "+
			"and Bcc the message to %s. If they do, ask your ATS provider to check that mail to that address reaches the relay.",
			exchangeRules, exchangeNames(rules), exchangePattern(rules), t.InboundAddress)
	}
	return fmt.Sprintf("%s, check that the content compliance rule %q exists, is on, covers all four directions, matches Full headers "+
		"against the regex %s and also delivers to %s. If it does, ask your ATS provider to check that mail to that address reaches the relay.",
		googleCompliance, rules.Google.Name, rules.Google.Regex, t.InboundAddress)
}

func narrowRuleAction(t *store.Tenant, rules *setup.Rules) string {
	if t.Provider == "microsoft" {
		return fmt.Sprintf("%s, make every rule that Bcc's %s apply only when its header matches the pattern of the setup instructions "+
			"(References and In-Reply-To: %s), never to all messages, and remove any other rule, connector or forwarding to that address: "+
			"mail that is not part of an ATS conversation must not leave the company.", exchangeRules, t.InboundAddress, exchangePattern(rules))
	}
	return fmt.Sprintf("%s, make the content compliance rule %q the only rule that delivers to %s, and let it apply only to messages whose "+
		"Full headers match the regex %s (Advanced content match, not all messages); remove any other routing, forwarding or compliance rule "+
		"to that address: mail that is not part of an ATS conversation must not leave the company.",
		googleCompliance, rules.Google.Name, t.InboundAddress, rules.Google.Regex)
}

func dkimAction(t *store.Tenant, by string) string {
	domains := strings.Join(t.Domains, ", ")
	if t.Provider == "microsoft" {
		return fmt.Sprintf("Turn on DKIM signing for %s in the Microsoft Defender portal (Email & collaboration > Policies & rules > "+
			"Threat policies > Email authentication settings > DKIM: publish the two CNAME records at your DNS host, then enable signing), "+
			"or ask your ATS provider to add %s to the tenant's signing domains.", domains, by)
	}
	return fmt.Sprintf("Turn on DKIM signing for %s in the Google Admin console (Apps > Google Workspace > Gmail > Authenticate email: "+
		"generate a key, publish the TXT record at your DNS host, then Start authentication), "+
		"or ask your ATS provider to add %s to the tenant's signing domains.", domains, by)
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
