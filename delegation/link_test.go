package delegation_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/delegation"
	"syncrelay/internal/pgtest"
	"syncrelay/outbound"
	"syncrelay/signedlink"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/store/postgres"
)

// fakeSender is a Sender recording notices; the real one (outbound over a
// provider stub) is exercised end to end in api and pages tests.
type fakeSender struct {
	mu  sync.Mutex
	got []outbound.Notice
	err error
}

func (f *fakeSender) SendNotice(_ context.Context, n outbound.Notice) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.got = append(f.got, n)
	return nil
}

type env struct {
	st store.Store
	ap *delegation.Approvals
	// aps are Approvals on every node: one for bbolt, two processes'
	// worth (two stores on one database) for PostgreSQL.
	aps   []*delegation.Approvals
	snd   *fakeSender
	now   time.Time
	nowMu sync.Mutex
	t     *store.Tenant
}

var key = bytes.Repeat([]byte{9}, 32)

var backends = []string{"bbolt", "postgres"}

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openStores opens the backend: one bbolt store, or two PostgreSQL stores
// on one fresh database (two nodes).
func openStores(t *testing.T, backend string) []store.Store {
	t.Helper()
	if backend == "bbolt" {
		st, err := bolt.Open(t.TempDir(), bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return []store.Store{st}
	}
	dsn := pgtest.DSN(t)
	var out []store.Store
	for i := range 2 {
		st, err := postgres.Open(context.Background(), dsn, postgres.Options{Node: fmt.Sprintf("node%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		out = append(out, st)
	}
	return out
}

func newEnv(t *testing.T, backend ...string) *env {
	t.Helper()
	b := "bbolt"
	if len(backend) > 0 {
		b = backend[0]
	}
	sts := openStores(t, b)
	e := &env{st: sts[0], snd: &fakeSender{}, now: time.Now()}
	st := e.st
	clock := func() time.Time { e.nowMu.Lock(); defer e.nowMu.Unlock(); return e.now }
	for _, s := range sts {
		ap, err := delegation.New(delegation.Options{Store: s, Sender: e.snd, Signer: signedlink.New(key, clock),
			BaseURL: "https://relay.example/", Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		e.aps = append(e.aps, ap)
	}
	e.ap = e.aps[0]
	ctx := context.Background()
	e.t = &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: "acme-x@relay.test", DelegationApproval: store.ApprovalEmail}
	if err := st.CreateTenant(ctx, e.t); err != nil {
		t.Fatal(err)
	}
	for _, u := range []store.User{
		{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Name: "Rita", Role: store.RoleTeamMember},
		{Tenant: "acme", ID: "u-hm", Email: "hm@acme.test", Name: "Hugo", Role: store.RoleLimitedTeamMember},
	} {
		if err := st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) advance(d time.Duration) { e.nowMu.Lock(); e.now = e.now.Add(d); e.nowMu.Unlock() }

// request creates a delegation and returns the token emailed for it.
func (e *env) request(t *testing.T) (*store.Delegation, string) {
	t.Helper()
	d := &store.Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	e.ap.Queue(e.t, d)
	if err := e.st.CreateDelegation(context.Background(), d, "u-rec"); err != nil {
		t.Fatal(err)
	}
	out := e.ap.Requested(context.Background(), e.t, d)
	if out == nil || out.Status != delegation.EmailSent {
		t.Fatalf("outcome %+v", out)
	}
	n := e.snd.got[len(e.snd.got)-1]
	i := strings.Index(n.Text, "https://relay.example/p/delegation?t=")
	if i < 0 {
		t.Fatalf("no link in %q", n.Text)
	}
	u, err := url.Parse(strings.Fields(n.Text[i:])[0])
	if err != nil {
		t.Fatal(err)
	}
	return d, u.Query().Get("t")
}

func TestEmailNamesBothUsersAndGoesToGrantor(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	e := newEnv(t)
	e.request(t)
	n := e.snd.got[0]
	if n.Sender != "u-rec" || n.To.Address != "hm@acme.test" || !strings.Contains(n.Subject, "Rita") ||
		!strings.Contains(n.Text, "Rita <rec@acme.test>") || !strings.Contains(n.HTML, "Rita &lt;rec@acme.test&gt;") {
		t.Fatalf("%+v", n)
	}
}

func TestLinkSingleUse(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { testLinkSingleUse(t, newEnv(t, b)) })
	}
}

func testLinkSingleUse(t *testing.T, e *env) {
	ctx := context.Background()
	d, tok := e.request(t)
	for range 2 { // viewing never uses the link
		if l, err := e.ap.Open(ctx, tok); err != nil || !l.Pending() || l.Delegation.ID != d.ID {
			t.Fatalf("open: %+v %v", l, err)
		}
	}
	l, err := e.ap.Act(ctx, tok, delegation.Decline)
	if err != nil || l.Delegation.Status != store.DelegationDeclined || l.Used == nil || l.Pending() {
		t.Fatalf("decline: %+v %v", l, err)
	}
	got, _ := e.st.Delegation(ctx, "acme", d.ID)
	if got.Status != store.DelegationDeclined || got.History[len(got.History)-1].By != "u-hm" {
		t.Fatalf("stored %+v", got)
	}
	if l, err := e.ap.Act(ctx, tok, delegation.Approve); !errors.Is(err, delegation.ErrUsed) || l.Delegation.Status != store.DelegationDeclined {
		t.Fatalf("reuse: %+v %v", l, err)
	}
	if l, err := e.ap.Open(ctx, tok); err != nil || l.Used == nil || l.Used.Action != delegation.Decline {
		t.Fatalf("open after use: %+v %v", l, err)
	}
}

// TestLinkRace: approvals with one link at once (on two nodes for
// PostgreSQL): exactly one wins.
func TestLinkRace(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { testLinkRace(t, newEnv(t, b)) })
	}
}

func testLinkRace(t *testing.T, e *env) {
	_, tok := e.request(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		ap := e.aps[i%len(e.aps)]
		go func() { defer wg.Done(); _, errs[i] = ap.Act(context.Background(), tok, delegation.Approve) }()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, delegation.ErrUsed) && !errors.Is(err, delegation.ErrDecided):
			t.Fatalf("unexpected %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d uses succeeded", ok)
	}
}

func TestLinkRefusals(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { testLinkRefusals(t, newEnv(t, b)) })
	}
}

func testLinkRefusals(t *testing.T, e *env) {
	ctx := context.Background()
	d, tok := e.request(t)

	// Tampered: one character of the payload changed.
	bad := []byte(tok)
	bad[5] ^= 1
	for _, tk := range []string{string(bad), tok + "x", "", "abc.def"} {
		if _, err := e.ap.Open(ctx, tk); !errors.Is(err, delegation.ErrInvalid) {
			t.Fatalf("tampered %q: %v", tk, err)
		}
	}
	// A token for another purpose (an admin link) does not open this page.
	adm, _ := signedlink.New(key, nil).Sign(signedlink.Claims{Purpose: signedlink.PurposeAdmin, Tenant: "acme", Subject: store.DelegationRef(d.ID), Nonce: "n", Expires: time.Now().Add(time.Hour)})
	if _, err := e.ap.Act(ctx, adm, delegation.Approve); !errors.Is(err, delegation.ErrInvalid) {
		t.Fatalf("admin token: %v", err)
	}

	// Revoked before use: shown as such, cannot be approved.
	if _, err := e.st.TransitionDelegation(ctx, "acme", d.ID, "u-rec", store.DelegationRevoked, nil); err != nil {
		t.Fatal(err)
	}
	l, err := e.ap.Act(ctx, tok, delegation.Approve)
	if !errors.Is(err, delegation.ErrDecided) || l.Delegation.Status != store.DelegationRevoked || l.Pending() {
		t.Fatalf("revoked: %+v %v", l, err)
	}

	// Expired after 7 days.
	_, tok2 := e.request(t)
	e.advance(7*24*time.Hour + time.Second)
	if _, err := e.ap.Open(ctx, tok2); !errors.Is(err, delegation.ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := e.ap.Act(ctx, tok2, delegation.Approve); !errors.Is(err, delegation.ErrExpired) {
		t.Fatalf("expired act: %v", err)
	}
}

func TestRequestedWithoutEmailSetting(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	e := newEnv(t)
	ctx := context.Background()
	e.t.DelegationApproval = ""
	d := &store.Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	e.ap.Queue(e.t, d)
	if d.ApprovalEmail != nil {
		t.Fatalf("webhook-only tenant queued an email: %+v", d.ApprovalEmail)
	}
	if err := e.st.CreateDelegation(ctx, d, "u-rec"); err != nil {
		t.Fatal(err)
	}
	if out := e.ap.Requested(ctx, e.t, d); out != nil || len(e.snd.got) != 0 {
		t.Fatalf("webhook-only tenant emailed: %+v", out)
	}
}

// create requests a delegation of a tenant asking for approval by email
// (the email is queued in the same commit), as the API does.
func (e *env) create(t *testing.T) *store.Delegation {
	t.Helper()
	d := &store.Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	e.ap.Queue(e.t, d)
	if d.ApprovalEmail == nil || d.ApprovalEmail.Status != delegation.EmailQueued {
		t.Fatalf("queued %+v", d.ApprovalEmail)
	}
	if err := e.st.CreateDelegation(context.Background(), d, "u-rec"); err != nil {
		t.Fatal(err)
	}
	return d
}

// runQueue runs the queue until it returns or the test ends.
func runQueue(t *testing.T, ap *delegation.Approvals) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ap.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitEmail waits for the stored approval email to reach status.
func waitEmail(t *testing.T, st store.Store, id uint64, status string) *store.ApprovalMail {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := st.Delegation(context.Background(), "acme", id)
		if err != nil {
			t.Fatal(err)
		}
		if d.ApprovalEmail != nil && d.ApprovalEmail.Status == status {
			return d.ApprovalEmail
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval email %+v, want %s", d.ApprovalEmail, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestApprovalEmailRetriedUntilSent: the provider is down (a temporary
// error that outlasted the outbound retries) when the request is made:
// the request's answer says queued, the queue retries after the backoff,
// and the email is sent once when the provider is back.
func TestApprovalEmailRetriedUntilSent(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	e := newEnv(t)
	ctx := context.Background()
	e.snd.err = fmt.Errorf("%w (gave up after 4 attempts)", &outbound.Error{Provider: "google", Status: 503, Temporary: true, Message: "backend error"})
	d := e.create(t)
	out := e.ap.Requested(ctx, e.t, d)
	if out == nil || out.Status != delegation.EmailQueued || !strings.Contains(out.Error, "gave up after 4 attempts") ||
		out.Attempts != 1 || !out.NextAttempt.Equal(e.now.Add(delegation.DefaultRetryBase).UTC()) {
		t.Fatalf("first attempt %+v", out)
	}
	runQueue(t, e.ap)
	// Not due yet: nothing is tried.
	e.ap.Notify()
	time.Sleep(100 * time.Millisecond)
	if got := waitEmail(t, e.st, d.ID, delegation.EmailQueued); got.Attempts != 1 {
		t.Fatalf("retried before the backoff: %+v", got)
	}
	e.snd.mu.Lock()
	e.snd.err = nil
	e.snd.mu.Unlock()
	e.advance(delegation.DefaultRetryBase + time.Second)
	e.ap.Notify()
	got := waitEmail(t, e.st, d.ID, delegation.EmailSent)
	if got.Attempts != 2 || got.Error != "" || got.SentAt.IsZero() || got.ExpiresAt.IsZero() {
		t.Fatalf("sent %+v", got)
	}
	e.advance(time.Hour)
	e.ap.Notify()
	time.Sleep(100 * time.Millisecond)
	e.snd.mu.Lock()
	defer e.snd.mu.Unlock()
	if len(e.snd.got) != 1 || e.snd.got[0].To.Address != "hm@acme.test" {
		t.Fatalf("%d emails sent, want 1", len(e.snd.got))
	}
}

// TestApprovalEmailAfterRestart: the process stopped after committing the
// request and before sending (Requested never ran): after a restart on the
// same store the queue sends the email, once, when the lease ends.
func TestApprovalEmailAfterRestart(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	dir := t.TempDir()
	st, err := bolt.Open(dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, snd: &fakeSender{}, now: time.Now()}
	clock := func() time.Time { e.nowMu.Lock(); defer e.nowMu.Unlock(); return e.now }
	mk := func(st store.Store) *delegation.Approvals {
		ap, err := delegation.New(delegation.Options{Store: st, Sender: e.snd, Signer: signedlink.New(key, clock),
			BaseURL: "https://relay.example/", Now: clock, PollInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return ap
	}
	e.ap = mk(st)
	ctx := context.Background()
	e.t = &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: "acme-x@relay.test", DelegationApproval: store.ApprovalEmail}
	must(t, st.CreateTenant(ctx, e.t))
	must(t, st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Name: "Rita", Role: store.RoleTeamMember}))
	must(t, st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-hm", Email: "hm@acme.test", Name: "Hugo", Role: store.RoleLimitedTeamMember}))
	d := e.create(t)
	must(t, st.Close()) // "crash": the request's own attempt never ran

	st2, err := bolt.Open(dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st2.Close() })
	ap := mk(st2)
	runQueue(t, ap)
	time.Sleep(100 * time.Millisecond)
	if len(e.snd.got) != 0 {
		t.Fatal("sent while the creating request's lease holds")
	}
	e.advance(delegation.DefaultLease + time.Second)
	got := waitEmail(t, st2, d.ID, delegation.EmailSent)
	if got.Attempts != 2 {
		t.Fatalf("sent %+v", got)
	}
	e.advance(time.Hour)
	time.Sleep(100 * time.Millisecond)
	e.snd.mu.Lock()
	defer e.snd.mu.Unlock()
	if len(e.snd.got) != 1 || !strings.Contains(e.snd.got[0].Text, "https://relay.example/p/delegation?t=") {
		t.Fatalf("%d emails sent, want 1", len(e.snd.got))
	}
}

// TestApprovalEmailPermanentFailure: a refusal (no working grant) is not
// retried; a request decided before its email went is not emailed.
func TestApprovalEmailPermanentFailure(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	e := newEnv(t)
	ctx := context.Background()
	e.snd.err = &outbound.Refusal{Status: 409, Type: "grant-missing", Detail: "u-rec has not connected their google mailbox"}
	d := e.create(t)
	out := e.ap.Requested(ctx, e.t, d)
	if out == nil || out.Status != delegation.EmailNotSent || out.Error != "u-rec has not connected their google mailbox" || !out.ExpiresAt.IsZero() {
		t.Fatalf("%+v", out)
	}
	e.snd.err = nil
	if _, err := e.st.TransitionDelegation(ctx, "acme", d.ID, "u-rec", store.DelegationRevoked, nil); err != nil {
		t.Fatal(err)
	}
	d2 := e.create(t)
	if _, err := delegation.Decide(ctx, e.st, "acme", d2.ID, "u-hm", store.DelegationDeclined); err != nil {
		t.Fatal(err)
	}
	cur, _ := e.st.Delegation(ctx, "acme", d2.ID)
	if out := e.ap.Requested(ctx, e.t, cur); out.Status != delegation.EmailNotSent || !strings.Contains(out.Error, "no longer waiting") {
		t.Fatalf("decided request: %+v", out)
	}
	if len(e.snd.got) != 0 {
		t.Fatalf("%d emails sent", len(e.snd.got))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDecideOnlyGrantor(t *testing.T) {
	t.Parallel() // each test its own store (a new database for PostgreSQL) and clock
	e := newEnv(t)
	ctx := context.Background()
	d, _ := e.request(t)
	if _, err := delegation.Decide(ctx, e.st, "acme", d.ID, "u-rec", store.DelegationActive); !delegation.IsNotAllowed(err) {
		t.Fatalf("requester approving: %v", err)
	}
	if _, err := delegation.Decide(ctx, e.st, "acme", d.ID, "u-hm", store.DelegationRevoked); err == nil {
		t.Fatal("decide accepted revoke")
	}
}
