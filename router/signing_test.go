package router

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"syncrelay/dnsres"
	"syncrelay/internal/dnstest"
	"syncrelay/token"
	"syncrelay/trust"
)

// addEdKey publishes an Ed25519 key for domain (fast to generate, unlike
// RSA under -race) and keeps its signer.
func (e *env) addEdKey(domain string) {
	key, txt := dnstest.GenEd25519(e.t)
	e.dns.SetTXT("s1._domainkey."+domain, txt)
	e.signers[domain] = key
}

// TestProviderSigningDomains: a tenant user's own mail signed only by the
// provider's default domain (Google's <domain-with-hyphens>.<digits>.
// gappssmtp.com, SPEC §5) counts as the tenant's own; look-alikes do not,
// and their refusal is counted as dkim_unaligned, not dkim_fail.
func TestProviderSigningDomains(t *testing.T) {
	t.Parallel()
	const gapps = "acme-test.20230601.gappssmtp.com"
	for _, tc := range []struct {
		name, provider, signer, from string
		decision, reason             string
	}{
		{"google default domain", "google", gapps, "rec@acme.test", Stored, ByToken},
		{"google default domain, address in a tenant domain", "google", gapps, "jobs@acme.test", Stored, ByToken},
		{"label is not digits", "google", "acme-test.evil.gappssmtp.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"digits then letters", "google", "acme-test.2023x.gappssmtp.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"another tenant's domain", "google", "beta-test.20230601.gappssmtp.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"prefix look-alike", "google", "xacme-test.20230601.gappssmtp.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"suffix look-alike", "google", gapps + ".evil.test", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"no digits label", "google", "acme-test.gappssmtp.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		{"microsoft tenant", "microsoft", gapps, "rec@acme.test", Rejected, "dkim_unaligned"},
		{"onmicrosoft without signing_domains", "microsoft", "acme.onmicrosoft.com", "rec@acme.test", Rejected, "dkim_unaligned"},
		// Not the tenant's own mail: an ordinary refusal.
		{"a candidate's mail signed by an unaligned domain", "google", "mailer.test", "carl@cand.test", Rejected, "dkim_fail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.provider)
			if _, ok := e.signers[tc.signer]; !ok {
				e.addEdKey(tc.signer)
			}
			_, sent := e.sent("acme", "c-1", "u-rec", 0)
			raw := reply(tc.from, "own1@acme.test", "<"+sent.InternetMessageID+">", "")
			out := e.route("acme", e.sign(tc.signer, raw))
			if out.Decision != tc.decision || out.Reason != tc.reason {
				t.Fatalf("signed by %s, From %s: got %s/%s (%d %q), want %s/%s", tc.signer, tc.from,
					out.Decision, out.Reason, out.Code, out.Text, tc.decision, tc.reason)
			}
			if tc.decision == Rejected && (out.Code != 550 || out.Enhanced != [3]int{5, 7, 1}) {
				t.Fatalf("refusal %d %v", out.Code, out.Enhanced)
			}
			if tc.decision == Stored && out.Direction != "outbound" {
				t.Fatalf("own mail stored as %s", out.Direction)
			}
		})
	}
}

// TestGappsSentCopy: the forwarded sent copy of a message syncrelay sent,
// signed only by Google's default domain, is recognised (not refused).
func TestGappsSentCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	e.addEdKey("acme-test.20230601.gappssmtp.com")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	tok := e.kr.Mint(token.ID{Tenant: "acme", Thread: th.ID, Message: sent.ID})
	copyRaw := "From: Rita <rec@acme.test>\nTo: carl@cand.test\nSubject: Interview\nMessage-ID: <CAF=gapps1@mail.gmail.com>\nX-Syncrelay-Thread: " + tok + "\n\nHello Carl\n"
	out := e.route("acme", e.sign("acme-test.20230601.gappssmtp.com", copyRaw))
	if out.Decision != Duplicate || out.Reason != "sent_copy" {
		t.Fatalf("sent copy signed by the gappssmtp domain: %+v", out)
	}
}

// internalDetail matches what must never reach an SMTP client: addresses,
// ports, paths and the wording of Go / resolver errors.
var internalDetail = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+|\[?::1\]?|:\d{2,5}\b|/|\\|(?i)lookup|dial|i/o|no such host|nxdomain|servfail|zone|dnsres|illegal base64|asn1|x509|%!`)

// TestRefusalRepliesCarryNoInternalDetail provokes DNS trouble and bad keys
// and checks that the SMTP reply still names the reason but no resolver
// address, port, file path or Go error text; the detail is in the log.
func TestRefusalRepliesCarryNoInternalDetail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	ref := "<" + sent.InternetMessageID + ">"

	// nokey.test's key is not published: NXDOMAIN from the loopback server.
	e.addEdKey("nokey.test")
	e.dns.SetTXT("s1._domainkey.nokey.test")
	// badkey.test publishes a key record that is not base64.
	e.addEdKey("badkey.test")
	e.dns.SetTXT("s1._domainkey.badkey.test", "v=DKIM1; k=ed25519; p=!!!not*base64")
	// nodata.test exists without a TXT record.
	e.addEdKey("nodata.test")
	e.dns.SetNoData("s1._domainkey.nodata.test")

	for _, tc := range []struct {
		name, signer, from string
		code               int
		want               string // the reason the reply must still give
	}{
		{"missing key", "nokey.test", "carl@nokey.test", 550, "d=nokey.test permerror"},
		{"no TXT record", "nodata.test", "carl@nodata.test", 550, "d=nodata.test permerror"},
		{"malformed key", "badkey.test", "carl@badkey.test", 550, "d=badkey.test permerror"},
		{"DNS failure", "cand.test", "carl@cand.test", 451, "Temporary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.code == 451 {
				e.dns.SetServfail("s1._domainkey.cand.test")
			}
			e.logbuf.Reset()
			out := e.route("acme", e.sign(tc.signer, reply(tc.from, tc.signer+"-r@x.test", ref, "")))
			if out.Code != tc.code || !strings.Contains(out.Text, tc.want) {
				t.Fatalf("got %d %q, want %d with %q", out.Code, out.Text, tc.code, tc.want)
			}
			if m := internalDetail.FindString(out.Text); m != "" {
				t.Fatalf("reply %q carries internal detail %q", out.Text, m)
			}
			if tc.code == 550 && !strings.Contains(e.logbuf.String(), "why=") {
				t.Fatalf("the detail is not logged: %s", e.logbuf)
			}
		})
	}
}

// TestZoneFileRefusalHidesPath: with dns.zone_file, a missing key's reply
// does not name the zone file.
func TestZoneFileRefusalHidesPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	zone := filepath.Join(t.TempDir(), "secret-dir", "zone.txt")
	must(t, os.MkdirAll(filepath.Dir(zone), 0o700))
	must(t, os.WriteFile(zone, []byte("s1._domainkey.other.test TXT \"v=DKIM1; p=\"\n"), 0o600))
	res, err := dnsres.New(dnsres.Options{ZoneFile: zone, Timeout: time.Second})
	must(t, err)
	e.r.Verifier = &trust.Verifier{Resolver: res}
	e.addEdKey("nokey.test")
	out := e.route("acme", e.sign("nokey.test", reply("carl@nokey.test", "z1@nokey.test", "<"+sent.InternetMessageID+">", "")))
	if out.Code != 550 || !strings.Contains(out.Text, "d=nokey.test") {
		t.Fatalf("got %d %q", out.Code, out.Text)
	}
	if strings.Contains(out.Text, "secret-dir") || internalDetail.MatchString(out.Text) {
		t.Fatalf("reply %q names the zone file", out.Text)
	}
	if !strings.Contains(e.logbuf.String(), "secret-dir") {
		t.Fatalf("the log lacks the detail: %s", e.logbuf)
	}
}
