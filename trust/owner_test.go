package trust

import (
	"regexp"
	"strings"
	"testing"
)

func TestGoogleDefaultDomain(t *testing.T) {
	t.Parallel()
	domains := []string{"acme.test", "Acme-Jobs.CO.uk."}
	for _, tc := range []struct {
		d    string
		want bool
	}{
		{"acme-test.20230601.gappssmtp.com", true},
		{"ACME-TEST.20230601.GAPPSSMTP.COM.", true},
		{"acme-test.0.gappssmtp.com", true},
		{"acme-jobs-co-uk.1.gappssmtp.com", true}, // second tenant domain, normalised
		{"acme-test.evil.gappssmtp.com", false},
		{"acme-test.2023x.gappssmtp.com", false},
		{"acme-test.-1.gappssmtp.com", false},
		{"acme-test..gappssmtp.com", false},
		{"acme-test.gappssmtp.com", false},
		{".20230601.gappssmtp.com", false},
		{"20230601.gappssmtp.com", false},
		{"gappssmtp.com", false},
		{"xacme-test.20230601.gappssmtp.com", false},
		{"evil.acme-test.20230601.gappssmtp.com", false},
		{"acme-test.20230601.gappssmtp.com.evil.test", false},
		{"acme-test.20230601.gappssmtp.net", false},
		{"acme.test.20230601.gappssmtp.com", false}, // dots are not hyphens
		{"beta-test.20230601.gappssmtp.com", false},
	} {
		if got := GoogleDefaultDomain(tc.d, domains); got != tc.want {
			t.Errorf("GoogleDefaultDomain(%q) = %v, want %v", tc.d, got, tc.want)
		}
	}
}

// TestDecideForOwner: the provider's default domain and signing_domains
// count as the tenant's own, directly and as reported by a trusted ARC
// sealer; they do not for a tenant they are not set for.
func TestDecideForOwner(t *testing.T) {
	t.Parallel()
	pass := func(d string) Verdict {
		return Verdict{FromDomain: "acme.test", DKIM: []Result{{Domain: d, Result: ResultPass}}, ARC: ARCResult{Result: ARCNone}}
	}
	viaARC := func(d string) Verdict {
		return Verdict{FromDomain: "acme.test", DKIM: []Result{{Domain: "acme.test", Result: ResultFail}},
			ARC: ARCResult{Result: ARCPass, Sealer: "google.com", OriginalDKIM: []Result{{Domain: d, Result: ResultPass}}}}
	}
	google := Owner{Domains: []string{"acme.test"}, Google: true}
	microsoft := Owner{Domains: []string{"acme.test"}, SigningDomains: []string{"ACME.onmicrosoft.com"}}
	for _, tc := range []struct {
		name string
		v    Verdict
		o    Owner
		want bool
	}{
		{"gapps, google tenant", pass("acme-test.20230601.gappssmtp.com"), google, true},
		{"gapps via ARC, google tenant", viaARC("acme-test.20230601.gappssmtp.com"), google, true},
		{"gapps, not a google tenant", pass("acme-test.20230601.gappssmtp.com"), microsoft, false},
		{"gapps look-alike", pass("acme-test.evil.gappssmtp.com"), google, false},
		{"signing domain", pass("acme.onmicrosoft.com"), microsoft, true},
		{"signing domain via ARC", viaARC("acme.onmicrosoft.com"), microsoft, true},
		{"signing domain not set", pass("acme.onmicrosoft.com"), google, false},
		{"another onmicrosoft tenant", pass("evil.onmicrosoft.com"), microsoft, false},
		{"tenant domain", pass("acme.test"), Owner{}, true}, // aligned with From
	} {
		if got, why := DecideFor(tc.v, tc.o, []string{"google.com"}); got != tc.want {
			t.Errorf("%s: DecideFor = %v (%s), want %v", tc.name, got, why, tc.want)
		}
	}
	if ok, _ := Decide(pass("acme-test.20230601.gappssmtp.com"), []string{"acme.test"}, nil); ok {
		t.Error("Decide (no provider) accepted the gappssmtp domain")
	}
}

// TestReplyReasonHasNoInternalDetail: whatever the verifier's reasons
// quote (resolver addresses, zone file paths, Go errors, header text),
// the reply keeps to domains, result words and fixed phrases.
func TestReplyReasonHasNoInternalDetail(t *testing.T) {
	t.Parallel()
	v := Verdict{
		FromDomain: "acme.test",
		DKIM: []Result{
			{Domain: "a.test", Result: ResultPermError, Reason: "no key for signature: lookup s._domainkey.a.test on 10.1.2.3:53: no such host (NXDOMAIN)"},
			{Domain: "b.test", Result: ResultPermError, Reason: "no key for signature: lookup s._domainkey.b.test: no such host in zone file /etc/syncrelay/zone.txt"},
			{Domain: "c.test", Result: ResultPermError, Reason: "key syntax error: illegal base64 data at input byte 4"},
			{Domain: "d.test", Result: ResultTempError, Reason: "key unavailable: lookup s._domainkey.d.test on [::1]:5353: i/o timeout"},
			{Domain: "e.test", Result: ResultFail, Reason: "signature did not verify: crypto/rsa: verification error"},
			{Domain: "f.test", Result: ResultPermError, Reason: "something new: dial udp 192.0.2.1:53"},
			{Domain: "esp.test", Result: ResultPass},
		},
		ARC: ARCResult{Result: ARCFail, Reason: "ARC-Seal i=1: key lookup: lookup x on 10.0.0.1:53: SERVFAIL"},
	}
	got := ReplyReason(v, nil)
	leak := regexp.MustCompile(`\d+\.\d+\.\d+\.\d+|::1|:\d{2,5}\b|/|(?i)lookup|zone|base64|crypto|i/o|dial|servfail|nxdomain`)
	if m := leak.FindString(got); m != "" {
		t.Fatalf("ReplyReason carries %q: %s", m, got)
	}
	for _, want := range []string{
		"dkim=pass only for esp.test, not aligned with From domain acme.test",
		"d=a.test permerror (no key for signature)",
		"d=c.test permerror (key syntax error)",
		"d=d.test temperror (key temporarily unavailable)",
		"d=e.test fail (signature did not verify)",
		"d=f.test permerror (no usable key or malformed signature)",
		"arc=fail",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ReplyReason lacks %q: %s", want, got)
		}
	}
	// The log's reason keeps the detail.
	if _, why := DecideFor(v, Owner{}, nil); !strings.Contains(why, "10.1.2.3:53") || !strings.Contains(why, "/etc/syncrelay/zone.txt") {
		t.Errorf("logged reason lost the detail: %s", why)
	}
	// Long lists are cut, the reply line stays short.
	for range 20 {
		v.DKIM = append(v.DKIM, Result{Domain: strings.Repeat("x", 60) + ".test", Result: ResultFail})
	}
	if n := len(ReplyReason(v, nil)); n > maxReplyReason {
		t.Errorf("reply reason of %d bytes", n)
	}
}
