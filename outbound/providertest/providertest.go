// Package providertest runs local stand-ins for the Google and Microsoft
// OAuth endpoints, the Gmail API users.messages.send and Microsoft Graph
// sendMail, following their documented request and response shapes, so
// tests exercise syncrelay's real HTTP code on 127.0.0.1.
//
// A Stub is one provider: an authorization endpoint that approves at once
// (redirecting to redirect_uri with a code), a token endpoint
// (authorization_code with PKCE, refresh_token with optional rotation,
// invalid_grant for revoked tokens, the providers' error JSON) and the send
// endpoint, which checks the bearer token and records the decoded MIME.
// Failures can be queued for the send and token endpoints. GET /sent lists
// the accepted sends, so another process (the dev-mode demo) can read what
// was "delivered".
//
// Start serves a stub for one test; Listen serves one outside tests (dev
// mode, see package devmode), which is why this package does not import
// testing.
package providertest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Cleanup(func())
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// Client credentials every stub accepts.
const (
	ClientID     = "client-123"
	ClientSecret = "secret-456"
)

// Failure is a scripted answer of a send or token endpoint.
type Failure struct {
	Status     int
	RetryAfter string // Retry-After header value, if any
	Body       string // default: the provider's error JSON for Status
}

// Request is one call to the send endpoint as received.
type Request struct {
	AccessToken string
	ContentType string
	Raw         []byte // the decoded MIME; nil if the body did not decode
	Status      int    // what the stub answered
}

type codeInfo struct {
	challenge, redirect, scope string
	offline                    bool
}

type accessInfo struct {
	refresh string
	expires time.Time
}

// Stub is one provider's endpoints.
type Stub struct {
	Provider string // "google" or "microsoft"
	srv      *http.Server
	url      string // http://127.0.0.1:port

	mu sync.Mutex
	// rotate makes refreshes return a new refresh token and invalidate the
	// old one (Microsoft rotates; Google does not).
	rotate bool
	// accessTTL is the expires_in of issued access tokens (default 1 h).
	accessTTL time.Duration
	// noRefreshToken makes the code exchange omit the refresh token.
	noRefreshToken bool
	// scope overrides the granted scope in token responses.
	scope string

	codes         map[string]codeInfo
	refresh       map[string]bool // refresh token -> valid
	access        map[string]accessInfo
	issued        []string
	sendFailures  []Failure
	tokenFailures []Failure
	requests      []Request
	tokenCalls    map[string]int // grant_type -> calls
	lastAuth      url.Values
	lastRefresh   url.Values
	// onSend, when set, gets a copy of every accepted message (dev mode
	// plays the company's routing rule with it).
	onSend func(raw []byte)
}

// SetOnSend makes the stub call fn, in a goroutine of its own, with every
// message it accepts (nil: none).
func (s *Stub) SetOnSend(fn func(raw []byte)) { s.mu.Lock(); s.onSend = fn; s.mu.Unlock() }

// accepted hands raw to onSend; s.mu is held.
func (s *Stub) accepted(raw []byte) {
	if s.onSend != nil {
		go s.onSend(append([]byte(nil), raw...))
	}
}

// Start runs a stub for provider on loopback until the test ends.
func Start(t TB, provider string) *Stub {
	t.Helper()
	s, err := Listen(provider)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Listen runs a stub for provider on a new 127.0.0.1 port until Close.
func Listen(provider string) (*Stub, error) {
	s := &Stub{Provider: provider, rotate: provider == "microsoft", accessTTL: time.Hour,
		codes: map[string]codeInfo{}, refresh: map[string]bool{}, access: map[string]accessInfo{}, tokenCalls: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", s.authorize)
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("POST /gmail/v1/users/me/messages/send", s.gmailSend)
	mux.HandleFunc("POST /v1.0/me/sendMail", s.graphSend)
	mux.HandleFunc("GET /sent", s.listSent)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("providertest: listen: %w", err)
	}
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// URLs to configure syncrelay with.
func (s *Stub) AuthURL() string  { return s.url + "/authorize" }
func (s *Stub) TokenURL() string { return s.url + "/token" }

// SentURL lists the accepted sends as JSON: [{"raw": base64 MIME}].
func (s *Stub) SentURL() string { return s.url + "/sent" }

// APIBase is the Gmail or Graph base URL.
func (s *Stub) APIBase() string {
	if s.Provider == "microsoft" {
		return s.url + "/v1.0"
	}
	return s.url
}

// SetRotate sets whether refreshes rotate the refresh token.
func (s *Stub) SetRotate(v bool) { s.mu.Lock(); s.rotate = v; s.mu.Unlock() }

// SetAccessTTL sets the lifetime of access tokens issued from now on.
func (s *Stub) SetAccessTTL(d time.Duration) { s.mu.Lock(); s.accessTTL = d; s.mu.Unlock() }

// SetNoRefreshToken makes code exchanges omit the refresh token.
func (s *Stub) SetNoRefreshToken(v bool) { s.mu.Lock(); s.noRefreshToken = v; s.mu.Unlock() }

// SetScope overrides the scope token responses report as granted.
func (s *Stub) SetScope(v string) { s.mu.Lock(); s.scope = v; s.mu.Unlock() }

// Close stops the server (to test unreachable endpoints).
func (s *Stub) Close() { _ = s.srv.Close() }

func randToken(prefix string) string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Issued lists every access and refresh token the stub handed out.
func (s *Stub) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// Requests lists the calls to the send endpoint.
func (s *Stub) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Sent lists the MIME of accepted sends.
func (s *Stub) Sent() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]byte
	for _, r := range s.requests {
		if r.Status < 300 {
			out = append(out, r.Raw)
		}
	}
	return out
}

// TokenCalls counts token endpoint calls by grant_type.
func (s *Stub) TokenCalls(grantType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenCalls[grantType]
}

// LastAuthorize is the query of the last authorization request.
func (s *Stub) LastAuthorize() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAuth
}

// LastRefresh is the form of the last refresh_token grant request.
func (s *Stub) LastRefresh() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastRefresh
}

// FailSend queues answers for the next send calls.
func (s *Stub) FailSend(f ...Failure) {
	s.mu.Lock()
	s.sendFailures = append(s.sendFailures, f...)
	s.mu.Unlock()
}

// FailToken queues answers for the next token endpoint calls.
func (s *Stub) FailToken(f ...Failure) {
	s.mu.Lock()
	s.tokenFailures = append(s.tokenFailures, f...)
	s.mu.Unlock()
}

// RevokeAll revokes every grant: refresh tokens get invalid_grant and
// access tokens 401.
func (s *Stub) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.refresh {
		s.refresh[k] = false
	}
	s.access = map[string]accessInfo{}
}

// ExpireAccessTokens makes every issued access token answer 401 from now on.
func (s *Stub) ExpireAccessTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.access = map[string]accessInfo{}
}

// Authorize plays the browser at the provider: it follows authURL (a
// syncrelay /start redirect target) and returns the callback URL the
// provider redirects back to, with code and state.
func (s *Stub) Authorize(t TB, authURL string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %d", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

func (s *Stub) wantScope() string {
	if s.Provider == "microsoft" {
		return "Mail.Send offline_access"
	}
	return "https://www.googleapis.com/auth/gmail.send"
}

func (s *Stub) grantedScope() string {
	if s.scope != "" {
		return s.scope
	}
	if s.Provider == "microsoft" {
		return "https://graph.microsoft.com/Mail.Send"
	}
	return "https://www.googleapis.com/auth/gmail.send"
}

func (s *Stub) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	s.lastAuth = q
	s.mu.Unlock()
	switch {
	case q.Get("client_id") != ClientID:
		http.Error(w, "unknown client", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case q.Get("scope") != s.wantScope():
		http.Error(w, "unexpected scope "+q.Get("scope"), http.StatusBadRequest)
		return
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		http.Error(w, "PKCE required", http.StatusBadRequest)
		return
	case q.Get("redirect_uri") == "" || q.Get("state") == "":
		http.Error(w, "redirect_uri and state required", http.StatusBadRequest)
		return
	}
	code := randToken("code-")
	offline := s.Provider == "microsoft" || q.Get("access_type") == "offline"
	s.mu.Lock()
	s.codes[code] = codeInfo{challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri"), scope: q.Get("scope"), offline: offline}
	s.mu.Unlock()
	u, _ := url.Parse(q.Get("redirect_uri"))
	v := u.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	u.RawQuery = v.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (s *Stub) tokenError(w http.ResponseWriter, status int, code, desc string) {
	body := map[string]any{"error": code, "error_description": desc}
	if s.Provider == "microsoft" {
		// The Microsoft identity platform adds diagnostics and a
		// multi-line description with trace ids.
		body["error_description"] = "AADSTS70008: " + desc + "\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: 2026-01-01 00:00:00Z"
		body["error_codes"] = []int{70008}
		body["timestamp"] = "2026-01-01 00:00:00Z"
		body["trace_id"] = "0000"
		body["correlation_id"] = "1111"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *Stub) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	f := r.PostForm
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenCalls[f.Get("grant_type")]++
	if len(s.tokenFailures) > 0 {
		fl := s.tokenFailures[0]
		s.tokenFailures = s.tokenFailures[1:]
		if fl.RetryAfter != "" {
			w.Header().Set("Retry-After", fl.RetryAfter)
		}
		body := fl.Body
		if body == "" {
			body = `{"error":"temporarily_unavailable","error_description":"try later"}`
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fl.Status)
		_, _ = io.WriteString(w, body)
		return
	}
	if f.Get("client_id") != ClientID || f.Get("client_secret") != ClientSecret {
		s.tokenError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	var rt string
	offline := true
	switch f.Get("grant_type") {
	case "authorization_code":
		ci, ok := s.codes[f.Get("code")]
		delete(s.codes, f.Get("code")) // single use
		if !ok {
			s.tokenError(w, http.StatusBadRequest, "invalid_grant", "Malformed auth code.")
			return
		}
		if f.Get("redirect_uri") != ci.redirect {
			s.tokenError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri mismatch")
			return
		}
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != ci.challenge {
			s.tokenError(w, http.StatusBadRequest, "invalid_grant", "code_verifier does not match the challenge")
			return
		}
		offline = ci.offline && !s.noRefreshToken
		if offline {
			rt = randToken("rt-")
			s.refresh[rt] = true
			s.issued = append(s.issued, rt)
		}
	case "refresh_token":
		s.lastRefresh = f
		if sc := f.Get("scope"); sc != "" && sc != s.wantScope() {
			s.tokenError(w, http.StatusBadRequest, "invalid_scope", "the scope must match the consented one")
			return
		}
		old := f.Get("refresh_token")
		if !s.refresh[old] {
			s.tokenError(w, http.StatusBadRequest, "invalid_grant", "Token has been expired or revoked.")
			return
		}
		if s.rotate {
			s.refresh[old] = false
			rt = randToken("rt-")
			s.refresh[rt] = true
			s.issued = append(s.issued, rt)
		}
	default:
		s.tokenError(w, http.StatusBadRequest, "unsupported_grant_type", f.Get("grant_type"))
		return
	}
	at := randToken("at-")
	s.issued = append(s.issued, at)
	family := rt
	if family == "" {
		family = f.Get("refresh_token")
	}
	s.access[at] = accessInfo{refresh: family, expires: time.Now().Add(s.accessTTL)}
	resp := map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": int(s.accessTTL / time.Second), "scope": s.grantedScope()}
	if s.Provider == "microsoft" {
		resp["ext_expires_in"] = int(s.accessTTL / time.Second)
	}
	if rt != "" {
		resp["refresh_token"] = rt
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(resp)
}

// checkSend handles scripted failures and authentication; it reports
// whether the request may proceed.
func (s *Stub) checkSend(w http.ResponseWriter, r *http.Request, req *Request) bool {
	at, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	req.AccessToken, req.ContentType = at, r.Header.Get("Content-Type")
	if len(s.sendFailures) > 0 {
		fl := s.sendFailures[0]
		s.sendFailures = s.sendFailures[1:]
		if fl.RetryAfter != "" {
			w.Header().Set("Retry-After", fl.RetryAfter)
		}
		body := fl.Body
		if body == "" {
			body = s.errorBody(fl.Status)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(fl.Status)
		_, _ = io.WriteString(w, body)
		req.Status = fl.Status
		return false
	}
	ai, ok := s.access[at]
	if !ok || time.Now().After(ai.expires) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("WWW-Authenticate", `Bearer realm="stub", error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, s.errorBody(http.StatusUnauthorized))
		req.Status = http.StatusUnauthorized
		return false
	}
	return true
}

// errorBody is the provider's error JSON for a status.
func (s *Stub) errorBody(status int) string {
	if s.Provider == "microsoft" {
		code := map[int]string{400: "ErrorInvalidRecipients", 401: "InvalidAuthenticationToken", 403: "ErrorAccessDenied",
			429: "ApplicationThrottled", 500: "InternalServerError", 503: "ServiceUnavailable", 504: "GatewayTimeout"}[status]
		if code == "" {
			code = "generalException"
		}
		return fmt.Sprintf(`{"error":{"code":%q,"message":"stub %d","innerError":{"date":"2026-01-01T00:00:00","request-id":"r1","client-request-id":"c1"}}}`, code, status)
	}
	reason := map[int]string{400: "invalidArgument", 401: "authError", 403: "insufficientPermissions",
		429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}[status]
	st := map[int]string{400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED",
		500: "INTERNAL", 503: "UNAVAILABLE"}[status]
	return fmt.Sprintf(`{"error":{"code":%d,"message":"stub %d","errors":[{"message":"stub %d","domain":"global","reason":%q}],"status":%q}}`,
		status, status, status, reason, st)
}

func (s *Stub) gmailSend(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var req Request
	defer func() { s.requests = append(s.requests, req) }()
	if !s.checkSend(w, r, &req) {
		return
	}
	var body struct {
		Raw string `json:"raw"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Raw == "" || !strings.HasPrefix(req.ContentType, "application/json") {
		req.Status = http.StatusBadRequest
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, s.errorBody(http.StatusBadRequest))
		return
	}
	raw, err := base64.URLEncoding.DecodeString(body.Raw)
	if err != nil {
		raw, err = base64.RawURLEncoding.DecodeString(body.Raw)
	}
	if err != nil {
		req.Status = http.StatusBadRequest
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, s.errorBody(http.StatusBadRequest))
		return
	}
	req.Raw, req.Status = raw, http.StatusOK
	s.accepted(raw)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": randToken("")[:16], "threadId": randToken("")[:16], "labelIds": []string{"SENT"}})
}

func (s *Stub) graphSend(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var req Request
	defer func() { s.requests = append(s.requests, req) }()
	if !s.checkSend(w, r, &req) {
		return
	}
	data, _ := io.ReadAll(r.Body)
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || !strings.HasPrefix(req.ContentType, "text/plain") {
		req.Status = http.StatusBadRequest
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":{"code":"ErrorMimeContentInvalidBase64String","message":"Invalid base64 string for MIME content."}}`)
		return
	}
	req.Raw, req.Status = raw, http.StatusAccepted
	s.accepted(raw)
	w.WriteHeader(http.StatusAccepted)
}

// SentMessage is one entry of GET /sent.
type SentMessage struct {
	Raw []byte `json:"raw"` // the MIME as sent (base64 in JSON)
}

func (s *Stub) listSent(w http.ResponseWriter, r *http.Request) {
	out := []SentMessage{}
	for _, raw := range s.Sent() {
		out = append(out, SentMessage{Raw: raw})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}
