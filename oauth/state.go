package oauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// The OAuth state parameter is "base64url(payload).base64url(tag)" where
// payload is a small JSON object naming the provider, tenant, user, a random
// nonce and an expiry, and tag is HMAC-SHA256 over "syncrelay-oauth-state-v1"
// and the payload, keyed by the state key. The signature makes the state
// unforgeable and binds it to tenant and user; single use comes from the
// store: the nonce names a record (holding the PKCE verifier) that the
// callback takes and deletes in one transaction.

const stateInfo = "syncrelay-oauth-state-v1"

type statePayload struct {
	Provider string `json:"p"`
	Tenant   string `json:"t"`
	User     string `json:"u"`
	Nonce    string `json:"n"`
	Expires  int64  `json:"e"` // unix seconds
}

// stateRecord is what the store keeps under the nonce until the callback.
type stateRecord struct {
	Provider string    `json:"provider"`
	Tenant   string    `json:"tenant"`
	User     string    `json:"user"`
	Verifier string    `json:"verifier"` // PKCE code verifier
	Created  time.Time `json:"created"`
}

// ErrState is returned for a state parameter that is malformed, not signed by
// us, expired, for another provider, or already used.
var ErrState = errors.New("invalid, expired or already used OAuth state")

func stateKVKey(nonce string) string { return "oauth_state/" + nonce }

func signState(key []byte, p statePayload) (string, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(body) + "." + enc.EncodeToString(stateTag(key, body)), nil
}

func stateTag(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(stateInfo))
	m.Write(body)
	return m.Sum(nil)
}

// verifyState checks the signature and expiry and returns the payload.
func verifyState(key []byte, state string, now time.Time) (statePayload, error) {
	var p statePayload
	if len(state) > 2048 {
		return p, ErrState
	}
	b64, t64, ok := strings.Cut(state, ".")
	if !ok {
		return p, ErrState
	}
	enc := base64.RawURLEncoding
	body, err1 := enc.DecodeString(b64)
	tag, err2 := enc.DecodeString(t64)
	if err1 != nil || err2 != nil || !hmac.Equal(tag, stateTag(key, body)) {
		return p, ErrState
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Nonce == "" {
		return p, ErrState
	}
	if now.Unix() >= p.Expires {
		return p, ErrState
	}
	return p, nil
}
