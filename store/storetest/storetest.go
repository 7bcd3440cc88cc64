// Package storetest is the conformance suite of the store contract (SPEC
// §11): every backend (bbolt, PostgreSQL) runs the same tests through
// Run, and so behaves the same for the daemon, the API and the tools.
//
// The suite uses the contract only: no engine type, no file path, no
// unexported helper, and it never assumes that one process holds the
// data (nothing relies on an in-process cache being the truth). Where the
// contract's semantics are implicit, the test that checks them says so in
// a comment: the suite is the contract's executable documentation.
package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"syncrelay/store"
)

// Backend is the contract under test. It is the only place the suite
// names the contract type.
type Backend = store.Store

// Factory opens the backends the suite tests.
type Factory struct {
	// Open opens a fresh, empty backend whose clock is now: it must take
	// the current time from now for everything it stamps or expires
	// (records' times, TTLs, quarantine expiry, counters' hours, the
	// outbox's enqueue time). Open removes the backend's data when t
	// ends. The suite closes every backend it is given, once.
	Open func(t *testing.T, now func() time.Time) *Instance
	// RealClock says the backend ignores the clock given to Open and
	// reads the real one: tests that move time forward by more than a
	// few milliseconds are then skipped.
	RealClock bool
	// RawSum, when set, returns the SHA-256 (hex) a Raw locator records
	// for its bytes; the suite then checks every read against it.
	RawSum func(loc string) string
	// Skip lists subtests ("Group/Name") this backend is known to fail,
	// with the reason. They are skipped, and the reason is printed, so
	// a known gap stays visible instead of being hidden by a weaker test.
	Skip map[string]string
}

// Instance is one backend's data, open, and what else the backend can do
// with it. Only Backend is required.
type Instance struct {
	Backend Backend
	// Reopen opens the data again after the suite closed the current
	// backend (durability: what was committed is there; buffered
	// counters were flushed by Close). nil: not supported.
	Reopen func(t *testing.T) Backend
	// Crash stops the current backend the way a crash (kill -9) would,
	// without a clean shutdown (buffered counters may be lost), and opens
	// its data again. The suite calls it with no operation in flight.
	// nil: not supported.
	Crash func(t *testing.T) Backend
	// Peer opens a second backend on the same data while the first stays
	// open, as a second syncrelay node would (PostgreSQL). nil: the
	// backend is single-process.
	Peer func(t *testing.T) Backend
}

// Clock is the controllable clock the suite hands to backends. It only
// moves when a test moves it.
type Clock struct{ ns atomic.Int64 }

// NewClock returns a clock stopped at start.
func NewClock(start time.Time) *Clock {
	c := &Clock{}
	c.ns.Store(start.UnixNano())
	return c
}

// Now is the clock's time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.ns.Load()).UTC() }

// Add moves the clock forward by d.
func (c *Clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

type test struct {
	name string
	fn   func(e *env)
}

type group struct {
	name  string
	tests []test
}

// Run runs the whole suite against the backends f opens. Every subtest
// gets a fresh, empty backend and runs in parallel with the others, of
// its group and of the other groups.
func Run(t *testing.T, f Factory) {
	if f.Open == nil {
		t.Fatal("storetest: Factory.Open is nil")
	}
	groups := []group{
		{"Tenants", tenantTests},
		{"People", peopleTests},
		{"Threads", threadTests},
		{"InboundMail", inboundTests},
		{"Raw", rawTests},
		{"Quarantine", quarantineTests},
		{"Grants", grantTests},
		{"Delegations", delegationTests},
		{"KV", kvTests},
		{"Outbox", outboxTests},
		{"Stats", statsTests},
		{"Maintenance", maintenanceTests},
		{"Durability", durabilityTests},
		{"MultiNode", multiNodeTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			// The groups run in parallel too, so one long subtest (a few
			// hundred fsynced commits) does not hold the next group back.
			t.Parallel()
			for _, c := range g.tests {
				t.Run(c.name, func(t *testing.T) {
					if why, ok := f.Skip[g.name+"/"+c.name]; ok {
						t.Skipf("known failure of this backend: %s", why)
					}
					t.Parallel()
					c.fn(newEnv(t, f))
				})
			}
		})
	}
}

// env is one subtest's backend and helpers.
type env struct {
	t     *testing.T
	ctx   context.Context
	f     Factory
	inst  *Instance
	b     Backend
	clock *Clock
	open  bool // b is open and the suite must close it
}

func newEnv(t *testing.T, f Factory) *env {
	// The clock starts half past the current hour: close to the real
	// time, so nothing looks decades old, and away from an hour boundary
	// (counters have hour granularity).
	start := time.Now().UTC().Truncate(time.Hour).Add(30 * time.Minute)
	e := &env{t: t, ctx: t.Context(), f: f, clock: NewClock(start)}
	e.inst = f.Open(t, e.clock.Now)
	if e.inst == nil || e.inst.Backend == nil {
		t.Fatal("storetest: Factory.Open returned no backend")
	}
	e.b, e.open = e.inst.Backend, true
	t.Cleanup(func() {
		if e.open {
			_ = e.b.Close()
		}
	})
	return e
}

// fatalf fails the test now.
func (e *env) fatalf(format string, args ...any) {
	e.t.Helper()
	e.t.Fatalf(format, args...)
}

// must fails the test on a non-nil error.
func (e *env) must(err error, what string) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// advance moves the backend's time forward by d: the suite's clock, or,
// for a backend on the real clock, a short sleep (longer moves skip).
func (e *env) advance(d time.Duration) {
	e.t.Helper()
	if !e.f.RealClock {
		e.clock.Add(d)
		return
	}
	if d > 100*time.Millisecond {
		e.t.Skipf("needs the clock moved by %s; the backend runs on the real clock", d)
	}
	time.Sleep(d)
}

// needClock skips a test that checks exact times.
func (e *env) needClock() {
	e.t.Helper()
	if e.f.RealClock {
		e.t.Skip("checks exact times; the backend runs on the real clock")
	}
}

// now is the backend's current time.
func (e *env) now() time.Time {
	if e.f.RealClock {
		return time.Now().UTC()
	}
	return e.clock.Now()
}

// close closes the current backend.
func (e *env) close() {
	e.t.Helper()
	e.open = false
	e.must(e.b.Close(), "Close")
}

// reopen closes the backend and opens its data again (skips if the
// backend cannot).
func (e *env) reopen() {
	e.t.Helper()
	if e.inst.Reopen == nil {
		e.t.Skip("the backend cannot reopen its data")
	}
	e.close()
	e.b, e.open = e.inst.Reopen(e.t), true
}

// crash abandons the backend as a crash would and opens its data again
// (skips if the backend cannot).
func (e *env) crash() {
	e.t.Helper()
	if e.inst.Crash == nil {
		e.t.Skip("the backend cannot simulate a crash")
	}
	e.open = false
	e.b, e.open = e.inst.Crash(e.t), true
}

// peer opens a second backend on the same data (skips if single-process).
func (e *env) peer() Backend {
	e.t.Helper()
	if e.inst.Peer == nil {
		e.t.Skip("the backend is single-process")
	}
	p := e.inst.Peer(e.t)
	e.t.Cleanup(func() { _ = p.Close() })
	return p
}

// --- fixtures ---

const (
	tenantID  = "acme"
	inboundAt = "acme-3f9a1c7e5b2d4a60@relay.test"
)

// seed creates the tenant acme with users u-rec and u-boss and candidates
// c-1 and c-2.
func (e *env) seed() {
	e.t.Helper()
	e.mkTenant(tenantID, inboundAt)
	e.mkUser(tenantID, "u-rec", "Rec@Acme.test", store.RoleTeamMember)
	e.mkUser(tenantID, "u-boss", "boss@acme.test", store.RoleAdmin)
	e.mkCandidate(tenantID, "c-1", "carl@cand.test")
	e.mkCandidate(tenantID, "c-2", "cleo@cand.test")
}

func (e *env) mkTenant(id, inbound string) *store.Tenant {
	e.t.Helper()
	t := &store.Tenant{ID: id, Name: strings.ToUpper(id), Domains: []string{id + ".test"}, Provider: "google",
		InboundAddress: inbound, DKIMPolicy: store.PolicyRequire}
	e.must(e.b.CreateTenant(e.ctx, t), "CreateTenant "+id)
	return t
}

func (e *env) mkUser(tenant, id, email, role string) {
	e.t.Helper()
	e.must(e.b.CreateUser(e.ctx, &store.User{Tenant: tenant, ID: id, Email: email, Name: id, Role: role}), "CreateUser "+id)
}

func (e *env) mkCandidate(tenant, id string, emails ...string) {
	e.t.Helper()
	e.must(e.b.CreateCandidate(e.ctx, &store.Candidate{Tenant: tenant, ID: id, Name: id, Emails: emails}), "CreateCandidate "+id)
}

// mintID is what the suite's MintFunc issues for (thread, message).
func mintID(thread, msg uint64) string { return fmt.Sprintf("sr.t%dm%d@relay.test", thread, msg) }

// mintConv is the Thread-Index conversation header issued for a thread.
func mintConv(thread uint64) string { return fmt.Sprintf("%044x", thread) }

func mint(thread, msg uint64) (string, string) { return mintID(thread, msg), mintConv(thread) }

// send records an outbound message by u-rec to candidate cand, on thread
// (0: a new thread), as the API does before calling the provider.
func (e *env) send(tenant, cand string, thread uint64) (store.Thread, store.Message) {
	e.t.Helper()
	th := store.Thread{Tenant: tenant, ID: thread, Candidate: cand, Subject: "Interview", CreatedBy: "u-rec"}
	m := store.Message{From: "rec@acme.test", To: []string{"carl@cand.test"}, Subject: "Interview",
		SentBy: "u-rec", Status: "sending"}
	e.must(e.b.CreateOutbound(e.ctx, &th, &m, mint), "CreateOutbound")
	return th, m
}

// reply is a matched inbound copy of msgid on thread, as the router
// commits it.
func reply(thread uint64, msgid, mailbox string, raw *store.Raw) *store.Incoming {
	return &store.Incoming{
		Message: store.Message{Tenant: tenantID, Thread: thread, Direction: store.Inbound, InternetMessageID: msgid,
			From: "carl@cand.test", To: []string{"rec@acme.test"}, Subject: "Re: Interview", MatchedBy: "token"},
		Raw: raw, Mailbox: mailbox,
		Event: map[string]any{"direction": store.Inbound, "auto_reply": false},
	}
}

// rawOf is a Raw of head and body.
func rawOf(head, body string) *store.Raw {
	return &store.Raw{Head: []byte(head), Body: strings.NewReader(body), Size: int64(len(body))}
}

// commit commits in and fails the test on error.
func (e *env) commit(in *store.Incoming) store.CommitResult {
	e.t.Helper()
	res, err := e.b.CommitInbound(e.ctx, in)
	e.must(err, "CommitInbound "+in.Message.InternetMessageID)
	return res
}

// message reads a message and fails the test on error.
func (e *env) message(tenant string, id uint64) *store.Message {
	e.t.Helper()
	m, err := e.b.Message(e.ctx, tenant, id)
	e.must(err, fmt.Sprintf("Message %d", id))
	return m
}
