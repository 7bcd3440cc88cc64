package signedlink

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func TestSignVerify(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	s := New(key, fixed(now))
	c := Claims{Purpose: PurposeAdmin, Tenant: "acme", Gen: 3, Nonce: NewNonce(), Expires: now.Add(time.Hour)}
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Verify(tok, PurposeAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if got.Tenant != "acme" || got.Gen != 3 || got.Nonce != c.Nonce || !got.Expires.Equal(c.Expires) {
		t.Fatalf("claims = %+v, want %+v", got, c)
	}
	if strings.ContainsAny(tok, "+/=?&# ") {
		t.Fatalf("token %q is not URL-safe", tok)
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	s := New(key, fixed(now))
	good, err := s.Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Expires: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	payload, sig, _ := strings.Cut(good, ".")
	js, _ := base64.RawURLEncoding.DecodeString(payload)
	// Same signature, tenant changed in the payload.
	forged := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(js), `"acme"`, `"evil"`, 1))) + "." + sig
	otherKey, _ := New([]byte("another key, also 32 bytes long!"), fixed(now)).Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Expires: now.Add(time.Hour)})
	delegation, _ := s.Sign(Claims{Purpose: PurposeDelegation, Tenant: "acme", Subject: "d1", Expires: now.Add(time.Hour)})
	expired, _ := s.Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Expires: now.Add(-time.Second)})
	atExpiry, _ := s.Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Expires: now})

	for _, tc := range []struct {
		name, tok, purpose string
		want               error
	}{
		{"empty", "", PurposeAdmin, ErrInvalid},
		{"no dot", payload, PurposeAdmin, ErrInvalid},
		{"tampered payload", forged, PurposeAdmin, ErrInvalid},
		{"tampered signature", payload + "." + sig[:len(sig)-2] + "AA", PurposeAdmin, ErrInvalid},
		{"truncated signature", payload + "." + sig[:10], PurposeAdmin, ErrInvalid},
		{"other key", otherKey, PurposeAdmin, ErrInvalid},
		{"wrong purpose", delegation, PurposeAdmin, ErrInvalid},
		{"admin as delegation", good, PurposeDelegation, ErrInvalid},
		{"expired", expired, PurposeAdmin, ErrExpired},
		{"at expiry", atExpiry, PurposeAdmin, ErrExpired},
		{"too long", good + strings.Repeat("A", MaxTokenLen), PurposeAdmin, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Verify(tc.tok, tc.purpose)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestExpiryFollowsClock(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	clock := now
	s := New(key, func() time.Time { return clock })
	tok, _ := s.Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Expires: now.Add(time.Minute)})
	if _, err := s.Verify(tok, PurposeAdmin); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(time.Minute + time.Second)
	c, err := s.Verify(tok, PurposeAdmin)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: %v", err)
	}
	if c.Tenant != "acme" {
		t.Fatalf("expired link should still name its tenant, got %+v", c)
	}
}

// Rotation is the caller's generation check; the token must carry Gen
// unchanged so the caller can compare it.
func TestGenSurvivesRoundTrip(t *testing.T) {
	now := time.Now()
	s := New(key, nil)
	for _, g := range []uint64{0, 1, 1 << 40} {
		tok, _ := s.Sign(Claims{Purpose: PurposeAdmin, Tenant: "acme", Gen: g, Expires: now.Add(time.Hour)})
		c, err := s.Verify(tok, PurposeAdmin)
		if err != nil || c.Gen != g {
			t.Fatalf("gen %d: got %d, %v", g, c.Gen, err)
		}
	}
}

func TestSignRequires(t *testing.T) {
	s := New(key, nil)
	for _, c := range []Claims{
		{Tenant: "acme", Expires: time.Now()},
		{Purpose: PurposeAdmin, Expires: time.Now()},
		{Purpose: PurposeAdmin, Tenant: "acme"},
	} {
		if _, err := s.Sign(c); err == nil {
			t.Errorf("Sign(%+v) succeeded", c)
		}
	}
	if _, err := New([]byte("short"), nil).Sign(Claims{Purpose: PurposeAdmin, Tenant: "a", Expires: time.Now()}); err == nil {
		t.Error("short key accepted")
	}
}
