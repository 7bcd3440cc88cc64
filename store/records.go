package store

import "time"

// Roles, in increasing order of privilege.
const (
	RoleLimitedTeamMember = "limited_team_member"
	RoleTeamMember        = "team_member"
	RoleAdmin             = "admin"
	RoleSuperAdmin        = "super_admin"
)

// RoleRank orders roles; 0 means unknown.
func RoleRank(role string) int {
	switch role {
	case RoleLimitedTeamMember:
		return 1
	case RoleTeamMember:
		return 2
	case RoleAdmin:
		return 3
	case RoleSuperAdmin:
		return 4
	}
	return 0
}

// DKIM policies of a tenant (SPEC §5).
const (
	PolicyRequire    = "require"
	PolicyQuarantine = "quarantine"
	PolicyOff        = "off"
)

// Message directions.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Tenant is one company.
type Tenant struct {
	ID                string    `json:"id"`
	Name              string    `json:"name"`
	Domains           []string  `json:"domains"`
	Provider          string    `json:"provider"`
	InboundAddress    string    `json:"inbound_address"`
	DKIMPolicy        string    `json:"dkim_policy"`
	TrustedForwarders []string  `json:"trusted_forwarders"`
	Created           time.Time `json:"created_at"`
	// SigningDomains are DKIM d= domains that count as the tenant's own
	// besides its Domains (SPEC §5: acme.onmicrosoft.com, an ESP's domain).
	SigningDomains []string `json:"signing_domains,omitempty"`
	// DelegationApproval is how a grantor hears of a Send For request
	// (SPEC §7a): ApprovalWebhook ("" too) or ApprovalEmail.
	DelegationApproval string `json:"delegation_approval,omitempty"`
}

// Tenant.DelegationApproval values. The webhook (delegation.requested) is
// always sent; with ApprovalEmail the grantor is also emailed a signed link.
const (
	ApprovalWebhook = "webhook"
	ApprovalEmail   = "email"
)

// ApprovalBy is t's DelegationApproval with the default filled in.
func (t *Tenant) ApprovalBy() string {
	if t.DelegationApproval == "" {
		return ApprovalWebhook
	}
	return t.DelegationApproval
}

// User is a person at a tenant.
type User struct {
	Tenant  string    `json:"-"`
	ID      string    `json:"id"`
	Email   string    `json:"email"`
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Created time.Time `json:"created_at"`
}

// Candidate is a person the tenant recruits.
type Candidate struct {
	Tenant  string    `json:"-"`
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Emails  []string  `json:"emails"`
	Created time.Time `json:"created_at"`
}

// Thread is a conversation that started in syncrelay.
type Thread struct {
	Tenant       string    `json:"tenant"`
	ID           uint64    `json:"id"`
	Candidate    string    `json:"candidate"`
	Subject      string    `json:"subject"`
	Secret       bool      `json:"secret"`
	SecretBy     string    `json:"secret_by,omitempty"`
	CreatedBy    string    `json:"created_by"`
	Participants []string  `json:"participants,omitempty"` // user ids
	Created      time.Time `json:"created"`
	LastActivity time.Time `json:"last_activity"`
	// ConvIndex is the latest hex Thread-Index conversation header issued for
	// the thread, if any (earlier ones stay indexed for replies to them).
	ConvIndex string `json:"conv_index,omitempty"`
}

// AuthResult is one DKIM (or ARC) verification result as recorded on a message.
type AuthResult struct {
	Domain string `json:"domain"`
	Result string `json:"result"`
}

// Message is one email on a thread. The raw bytes live in the raw directory under Raw.
// AuthAligned records that the router found a DKIM (or trusted ARC) pass
// aligned with From (trust.Decide): only then does From count as a
// participant of the thread (SPEC §3 "Who sees a secret thread").
type Message struct {
	Tenant            string       `json:"tenant"`
	ID                uint64       `json:"id"`
	Thread            uint64       `json:"thread"`
	Candidate         string       `json:"candidate"`
	Direction         string       `json:"direction"`
	InternetMessageID string       `json:"internet_message_id"` // without <>, domain lowercased
	From              string       `json:"from"`
	To                []string     `json:"to,omitempty"`
	Cc                []string     `json:"cc,omitempty"`
	Subject           string       `json:"subject"`
	Date              time.Time    `json:"date"`
	Received          time.Time    `json:"received"`
	AutoReply         bool         `json:"auto_reply"`
	Bounced           bool         `json:"bounced"`
	BounceStatus      string       `json:"bounce_status,omitempty"`
	BounceDiagnostic  string       `json:"bounce_diagnostic,omitempty"`
	SentBy            string       `json:"sent_by,omitempty"`
	SendFor           string       `json:"send_for,omitempty"`
	Status            string       `json:"status,omitempty"` // outbound via API: sending|sent|failed
	Error             string       `json:"error,omitempty"`
	MatchedBy         string       `json:"matched_by,omitempty"`
	DKIM              []AuthResult `json:"dkim,omitempty"`
	ARC               string       `json:"arc,omitempty"`
	AuthAligned       bool         `json:"auth_aligned,omitempty"`
	Raw               string       `json:"raw,omitempty"` // content address (sha256 hex)
	Size              int64        `json:"size"`
	Mailboxes         []string     `json:"mailboxes,omitempty"` // information only: never grants visibility
	LearnedIDs        []string     `json:"learned_ids,omitempty"`
	Removed           bool         `json:"removed,omitempty"`
	RemovedAt         time.Time    `json:"removed_at,omitzero"`
}

// Ref points at one message of a thread.
type Ref struct {
	Thread  uint64 `json:"thread"`
	Message uint64 `json:"message"`
}

// Event is one webhook event in the durable outbox.
type Event struct {
	ID          string    `json:"id"`
	Seq         uint64    `json:"seq"`
	Type        string    `json:"type"`
	Created     time.Time `json:"created_at"`
	Tenant      string    `json:"tenant"`
	Data        any       `json:"data"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	State       string    `json:"state"` // pending|delivered|dead
	LastError   string    `json:"last_error,omitempty"`
}
