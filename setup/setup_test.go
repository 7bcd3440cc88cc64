package setup

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	mrand "math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"syncrelay/store"
	"syncrelay/token"
)

const testHost = "relay.example.com"

func testTenant(provider string) *store.Tenant {
	return &store.Tenant{ID: "acme", Provider: provider, InboundAddress: "acme-k3j5x7q2m4n6p8r2@" + testHost}
}

// exchangeRE compiles an Exchange pattern as Exchange applies it: header
// values are matched case-insensitively.
func exchangeRE(t *testing.T, pattern string) *regexp.Regexp {
	t.Helper()
	return regexp.MustCompile("(?i)" + pattern)
}

// ruleFor returns the Exchange rule on header h.
func ruleFor(t *testing.T, r *Rules, h string) ExchangeRule {
	t.Helper()
	for _, x := range r.Exchange.Rules {
		if x.Header == h {
			return x
		}
	}
	t.Fatalf("no Exchange rule on %s in %+v", h, r.Exchange.Rules)
	return ExchangeRule{}
}

// outlookChild appends k response-level blocks to a Thread-Index value, as
// Outlook does when replying (22 + 5·k bytes).
func outlookChild(t *testing.T, v string, k int) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 5*k)
	rand.Read(blk)
	return base64.StdEncoding.EncodeToString(append(raw, blk...))
}

// randomOutlook is a Thread-Index Outlook would make for a new
// conversation at time at: 0x01, FILETIME>>24 (5 bytes), a random GUID,
// then k child blocks.
func randomOutlook(at time.Time, k int) string {
	ft := uint64(at.Unix()+11644473600)*1e7 + uint64(at.Nanosecond()/100)
	b := make([]byte, 22+5*k)
	b[0] = 0x01
	var t8 [8]byte
	binary.BigEndian.PutUint64(t8[:], ft>>24)
	copy(b[1:6], t8[3:])
	rand.Read(b[6:])
	return base64.StdEncoding.EncodeToString(b)
}

func TestThreadIndexRule(t *testing.T) {
	t.Parallel()
	for _, provider := range []string{"microsoft", "google"} {
		t.Run(provider, func(t *testing.T) {
			r := For(testHost, testTenant(provider))
			x := ruleFor(t, r, "Thread-Index")
			if x.Bcc != r.InboundAddress || x.Name != "syncrelay acme: Thread-Index" {
				t.Errorf("Thread-Index rule %+v", x)
			}
			var ps string
			for _, p := range r.Exchange.PowerShell {
				if strings.Contains(p, "-HeaderMatchesMessageHeader 'Thread-Index'") {
					ps = p
				}
			}
			want := "New-TransportRule -Name 'syncrelay acme: Thread-Index' -HeaderMatchesMessageHeader 'Thread-Index' -HeaderMatchesPatterns '" +
				x.Pattern + "' -BlindCopyTo '" + r.InboundAddress + "' -Mode Enforce"
			if ps != want {
				t.Errorf("PowerShell %q\nwant %q", ps, want)
			}
			var out bytes.Buffer
			r.Print(&out)
			for _, s := range []string{"header name: Thread-Index", "pattern:     " + x.Pattern, "Expression:  " + r.Google.Regex} {
				if !strings.Contains(out.String(), s) {
					t.Errorf("printed rules lack %q:\n%s", s, out.String())
				}
			}
		})
	}
}

// TestThreadIndexPatternMatches runs the printed patterns (the Exchange
// pattern on the Thread-Index value, the Google RE2 regex on full headers)
// over Thread-Index values syncrelay issues, Outlook replies to them, and
// Outlook's own values, which must never match.
func TestThreadIndexPatternMatches(t *testing.T) {
	t.Parallel()
	r := For(testHost, testTenant("microsoft"))
	ex := exchangeRE(t, ruleFor(t, r, "Thread-Index").Pattern)
	google := regexp.MustCompile(r.Google.Regex)
	secret := make([]byte, token.MinSecretLen)
	rand.Read(secret)
	kr, err := token.New(secret, testHost)
	if err != nil {
		t.Fatal(err)
	}
	headers := func(v string) []string {
		return []string{
			"From: carl@cand.test\r\nThread-Topic: Interview\r\nThread-Index: " + v + "\r\nSubject: RE: Interview\r\n",
			"thread-index:\r\n " + v + "\r\n", // folded, lower-case name
		}
	}
	check := func(name, v string, want bool) {
		t.Helper()
		if got := ex.MatchString(v); got != want {
			t.Errorf("%s: Exchange pattern %q on %q = %v, want %v", name, ex, v, got, want)
		}
		for _, h := range headers(v) {
			if got := google.MatchString(h); got != want {
				t.Errorf("%s: Google regex on %q = %v, want %v", name, h, got, want)
			}
		}
	}

	dates := []time.Time{time.Now(), time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), time.Date(2049, 1, 1, 0, 0, 0, 0, time.UTC)}
	for thread := uint64(1); thread < 200; thread += 7 {
		for reply := 0; reply < 4; reply++ {
			v := kr.ThreadIndex("acme", thread, dates[int(thread)%len(dates)], reply)
			check("issued", v, true)
			for k := 1; k <= 6; k++ {
				check("outlook child", outlookChild(t, v, k), true)
			}
		}
	}

	// Outlook's own conversations: any start time since Outlook exists.
	rng := mrand.New(mrand.NewPCG(1, 2))
	from, to := time.Date(1996, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), time.Date(2056, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := 0; i < 5000; i++ {
		at := time.Unix(from+rng.Int64N(to-from), rng.Int64N(1e9))
		check("random outlook", randomOutlook(at, rng.IntN(4)), false)
	}
	// Fully random 22-byte values with Outlook's first byte.
	for i := 0; i < 5000; i++ {
		b := make([]byte, 22)
		rand.Read(b)
		b[0] = 0x01
		check("random bytes", base64.StdEncoding.EncodeToString(b), false)
	}
	// A known real Outlook value.
	check("real outlook", "AQHTVoX48qQf/rL9R02Db7+QqglAPw==", false)
}

// TestExchangePatternSubset: Exchange's patterns support only \S \s \d \D
// \w \W | * ( ) \ ^ $ (no classes, +, ? or braces), so every printed
// pattern must stay within it.
func TestExchangePatternSubset(t *testing.T) {
	t.Parallel()
	r := For(testHost, testTenant("microsoft"))
	for _, x := range r.Exchange.Rules {
		p := x.Pattern
		for i := 0; i < len(p); i++ {
			switch c := p[i]; c {
			case '\\':
				i++
			case '[', ']', '+', '?', '{', '}', '.':
				t.Errorf("%s pattern %q: unescaped %q is outside Exchange's regex subset", x.Header, p, c)
			}
		}
	}
}

// TestOtherRulesStillMatch: the marker rules keep matching syncrelay
// Message-IDs and tokens, and nothing else.
func TestOtherRulesStillMatch(t *testing.T) {
	t.Parallel()
	r := For(testHost, testTenant("google"))
	kr, _ := token.New(make([]byte, token.MinSecretLen), testHost)
	id := token.ID{Tenant: "acme", Thread: 3, Message: 9}
	google := regexp.MustCompile(r.Google.Regex)
	tests := []struct {
		name   string
		header string
		value  string
		want   bool
	}{
		{"references", "References", "<a@b.test> " + kr.MessageID(id), true},
		{"in-reply-to upper case", "In-Reply-To", strings.ToUpper(kr.MessageID(id)), true},
		{"thread token", "X-Syncrelay-Thread", kr.Mint(id), true},
		{"other relay", "References", "<sr.abc@other-relay.test>", false},
		{"plain reference", "In-Reply-To", "<abc@cand.test>", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := google.MatchString(tt.header + ": " + tt.value + "\r\n"); got != tt.want {
				t.Errorf("Google regex = %v, want %v", got, tt.want)
			}
			if got := exchangeRE(t, ruleFor(t, r, tt.header).Pattern).MatchString(tt.value); got != tt.want {
				t.Errorf("Exchange pattern = %v, want %v", got, tt.want)
			}
		})
	}
}
