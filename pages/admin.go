package pages

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"syncrelay/setup"
	"syncrelay/signedlink"
	"syncrelay/store"
)

// The email admin page (SPEC §7a): GET /p/admin?t=TOKEN. It shows what the
// company's email admin needs to set up and check forwarding, and never
// the content of any message (discarded mail leaves only counters; the
// quarantine is listed by its metadata).

// QuarantineActions release a quarantined message to the profile, or
// delete it; each is recorded by the implementation, in the store's commit
// that removes it from the quarantine, with by (who acted).
type QuarantineActions interface {
	ReleaseQuarantined(ctx context.Context, tenant string, id uint64, by string) error
	DeleteQuarantined(ctx context.Context, tenant string, id uint64, by string) error
}

// recentActions is how many quarantine actions the page lists.
const recentActions = 20

func (s *Server) adminRoutes() {
	s.mux.HandleFunc("GET /p/admin", s.adminPage)
	s.mux.HandleFunc("POST /p/admin/verify", s.adminVerify)
	s.mux.HandleFunc("POST /p/admin/quarantine", s.adminQuarantine)
}

type adminData struct {
	Title     string
	Token     string
	CSRF      string
	Tenant    *store.Tenant
	Rules     *setup.Rules
	RulesText string
	Google    string // the Google rule as check prints it
	Exchange  string // the Exchange rules as check prints them
	// GoogleFirst orders the rules by the tenant's provider.
	GoogleFirst bool
	Expires     time.Time
	Now         time.Time

	LastForwarded time.Time
	DayChart      template.HTML
	WeekChart     template.HTML
	Legend        []legendItem
	DayTotals     []seriesTotal
	WeekTotals    []seriesTotal

	AuthChecked uint64
	PassRate    string // "97.5%" or "" when nothing was checked
	Refusals    []reasonCount

	BrokenGrants []brokenGrant
	Connected    int

	Quarantine        []quarantineRow
	QuarantineActions bool
	// Actions are the last releases and deletions, newest first.
	Actions []actionRow

	Probe   *probeView
	Refresh int // seconds between reloads while the probe is out
	Notice  string
	Problem string
}

type seriesTotal struct {
	Name, Class string
	Count       uint64
}

type reasonCount struct {
	Decision, Reason string
	Count            uint64
}

type brokenGrant struct {
	User, Email, Provider, Reason string
	BrokenAt                      time.Time
}

type quarantineRow struct {
	ID       uint64
	Ref      string
	Received time.Time
	Expires  time.Time
	Reason   string
	DKIM     string
	Size     string
}

type actionRow struct {
	At                  time.Time
	Action, Ref, Reason string
	Message, Thread, By string
}

// adminLink reads and checks the link of a GET (query) or POST (form).
func (s *Server) adminLink(w http.ResponseWriter, r *http.Request) (string, *store.Tenant, bool) {
	tok := r.FormValue("t")
	if tok == "" {
		s.errorPage(w, r, http.StatusBadRequest, "This link is incomplete: it has no token. Check that you copied the whole link.")
		return "", nil, false
	}
	_, t, err := s.verifyAdmin(r.Context(), tok)
	if err != nil {
		s.linkError(w, r, err)
		return "", nil, false
	}
	return tok, t, true
}

func (s *Server) adminPage(w http.ResponseWriter, r *http.Request) {
	tok, t, ok := s.adminLink(w, r)
	if !ok {
		return
	}
	d, err := s.adminData(r.Context(), tok, t)
	if err != nil {
		s.o.Log.ErrorContext(r.Context(), "pages: admin page", "tenant", t.ID, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "The page is unavailable right now. Try again in a minute.")
		return
	}
	d.CSRF = s.csrfToken(w, r, tok)
	switch r.URL.Query().Get("done") {
	case "released":
		d.Notice = "The message was released to the candidate's profile."
	case "deleted":
		d.Notice = "The message was deleted."
	case "probe":
		if d.Probe != nil && d.Probe.State == "pending" {
			d.Notice = "A probe was sent. This page shows when it comes back."
		}
	}
	s.render(w, r, http.StatusOK, "admin", d)
}

func (s *Server) adminData(ctx context.Context, tok string, t *store.Tenant) (*adminData, error) {
	now := s.o.Now().UTC()
	c, _ := s.o.Links.Verify(tok, "admin")
	rules := setup.For(s.o.Hostname, t)
	d := &adminData{Title: "Email forwarding for " + tenantName(t), Token: tok, Tenant: t, Rules: rules,
		GoogleFirst: t.Provider != "microsoft", Expires: c.Expires, Now: now, Legend: legend()}
	d.Google, d.Exchange = rulesText(rules)

	a, err := s.o.Store.TenantActivity(ctx, t.ID, now, now.Add(-24*time.Hour))
	if err != nil {
		return nil, err
	}
	d.LastForwarded = a.LastForwarded
	day, err := s.buckets(ctx, t.ID, dayStarts(now), now)
	if err != nil {
		return nil, err
	}
	week, err := s.buckets(ctx, t.ID, weekStarts(now), now)
	if err != nil {
		return nil, err
	}
	d.DayChart = svgChart("Messages forwarded per hour, last 24 hours (UTC)", day, func(t time.Time) string { return t.Format("15:00") }, 3)
	d.WeekChart = svgChart("Messages forwarded per day, last 7 days (UTC)", week, func(t time.Time) string { return t.Format("Mon 2") }, 1)
	d.DayTotals, d.WeekTotals = totals(day), totals(week)

	d.AuthChecked = a.LastDay.AuthChecked
	if a.LastDay.AuthChecked > 0 {
		rate := float64(a.LastDay.AuthPassed) / float64(a.LastDay.AuthChecked) * 100
		d.PassRate = strconv.FormatFloat(math.Round(rate*10)/10, 'f', -1, 64) + "%"
	}
	for k, n := range a.LastDay.Reasons {
		dec, reason, _ := strings.Cut(k, "/")
		if dec == "rejected" || dec == "quarantined" || dec == "tempfail" {
			d.Refusals = append(d.Refusals, reasonCount{dec, reason, n})
		}
	}
	sort.Slice(d.Refusals, func(i, j int) bool {
		if d.Refusals[i].Count != d.Refusals[j].Count {
			return d.Refusals[i].Count > d.Refusals[j].Count
		}
		return d.Refusals[i].Decision+d.Refusals[i].Reason < d.Refusals[j].Decision+d.Refusals[j].Reason
	})

	gs, err := s.o.Store.Grants(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	for _, g := range gs {
		if g.Status != store.GrantBroken {
			if g.Provider == t.Provider {
				d.Connected++
			}
			continue
		}
		b := brokenGrant{User: g.User, Provider: g.Provider, Reason: g.BrokenReason, BrokenAt: g.BrokenAt}
		if u, err := s.o.Store.User(ctx, t.ID, g.User); err == nil {
			b.Email = u.Email
		}
		d.BrokenGrants = append(d.BrokenGrants, b)
	}

	qs, err := s.o.Store.QuarantinedMessages(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	for _, q := range qs {
		var dk []string
		for _, r := range q.DKIM {
			dk = append(dk, r.Domain+": "+r.Result)
		}
		d.Quarantine = append(d.Quarantine, quarantineRow{ID: q.ID, Ref: "q_" + strconv.FormatUint(q.ID, 10), Received: q.Received,
			Expires: q.Expires, Reason: q.Reason, DKIM: strings.Join(dk, ", "), Size: sizeText(q.Size)})
	}
	d.QuarantineActions = s.o.Quarantine != nil
	acts, err := s.o.Store.QuarantineActions(ctx, t.ID, recentActions)
	if err != nil {
		return nil, err
	}
	for _, a := range acts {
		d.Actions = append(d.Actions, actionRow{At: a.At, Action: a.Action, Ref: "q_" + strconv.FormatUint(a.Quarantine, 10),
			Reason: a.Reason, Message: a.Message, Thread: a.Thread, By: a.By})
	}

	d.Probe, err = s.probeView(ctx, t, a, now)
	if err != nil {
		return nil, err
	}
	d.Refresh = int(s.o.ProbeRefresh / time.Second)
	return d, nil
}

func tenantName(t *store.Tenant) string {
	if t.Name != "" {
		return t.Name
	}
	return t.ID
}

func totals(bs []bucket) []seriesTotal {
	out := make([]seriesTotal, len(series))
	for i, sr := range series {
		out[i] = seriesTotal{Name: sr.Name, Class: sr.Class}
		for _, b := range bs {
			out[i].Count += b.Values[i]
		}
	}
	return out
}

func sizeText(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// rulesText splits the rules as `syncrelay check` prints them into the
// Google and the Exchange part, so the page shows exactly the same text.
func rulesText(r *setup.Rules) (google, exchange string) {
	var b strings.Builder
	r.Print(&b)
	text := b.String()
	gi := strings.Index(text, "Google Workspace: content compliance rule")
	ei := strings.Index(text, "Exchange Online: mail flow rules")
	end := strings.Index(text, "\nThen send a message")
	if gi < 0 || ei < 0 || end < 0 {
		return text, ""
	}
	cut := func(from, to int) string {
		s := text[from:to]
		// Drop the "(If the tenant's mail were on ... instead:)" line
		// that joins the two parts in check's output.
		if i := strings.Index(s, "\n(If the tenant"); i >= 0 {
			s = s[:i]
		}
		return strings.TrimRight(s, "\n") + "\n"
	}
	if gi < ei {
		return cut(gi, ei), cut(ei, end)
	}
	return cut(gi, end), cut(ei, gi)
}

// adminVerify starts a Verify forwarding probe (probe.go).
func (s *Server) adminVerify(w http.ResponseWriter, r *http.Request) {
	tok, t, ok := s.adminLink(w, r)
	if !ok {
		return
	}
	if !s.csrfOK(r, tok) {
		s.errorPage(w, r, http.StatusForbidden, "This form has expired. Go back, reload the page and try again.")
		return
	}
	if err := s.startProbe(r.Context(), t); err != nil {
		var pe *probeError
		if errors.As(err, &pe) {
			s.redirectAdmin(w, r, tok, "")
			return
		}
		s.o.Log.ErrorContext(r.Context(), "pages: verify forwarding", "tenant", t.ID, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "The check could not be started right now. Try again in a minute.")
		return
	}
	s.o.Log.InfoContext(r.Context(), "pages: forwarding probe sent", "tenant", t.ID)
	s.redirectAdmin(w, r, tok, "probe")
}

// adminQuarantine releases or deletes one quarantined message.
func (s *Server) adminQuarantine(w http.ResponseWriter, r *http.Request) {
	tok, t, ok := s.adminLink(w, r)
	if !ok {
		return
	}
	if !s.csrfOK(r, tok) {
		s.errorPage(w, r, http.StatusForbidden, "This form has expired. Go back, reload the page and try again.")
		return
	}
	if s.o.Quarantine == nil {
		s.errorPage(w, r, http.StatusNotImplemented, "Quarantined messages cannot be released or deleted on this server.")
		return
	}
	id, err := strconv.ParseUint(r.PostFormValue("id"), 10, 64)
	if err != nil || id == 0 {
		s.errorPage(w, r, http.StatusBadRequest, "The form named no quarantined message. Go back, reload the page and try again.")
		return
	}
	// The record names the link that acted (its nonce and generation, not
	// the token): enough to tell which handed-out link it was.
	c, _ := s.o.Links.Verify(tok, signedlink.PurposeAdmin)
	by := fmt.Sprintf("admin link n=%s g=%d", c.Nonce, c.Gen)
	var done string
	switch r.PostFormValue("action") {
	case "release":
		err, done = s.o.Quarantine.ReleaseQuarantined(r.Context(), t.ID, id, by), "released"
	case "delete":
		err, done = s.o.Quarantine.DeleteQuarantined(r.Context(), t.ID, id, by), "deleted"
	default:
		s.errorPage(w, r, http.StatusBadRequest, "Choose Release or Delete.")
		return
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.errorPage(w, r, http.StatusNotFound, "That message is no longer in the quarantine (it was released, deleted or expired).")
		return
	case err != nil:
		s.o.Log.ErrorContext(r.Context(), "pages: quarantine action", "tenant", t.ID, "id", id, "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "The message could not be changed right now. Try again in a minute.")
		return
	}
	s.o.Log.InfoContext(r.Context(), "pages: quarantined message "+done, "tenant", t.ID, "id", id)
	s.redirectAdmin(w, r, tok, done)
}

func (s *Server) redirectAdmin(w http.ResponseWriter, r *http.Request, tok, done string) {
	u := "/p/admin?t=" + url.QueryEscape(tok)
	if done != "" {
		u += "&done=" + done
	}
	anchor := "#verify"
	if done == "released" || done == "deleted" {
		anchor = "#quarantine"
	}
	http.Redirect(w, r, u+anchor, http.StatusSeeOther)
}
