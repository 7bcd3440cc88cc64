package bolt

import "syncrelay/store"

// The domain types and names of the store contract, under their own names
// here so that the implementation reads as it did when it was the store.

type (
	AuthResult       = store.AuthResult
	BackupManifest   = store.BackupManifest
	Candidate        = store.Candidate
	CommitResult     = store.CommitResult
	CommitStats      = store.CommitStats
	CompactStats     = store.CompactStats
	DeadLetter       = store.DeadLetter
	Delegation       = store.Delegation
	ApprovalMail     = store.ApprovalMail
	DelegationEvent  = store.DelegationEvent
	Event            = store.Event
	Grant            = store.Grant
	Incoming         = store.Incoming
	Message          = store.Message
	MintFunc         = store.MintFunc
	OutboxStats      = store.OutboxStats
	Quarantined      = store.Quarantined
	QuarantineAction = store.QuarantineAction
	Raw              = store.Raw
	RawFile          = store.RawFile
	Ref              = store.Ref
	Tenant           = store.Tenant
	TenantActivity   = store.TenantActivity
	Thread           = store.Thread
	User             = store.User
	WindowCounts     = store.WindowCounts
)

var (
	ErrClosed     = store.ErrClosed
	ErrExists     = store.ErrExists
	ErrLocked     = store.ErrLocked
	ErrNotDead    = store.ErrNotDead
	ErrNotFound   = store.ErrNotFound
	ErrStale      = store.ErrStale
	ErrTransition = store.ErrTransition
)

const (
	SyntheticDomain       = store.SyntheticDomain
	EmailQueued           = store.EmailQueued
	QuarantineActionsKept = store.QuarantineActionsKept
	DelegationActive      = store.DelegationActive
	DelegationDeclined    = store.DelegationDeclined
	DelegationRequested   = store.DelegationRequested
	DelegationRevoked     = store.DelegationRevoked
	Duplicate             = store.Duplicate
	EventDead             = store.EventDead
	EventDelivered        = store.EventDelivered
	EventPending          = store.EventPending
	GrantActive           = store.GrantActive
	GrantBroken           = store.GrantBroken
	GrantNone             = store.GrantNone
	Inbound               = store.Inbound
	Outbound              = store.Outbound
	PolicyOff             = store.PolicyOff
	PolicyQuarantine      = store.PolicyQuarantine
	PolicyRequire         = store.PolicyRequire
	RoleAdmin             = store.RoleAdmin
	RoleLimitedTeamMember = store.RoleLimitedTeamMember
	RoleSuperAdmin        = store.RoleSuperAdmin
	RoleTeamMember        = store.RoleTeamMember
	Stored                = store.Stored
	UnalignedSigners      = store.UnalignedSigners
)

var (
	DedupKey           = store.DedupKey
	Synthetic          = store.Synthetic
	DelegationRef      = store.DelegationRef
	GrantRecordID      = store.GrantRecordID
	IsTenantAddress    = store.IsTenantAddress
	MessageRef         = store.MessageRef
	ParseDelegationRef = store.ParseDelegationRef
	ParseRef           = store.ParseRef
	RoleRank           = store.RoleRank
	ThreadRef          = store.ThreadRef
)

var _ store.Store = (*Store)(nil)
