package store

import (
	"context"
	"io"
	"time"
)

// The store contract (SPEC §11): domain operations only, never buckets,
// tables, files or engine types, so that the bbolt backend (one node) and
// the PostgreSQL backend (several nodes) are interchangeable and both pass
// store/storetest. Consumers still declare the small interface they need
// where they use it; Store is the whole of what a backend must provide.
//
// Conventions every backend keeps:
//   - Errors callers branch on are ErrNotFound, ErrExists, ErrStale,
//     ErrClosed, ErrNotDead (wrapped with %w; test with errors.Is).
//   - A write returns only once it is durable (fsynced / committed).
//   - Callbacks passed to Update* operations may run more than once (a
//     batch is retried when another request in it fails, or on a
//     serialization failure): they must only change the record they are
//     given and their own locals, assigning rather than appending.
//   - Raw bytes travel with the commit that refers to them (Raw), and are
//     read back through OpenRaw with the record's opaque Raw locator.
//   - All cross-request state (OAuth state, idempotency keys, outbox,
//     learned Message-IDs, counters) lives in the store, so several
//     processes can share one store where the backend allows it.
type Store interface {
	Tenants
	People
	Threads
	InboundMail
	Quarantines
	Grants
	Delegations
	KV
	Outbox
	Stats
	Maintenance
	KeyRecords
	Close() error
}

// Raw is a message's bytes handed to a commit: Head (header lines syncrelay
// adds, such as Authentication-Results) followed by exactly Size bytes read
// from Body. Body is read once, before the commit is queued.
type Raw struct {
	Head []byte
	Body io.Reader
	Size int64
}

// RawFile is a stored message's bytes. Size is len(Head)+Size of the Raw it
// was committed with.
type RawFile interface {
	io.Reader
	io.ReaderAt
	io.Seeker
	io.Closer
	Size() int64
}

// Tenants are companies and their inbound addresses.
type Tenants interface {
	CreateTenant(ctx context.Context, t *Tenant) error
	UpdateTenant(ctx context.Context, id string, fn func(*Tenant) error) (*Tenant, error)
	Tenant(ctx context.Context, id string) (*Tenant, error)
	Tenants(ctx context.Context) ([]*Tenant, error)
	// InboundTenant resolves an inbound address (RCPT TO) to its tenant.
	// A tenant created by any process must be found within a second.
	InboundTenant(ctx context.Context, addr string) (tenant string, ok bool, err error)
}

// People are a tenant's users and candidates.
type People interface {
	CreateUser(ctx context.Context, u *User) error
	User(ctx context.Context, tenant, id string) (*User, error)
	UserByEmail(ctx context.Context, tenant, email string) (*User, error)
	Users(ctx context.Context, tenant string) ([]*User, error)
	CreateCandidate(ctx context.Context, c *Candidate) error
	Candidate(ctx context.Context, tenant, id string) (*Candidate, error)
	Candidates(ctx context.Context, tenant string) ([]*Candidate, error)
}

// Threads are conversations and their messages.
type Threads interface {
	// CreateOutbound records a message about to be sent (and its new
	// thread when th.ID is 0), before the provider is called.
	CreateOutbound(ctx context.Context, th *Thread, m *Message, mint MintFunc) error
	// UpdateMessage applies fn to a stored message; raw, when not nil,
	// becomes the message's raw copy in the same commit.
	UpdateMessage(ctx context.Context, tenant string, id uint64, raw *Raw, fn func(*Message) error) (*Message, error)
	Message(ctx context.Context, tenant string, id uint64) (*Message, error)
	Thread(ctx context.Context, tenant string, id uint64) (*Thread, error)
	UpdateThread(ctx context.Context, tenant string, id uint64, fn func(*Thread) error) (*Thread, error)
	ThreadMessages(ctx context.Context, tenant string, thread uint64) ([]*Message, error)
	ThreadMessagesPage(ctx context.Context, tenant string, thread, after uint64, limit int) ([]*Message, bool, error)
	ThreadInvolves(ctx context.Context, tenant string, thread uint64, userID, email string) (bool, error)
	CandidateThreads(ctx context.Context, tenant, cand string) ([]*Thread, error)
	// RemoveMessage takes a message off the profile for good: later
	// copies do not bring it back, and its bytes are freed (at the latest
	// by the next compaction).
	RemoveMessage(ctx context.Context, tenant string, id uint64) error
	// OpenRaw opens the bytes behind a record's Raw locator.
	OpenRaw(ctx context.Context, loc string) (RawFile, error)
	LatestIssuedMessageID(ctx context.Context) (msgid string, ok bool, err error)
}

// InboundMail is what the router needs to match and commit forwarded mail.
type InboundMail interface {
	LookupMsgID(ctx context.Context, tenant, msgid string) (Ref, bool, error)
	// LookupMsgIDs is LookupMsgID for many ids in one read: the holders of
	// any of them, in the order of ids (References is read in full).
	LookupMsgIDs(ctx context.Context, tenant string, ids []string) ([]Ref, error)
	// LookupCopy finds the message on a thread that a copy with this
	// Message-ID (or, without a usable one, this content digest) duplicates.
	LookupCopy(ctx context.Context, tenant string, thread uint64, msgid, digest string) (Ref, bool, error)
	ThreadByConvIndex(ctx context.Context, tenant, conv string) (uint64, bool, error)
	// CommitInbound durably records a matched message with its raw bytes
	// (in.Raw) in a group commit, or reports it a duplicate.
	CommitInbound(ctx context.Context, in *Incoming) (CommitResult, error)
	MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (already bool, err error)
}

// Quarantines keep DKIM failures aside for review (dkim_policy = quarantine).
type Quarantines interface {
	Quarantine(ctx context.Context, q *Quarantined, raw *Raw, keep time.Duration) error
	QuarantinedMessages(ctx context.Context, tenant string) ([]*Quarantined, error)
	ExpireQuarantine(ctx context.Context) (int, error)
	// DeleteQuarantined removes one quarantined message and gives up its
	// bytes (an admin deleted it, or released it to the profile after
	// committing its copy); ErrNotFound when it is not (or no longer) there.
	// act, when not nil, is recorded in the same commit (the store fills
	// in its Tenant, Quarantine, Reason, Seq and At), and the tenant's
	// oldest actions beyond QuarantineActionsKept are dropped.
	DeleteQuarantined(ctx context.Context, tenant string, id uint64, act *QuarantineAction) error
	// QuarantineActions lists a tenant's recorded actions, newest first,
	// at most limit (<= 0: all that are kept).
	QuarantineActions(ctx context.Context, tenant string, limit int) ([]*QuarantineAction, error)
}

// Grants are users' sealed send-only OAuth grants.
type Grants interface {
	PutGrant(ctx context.Context, g *Grant) error
	Grant(ctx context.Context, tenant, user string) (*Grant, error)
	Grants(ctx context.Context, tenant string) ([]*Grant, error)
	UpdateGrantToken(ctx context.Context, tenant, user string, version uint64, sealed []byte) (*Grant, error)
	MarkGrantBroken(ctx context.Context, tenant, user string, version uint64, reason string) (bool, error)
	DeleteGrant(ctx context.Context, tenant, user string) error
	FailStaleSends(ctx context.Context, cutoff time.Time, reason string) (int, error)
}

// Delegations are Send For permissions.
type Delegations interface {
	CreateDelegation(ctx context.Context, d *Delegation, by string) error
	TransitionDelegation(ctx context.Context, tenant string, id uint64, by, to string, check func(*Delegation) error) (*Delegation, error)
	Delegation(ctx context.Context, tenant string, id uint64) (*Delegation, error)
	Delegations(ctx context.Context, tenant string) ([]*Delegation, error)
	OpenDelegation(ctx context.Context, tenant, requester, grantor string) (*Delegation, error)
	// CreateDelegation stores d.ApprovalEmail as given; a queued one is
	// due at its NextAttempt. ClaimApprovalEmails takes up to limit queued
	// emails due at now (of any tenant): in the same commit each one's
	// Attempts is incremented and NextAttempt moved to now+lease, so no
	// other worker or node takes it before the lease ends.
	ClaimApprovalEmails(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*Delegation, error)
	// FinishApprovalEmail records the outcome of attempt (the Attempts the
	// claim returned) of a queued email; ErrStale when the email is no
	// longer queued under that attempt (its lease ended and it was claimed
	// again). A queued e is due again at e.NextAttempt.
	FinishApprovalEmail(ctx context.Context, tenant string, id uint64, attempt int, e *ApprovalMail) (*Delegation, error)
}

// KV is small expiring cross-request state: OAuth state (single use),
// idempotency keys, rate-limit slots.
type KV interface {
	PutKV(ctx context.Context, k string, v any, ttl time.Duration) error
	CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error
	GetKV(ctx context.Context, k string, v any) error
	TakeKV(ctx context.Context, k string, v any) error
	DeleteKV(ctx context.Context, k string) error
	PurgeExpiredKV(ctx context.Context) (int, error)
	ReserveSlot(ctx context.Context, k string, interval time.Duration, burst int, maxWait time.Duration) (wait time.Duration, ok bool, err error)
}

// Outbox is the durable webhook event queue.
type Outbox interface {
	Enqueue(ctx context.Context, tenant, typ string, data any) error
	ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*Event, error)
	EventDelivered(ctx context.Context, seq uint64, at time.Time) error
	EventFailed(ctx context.Context, seq uint64, attempt int, at time.Time, errText string, next time.Time, dead bool) error
	DeadLetters(ctx context.Context, tenant string, after uint64, limit int) ([]DeadLetter, bool, error)
	OutboxEvent(ctx context.Context, seq uint64) (*Event, error)
	Redeliver(ctx context.Context, tenant string, seqs []uint64, now time.Time) ([]*Event, error)
	OutboxStats(ctx context.Context) (OutboxStats, error)
	PruneEvents(ctx context.Context, deliveredBefore, deadBefore time.Time, limit int) (int, error)
	Events(ctx context.Context, state string) ([]*Event, error)
}

// Stats are decision counters and forwarding health. Count and CountAuth
// may buffer (a crash loses at most a few seconds of statistics, never a
// message); Flush makes buffered counts visible to readers.
type Stats interface {
	Count(tenant, decision, reason string)
	CountAuth(tenant string, dkimPass, arcPass bool)
	Counts(ctx context.Context, tenant string, since time.Time) (map[string]uint64, time.Time, error)
	TenantActivity(ctx context.Context, tenant string, now, sentSince time.Time) (*TenantActivity, error)
	FlushCounters(ctx context.Context) error
	// CommitStats counts this process's group commits (metrics).
	CommitStats() CommitStats
}

// CommitStats count a store's group commits since it was opened: the
// batches (transactions) committed, the requests they carried and the time
// spent committing them. Requests/Batches is the mean batch size, which
// sets what each durable flush is shared by.
type CommitStats struct {
	Batches, Requests int64
	Busy              time.Duration
}

// Maintenance is what ops tools and the daemon's housekeeping call.
type Maintenance interface {
	// Backup writes a consistent archive while the store is in use.
	Backup(ctx context.Context, w io.Writer) (*BackupManifest, error)
	// Compact frees the bytes of removed and expired messages.
	Compact(ctx context.Context) (CompactStats, error)
	// CollectOrphans removes bytes no committed record refers to (left
	// by a crash between writing and committing).
	CollectOrphans(ctx context.Context) (int, error)
	// DryRun returns a store that sees this one's data and whose writes
	// vanish when it is closed (replay runs the production pipeline on it).
	DryRun(ctx context.Context) (Store, error)
}

// KeyRecords tie the data to the server secret it was written with, so
// that a node never starts (or generates a key) next to data of another key.
type KeyRecords interface {
	// KeyFingerprint is the recorded fingerprint (never the key).
	KeyFingerprint(ctx context.Context) (fp string, ok bool, err error)
	// SetKeyFingerprint records fp; it never replaces a different one.
	SetKeyFingerprint(ctx context.Context, fp string) error
	// HasData reports whether the store holds anything a new key would
	// orphan (tenants, threads, messages, grants, a fingerprint ...).
	HasData(ctx context.Context) (bool, error)
}

// CompactStats says what a compaction did.
type CompactStats struct {
	Segments   int   // segments rewritten or deleted
	Moved      int   // live messages moved
	FreedBytes int64 // bytes given back to the file system
}
