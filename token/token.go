// Package token mints and verifies syncrelay thread tokens (SPEC §3): the
// MAC-protected identifiers that syncrelay puts in the Message-ID
// (<sr.TOKEN@HOSTNAME>), in X-Syncrelay-Thread, and the Thread-Index
// conversation header derived from a thread, so that replies can be matched
// back to the tenant, thread and message that started them.
//
// A TOKEN is lowercase, unpadded base32 (alphabet a-z2-7) of
//
//	version (1 byte, 0x01)
//	len(tenant) (1 byte, 1..63) || tenant
//	uvarint(thread) || uvarint(message)
//	HMAC-SHA256(secret, "syncrelay-token-v1" || payload)[:12]
//
// where payload is everything before the tag. Tokens use only [a-z2-7], so
// they survive forwarders that case-fold Message-IDs; Parse is
// case-insensitive and accepts only the canonical encoding. A Keyring is safe
// for concurrent use.
package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"regexp"
	"strings"
)

// ID names one message of one thread of one tenant.
type ID struct {
	Tenant  string
	Thread  uint64
	Message uint64
}

const (
	// MinSecretLen is the minimum length of the server secret given to New.
	MinSecretLen = 32
	// MaxTenantLen is the longest tenant id a token can carry, in bytes.
	MaxTenantLen = 63
	// TagLen is the length of the truncated HMAC-SHA256 tag, in bytes (96 bits).
	TagLen = 12
	// Prefix is the local-part prefix of syncrelay Message-IDs.
	Prefix = "sr."

	version   = 0x01
	tokenInfo = "syncrelay-token-v1"
	convInfo  = "syncrelay-thread-index-v1"

	// minPayload: version, tenant length, 1 tenant byte, 1-byte thread, 1-byte message.
	minPayload = 1 + 1 + 1 + 1 + 1
	// maxPayload: version, tenant length, tenant, two 10-byte uvarints.
	maxPayload = 1 + 1 + MaxTenantLen + 2*binary.MaxVarintLen64
)

// MinTokenLen and MaxTokenLen bound the length of a TOKEN in characters
// (unpadded base32 of the shortest and longest possible token bytes).
const (
	MinTokenLen = ((minPayload+TagLen)*8 + 4) / 5
	MaxTokenLen = ((maxPayload+TagLen)*8 + 4) / 5
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Keyring holds the server secret and relay hostname. Create it with New.
type Keyring struct {
	secret []byte
	host   string // lowercased
}

// New returns a Keyring for secret (at least MinSecretLen bytes, copied) and
// the relay hostname, which is trimmed, lowercased and loses a trailing dot.
// The hostname must be a plain DNS
// name: letters, digits, '-' and '.', non-empty labels, at most 253 bytes.
func New(secret []byte, hostname string) (*Keyring, error) {
	if len(secret) < MinSecretLen {
		return nil, errors.New("token: secret must be at least 32 bytes")
	}
	host := strings.TrimSuffix(asciiLower(strings.TrimSpace(hostname)), ".")
	if !validHost(host) {
		return nil, errors.New("token: invalid hostname")
	}
	return &Keyring{secret: append([]byte(nil), secret...), host: host}, nil
}

// Hostname returns the keyring's lowercased relay hostname.
func (k *Keyring) Hostname() string { return k.host }

// ValidTenant reports whether tenant can be carried in a token: 1 to
// MaxTenantLen bytes. Tenant creation should enforce at least this.
func ValidTenant(tenant string) bool {
	return len(tenant) >= 1 && len(tenant) <= MaxTenantLen
}

// Mint returns the TOKEN for id: only characters [a-z2-7], at most
// MaxTokenLen long. It panics if !ValidTenant(id.Tenant): tenant ids are
// validated when tenants are created, so that is a programming error.
func (k *Keyring) Mint(id ID) string {
	if !ValidTenant(id.Tenant) {
		panic("token: Mint: tenant id must be 1..63 bytes")
	}
	buf := make([]byte, 0, maxPayload+TagLen)
	buf = append(buf, version, byte(len(id.Tenant)))
	buf = append(buf, id.Tenant...)
	buf = binary.AppendUvarint(buf, id.Thread)
	buf = binary.AppendUvarint(buf, id.Message)
	buf = append(buf, k.tag(buf)...)
	return enc.EncodeToString(buf)
}

// MessageID returns "<sr.TOKEN@HOSTNAME>" for id. It panics like Mint.
func (k *Keyring) MessageID(id ID) string {
	return "<" + Prefix + k.Mint(id) + "@" + k.host + ">"
}

// Parse verifies tok and returns the ID it carries. It is case-insensitive,
// accepts only the canonical encoding, rejects trailing bytes, compares the
// tag in constant time and never panics. ok is false for anything that is
// not a token minted with this keyring's secret.
func (k *Keyring) Parse(tok string) (ID, bool) {
	if len(tok) < MinTokenLen || len(tok) > MaxTokenLen {
		return ID{}, false
	}
	var lower [MaxTokenLen]byte
	lb := lower[:len(tok)]
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '2' && c <= '7':
		default:
			return ID{}, false
		}
		lb[i] = c
	}
	raw := make([]byte, enc.DecodedLen(len(lb)))
	n, err := enc.Decode(raw, lb)
	if err != nil {
		return ID{}, false
	}
	raw = raw[:n]
	// Only the canonical encoding: unused trailing bits must be zero.
	if enc.EncodeToString(raw) != string(lb) {
		return ID{}, false
	}
	if len(raw) < minPayload+TagLen {
		return ID{}, false
	}
	payload, tag := raw[:len(raw)-TagLen], raw[len(raw)-TagLen:]
	if !hmac.Equal(k.tag(payload), tag) {
		return ID{}, false
	}
	// The MAC is valid, so the payload is one we minted; still decode
	// defensively and insist that it is consumed exactly.
	if payload[0] != version {
		return ID{}, false
	}
	tl := int(payload[1])
	if tl < 1 || tl > MaxTenantLen || len(payload) < 2+tl {
		return ID{}, false
	}
	id := ID{Tenant: string(payload[2 : 2+tl])}
	rest := payload[2+tl:]
	var m int
	id.Thread, m = binary.Uvarint(rest)
	if m <= 0 {
		return ID{}, false
	}
	rest = rest[m:]
	id.Message, m = binary.Uvarint(rest)
	if m <= 0 || m != len(rest) {
		return ID{}, false
	}
	return id, true
}

// ParseMessageID parses a syncrelay Message-ID, with or without the angle
// brackets and surrounding white space. The local part must be "sr." followed
// by a valid token and the domain must be the keyring's hostname (both
// compared ASCII case-insensitively).
func (k *Keyring) ParseMessageID(msgid string) (ID, bool) {
	s := strings.TrimSpace(msgid)
	if len(s) > len(Prefix)+MaxTokenLen+1+len(k.host)+2 {
		return ID{}, false
	}
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return ID{}, false
	}
	local, domain := s[:at], s[at+1:]
	if !asciiEqualFold(domain, k.host) {
		return ID{}, false
	}
	if len(local) < len(Prefix) || !asciiEqualFold(local[:len(Prefix)], Prefix) {
		return ID{}, false
	}
	return k.Parse(local[len(Prefix):])
}

// Marker returns the regular expression (RE2 syntax) that admins' routing
// rules use to recognise syncrelay Message-IDs in headers, e.g.
// `sr\.[a-z0-9]+@relay\.example\.com`.
func (k *Keyring) Marker() string {
	return `sr\.[a-z0-9]+@` + regexp.QuoteMeta(k.host)
}

func (k *Keyring) tag(payload []byte) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(tokenInfo))
	m.Write(payload)
	return m.Sum(nil)[:TagLen]
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// asciiEqualFold is strings.EqualFold restricted to ASCII: no Unicode
// folding (e.g. the Kelvin sign does not match 'k').
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x >= 'A' && x <= 'Z' {
			x += 'a' - 'A'
		}
		if y >= 'A' && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
