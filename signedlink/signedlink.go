// Package signedlink signs and verifies expiring, purpose-bound tokens for
// hosted-page URLs (the email admin page, Send For approval) with a key
// derived from the server's master key (daemon.Keys.Links).
//
// A token is compact and URL-safe: base64url(json(claims)) "." base64url(
// HMAC-SHA256(key, "syncrelay-link-v1." + payload)). It authenticates the
// holder of the URL for one purpose and one tenant until it expires; it is
// not encrypted, so claims carry no secrets. Revocation (Gen) and single use
// (Nonce) are checked by the caller against the store, since only the caller
// knows the current generation and which nonces were used.
package signedlink

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors of Verify. Every other failure wraps ErrInvalid, so a caller shows
// one of two sentences: the link expired, or it is not a valid link.
var (
	ErrExpired = errors.New("signedlink: link expired")
	ErrInvalid = errors.New("signedlink: invalid link")
)

// Purposes in use; a token signed for one never verifies for another.
const (
	PurposeAdmin      = "admin"
	PurposeDelegation = "delegation"
)

// MaxTokenLen bounds what Verify will decode, so a huge query parameter
// costs nothing.
const MaxTokenLen = 2048

// Claims are what a link proves.
type Claims struct {
	Purpose string    `json:"p"`
	Tenant  string    `json:"t"`
	Subject string    `json:"s,omitempty"` // e.g. delegation id; "" for admin links
	Nonce   string    `json:"n,omitempty"` // random; single-use links record it on use
	Gen     uint64    `json:"g,omitempty"` // revocation generation
	Expires time.Time `json:"e"`
}

// Signer signs and verifies tokens with one key.
type Signer struct {
	key []byte
	now func() time.Time
}

// domain separates these MACs from any other use of the same key.
const domain = "syncrelay-link-v1."

// New returns a Signer; now defaults to time.Now.
func New(key []byte, now func() time.Time) *Signer {
	if now == nil {
		now = time.Now
	}
	k := make([]byte, len(key))
	copy(k, key)
	return &Signer{key: k, now: now}
}

// NewNonce returns 16 random bytes as base64url, for Claims.Nonce.
func NewNonce() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("signedlink: crypto/rand: %v", err)) // never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Signer) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(domain))
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// Sign returns the token for c. Purpose, Tenant and Expires are required.
func (s *Signer) Sign(c Claims) (string, error) {
	if len(s.key) < 16 {
		return "", errors.New("signedlink: key too short")
	}
	if c.Purpose == "" || c.Tenant == "" || c.Expires.IsZero() {
		return "", errors.New("signedlink: purpose, tenant and expiry are required")
	}
	c.Expires = c.Expires.UTC().Truncate(time.Second)
	js, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("signedlink: %w", err)
	}
	payload := base64.RawURLEncoding.EncodeToString(js)
	return payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload)), nil
}

// Verify checks tok's MAC, purpose and expiry and returns its claims. The
// MAC is checked before anything in the payload is trusted; an expired link
// with a good MAC yields ErrExpired (and its claims, so a page can say for
// which tenant), anything else wraps ErrInvalid.
func (s *Signer) Verify(tok, purpose string) (Claims, error) {
	if tok == "" || len(tok) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: empty or too long", ErrInvalid)
	}
	payload, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return Claims{}, fmt.Errorf("%w: malformed", ErrInvalid)
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(payload)) {
		return Claims{}, fmt.Errorf("%w: bad signature", ErrInvalid)
	}
	js, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: malformed payload", ErrInvalid)
	}
	var c Claims
	if err := json.Unmarshal(js, &c); err != nil {
		return Claims{}, fmt.Errorf("%w: malformed claims", ErrInvalid)
	}
	if c.Purpose != purpose {
		return Claims{}, fmt.Errorf("%w: link is for %q, not %q", ErrInvalid, c.Purpose, purpose)
	}
	if c.Tenant == "" || c.Expires.IsZero() {
		return Claims{}, fmt.Errorf("%w: incomplete claims", ErrInvalid)
	}
	if !s.now().Before(c.Expires) {
		return c, ErrExpired
	}
	return c, nil
}
