package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Domain types shared by every backend and its callers.

// Errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrLocked   = errors.New("database is locked by another syncrelay")
	ErrClosed   = errors.New("store is closed")
)

// Delegation (Send For) states.
const (
	DelegationRequested = "requested"
	DelegationActive    = "active"
	DelegationDeclined  = "declined"
	DelegationRevoked   = "revoked"
)

// ErrTransition means a delegation cannot move from its state to the one asked.
var ErrTransition = errors.New("delegation state does not allow this change")

// Delegation lets Requester send as Grantor once the grantor approved it.
type Delegation struct {
	Tenant    string            `json:"tenant"`
	ID        uint64            `json:"id"`
	Requester string            `json:"requester"`
	Grantor   string            `json:"grantor"`
	Status    string            `json:"status"`
	Created   time.Time         `json:"created_at"`
	Updated   time.Time         `json:"updated_at"`
	History   []DelegationEvent `json:"history"`
	// ApprovalEmail is the email asking the grantor to decide (tenants
	// with delegation_approval "email"): queued in the commit that creates
	// the delegation, so a crash before the provider call does not lose it.
	ApprovalEmail *ApprovalMail `json:"approval_email,omitempty"`
}

// Approval email states.
const (
	EmailQueued  = "queued"   // waiting to be sent (or being sent, under a lease)
	EmailSent    = "sent"     // the provider accepted it
	EmailNotSent = "not_sent" // given up; Error says why
)

// ApprovalMail is the state of a Send For request's approval email. The
// store keeps it with the delegation; a queued one is due at NextAttempt.
type ApprovalMail struct {
	Status string `json:"status"` // EmailQueued | EmailSent | EmailNotSent
	// Via is the user whose mailbox sends it (the requester).
	Via       string    `json:"via"`
	To        string    `json:"to"` // the grantor's user id
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Error is why it was not sent, or why the last attempt failed.
	Error string `json:"error,omitempty"`
	// Attempts counts claims of the email (each claim may send once).
	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"next_attempt_at,omitzero"`
	SentAt      time.Time `json:"sent_at,omitzero"`
}

// Live reports whether a delegation still counts for its pair (requested
// or active): a pair has at most one live delegation.
func (d *Delegation) Live() bool {
	return d.Status == DelegationRequested || d.Status == DelegationActive
}

// DelegationEvent is one entry of a delegation's audit trail. By is the
// acting user, or "" when the ATS acted without naming one.
type DelegationEvent struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to"`
	Reason string    `json:"reason,omitempty"`
}

// DelegationRef is a delegation's external id.
func DelegationRef(id uint64) string { return fmt.Sprintf("d-%d", id) }

// ParseDelegationRef parses "d-<n>".
func ParseDelegationRef(s string) (uint64, bool) { return ParseRef("d-", s) }

// Grant statuses as the API shows them.
const (
	GrantNone   = "none"
	GrantActive = "active"
	GrantBroken = "broken"
)

// Grant is a user's send-only OAuth grant. The store never sees the token:
// Sealed is the AES-256-GCM ciphertext made by the oauth package with
// GrantRecordID as associated data, so a sealed blob copied onto another
// user's record does not decrypt.
type Grant struct {
	Tenant   string   `json:"tenant"`
	User     string   `json:"user"`
	Provider string   `json:"provider"`
	Status   string   `json:"status"` // active | broken
	Scopes   []string `json:"scopes,omitempty"`
	Sealed   []byte   `json:"sealed,omitempty"`
	// Version grows with every write, so a refresh that raced with a new
	// consent (or another node's refresh) cannot overwrite it (ErrStale).
	Version      uint64    `json:"version"`
	Connected    time.Time `json:"connected_at"`
	Refreshed    time.Time `json:"refreshed_at,omitzero"`
	BrokenAt     time.Time `json:"broken_at,omitzero"`
	BrokenReason string    `json:"broken_reason,omitempty"`
}

// GrantRecordID is the grant's record id, used as the AEAD associated data.
func GrantRecordID(tenant, user string) string { return "grant/" + tenant + "/" + user }

// ErrStale means a record changed since the caller read it (an optimistic
// update lost a race); re-read and decide again.
var ErrStale = errors.New("record changed concurrently")

// Outbox event states.
const (
	EventPending   = "pending"
	EventDelivered = "delivered"
	EventDead      = "dead"
)

// ErrNotDead is returned when redelivering an event that is not dead-lettered.
var ErrNotDead = errors.New("event is not dead-lettered")

// DeadLetter is a dead-lettered event and when it was given up.
type DeadLetter struct {
	Event  *Event
	DeadAt time.Time
}

// OutboxStats describes the outbox for metrics.
type OutboxStats struct {
	Pending       int       // events not yet delivered nor dead
	OldestPending time.Time // creation time of the oldest pending event; zero if none
	Dead          int       // dead-lettered events
}

// Quarantined is a message kept aside for admin review because it failed
// the tenant's DKIM policy (dkim_policy = quarantine). It is never on a
// profile and expires after the retention period.
type Quarantined struct {
	Tenant   string       `json:"tenant"`
	ID       uint64       `json:"id"`
	Raw      string       `json:"raw"`
	Size     int64        `json:"size"`
	Reason   string       `json:"reason"`
	Thread   uint64       `json:"thread"`
	DKIM     []AuthResult `json:"dkim,omitempty"`
	Received time.Time    `json:"received"`
	Expires  time.Time    `json:"expires"`
}

// Quarantine actions an admin takes.
const (
	QuarantineReleased = "released"
	QuarantineDeleted  = "deleted"
)

// QuarantineActionsKept is how many quarantine actions a backend keeps per
// tenant (the newest): the audit trail is bounded, so it cannot grow forever.
const QuarantineActionsKept = 200

// QuarantineAction records an admin's release or deletion of a quarantined
// message, written in the commit that removes it from the quarantine. It
// holds ids and who acted, never the message's content or addresses.
type QuarantineAction struct {
	Tenant string `json:"tenant"`
	// Seq orders a tenant's actions (filled in by the store).
	Seq    uint64 `json:"seq"`
	Action string `json:"action"` // QuarantineReleased | QuarantineDeleted
	// Quarantine is the quarantined message's id (filled in by the store).
	Quarantine uint64 `json:"quarantine_id"`
	// Reason is why it had been quarantined (e.g. dkim_fail), copied from
	// the quarantine record by the store.
	Reason string `json:"reason,omitempty"`
	// Message and Thread are where a release put it on the profile
	// (their external refs, MessageRef and ThreadRef).
	Message string `json:"message,omitempty"`
	Thread  string `json:"thread,omitempty"`
	// By says who acted: "admin link n=<nonce> g=<generation>" for the
	// email admin page, "api user=<id>" for the API.
	By string    `json:"by"`
	At time.Time `json:"at"` // filled in by the store
}

// UnalignedSigners is the pseudo-decision under which the router counts,
// per signing domain, the valid but unaligned DKIM signatures on refused
// mail of the tenant's own users (reason dkim_unaligned), so the status
// can name the domain to add to signing_domains.
const UnalignedSigners = "_unaligned_signer"

// WindowCounts are a tenant's counters over one window.
type WindowCounts struct {
	// Since is the start of the window: counters have hour granularity,
	// so it is the start of the clock hour the window begins in.
	Since time.Time
	// Total is the number of messages received (all decisions).
	Total uint64
	// Decisions is the count per decision ("stored", "discarded" ...).
	Decisions map[string]uint64
	// Reasons is the count per "decision/reason" ("discarded/no_match").
	Reasons map[string]uint64
	// AuthChecked counts messages of interest whose DKIM/ARC was
	// verified; AuthDKIMPass those with a passing DKIM signature,
	// AuthARCPass those with a passing ARC chain, AuthPassed either.
	AuthChecked, AuthDKIMPass, AuthARCPass, AuthPassed uint64
	// UnalignedSigners counts, per signing domain, the unaligned DKIM
	// passes on refused mail of the tenant's own users.
	UnalignedSigners map[string]uint64
}

// TenantActivity is what the status endpoint reports about a tenant.
type TenantActivity struct {
	// LastForwarded is when the last message reached the tenant's inbound
	// address, whatever its decision (zero: never).
	LastForwarded time.Time
	// LastHour and LastDay are the counters of the windows ending now.
	LastHour, LastDay WindowCounts
	// Sent is the number of messages sent through the API (not failed)
	// since SentSince; LastSent the newest of them (zero if none).
	Sent      int
	SentSince time.Time
	LastSent  time.Time
}

// MintFunc returns the Message-ID (without <>) and the hex Thread-Index
// conversation header ("" if none) that a new outbound message carries,
// given the ids the store allocated for it.
type MintFunc func(thread, message uint64) (msgid, convIndex string)

// Incoming is a matched message to commit.
type Incoming struct {
	Message Message // Tenant, Thread, InternetMessageID ... set by the caller
	// Raw is the message's bytes, stored with it (nil: no raw copy, e.g.
	// a copy of a message already held).
	Raw     *Raw
	Mailbox string // the mailbox this copy came through
	// Digest (hex sha256 of the DATA) is the duplicate key of a message
	// without a usable Message-ID, so that a redelivery is stored once.
	Digest string
	// LearnID, when set, is a provider-assigned Message-ID to learn for
	// Ref (a user's forwarded sent copy); no new message is stored.
	Learn *Ref
	// Event, when non-nil, is enqueued as message.received with the new
	// message's ids filled in; it is not enqueued for duplicates.
	Event map[string]any
}

// Commit outcomes.
const (
	Stored    = "stored"
	Duplicate = "duplicate"
)

// CommitResult says what CommitInbound did.
type CommitResult struct {
	Decision string // Stored or Duplicate
	Ref      Ref
	Removed  bool // the duplicate's original was removed from the profile
}

// MessageRef and ThreadRef are the external ids of messages and threads.
func MessageRef(id uint64) string { return fmt.Sprintf("m-%d", id) }

func ThreadRef(id uint64) string { return fmt.Sprintf("th-%d", id) }

// ParseRef parses an external id with the given prefix ("m-" or "th-").
func ParseRef(prefix, s string) (uint64, bool) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || rest == "" || len(rest) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, v != 0
}

// IsTenantAddress reports whether addr belongs to the tenant: a user's email
// or an address in one of its domains.
func IsTenantAddress(t *Tenant, u *User, addr string) bool {
	if u != nil {
		return true
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return false
	}
	dom := strings.ToLower(addr[at+1:])
	return slices.ContainsFunc(t.Domains, func(d string) bool { return strings.EqualFold(d, dom) })
}

// BackupManifest describes an archive; it is its first entry.
type BackupManifest struct {
	Format        int       `json:"format"`
	CreatedAt     time.Time `json:"created_at"`
	SchemaVersion int       `json:"schema_version"`
	DBBytes       int64     `json:"db_bytes"`
	RawFiles      int       `json:"raw_files"`
	RawBytes      int64     `json:"raw_bytes"`
	Tenants       int       `json:"tenants"`
	Messages      int       `json:"messages"`
}

// Rules every backend applies the same way.

// SyntheticDomain is the domain of the Message-ID a store gives mail
// without a usable one ("no-id.<n>" + SyntheticDomain): such an id is never
// indexed or matched.
const SyntheticDomain = "@syncrelay.invalid"

// Synthetic reports whether msgid is one a store made up.
func Synthetic(msgid string) bool { return strings.HasSuffix(msgid, SyntheticDomain) }

// DedupKey is a message's duplicate key on its thread (SPEC §3): its
// Message-ID, or without a usable one a digest of its content ("" when
// neither is known). A real Message-ID always has an '@', a digest key never.
func DedupKey(msgid, digest string) string {
	switch {
	case msgid != "" && !Synthetic(msgid):
		return msgid
	case digest != "":
		return "sha256:" + digest
	}
	return ""
}

// AddMailbox records that a copy of m came through mbox.
func (m *Message) AddMailbox(mbox string) {
	mbox = strings.ToLower(mbox)
	if mbox != "" && !slices.Contains(m.Mailboxes, mbox) {
		m.Mailboxes = append(m.Mailboxes, mbox)
	}
}

// Involves applies SPEC §3's audience rule to one message of a thread: the
// user sent it (or had it sent for them) through syncrelay, was a To/Cc
// recipient of it when syncrelay sent it, or wrote it from their own
// mailbox with an aligned DKIM pass. Headers a sender controls never count.
func (m *Message) Involves(userID, email string) bool {
	viaUs := m.SentBy != "" // only the API's outbound records have a sender
	if userID != "" && viaUs && (m.SentBy == userID || m.SendFor == userID) {
		return true
	}
	if email == "" {
		return false
	}
	is := func(a string) bool { return strings.EqualFold(a, email) }
	return (viaUs && (slices.ContainsFunc(m.To, is) || slices.ContainsFunc(m.Cc, is))) ||
		(m.AuthAligned && is(m.From))
}
