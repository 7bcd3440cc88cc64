package oauth

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"syncrelay/outbound/providertest"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

var (
	grantKey = bytes.Repeat([]byte{0x11}, 32)
	stateKey = bytes.Repeat([]byte{0x22}, 32)
)

type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

type env struct {
	t     *testing.T
	dir   string
	st    *bolt.Store
	stub  *providertest.Stub
	m     *Manager
	clock *clock
}

func newEnv(t *testing.T, provider string) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), stub: providertest.Start(t, provider), clock: &clock{}}
	e.open()
	ctx := context.Background()
	must(t, e.st.CreateTenant(ctx, &store.Tenant{ID: "acme", Domains: []string{"acme.test"}, Provider: provider, InboundAddress: "acme-x@relay.test"}))
	for _, u := range []string{"u-rec", "u-hm"} {
		must(t, e.st.CreateUser(ctx, &store.User{Tenant: "acme", ID: u, Email: u + "@acme.test", Role: store.RoleTeamMember}))
	}
	return e
}

// open (re)opens the store and builds a fresh Manager, as a restart does.
func (e *env) open() {
	e.t.Helper()
	st, err := bolt.Open(e.dir, bolt.Options{})
	must(e.t, err)
	e.t.Cleanup(func() { st.Close() })
	e.st = st
	pc := ProviderConfig{ClientID: providertest.ClientID, ClientSecret: providertest.ClientSecret,
		RedirectURL: "http://127.0.0.1:1/oauth/" + e.stub.Provider + "/callback", AuthURL: e.stub.AuthURL(), TokenURL: e.stub.TokenURL()}
	o := Options{Store: st, GrantKey: grantKey, StateKey: stateKey, Now: e.clock.now}
	if e.stub.Provider == Google {
		o.Google = pc
	} else {
		o.Microsoft = pc
	}
	m, err := New(o)
	must(e.t, err)
	e.m = m
}

func (e *env) restart() {
	e.t.Helper()
	must(e.t, e.st.Close())
	e.open()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// connect runs the consent flow for user and returns the callback query.
func (e *env) connect(user string) *store.Grant {
	e.t.Helper()
	ctx := context.Background()
	au, err := e.m.AuthCodeURL(ctx, e.stub.Provider, "acme", user)
	must(e.t, err)
	cb, err := url.Parse(e.stub.Authorize(e.t, au))
	must(e.t, err)
	g, err := e.m.Complete(ctx, e.stub.Provider, cb.Query().Get("state"), cb.Query().Get("code"))
	must(e.t, err)
	return g
}

func TestAuthCodeURLIsSendOnly(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		provider, scope string
		google          bool
	}{
		{Google, "https://www.googleapis.com/auth/gmail.send", true},
		{Microsoft, "Mail.Send offline_access", false},
	} {
		t.Run(c.provider, func(t *testing.T) {
			e := newEnv(t, c.provider)
			au, err := e.m.AuthCodeURL(context.Background(), c.provider, "acme", "u-rec")
			must(t, err)
			u, _ := url.Parse(au)
			q := u.Query()
			if !strings.HasPrefix(au, e.stub.AuthURL()+"?") {
				t.Fatalf("auth url %s does not start with the configured auth_url", au)
			}
			if q.Get("scope") != c.scope || q.Get("response_type") != "code" || q.Get("client_id") != providertest.ClientID ||
				q.Get("redirect_uri") == "" || q.Get("state") == "" || q.Get("code_challenge_method") != "S256" {
				t.Fatalf("query %v", q)
			}
			if c.google != (q.Get("access_type") == "offline" && q.Get("prompt") == "consent") {
				t.Fatalf("google offline/consent params: %v", q)
			}
		})
	}
}

func TestConsentStoresEncryptedGrant(t *testing.T) {
	t.Parallel()
	for _, provider := range []string{Google, Microsoft} {
		t.Run(provider, func(t *testing.T) {
			e := newEnv(t, provider)
			g := e.connect("u-rec")
			if g.Status != store.GrantActive || g.Provider != provider || g.User != "u-rec" || g.Sealed != nil {
				t.Fatalf("grant %+v", g)
			}
			tok, err := e.m.Token(context.Background(), "acme", "u-rec")
			must(t, err)
			issued := e.stub.Issued()
			if len(issued) != 2 || tok.AccessToken != issued[1] {
				t.Fatalf("issued %v, token %q", issued, tok.AccessToken)
			}
			must(t, e.st.Close())
			assertNotInDir(t, e.dir, issued)
		})
	}
}

// assertNotInDir fails if any secret appears in any file under dir.
func assertNotInDir(t *testing.T, dir string, secrets []string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s contains the token %.8s...", p, s)
			}
		}
		return nil
	})
	must(t, err)
	if n == 0 {
		t.Fatal("no files scanned")
	}
}

func TestStateIsSignedSingleUseAndShortLived(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	start := func() url.Values {
		au, err := e.m.AuthCodeURL(ctx, Google, "acme", "u-rec")
		must(t, err)
		cb, _ := url.Parse(e.stub.Authorize(t, au))
		return cb.Query()
	}

	q := start()
	state := q.Get("state")
	body, tag, _ := strings.Cut(state, ".")
	forged := strings.ToUpper(body[:1]) + body[1:] + "." + tag
	if forged == state {
		forged = strings.ToLower(body[:1]) + body[1:] + "." + tag
	}
	for name, bad := range map[string]string{"empty": "", "garbage": "abc", "forged": forged, "no tag": body} {
		if _, err := e.m.Complete(ctx, Google, bad, q.Get("code")); !errors.Is(err, ErrState) {
			t.Errorf("%s state: got %v, want ErrState", name, err)
		}
	}
	if _, err := e.m.Complete(ctx, Microsoft, state, q.Get("code")); err == nil {
		t.Error("state accepted by another provider's callback")
	}
	if _, err := e.m.Complete(ctx, Google, state, q.Get("code")); err != nil {
		t.Fatalf("genuine state: %v", err)
	}
	if _, err := e.m.Complete(ctx, Google, state, q.Get("code")); !errors.Is(err, ErrState) {
		t.Fatalf("reused state: got %v, want ErrState", err)
	}

	q = start()
	e.clock.advance(11 * time.Minute)
	if _, err := e.m.Complete(ctx, Google, q.Get("state"), q.Get("code")); !errors.Is(err, ErrState) {
		t.Fatalf("expired state: got %v, want ErrState", err)
	}

	// A state signed with another key (another deployment) is refused.
	other, err := signState(bytes.Repeat([]byte{9}, 32), statePayload{Provider: Google, Tenant: "acme", User: "u-hm",
		Nonce: "n", Expires: e.clock.now().Add(time.Minute).Unix()})
	must(t, err)
	if _, err := e.m.Complete(ctx, Google, other, "x"); !errors.Is(err, ErrState) {
		t.Fatalf("foreign state: %v", err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Microsoft)
	ctx := context.Background()
	au, err := e.m.AuthCodeURL(ctx, Microsoft, "acme", "u-hm")
	must(t, err)
	cb, _ := url.Parse(e.stub.Authorize(t, au))
	e.restart() // the callback may reach another process: state is in the store
	g, err := e.m.Complete(ctx, Microsoft, cb.Query().Get("state"), cb.Query().Get("code"))
	must(t, err)
	if g.User != "u-hm" {
		t.Fatalf("grant for %q", g.User)
	}
}

func TestConsentWithoutRefreshTokenOrScopeRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	try := func() error {
		au, _ := e.m.AuthCodeURL(ctx, Google, "acme", "u-rec")
		cb, _ := url.Parse(e.stub.Authorize(t, au))
		_, err := e.m.Complete(ctx, Google, cb.Query().Get("state"), cb.Query().Get("code"))
		return err
	}
	e.stub.SetNoRefreshToken(true)
	var ce *ConsentError
	if err := try(); !errors.As(err, &ce) || !strings.Contains(ce.Detail, "refresh token") {
		t.Fatalf("no refresh token: %v", err)
	}
	e.stub.SetNoRefreshToken(false)
	e.stub.SetScope("openid email")
	if err := try(); !errors.As(err, &ce) || !strings.Contains(ce.Detail, "permission to send") {
		t.Fatalf("no send scope: %v", err)
	}
	if _, err := e.st.Grant(ctx, "acme", "u-rec"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused consent stored a grant: %v", err)
	}
	// A bad code is the provider's refusal, shown as a 400.
	au, _ := e.m.AuthCodeURL(ctx, Google, "acme", "u-rec")
	cb, _ := url.Parse(e.stub.Authorize(t, au))
	if _, err := e.m.Complete(ctx, Google, cb.Query().Get("state"), "wrong-code"); !errors.As(err, &ce) || ce.Status != 400 {
		t.Fatalf("bad code: %v", err)
	}
}

func TestRefreshOnExpiryPersistsAcrossRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	e.connect("u-rec")
	t1, err := e.m.Token(ctx, "acme", "u-rec")
	must(t, err)
	if n := e.stub.TokenCalls("refresh_token"); n != 0 {
		t.Fatalf("fresh token refreshed (%d calls)", n)
	}
	e.clock.advance(59*time.Minute + 30*time.Second) // within ExpiryDelta of the 1 h expiry
	t2, err := e.m.Token(ctx, "acme", "u-rec")
	must(t, err)
	if t2.AccessToken == t1.AccessToken || e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatalf("no refresh near expiry: %q, %d calls", t2.AccessToken, e.stub.TokenCalls("refresh_token"))
	}
	if t2.RefreshToken != t1.RefreshToken {
		t.Fatal("Google does not rotate: the refresh token must be kept")
	}
	if f := e.stub.LastRefresh(); f.Get("scope") != "" || f.Get("client_secret") != providertest.ClientSecret {
		t.Fatalf("Google refresh form %v", f)
	}
	g, err := e.st.Grant(ctx, "acme", "u-rec")
	must(t, err)
	if g.Refreshed.IsZero() || g.Version != 2 {
		t.Fatalf("refresh not persisted: %+v", g)
	}

	e.restart()
	t3, err := e.m.Token(ctx, "acme", "u-rec")
	must(t, err)
	if t3.AccessToken != t2.AccessToken || e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatalf("after restart: %q (want the refreshed %q), %d refreshes", t3.AccessToken, t2.AccessToken, e.stub.TokenCalls("refresh_token"))
	}
	must(t, e.st.Close())
	assertNotInDir(t, e.dir, e.stub.Issued())
}

func TestMicrosoftRotationPersisted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Microsoft)
	ctx := context.Background()
	e.connect("u-hm")
	first, err := e.m.Token(ctx, "acme", "u-hm")
	must(t, err)
	for i := 1; i <= 3; i++ {
		e.clock.advance(2 * time.Hour)
		if i == 2 {
			e.restart()
		}
		tok, err := e.m.Token(ctx, "acme", "u-hm")
		if err != nil {
			t.Fatalf("refresh %d: %v (the rotated refresh token was not persisted?)", i, err)
		}
		if tok.RefreshToken == first.RefreshToken {
			t.Fatalf("refresh %d: refresh token not rotated", i)
		}
		first = tok
	}
	if n := e.stub.TokenCalls("refresh_token"); n != 3 {
		t.Fatalf("%d refreshes", n)
	}
	if sc := e.stub.LastRefresh().Get("scope"); sc != "Mail.Send offline_access" {
		t.Fatalf("Microsoft refresh sent scope %q", sc)
	}
}

func TestInvalidGrantBreaksOnceAndIsNotRetried(t *testing.T) {
	t.Parallel()
	for _, provider := range []string{Google, Microsoft} {
		t.Run(provider, func(t *testing.T) {
			e := newEnv(t, provider)
			ctx := context.Background()
			e.connect("u-rec")
			e.stub.RevokeAll()
			e.clock.advance(2 * time.Hour)
			_, err := e.m.Token(ctx, "acme", "u-rec")
			var be *BrokenError
			if !errors.As(err, &be) || !strings.Contains(be.Reason, "invalid_grant") {
				t.Fatalf("got %v, want BrokenError naming invalid_grant", err)
			}
			if strings.ContainsAny(be.Reason, "\r\n") || strings.Contains(be.Reason, "Trace ID") {
				t.Fatalf("reason not cleaned: %q", be.Reason)
			}
			g, err := e.st.Grant(ctx, "acme", "u-rec")
			must(t, err)
			if g.Status != store.GrantBroken || g.Sealed != nil || g.BrokenReason == "" {
				t.Fatalf("grant %+v", g)
			}
			if _, err := e.m.Token(ctx, "acme", "u-rec"); !errors.As(err, &be) {
				t.Fatalf("second call: %v", err)
			}
			if n := e.stub.TokenCalls("refresh_token"); n != 1 {
				t.Fatalf("invalid_grant retried: %d refresh calls", n)
			}
			evs, err := e.st.Events(ctx, "")
			must(t, err)
			var broken []*store.Event
			for _, ev := range evs {
				if ev.Type == "grant.broken" {
					broken = append(broken, ev)
				}
			}
			if len(broken) != 1 || broken[0].Tenant != "acme" {
				t.Fatalf("grant.broken events: %v", broken)
			}
			data := broken[0].Data.(map[string]any)
			if data["user"] != "u-rec" || data["provider"] != provider {
				t.Fatalf("event data %v", data)
			}
			// Reconnecting repairs it.
			e.connect("u-rec")
			if _, err := e.m.Token(ctx, "acme", "u-rec"); err != nil {
				t.Fatalf("after reconnect: %v", err)
			}
		})
	}
}

func TestTemporaryRefreshFailureKeepsGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	e.connect("u-rec")
	e.clock.advance(2 * time.Hour)
	e.stub.FailToken(providertest.Failure{Status: 503})
	_, err := e.m.Token(ctx, "acme", "u-rec")
	var re *RefreshError
	if !errors.As(err, &re) || !re.Temporary {
		t.Fatalf("got %v, want a temporary RefreshError", err)
	}
	if g, _ := e.st.Grant(ctx, "acme", "u-rec"); g.Status != store.GrantActive {
		t.Fatal("a 503 broke the grant")
	}
	if _, err := e.m.Token(ctx, "acme", "u-rec"); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestForcedRefreshAfter401(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Microsoft)
	ctx := context.Background()
	e.connect("u-rec")
	t1, _ := e.m.Token(ctx, "acme", "u-rec")
	t2, err := e.m.Refresh(ctx, "acme", "u-rec", t1.AccessToken)
	must(t, err)
	if t2.AccessToken == t1.AccessToken {
		t.Fatal("forced refresh returned the rejected token")
	}
	// A second caller that saw the same rejected token gets the new one
	// without another refresh.
	t3, err := e.m.Refresh(ctx, "acme", "u-rec", t1.AccessToken)
	must(t, err)
	if t3.AccessToken != t2.AccessToken || e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatalf("duplicate refresh: %d calls", e.stub.TokenCalls("refresh_token"))
	}
}

func TestConcurrentTokenCallsRefreshOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Microsoft)
	ctx := context.Background()
	e.connect("u-rec")
	e.clock.advance(2 * time.Hour)
	var wg sync.WaitGroup
	toks := make([]string, 16)
	for i := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := e.m.Token(ctx, "acme", "u-rec")
			if err != nil {
				t.Error(err)
				return
			}
			toks[i] = tok.AccessToken
		}()
	}
	wg.Wait()
	if n := e.stub.TokenCalls("refresh_token"); n != 1 {
		t.Fatalf("%d refreshes for concurrent callers, want 1", n)
	}
	for _, tok := range toks {
		if tok != toks[0] {
			t.Fatal("callers got different tokens")
		}
	}
}

func TestReconnectDuringRefreshWins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	e.connect("u-rec")
	g, _ := e.st.Grant(ctx, "acme", "u-rec")
	e.connect("u-rec") // a new consent bumps the version
	if _, err := e.st.UpdateGrantToken(ctx, "acme", "u-rec", g.Version, []byte("old")); !errors.Is(err, store.ErrStale) {
		t.Fatalf("stale refresh overwrote a newer grant: %v", err)
	}
	if changed, err := e.st.MarkGrantBroken(ctx, "acme", "u-rec", g.Version, "old"); changed || err != nil {
		t.Fatalf("stale invalid_grant broke a newer grant: %v %v", changed, err)
	}
}

func TestSealedTokenBoundToRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	e.connect("u-rec")
	g, err := e.st.Grant(ctx, "acme", "u-rec")
	must(t, err)
	// Moving u-rec's ciphertext onto u-hm's record must not give u-hm a token.
	must(t, e.st.PutGrant(ctx, &store.Grant{Tenant: "acme", User: "u-hm", Provider: Google, Sealed: g.Sealed}))
	if _, err := e.m.Token(ctx, "acme", "u-hm"); err == nil {
		t.Fatal("a sealed token opened under another record id")
	}
	// Tampering is detected.
	bad := append([]byte(nil), g.Sealed...)
	bad[len(bad)-1] ^= 1
	if _, err := e.m.seal.open(bad, store.GrantRecordID("acme", "u-rec")); err == nil {
		t.Fatal("tampered ciphertext opened")
	}
	// Every write uses a fresh nonce.
	a, _ := e.m.seal.seal([]byte("x"), "r")
	b, _ := e.m.seal.seal([]byte("x"), "r")
	if bytes.Equal(a, b) {
		t.Fatal("same ciphertext twice: nonce reused")
	}
}

func TestNoGrantAndNotConfigured(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Google)
	ctx := context.Background()
	if _, err := e.m.Token(ctx, "acme", "u-hm"); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("got %v, want ErrNoGrant", err)
	}
	if _, err := e.m.AuthCodeURL(ctx, Microsoft, "acme", "u-hm"); !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("got %v, want ErrNotConfigured", err)
	}
	if _, err := e.m.AuthCodeURL(ctx, "yahoo", "acme", "u-hm"); !errors.Is(err, ErrUnknownProvider) {
		t.Fatalf("got %v, want ErrUnknownProvider", err)
	}
	if e.m.Configured(Microsoft) || !e.m.Configured(Google) {
		t.Fatal("Configured")
	}
}
