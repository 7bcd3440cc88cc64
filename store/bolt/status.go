package bolt

import (
	"bytes"
	"context"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Forwarding health (GET /v1/tenants/{t}/status).
//
// Decision counters are kept per tenant and clock hour by Count (buffered,
// see counterBuf). Authentication results of messages of interest are
// counted the same way under the reserved decision authCounter, which
// TenantStatus separates from the real decisions.

// authCounter is the pseudo-decision under which CountAuth counts; it
// cannot collide with a router decision (they are plain words).
const authCounter = "_auth"

// Authentication counter reasons.
const (
	authChecked  = "checked"   // a DKIM/ARC verdict was reached
	authDKIMPass = "dkim_pass" // at least one DKIM signature passed
	authARCPass  = "arc_pass"  // the ARC chain passed
	authPassed   = "passed"    // DKIM or ARC passed
)

// CountAuth records the DKIM/ARC outcome of one message of interest whose
// signatures were verified (buffered like Count).
func (s *Store) CountAuth(tenant string, dkimPass, arcPass bool) {
	s.Count(tenant, authCounter, authChecked)
	if dkimPass {
		s.Count(tenant, authCounter, authDKIMPass)
	}
	if arcPass {
		s.Count(tenant, authCounter, authARCPass)
	}
	if dkimPass || arcPass {
		s.Count(tenant, authCounter, authPassed)
	}
}

// TenantActivity gathers a tenant's forwarding activity as of now: the
// decision and authentication counters of the last hour and day, the time
// of the last forwarded message, and the messages sent through the API
// since sentSince (the stale_after window).
func (s *Store) TenantActivity(ctx context.Context, tenant string, now, sentSince time.Time) (*TenantActivity, error) {
	day := now.Add(-24 * time.Hour)
	counts, last, err := s.Counts(ctx, tenant, day)
	if err != nil {
		return nil, err
	}
	a := &TenantActivity{LastForwarded: last, SentSince: sentSince}
	a.LastDay = window(counts, day)
	// The hour window needs the counters split by hour: read them again
	// from the hour's start (cheap: one tenant, one day of keys at most).
	hour := now.Add(-time.Hour)
	hcounts, _, err := s.Counts(ctx, tenant, hour)
	if err != nil {
		return nil, err
	}
	a.LastHour = window(hcounts, hour)
	a.Sent, a.LastSent, err = s.sentSince(tenant, sentSince)
	return a, err
}

func window(counts map[string]uint64, since time.Time) WindowCounts {
	w := WindowCounts{Since: since.UTC().Truncate(time.Hour), Decisions: map[string]uint64{}, Reasons: map[string]uint64{},
		UnalignedSigners: map[string]uint64{}}
	for k, n := range counts {
		decision, reason, _ := strings.Cut(k, "/")
		if decision == UnalignedSigners {
			w.UnalignedSigners[reason] += n
			continue
		}
		if decision == authCounter {
			switch reason {
			case authChecked:
				w.AuthChecked += n
			case authDKIMPass:
				w.AuthDKIMPass += n
			case authARCPass:
				w.AuthARCPass += n
			case authPassed:
				w.AuthPassed += n
			}
			continue
		}
		w.Total += n
		w.Decisions[decision] += n
		w.Reasons[k] += n
	}
	return w
}

// sentSince counts the tenant's messages sent through the API (outbound,
// with a send status other than failed) created at or after since, and
// returns the newest one's time. It walks the tenant's messages newest
// first and stops at the first one older than since.
func (s *Store) sentSince(tenant string, since time.Time) (n int, last time.Time, err error) {
	prefix := []byte(tenant + "/")
	err = s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bMessages)
		c := tx.Bucket(bSentIdx).Cursor()
		for k, _ := c.Seek(sentKey(tenant, since, 0)); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, _ = c.Next() {
			var m Message
			if err := getMessage(mb, keyU64(tenant, getU64(k[len(prefix)+8:])), &m); err != nil {
				return err
			}
			if m.Direction == Outbound && m.Status != "" && m.Status != "failed" {
				n++
				if m.Received.After(last) {
					last = m.Received
				}
			}
		}
		return nil
	})
	return n, last, err
}

// sentKey is a message's key in bSentIdx.
func sentKey(tenant string, at time.Time, id uint64) []byte {
	k := append([]byte(tenant+"/"), putU64(uint64(max(at.UnixNano(), 0)))...)
	return append(k, putU64(id)...)
}

// LatestIssuedMessageID returns the Message-ID (without <>) of a recent
// message syncrelay sent, minted with the server secret key, so that
// tools can check that the configured key is the one the data was made
// with. ok is false when the store has none (among the last 10000
// records).
func (s *Store) LatestIssuedMessageID(ctx context.Context) (msgid string, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bMessages).Cursor()
		n := 0
		for k, v := c.Last(); k != nil && n < 10000; k, v = c.Prev() {
			n++
			var m Message
			if err := decodeMessage(v, &m); err != nil {
				return err
			}
			if m.Direction == Outbound && m.SentBy != "" && strings.HasPrefix(m.InternetMessageID, "sr.") {
				msgid, ok = m.InternetMessageID, true
				return nil
			}
		}
		return nil
	})
	return msgid, ok, err
}
