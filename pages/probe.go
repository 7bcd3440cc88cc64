package pages

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"syncrelay/store"
)

// Verify forwarding: the page sends a probe through a connected user's
// grant to that same user. It carries the thread marker headers the
// routing rule matches (X-Syncrelay-Thread, an sr. Message-ID), so the rule
// copies it to the inbound address, and X-Syncrelay-Probe naming the
// tenant and a random nonce. The router asks ProbeReturned before matching:
// a copy with the current nonce marks the probe returned and is discarded,
// never stored on a candidate. The nonce is 128 random bits kept only in
// the store, so nobody else can make the page say forwarding works.

// HeaderProbe carries "<tenant>.<nonce>" on a probe.
const HeaderProbe = "X-Syncrelay-Probe"

// ProbeKeep is how long a probe's outcome stays on the page.
const ProbeKeep = 7 * 24 * time.Hour

func probeKey(tenant string) string { return "pages/probe/" + tenant }

// probeState is the tenant's latest probe, in the KV.
type probeState struct {
	Nonce     string    `json:"nonce"`
	User      string    `json:"user"`
	Email     string    `json:"email"`
	Started   time.Time `json:"started"`
	Returned  time.Time `json:"returned,omitzero"`
	SendError string    `json:"send_error,omitempty"`
}

type probeView struct {
	CanStart  bool
	CannotWhy string
	// Of the latest probe, if any:
	State    string // "", pending, returned, timeout, send_failed
	Email    string
	Started  time.Time
	Returned time.Time
	Took     string
	Deadline time.Time
	Error    string
	Hints    []string
}

type probeError struct{ msg string }

func (e *probeError) Error() string { return e.msg }

func (s *Server) probeState(ctx context.Context, tenant string) (*probeState, error) {
	var p probeState
	err := s.o.Store.GetKV(ctx, probeKey(tenant), &p)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// probeUser picks a user of the tenant whose grant works for its provider
// (the first by id, so the choice is stable).
func (s *Server) probeUser(ctx context.Context, t *store.Tenant) (*store.User, error) {
	gs, err := s.o.Store.Grants(ctx, t.ID)
	if err != nil {
		return nil, err
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].User < gs[j].User })
	for _, g := range gs {
		if g.Status == store.GrantBroken || g.Provider != t.Provider {
			continue
		}
		u, err := s.o.Store.User(ctx, t.ID, g.User)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if u.Email != "" {
			return u, nil
		}
	}
	return nil, nil
}

// ProbeMinInterval is how long a probe still on its way holds back a new
// one (a double click, or a reload of the POST, sends one message).
const ProbeMinInterval = time.Minute

// startProbe sends a new probe and records it (or why it could not be
// sent). It returns an error only for local trouble.
func (s *Server) startProbe(ctx context.Context, t *store.Tenant) error {
	now := s.o.Now().UTC()
	if s.o.Probes == nil {
		return &probeError{"sending is not configured on this server"}
	}
	if p, err := s.probeState(ctx, t.ID); err != nil {
		return err
	} else if p != nil && p.Returned.IsZero() && p.SendError == "" && now.Sub(p.Started) < ProbeMinInterval {
		return nil
	}
	u, err := s.probeUser(ctx, t)
	if err != nil {
		return err
	}
	if u == nil {
		return &probeError{"no user has a connected mailbox"}
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	p := &probeState{Nonce: hex.EncodeToString(b), User: u.ID, Email: u.Email, Started: now}
	// Recorded before sending: the copy can come back before Send returns.
	if err := s.o.Store.PutKV(ctx, probeKey(t.ID), p, ProbeKeep); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	if err := s.o.Probes.SendRaw(sctx, t.ID, u.ID, s.probeMessage(t, u.Email, p.Nonce, now)); err != nil {
		s.o.Log.WarnContext(ctx, "pages: forwarding probe not sent", "tenant", t.ID, "user", u.ID, "err", err)
		// Keep a Returned the copy may have set meanwhile (it cannot have):
		// only the error is new.
		p.SendError = "the message could not be sent through " + u.Email + "'s mailbox: " + oneLine(err.Error())
		return s.o.Store.PutKV(ctx, probeKey(t.ID), p, ProbeKeep)
	}
	return nil
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// probeMessage is the probe: from the user to the user, with the headers
// the routing rule matches.
func (s *Server) probeMessage(t *store.Tenant, email, nonce string, now time.Time) []byte {
	host := strings.ToLower(s.o.Hostname)
	var b strings.Builder
	hdr := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	hdr("From", "<"+email+">")
	hdr("To", "<"+email+">")
	hdr("Subject", "syncrelay forwarding check")
	hdr("Date", now.Format(time.RFC1123Z))
	hdr("Message-ID", "<sr.probe"+nonce+"@"+host+">")
	hdr("X-Syncrelay-Thread", "probe"+nonce)
	hdr(HeaderProbe, t.ID+"."+nonce)
	hdr("Auto-Submitted", "auto-generated")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "text/plain; charset=utf-8")
	hdr("Content-Transfer-Encoding", "7bit")
	b.WriteString("\r\nThis message checks that your company's routing rule copies ATS mail to syncrelay.\r\n" +
		"It was sent from the email admin page. You can delete it.\r\n")
	return []byte(b.String())
}

// ProbeReturned is called by the router with the X-Syncrelay-Probe value of
// a message that reached tenant's inbound address. It reports whether the
// message is the tenant's current probe (then the router discards it after
// this records its return).
func (s *Server) ProbeReturned(ctx context.Context, tenant, value string) (bool, error) {
	t, nonce, ok := strings.Cut(strings.TrimSpace(value), ".")
	if !ok || t != tenant || len(nonce) != 32 {
		return false, nil
	}
	p, err := s.probeState(ctx, tenant)
	if err != nil || p == nil {
		return false, err
	}
	if subtle.ConstantTimeCompare([]byte(p.Nonce), []byte(nonce)) != 1 {
		return false, nil
	}
	if p.Returned.IsZero() {
		p.Returned = s.o.Now().UTC()
		if err := s.o.Store.PutKV(ctx, probeKey(tenant), p, ProbeKeep); err != nil {
			return true, err
		}
	}
	return true, nil
}

// probeView says what the page shows about Verify forwarding.
func (s *Server) probeView(ctx context.Context, t *store.Tenant, a *store.TenantActivity, now time.Time) (*probeView, error) {
	v := &probeView{}
	u, err := s.probeUser(ctx, t)
	if err != nil {
		return nil, err
	}
	switch {
	case s.o.Probes == nil:
		v.CannotWhy = "Sending is not configured on this server, so the check cannot run."
	case u == nil:
		v.CannotWhy = "No user has connected their mailbox yet: the check sends its probe through a connected mailbox. Ask a user to connect theirs in the ATS."
	default:
		v.CanStart = true
	}
	p, err := s.probeState(ctx, t.ID)
	if err != nil || p == nil {
		return v, err
	}
	v.Email, v.Started, v.Returned, v.Deadline = p.Email, p.Started, p.Returned, p.Started.Add(s.o.ProbeTimeout)
	switch {
	case !p.Returned.IsZero():
		v.State = "returned"
		v.Took = roundDuration(p.Returned.Sub(p.Started))
	case p.SendError != "":
		v.State, v.Error = "send_failed", p.SendError
	case now.Before(v.Deadline):
		v.State = "pending"
	default:
		v.State = "timeout"
		v.Hints = s.probeHints(t, a, p)
	}
	return v, nil
}

// probeHints say what is likely wrong when a probe did not come back.
func (s *Server) probeHints(t *store.Tenant, a *store.TenantActivity, p *probeState) []string {
	var out []string
	if a.LastForwarded.Before(p.Started) {
		out = append(out, fmt.Sprintf("Nothing reached the inbound address %s since the probe was sent: the routing rule is missing or turned off, "+
			"or it delivers to another address (check for a typo in the address).", t.InboundAddress))
	} else {
		out = append(out, "Mail reached the inbound address since the probe was sent, but not the probe: the rule may not match the "+
			"X-Syncrelay-Thread header, or may not cover mail the company's users send (Google: tick all four directions).")
	}
	var dkim uint64
	for k, n := range a.LastDay.Reasons {
		if _, reason, _ := strings.Cut(k, "/"); strings.HasPrefix(reason, "dkim") {
			dkim += n
		}
	}
	if dkim > 0 {
		out = append(out, fmt.Sprintf("%d messages were refused or quarantined for DKIM reasons in the last 24 hours: see the refusal reasons above.", dkim))
	}
	return out
}

func roundDuration(d time.Duration) string {
	if d < time.Second {
		return "less than a second"
	}
	return d.Round(time.Second).String()
}
