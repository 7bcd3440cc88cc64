package token

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testKeyring(t testing.TB) *Keyring {
	t.Helper()
	k, err := New(testSecret, "Relay.Example.COM")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNew(t *testing.T) {
	tests := []struct {
		name     string
		secret   []byte
		host     string
		wantHost string
		wantErr  bool
	}{
		{"ok", testSecret, "relay.example.com", "relay.example.com", false},
		{"lowercased", testSecret, "Relay.EXAMPLE.com", "relay.example.com", false},
		{"trailing dot and space", testSecret, " relay.example.com. ", "relay.example.com", false},
		{"localhost", testSecret, "localhost", "localhost", false},
		{"short secret", testSecret[:31], "relay.example.com", "", true},
		{"nil secret", nil, "relay.example.com", "", true},
		{"empty host", testSecret, "", "", true},
		{"at in host", testSecret, "a@b.com", "", true},
		{"bracket in host", testSecret, "relay.example.com>", "", true},
		{"empty label", testSecret, "relay..example.com", "", true},
		{"leading dot", testSecret, ".example.com", "", true},
		{"space inside", testSecret, "relay example.com", "", true},
		{"non-ascii", testSecret, "relаy.example.com", "", true}, // Cyrillic a
		{"long label", testSecret, strings.Repeat("a", 64) + ".com", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := New(tt.secret, tt.host)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("New(%q) = nil error, want error", tt.host)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Hostname() != tt.wantHost {
				t.Errorf("Hostname() = %q, want %q", k.Hostname(), tt.wantHost)
			}
		})
	}
}

func TestNewCopiesSecret(t *testing.T) {
	s := append([]byte(nil), testSecret...)
	k, err := New(s, "relay.example.com")
	if err != nil {
		t.Fatal(err)
	}
	id := ID{"acme", 1, 2}
	tok := k.Mint(id)
	s[0] ^= 0xff
	if _, ok := k.Parse(tok); !ok {
		t.Fatal("keyring was affected by mutating the caller's secret slice")
	}
}

var tokenCharset = regexp.MustCompile(`^[a-z0-9]+$`)

func TestMintParseRoundTrip(t *testing.T) {
	k := testKeyring(t)
	tests := []ID{
		{"acme", 1, 1},
		{"a", 0, 0},
		{"acme", 42, 7},
		{"acme-corp-2", 1 << 32, 1<<32 + 1},
		{strings.Repeat("x", MaxTenantLen), math.MaxUint64, math.MaxUint64},
		{"ünïcødé", 127, 128},
		{"with space\x00and nul", 300, 16384},
	}
	for _, id := range tests {
		t.Run(id.Tenant, func(t *testing.T) {
			tok := k.Mint(id)
			if !tokenCharset.MatchString(tok) {
				t.Errorf("Mint(%v) = %q: characters outside [a-z0-9]", id, tok)
			}
			if len(tok) < MinTokenLen || len(tok) > MaxTokenLen {
				t.Errorf("len(Mint(%v)) = %d, want in [%d,%d]", id, len(tok), MinTokenLen, MaxTokenLen)
			}
			for _, variant := range []string{tok, strings.ToUpper(tok), mixCase(tok)} {
				got, ok := k.Parse(variant)
				if !ok || got != id {
					t.Errorf("Parse(%q) = %v, %v; want %v, true", variant, got, ok, id)
				}
			}
			if k.Mint(id) != tok {
				t.Error("Mint is not deterministic")
			}
		})
	}
}

func mixCase(s string) string {
	b := []byte(s)
	for i := range b {
		if i%2 == 0 && b[i] >= 'a' && b[i] <= 'z' {
			b[i] -= 'a' - 'A'
		}
	}
	return string(b)
}

func TestTokenLength(t *testing.T) {
	k := testKeyring(t)
	// A typical token stays short enough to read in a header.
	tok := k.Mint(ID{"acme", 12345, 678901})
	if len(tok) > 40 {
		t.Errorf("typical token is %d chars (%s), want <= 40", len(tok), tok)
	}
	// The minimum and maximum bounds are tight.
	if got := len(k.Mint(ID{"a", 0, 0})); got != MinTokenLen {
		t.Errorf("shortest token len = %d, MinTokenLen = %d", got, MinTokenLen)
	}
	if got := len(k.Mint(ID{strings.Repeat("a", MaxTenantLen), math.MaxUint64, math.MaxUint64})); got != MaxTokenLen {
		t.Errorf("longest token len = %d, MaxTokenLen = %d", got, MaxTokenLen)
	}
}

func TestMintPanicsOnInvalidTenant(t *testing.T) {
	k := testKeyring(t)
	for _, tenant := range []string{"", strings.Repeat("a", MaxTenantLen+1)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Mint with tenant of %d bytes did not panic", len(tenant))
				}
			}()
			k.Mint(ID{Tenant: tenant})
		}()
	}
}

// forge builds a token from raw payload bytes with a valid tag, to check the
// decoder's structural checks behind the MAC.
func forge(k *Keyring, payload []byte) string {
	return enc.EncodeToString(append(append([]byte(nil), payload...), k.tag(payload)...))
}

func TestParseRejects(t *testing.T) {
	k := testKeyring(t)
	other, err := New([]byte("another secret that is long enough!!"), "relay.example.com")
	if err != nil {
		t.Fatal(err)
	}
	id := ID{"acme", 42, 7}
	tok := k.Mint(id)

	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	raw, _ := enc.DecodeString(tok)

	payload := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }

	tests := []struct {
		name string
		tok  string
	}{
		{"empty", ""},
		{"junk", "hello"},
		{"other secret", other.Mint(id)},
		{"flipped first char", flip(tok, 0)},
		{"flipped middle char", flip(tok, len(tok)/2)},
		{"flipped last char", flip(tok, len(tok)-1)},
		{"truncated", tok[:len(tok)-1]},
		{"truncated by 8", tok[:len(tok)-8]},
		{"extra char", tok + "a"},
		{"extra byte", enc.EncodeToString(append(append([]byte(nil), raw...), 0))},
		{"padding", tok + "===="},
		{"digit 0 not in alphabet", strings.Replace(tok, tok[3:4], "0", 1)},
		{"digit 1", "1" + tok[1:]},
		{"space", tok[:5] + " " + tok[5:]},
		{"newline", tok[:5] + "\n" + tok[5:]},
		{"non-ascii", tok[:5] + "é" + tok[7:]},
		{"too long", strings.Repeat("a", MaxTokenLen+1)},
		{"all a", strings.Repeat("a", 40)},
		{"sr prefix kept", "sr." + tok},
		// Valid MAC but structurally wrong payloads.
		{"trailing payload byte", forge(k, payload([]byte{version, 4}, []byte("acme"), uv(42), uv(7), []byte{0}))},
		{"wrong version", forge(k, payload([]byte{2, 4}, []byte("acme"), uv(42), uv(7)))},
		{"tenant len 0", forge(k, payload([]byte{version, 0}, uv(42), uv(7), []byte{1, 1}))},
		{"tenant len 64", forge(k, payload([]byte{version, 64}, bytes.Repeat([]byte("a"), 64), uv(1), uv(1)))},
		{"tenant len past end", forge(k, payload([]byte{version, 20}, []byte("acme")))},
		{"missing message", forge(k, payload([]byte{version, 4}, []byte("acme"), uv(42)))},
		{"overlong uvarint", forge(k, payload([]byte{version, 1}, []byte("a"), bytes.Repeat([]byte{0xff}, 10), []byte{0x7f}, uv(1)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := k.Parse(tt.tok); ok {
				t.Errorf("Parse(%q) = %v, true; want false", tt.tok, got)
			}
		})
	}
}

func TestNonCanonicalEncodingRejected(t *testing.T) {
	k := testKeyring(t)
	// Find a token whose last character carries unused bits, then set them.
	for thread := uint64(0); thread < 64; thread++ {
		tok := k.Mint(ID{"acme", thread, 1})
		bits := len(tok) * 5
		bytesLen := bits / 8
		unused := bits - bytesLen*8
		if unused == 0 {
			continue
		}
		const alpha = "abcdefghijklmnopqrstuvwxyz234567"
		last := strings.IndexByte(alpha, tok[len(tok)-1])
		alt := tok[:len(tok)-1] + string(alpha[last|1])
		if alt == tok {
			alt = tok[:len(tok)-1] + string(alpha[last&^1])
		}
		if _, ok := k.Parse(alt); ok {
			t.Fatalf("non-canonical %q accepted (canonical %q)", alt, tok)
		}
		return
	}
	t.Skip("no token with unused trailing bits found")
}

func TestMessageID(t *testing.T) {
	k := testKeyring(t)
	id := ID{"acme", 9, 10}
	tok := k.Mint(id)
	mid := k.MessageID(id)
	if want := "<sr." + tok + "@relay.example.com>"; mid != want {
		t.Fatalf("MessageID = %q, want %q", mid, want)
	}
	bare := strings.Trim(mid, "<>")
	other, _ := New(testSecret, "relay.example.org")

	tests := []struct {
		name  string
		in    string
		kr    *Keyring
		valid bool
	}{
		{"with brackets", mid, k, true},
		{"without brackets", bare, k, true},
		{"surrounding space", "  " + mid + "\t", k, true},
		{"upper case everything", strings.ToUpper(mid), k, true},
		{"upper host only", "<sr." + tok + "@RELAY.Example.Com>", k, true},
		{"only opening bracket", "<" + bare, k, true},
		{"wrong host", "<sr." + tok + "@relay.example.org>", k, false},
		{"other keyring host", mid, other, false},
		{"sub-domain", "<sr." + tok + "@x.relay.example.com>", k, false},
		{"host suffix", "<sr." + tok + "@relay.example.com.evil.test>", k, false},
		{"host prefix", "<sr." + tok + "@evilrelay.example.com>", k, false},
		{"no prefix", "<" + tok + "@relay.example.com>", k, false},
		{"other prefix", "<xr." + tok + "@relay.example.com>", k, false},
		{"prefix without dot", "<sr" + tok + "@relay.example.com>", k, false},
		{"double at", "<sr." + tok + "@x@relay.example.com>", k, false},
		{"no at", "<sr." + tok + ">", k, false},
		{"empty", "", k, false},
		{"brackets only", "<>", k, false},
		{"kelvin sign host", "<sr." + tok + "@relay.example.co\u212a>", k, false},
		{"tampered token", "<sr." + tok[:len(tok)-1] + "q@relay.example.com>", k, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.kr.ParseMessageID(tt.in)
			if ok != tt.valid {
				t.Fatalf("ParseMessageID(%q) ok = %v, want %v", tt.in, ok, tt.valid)
			}
			if ok && got != id {
				t.Fatalf("ParseMessageID(%q) = %v, want %v", tt.in, got, id)
			}
		})
	}
}

func TestMarker(t *testing.T) {
	k := testKeyring(t)
	if want := `sr\.[a-z0-9]+@relay\.example\.com`; k.Marker() != want {
		t.Fatalf("Marker() = %q, want %q", k.Marker(), want)
	}
	re := regexp.MustCompile(k.Marker())
	for _, id := range []ID{{"acme", 1, 2}, {strings.Repeat("z", 63), math.MaxUint64, 0}} {
		h := "References: <abc@x.test> " + k.MessageID(id)
		if !re.MatchString(h) {
			t.Errorf("marker does not match %q", h)
		}
		if !re.MatchString("X-Syncrelay-Thread: sr." + k.Mint(id) + "@relay.example.com") {
			t.Error("marker does not match token")
		}
	}
	for _, s := range []string{"<sr.abc@relayxexample.com>", "<sr.abc@relay.example.org>", "<xr.abc@relay.example.com>"} {
		if re.MatchString(s) {
			t.Errorf("marker matches %q", s)
		}
	}
}

func TestConversationIndex(t *testing.T) {
	k := testKeyring(t)
	other, _ := New([]byte("another secret that is long enough!!"), "relay.example.com")
	c := k.ConversationIndex("acme", 1)
	if c != k.ConversationIndex("acme", 1) {
		t.Fatal("not deterministic")
	}
	if got := base64.StdEncoding.EncodeToString(c[:6]); got != ThreadIndexPrefix {
		t.Errorf("first 6 bytes encode as %q, want ThreadIndexPrefix %q", got, ThreadIndexPrefix)
	}
	if c[0] != 0x01 {
		t.Errorf("reserved byte = %#x, want 0x01", c[0])
	}
	// The header time predates Outlook (no real conversation starts there)
	// yet leaves child blocks (delta code 1: 2^54 x 100 ns) room until 2050.
	hdr := headerTime(c)
	if !hdr.Before(time.Date(1996, 1, 1, 0, 0, 0, 0, time.UTC)) || hdr.Add(time.Duration(1<<54)*100).Before(time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("header time = %v, want before 1996 and within 57 years of 2050", hdr)
	}
	distinct := map[[22]byte]string{}
	for name, v := range map[string][22]byte{
		"acme/1":        c,
		"acme/2":        k.ConversationIndex("acme", 2),
		"acme2/1":       k.ConversationIndex("acme2", 1),
		"other secret":  other.ConversationIndex("acme", 1),
		"tenant concat": k.ConversationIndex("acme\x01", 0),
	} {
		if prev, dup := distinct[v]; dup {
			t.Errorf("%s and %s share a conversation index", name, prev)
		}
		distinct[v] = name
	}
}

// headerTime decodes the FILETIME of a conversation index header.
func headerTime(c [ConvHeaderLen]byte) time.Time {
	var ft uint64
	for _, b := range c[1:6] {
		ft = ft<<8 | uint64(b)
	}
	ft <<= 24
	return time.Unix(int64(ft/1e7)-11644473600, int64(ft%1e7)*100).UTC()
}

// TestThreadIndexPrefix: every value syncrelay issues, at any reply depth,
// starts with ThreadIndexPrefix.
func TestThreadIndexPrefix(t *testing.T) {
	k := testKeyring(t)
	for _, tt := range []struct {
		tenant string
		thread uint64
		reply  int
	}{{"acme", 1, 0}, {"acme", 2, 1}, {"a", 0, 5}, {strings.Repeat("z", MaxTenantLen), math.MaxUint64, MaxReplyLevels}} {
		v := k.ThreadIndex(tt.tenant, tt.thread, time.Now(), tt.reply)
		if !strings.HasPrefix(v, ThreadIndexPrefix) {
			t.Errorf("ThreadIndex(%q, %d, reply %d) = %q, want prefix %q", tt.tenant, tt.thread, tt.reply, v, ThreadIndexPrefix)
		}
	}
}

func TestThreadIndex(t *testing.T) {
	k := testKeyring(t)
	conv := k.ConversationIndex("acme", 77)
	hdr := headerTime(conv)
	dates := []time.Time{
		hdr.AddDate(1, 0, 0), // < 1.7 years after the header time: delta code 0
		time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("", 3600)), // delta code 1
		hdr.AddDate(-1, 0, 0), // before the header time: clamped to 0
	}
	for _, date := range dates {
		for _, reply := range []int{-1, 0, 1, 2, 5, MaxReplyLevels + 10} {
			v := k.ThreadIndex("acme", 77, date, reply)
			raw, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				t.Fatalf("ThreadIndex is not std base64: %v", err)
			}
			levels := min(max(reply, 0), MaxReplyLevels)
			if len(raw) != ConvHeaderLen+levels*ChildBlockLen {
				t.Fatalf("reply %d: %d bytes, want %d", reply, len(raw), ConvHeaderLen+levels*ChildBlockLen)
			}
			if !bytes.Equal(raw[:22], conv[:]) {
				t.Fatalf("reply %d: header differs from ConversationIndex", reply)
			}
			got, ok := ParseThreadIndex(v)
			if !ok || got != conv {
				t.Fatalf("ParseThreadIndex(ThreadIndex) = %x, %v", got, ok)
			}
			if v != k.ThreadIndex("acme", 77, date, reply) {
				t.Fatal("ThreadIndex not deterministic")
			}
			// Decode each child block back to a time.
			for i := 0; i < levels; i++ {
				blk := binary.BigEndian.Uint32(raw[22+5*i:])
				var delta uint64
				if blk>>31 == 0 {
					delta = uint64(blk&0x7fffffff) << 18
				} else {
					delta = uint64(blk&0x7fffffff) << 23
				}
				base := filetime(hdr)
				decoded := base + delta
				want := filetime(date)
				if date.Before(hdr) {
					want = base
				}
				if diff := int64(want - decoded); diff < 0 || diff >= 1<<23 {
					t.Errorf("date %v level %d: decoded filetime off by %d", date, i, diff)
				}
			}
		}
	}
	if k.ThreadIndex("acme", 77, dates[0], 0) != base64.StdEncoding.EncodeToString(conv[:]) {
		t.Error("reply 0 is not the bare header")
	}
}

func TestParseThreadIndex(t *testing.T) {
	// A real Outlook / Exchange value (22 bytes) and one with a child block.
	real := "AQHTVoX48qQf/rL9R02Db7+QqglAPw=="
	realRaw, _ := base64.StdEncoding.DecodeString(real)
	var realConv [22]byte
	copy(realConv[:], realRaw)
	child := base64.StdEncoding.EncodeToString(append(append([]byte(nil), realRaw...), 0xAB, 0xCD, 0xEF, 0x01, 0x23))
	long := base64.StdEncoding.EncodeToString(append(append([]byte(nil), realRaw...), bytes.Repeat([]byte{0x5A}, 500)...))

	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"outlook header", real, true},
		{"with child", child, true},
		{"many children", long, true},
		{"no padding", strings.TrimRight(real, "="), true},
		{"folded", real[:10] + "\r\n " + real[10:20] + "\t" + real[20:], true},
		{"surrounding space", "  " + real + "  ", true},
		{"url-safe", strings.NewReplacer("+", "-", "/", "_").Replace(real), true},
		{"junk after 32 chars ignored", child[:32] + "!!!", true},
		{"too short", real[:28], false},
		{"21 bytes", base64.StdEncoding.EncodeToString(realRaw[:21]), false},
		{"empty", "", false},
		{"junk", "not base64 at all!!", false},
		{"bad char early", "AQHT!oX48qQf/rL9R02Db7+QqglAPw==", false},
		{"padding early", "AQHT==X48qQf/rL9R02Db7+QqglAPw==", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseThreadIndex(tt.in)
			if ok != tt.ok {
				t.Fatalf("ParseThreadIndex(%q) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && got != realConv {
				t.Fatalf("ParseThreadIndex(%q) = %x, want %x", tt.in, got, realConv)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	k := testKeyring(t)
	done := make(chan bool)
	for g := 0; g < 8; g++ {
		go func(g int) {
			for i := 0; i < 200; i++ {
				id := ID{"acme", uint64(g), uint64(i)}
				got, ok := k.ParseMessageID(k.MessageID(id))
				if !ok || got != id {
					t.Errorf("round trip failed for %v", id)
				}
				k.ThreadIndex("acme", uint64(g), time.Now(), i%4)
			}
			done <- true
		}(g)
	}
	for g := 0; g < 8; g++ {
		<-done
	}
}

func BenchmarkParse(b *testing.B) {
	k := testKeyring(b)
	tok := k.Mint(ID{"acme", 123456, 7890})
	for b.Loop() {
		k.Parse(tok)
	}
}
