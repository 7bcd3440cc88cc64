package trust

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/dnsres"
)

const body = "Hello,\r\n\r\nthanks for the interview.\r\n"

func onlyDKIM(t *testing.T, v Verdict) Result {
	t.Helper()
	if len(v.DKIM) != 1 {
		t.Fatalf("want 1 DKIM result, got %+v", v.DKIM)
	}
	return v.DKIM[0]
}

func TestDKIMPassRSAAndEd25519OverDNS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rk, ek := rsaKey(t, "acme", 2048), edKey(t, "acme")
	e.publish("rsa", "acme.test", rk)
	e.publish("ed", "acme.test", ek)

	for name, k := range map[string]testKey{"rsa": rk, "ed": ek} {
		t.Run(name, func(t *testing.T) {
			msg := dkimSign(t, message("carl@acme.test", "Re: interview", body), "acme.test", name, k, nil)
			v := e.verify(t, msg)
			r := onlyDKIM(t, v)
			if r.Result != ResultPass || r.Domain != "acme.test" || r.Selector != name {
				t.Fatalf("%+v", r)
			}
			wantAlg := map[string]string{"rsa": "rsa-sha256", "ed": "ed25519-sha256"}[name]
			if r.Algorithm != wantAlg {
				t.Fatalf("algorithm %q, want %q", r.Algorithm, wantAlg)
			}
			if v.FromDomain != "acme.test" || !v.Pass || v.Temporary || v.ARC.Result != ARCNone {
				t.Fatalf("%+v", v)
			}
			if ok, reason := Decide(v, nil, nil); !ok {
				t.Fatalf("Decide: %s", reason)
			}
		})
	}
	// Both signatures on one message: two passes.
	msg := dkimSign(t, dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", rk, nil), "acme.test", "ed", ek, nil)
	v := e.verify(t, msg)
	if len(v.DKIM) != 2 || v.DKIM[0].Result != ResultPass || v.DKIM[1].Result != ResultPass {
		t.Fatalf("%+v", v.DKIM)
	}
}

func TestDKIMFromZoneFile(t *testing.T) {
	t.Parallel()
	rk, ek := rsaKey(t, "acme", 2048), edKey(t, "acme")
	zone := writeZone(t,
		"# keys for QA",
		zoneLine("rsa._domainkey.acme.test", rk.record),
		zoneLine("ed._domainkey.acme.test.", ek.record),
	)
	res, err := dnsres.New(dnsres.Options{ZoneFile: zone})
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Resolver: res}
	msg := dkimSign(t, dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", rk, nil), "acme.test", "ed", ek, nil)
	got, err := v.Verify(context.Background(), bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.DKIM) != 2 || got.DKIM[0].Result != ResultPass || got.DKIM[1].Result != ResultPass || !got.Pass {
		t.Fatalf("%+v", got)
	}
	// A selector missing from the zone is a permanent error, not temporary.
	msg = dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "nope", rk, nil)
	got, _ = v.Verify(context.Background(), bytes.NewReader(msg))
	if r := onlyDKIM(t, got); r.Result != ResultPermError || got.Temporary {
		t.Fatalf("%+v temporary=%v", r, got.Temporary)
	}
}

func TestDKIMTamperedBodyFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.publish("rsa", "acme.test", k)
	msg := dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, nil)
	msg = bytes.Replace(msg, []byte("interview"), []byte("interveiw"), 1)
	v := e.verify(t, msg)
	r := onlyDKIM(t, v)
	if r.Result != ResultFail || !strings.Contains(r.Reason, "body hash") {
		t.Fatalf("%+v", r)
	}
	if ok, reason := Decide(v, []string{"acme.test"}, nil); ok || !strings.Contains(reason, "fail") {
		t.Fatalf("Decide = %v %q", ok, reason)
	}
	// Tampered header too.
	msg = dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, nil)
	msg = forward(msg)
	if r := onlyDKIM(t, e.verify(t, msg)); r.Result != ResultFail {
		t.Fatalf("%+v", r)
	}
}

func TestDKIMPolicyRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.publish("rsa", "acme.test", k)
	base := message("carl@acme.test", "s", body)

	t.Run("rsa-sha1", func(t *testing.T) {
		f := signField(t, base, k.signer, sigSpec{
			name:       "DKIM-Signature",
			tags:       [][2]string{{"v", "1"}, {"a", "rsa-sha1"}, {"c", "relaxed/relaxed"}, {"d", "acme.test"}, {"s", "rsa"}},
			headerKeys: signedHeaders, relaxed: true, hash: crypto.SHA1, bodyLimit: -1,
		})
		v := e.verify(t, prepend(base, f))
		if r := onlyDKIM(t, v); r.Result != ResultPolicy || !strings.Contains(r.Reason, "rsa-sha1") || r.Algorithm != "rsa-sha1" {
			t.Fatalf("%+v", r)
		}
		if ok, _ := Decide(v, []string{"acme.test"}, nil); ok {
			t.Fatal("rsa-sha1 must not pass")
		}
	})
	t.Run("l=", func(t *testing.T) {
		f := signField(t, base, k.signer, sigSpec{
			name: "DKIM-Signature",
			tags: [][2]string{{"v", "1"}, {"a", "rsa-sha256"}, {"c", "relaxed/relaxed"}, {"d", "acme.test"}, {"s", "rsa"},
				{"l", "10"}},
			headerKeys: signedHeaders, relaxed: true, bodyLimit: 10,
		})
		// Content appended after the signed prefix: exactly what l= allows.
		v := e.verify(t, append(prepend(base, f), "Click here: http://evil.test\r\n"...))
		if r := onlyDKIM(t, v); r.Result != ResultPolicy || !strings.Contains(r.Reason, "l=") {
			t.Fatalf("%+v", r)
		}
	})
	for _, bits := range []int{512, 768} {
		t.Run(fmt.Sprintf("rsa-%d", bits), func(t *testing.T) {
			small := rsaKey(t, "small", bits)
			sel := fmt.Sprintf("k%d", bits)
			e.publish(sel, "acme.test", small)
			msg := dkimSign(t, base, "acme.test", sel, small, nil)
			v := e.verify(t, msg)
			r := onlyDKIM(t, v)
			if r.Result != ResultPolicy || !strings.Contains(r.Reason, fmt.Sprintf("%d bits", bits)) {
				t.Fatalf("%+v", r)
			}
			if ok, _ := Decide(v, []string{"acme.test"}, nil); ok {
				t.Fatal("short key must not pass")
			}
		})
	}
	t.Run("rsa-1024 passes", func(t *testing.T) {
		k1024 := rsaKey(t, "k1024", 1024)
		e.publish("k1024", "acme.test", k1024)
		if r := onlyDKIM(t, e.verify(t, dkimSign(t, base, "acme.test", "k1024", k1024, nil))); r.Result != ResultPass {
			t.Fatalf("%+v", r)
		}
	})
}

func TestAtMostMaxSignaturesVerified(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	msg := message("carl@acme.test", "s", body)
	for i := 0; i < 7; i++ {
		sel := fmt.Sprintf("s%d", i)
		e.publish(sel, "acme.test", k)
		msg = dkimSign(t, msg, "acme.test", sel, k, nil)
	}
	v := e.verify(t, msg)
	if len(v.DKIM) != 5 || v.SkippedSignatures != 2 {
		t.Fatalf("verified %d, skipped %d", len(v.DKIM), v.SkippedSignatures)
	}
	for _, r := range v.DKIM {
		if r.Result != ResultPass {
			t.Fatalf("%+v", r)
		}
	}
	if q := e.srv.Queries(); q != 5 {
		t.Fatalf("DNS queries = %d, want 5 (extra signatures not looked up)", q)
	}
	e.v.MaxSignatures = 2
	if v := e.verify(t, msg); len(v.DKIM) != 2 || v.SkippedSignatures != 5 {
		t.Fatalf("MaxSignatures=2: %d/%d", len(v.DKIM), v.SkippedSignatures)
	}
}

func TestServfailIsTemperror(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.srv.SetServfail("rsa._domainkey.acme.test")
	msg := dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, nil)
	v := e.verify(t, msg)
	if r := onlyDKIM(t, v); r.Result != ResultTempError {
		t.Fatalf("%+v", r)
	}
	if !v.Temporary || v.Pass {
		t.Fatalf("Temporary=%v Pass=%v", v.Temporary, v.Pass)
	}
	if ok, reason := Decide(v, []string{"acme.test"}, nil); ok || !strings.Contains(reason, "temporary") {
		t.Fatalf("Decide = %v %q", ok, reason)
	}
	// DNS recovers: the same message now passes (the failure was not cached).
	e.publish("rsa", "acme.test", k)
	if v := e.verify(t, msg); !v.Pass || v.Temporary {
		t.Fatalf("after recovery: %+v", v)
	}
}

func TestTemperrorIgnoredWhenAnotherSignaturePasses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.publish("good", "acme.test", k)
	e.srv.SetServfail("bad._domainkey.acme.test")
	msg := message("carl@acme.test", "s", body)
	msg = dkimSign(t, dkimSign(t, msg, "acme.test", "bad", k, nil), "acme.test", "good", k, nil)
	v := e.verify(t, msg)
	if len(v.DKIM) != 2 || v.DKIM[0].Result != ResultPass || v.DKIM[1].Result != ResultTempError {
		t.Fatalf("%+v", v.DKIM)
	}
	if v.Temporary || !v.Pass {
		t.Fatalf("Temporary=%v Pass=%v", v.Temporary, v.Pass)
	}
}

func TestDNSTimeoutIsTemperror(t *testing.T) {
	t.Parallel() // its own DNS server; it waits for the 200 ms timeout
	e := newEnv(t)
	res, err := dnsres.New(dnsres.Options{Server: e.srv.Addr(), Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.v.Resolver = res
	k := rsaKey(t, "acme", 2048)
	e.publish("rsa", "acme.test", k)
	e.srv.SetDelay(time.Second)
	v := e.verify(t, dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, nil))
	if r := onlyDKIM(t, v); r.Result != ResultTempError || !v.Temporary {
		t.Fatalf("%+v", v)
	}
}

func TestNXDOMAINIsPermerror(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	v := e.verify(t, dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "missing", k, nil))
	if r := onlyDKIM(t, v); r.Result != ResultPermError || !strings.Contains(r.Reason, "no key") {
		t.Fatalf("%+v", r)
	}
	if v.Temporary {
		t.Fatal("NXDOMAIN must not be temporary")
	}
}

// A resolver that is not a dnsres one, returning plain errors: temporary
// ones must still become temperror.
type plainErrResolver struct{ err error }

func (r plainErrResolver) LookupTXT(context.Context, string) ([]string, error) { return nil, r.err }

func TestForeignResolverErrors(t *testing.T) {
	t.Parallel()
	k := rsaKey(t, "acme", 2048)
	msg := dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, nil)
	for _, c := range []struct {
		err  error
		want string
	}{
		{context.DeadlineExceeded, ResultTempError},
		{errors.New("boom"), ResultPermError},
	} {
		v, err := (&Verifier{Resolver: plainErrResolver{c.err}}).Verify(context.Background(), bytes.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		if r := onlyDKIM(t, v); r.Result != c.want {
			t.Errorf("%v: %+v", c.err, r)
		}
	}
}

func TestDecideAlignment(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.publish("s", "acme.test", k)
	e.publish("s", "esp.test", k)
	e.publish("s", "mail.acme.test", k)

	// Signed by an unrelated domain (an ESP): passes but is not aligned.
	esp := e.verify(t, dkimSign(t, message("carl@acme.test", "s", body), "esp.test", "s", k, nil))
	if esp.DKIM[0].Result != ResultPass || esp.Pass {
		t.Fatalf("%+v", esp)
	}
	if ok, reason := Decide(esp, []string{"tenant.test"}, []string{"google.com"}); ok || !strings.Contains(reason, "not aligned") {
		t.Fatalf("unaligned: %v %q", ok, reason)
	}
	// ... unless d= is a tenant domain.
	if ok, reason := Decide(esp, []string{"Tenant.test", "esp.test"}, nil); !ok || !strings.Contains(reason, "tenant domain") {
		t.Fatalf("tenant domain: %v %q", ok, reason)
	}
	// From a subdomain, signed by the parent: aligned (relaxed).
	sub := e.verify(t, dkimSign(t, message("carl@mail.acme.test", "s", body), "acme.test", "s", k, nil))
	if ok, reason := Decide(sub, nil, nil); !ok || !strings.Contains(reason, "aligned") {
		t.Fatalf("subdomain: %v %q", ok, reason)
	}
	// Signed by a subdomain of From: not aligned under the simple rule.
	parent := e.verify(t, dkimSign(t, message("carl@acme.test", "s", body), "mail.acme.test", "s", k, nil))
	if ok, _ := Decide(parent, nil, nil); ok {
		t.Fatal("d=mail.acme.test must not align with From acme.test")
	}
	// Look-alike suffix is not a subdomain.
	if aligned("acme.test", "evilacme.test") || aligned("test", "acme.test") || !aligned("ACME.test.", "x.acme.TEST") {
		t.Fatal("aligned()")
	}
	// No DKIM at all.
	none := e.verify(t, message("carl@acme.test", "s", body))
	if ok, reason := Decide(none, []string{"acme.test"}, nil); ok || !strings.Contains(reason, "no DKIM signature") {
		t.Fatalf("%v %q", ok, reason)
	}
}

func TestFromDomain(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"From: Carl <carl@Acme.Test>\r\n":                             "acme.test",
		"From: carl@acme.test\r\n":                                    "acme.test",
		"From: =?windows-1252?Q?Carl_M=FCller?= <carl@acme.test>\r\n": "acme.test",
		"From: \"ceo@acme.test\" <x@evil.test>\r\n":                   "evil.test",
		"From: a@acme.test, b@acme.test\r\n":                          "acme.test",
		"From: a@acme.test, b@evil.test\r\n":                          "",
		"From: a@acme.test\r\nFrom: b@acme.test\r\n":                  "",
		"From: not an address\r\n":                                    "",
		"To: x@acme.test\r\n":                                         "",
		"From: Carl\r\n <carl@acme.test>\r\n":                         "acme.test",
	}
	for hdr, want := range cases {
		fields, _ := splitMessage(t, []byte(hdr+"\r\n"))
		if got := fromDomain(fields); got != want {
			t.Errorf("%q: got %q, want %q", hdr, got, want)
		}
	}
}

// arcEnv publishes keys for the original signer and the two forwarders.
func arcEnv(t *testing.T) (*env, map[string]testKey) {
	e := newEnv(t)
	keys := map[string]testKey{
		"acme.test":     rsaKey(t, "acme", 2048),
		"google.com":    rsaKey(t, "google", 2048),
		"microsoft.com": edKey(t, "microsoft"),
		"evil.test":     rsaKey(t, "evil", 2048),
	}
	e.publish("sel", "acme.test", keys["acme.test"])
	e.publish("arc-20240605", "google.com", keys["google.com"])
	e.publish("arcselector9901", "microsoft.com", keys["microsoft.com"])
	e.publish("arc", "evil.test", keys["evil.test"])
	return e, keys
}

func googleSeal(keys map[string]testKey, results string) seal {
	return seal{domain: "google.com", selector: "arc-20240605", key: keys["google.com"], authservID: "mx.google.com", results: results}
}

func msSeal(keys map[string]testKey, results string) seal {
	return seal{domain: "microsoft.com", selector: "arcselector9901", key: keys["microsoft.com"], authservID: "mx.microsoft.com 1", results: results}
}

const origPass = "dkim=pass (2048-bit key) header.d=acme.test header.s=sel header.b=AbCdEf;\r\n\tspf=pass (google.com: domain of carl@acme.test designates 192.0.2.1 as permitted sender) smtp.mailfrom=carl@acme.test;\r\n\tdmarc=pass (p=REJECT) header.from=acme.test"

// The forwarded message: original DKIM broken by the forwarder, ARC sealed.
func forwardedViaGoogle(t *testing.T, keys map[string]testKey, results string) []byte {
	orig := dkimSign(t, message("carl@acme.test", "Re: interview", body), "acme.test", "sel", keys["acme.test"], nil)
	return SealForTest(t, forward(orig), googleSeal(keys, results))
}

func TestARCTrustedSealerRescuesBrokenDKIM(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	msg := forwardedViaGoogle(t, keys, origPass)
	v := e.verify(t, msg)
	if r := onlyDKIM(t, v); r.Result != ResultFail {
		t.Fatalf("original signature should be broken: %+v", r)
	}
	if v.ARC.Result != ARCPass || v.ARC.Sealer != "google.com" || v.ARC.Instances != 1 {
		t.Fatalf("ARC: %+v", v.ARC)
	}
	if len(v.ARC.OriginalDKIM) != 1 || v.ARC.OriginalDKIM[0].Result != ResultPass || v.ARC.OriginalDKIM[0].Domain != "acme.test" {
		t.Fatalf("OriginalDKIM: %+v", v.ARC.OriginalDKIM)
	}
	if v.Pass || v.Temporary {
		t.Fatalf("%+v", v)
	}
	if ok, reason := Decide(v, []string{"tenant.test"}, []string{"google.com"}); !ok || !strings.Contains(reason, "arc=pass") {
		t.Fatalf("trusted google.com: %v %q", ok, reason)
	}
	// Same chain, but the tenant trusts only microsoft.com.
	if ok, reason := Decide(v, []string{"tenant.test"}, []string{"microsoft.com"}); ok || !strings.Contains(reason, "untrusted google.com") {
		t.Fatalf("untrusted: %v %q", ok, reason)
	}
}

func TestARCSealedByUntrustedDomain(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	orig := dkimSign(t, message("carl@acme.test", "Re: interview", body), "acme.test", "sel", keys["acme.test"], nil)
	msg := SealForTest(t, forward(orig), seal{domain: "evil.test", selector: "arc", key: keys["evil.test"], results: origPass})
	v := e.verify(t, msg)
	if v.ARC.Result != ARCPass || v.ARC.Sealer != "evil.test" {
		t.Fatalf("%+v", v.ARC)
	}
	if ok, _ := Decide(v, nil, []string{"google.com", "microsoft.com"}); ok {
		t.Fatal("a chain sealed by an untrusted domain must not pass")
	}
}

func TestARCTrustedSealerReportingUnalignedPass(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	// The sealer honestly reports dkim=pass, but for the attacker's domain.
	msg := forwardedViaGoogle(t, keys, "dkim=pass header.i=@evil.test header.s=x")
	v := e.verify(t, msg)
	if v.ARC.Result != ARCPass || len(v.ARC.OriginalDKIM) != 1 || v.ARC.OriginalDKIM[0].Domain != "evil.test" {
		t.Fatalf("%+v", v.ARC)
	}
	if ok, _ := Decide(v, nil, []string{"google.com"}); ok {
		t.Fatal("dkim=pass for an unaligned domain must not count")
	}
	// Reporting dkim=fail: no pass either.
	v = e.verify(t, forwardedViaGoogle(t, keys, "dkim=fail header.d=acme.test"))
	if ok, reason := Decide(v, nil, []string{"google.com"}); ok || !strings.Contains(reason, "no acceptable dkim=pass") {
		t.Fatalf("%v %q", ok, reason)
	}
}

func TestARCTwoHops(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	orig := dkimSign(t, message("carl@acme.test", "Re: interview", body), "acme.test", "sel", keys["acme.test"], nil)
	hop1 := SealForTest(t, forward(orig), msSeal(keys, origPass))
	// Second hop adds a footer to the body: breaks AMS(1) (allowed: only
	// the latest AMS must verify) but AS(1) still verifies.
	hop1 = append(hop1, "-- \r\nforwarded\r\n"...)
	hop2 := SealForTest(t, hop1, googleSeal(keys, "arc=pass (i=1); dkim=fail header.d=acme.test"))
	v := e.verify(t, hop2)
	if v.ARC.Result != ARCPass || v.ARC.Instances != 2 || v.ARC.Sealer != "google.com" {
		t.Fatalf("%+v", v.ARC)
	}
	// The last sealer (google) saw the broken signature: no pass to rely on.
	if ok, _ := Decide(v, nil, []string{"google.com"}); ok {
		t.Fatal("last sealer reports dkim=fail")
	}
	// Sealed last by microsoft (ed25519) reporting pass.
	hop2 = SealForTest(t, SealForTest(t, forward(orig), googleSeal(keys, origPass)), msSeal(keys, "dkim=pass header.d=acme.test"))
	v = e.verify(t, hop2)
	if v.ARC.Result != ARCPass || v.ARC.Sealer != "microsoft.com" {
		t.Fatalf("%+v", v.ARC)
	}
	if ok, reason := Decide(v, nil, []string{"microsoft.com"}); !ok {
		t.Fatal(reason)
	}
}

func TestARCBrokenChains(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	good := forwardedViaGoogle(t, keys, origPass)
	orig := dkimSign(t, message("carl@acme.test", "Re: interview", body), "acme.test", "sel", keys["acme.test"], nil)

	cases := map[string]struct {
		msg  []byte
		want string // substring of Reason
	}{
		"AS signature tampered": {
			// Change the AAR after sealing: AMS unaffected, AS no longer verifies.
			msg:  bytes.Replace(good, []byte("mx.google.com;"), []byte("mx.google.con;"), 1),
			want: "ARC-Seal i=1: signature did not verify",
		},
		"AS b= corrupted": {
			msg:  corruptTag(t, good, "ARC-Seal"),
			want: "ARC-Seal i=1",
		},
		"body changed after sealing": {
			msg:  append(append([]byte(nil), good...), "extra\r\n"...),
			want: "body hash did not verify",
		},
		"signed header changed after sealing": {
			msg:  bytes.Replace(good, []byte("[EXT] "), []byte("[EXT2] "), 1),
			want: "ARC-Message-Signature i=1: signature did not verify",
		},
		"cv=fail": {
			msg:  SealForTest(t, good, seal{domain: "google.com", selector: "arc-20240605", key: keys["google.com"], results: "arc=fail", cv: "fail"}),
			want: "cv=fail",
		},
		"first instance cv=pass": {
			msg:  SealForTest(t, forward(orig), seal{domain: "google.com", selector: "arc-20240605", key: keys["google.com"], results: origPass, cv: "pass"}),
			want: `want "none"`,
		},
		"missing instance": {
			msg:  dropField(t, SealForTest(t, good, msSeal(keys, origPass)), "ARC-Message-Signature: i=1"),
			want: "i=1 is incomplete",
		},
		"duplicate AAR": {
			msg:  prepend(good, "ARC-Authentication-Results: i=1; x; dkim=pass header.d=acme.test\r\n"),
			want: "two ARC-Authentication-Results",
		},
		"instance out of range": {
			msg:  prepend(good, "ARC-Seal: i=51; a=rsa-sha256; cv=pass; d=x.test; s=x; b=AAAA\r\n"),
			want: "invalid instance",
		},
		"gap in instances": {
			msg: prepend(good,
				"ARC-Seal: i=3; a=rsa-sha256; cv=pass; d=x.test; s=x; b=AAAA\r\n",
				"ARC-Message-Signature: i=3; a=rsa-sha256; d=x.test; s=x; h=from; bh=AAAA; b=AAAA\r\n",
				"ARC-Authentication-Results: i=3; x; none\r\n"),
			want: "i=2 is incomplete",
		},
		"sealer key missing": {
			msg:  SealForTest(t, forward(orig), seal{domain: "google.com", selector: "gone", key: keys["google.com"], results: origPass}),
			want: "no such host",
		},
		"sealer signs with a different key": {
			msg:  SealForTest(t, forward(orig), seal{domain: "google.com", selector: "arc-20240605", key: keys["evil.test"], results: origPass}),
			want: "signature did not verify",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			v := e.verify(t, c.msg)
			if v.ARC.Result != ARCFail || !strings.Contains(v.ARC.Reason, c.want) {
				t.Fatalf("ARC = %+v, want fail containing %q", v.ARC, c.want)
			}
			if ok, _ := Decide(v, nil, []string{"google.com", "microsoft.com"}); ok {
				t.Fatal("broken chain must not pass")
			}
		})
	}
}

func TestARCTemporaryKeyFailure(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	msg := forwardedViaGoogle(t, keys, origPass)
	e.srv.SetServfail("arc-20240605._domainkey.google.com")
	v := e.verify(t, msg)
	if v.ARC.Result != ARCTempError || !v.Temporary {
		t.Fatalf("ARC %+v, Temporary %v", v.ARC, v.Temporary)
	}
	if ok, _ := Decide(v, nil, []string{"google.com"}); ok {
		t.Fatal("must not pass while the key is unavailable")
	}
	e.publish("arc-20240605", "google.com", keys["google.com"])
	if v := e.verify(t, msg); v.ARC.Result != ARCPass || v.Temporary {
		t.Fatalf("after recovery: %+v", v.ARC)
	}
}

func corruptTag(t *testing.T, msg []byte, field string) []byte {
	fields, body := splitMessage(t, msg)
	for i, f := range fields {
		if strings.EqualFold(fieldName(f), field) {
			j := strings.Index(f, "b=") + 2
			c := byte('A')
			if f[j] == 'A' {
				c = 'B'
			}
			fields[i] = f[:j] + string(c) + f[j+1:]
			break
		}
	}
	return joinMessage(fields, body)
}

func dropField(t *testing.T, msg []byte, prefix string) []byte {
	fields, body := splitMessage(t, msg)
	var out []string
	for _, f := range fields {
		if !strings.HasPrefix(f, prefix) {
			out = append(out, f)
		}
	}
	if len(out) == len(fields) {
		t.Fatalf("no field %q", prefix)
	}
	return joinMessage(out, body)
}

func TestAuthResultsParsesBack(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	msg := forwardedViaGoogle(t, keys, origPass)
	// Add a signature with a hostile-looking reason source and a passing one.
	msg = dkimSign(t, msg, "acme.test", "sel", keys["acme.test"], func(o *dkim.SignOptions) { o.Identifier = "carl@acme.test" })
	v := e.verify(t, msg)
	hdr := AuthResults("relay.example", v)
	if strings.ContainsAny(hdr, "\r\n") {
		t.Fatalf("header value has line breaks: %q", hdr)
	}
	id, results, err := authres.Parse(hdr)
	if err != nil {
		t.Fatalf("authres.Parse(%q): %v", hdr, err)
	}
	if id != "relay.example" || len(results) != 3 {
		t.Fatalf("id %q, %d results: %q", id, len(results), hdr)
	}
	d0, ok0 := results[0].(*authres.DKIMResult)
	d1, ok1 := results[1].(*authres.DKIMResult)
	a, ok2 := results[2].(*authres.ARCResult)
	if !ok0 || !ok1 || !ok2 {
		t.Fatalf("types %T %T %T", results[0], results[1], results[2])
	}
	if d0.Value != authres.ResultPass || d0.Domain != "acme.test" || d0.Identifier != "carl@acme.test" {
		t.Fatalf("%+v", d0)
	}
	if d1.Value != authres.ResultFail || d1.Domain != "acme.test" {
		t.Fatalf("%+v", d1)
	}
	if a.Value != authres.ResultPass {
		t.Fatalf("%+v", a)
	}

	// No signature at all; hostile reason text.
	none := AuthResults("relay.example", Verdict{ARC: ARCResult{Result: ARCFail, Reason: `x; dkim=pass header.d=evil.test (") \ =`}})
	_, results, err = authres.Parse(none)
	if err != nil || len(results) != 2 {
		t.Fatalf("%q: %v %d", none, err, len(results))
	}
	if d, ok := results[0].(*authres.DKIMResult); !ok || d.Value != authres.ResultNone {
		t.Fatalf("%q", none)
	}
	if strings.Count(none, ";") != 2 || strings.Contains(none, "header.d=evil") {
		t.Fatalf("reason not sanitised: %q", none)
	}
}

func TestVerifyConsumesInputAndOddInput(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	msg := forwardedViaGoogle(t, keys, origPass)
	r := &countingReader{r: bytes.NewReader(msg)}
	if _, err := e.v.Verify(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if r.n != len(msg) {
		t.Fatalf("read %d of %d bytes", r.n, len(msg))
	}
	// Unsigned message: still fully consumed.
	plain := message("carl@acme.test", "s", strings.Repeat("x", 100000))
	r = &countingReader{r: bytes.NewReader(plain)}
	v, err := e.v.Verify(context.Background(), r)
	if err != nil || r.n != len(plain) || len(v.DKIM) != 0 || v.ARC.Result != ARCNone {
		t.Fatalf("%v %d/%d %+v", err, r.n, len(plain), v)
	}
	// Garbage, empty, header only, malformed signature: a verdict, no error.
	for _, in := range []string{"", "\r\n", "garbage without colon", "DKIM-Signature\r\n\r\n",
		"DKIM-Signature: v=1; a=rsa-sha256; d=; s=\r\nFrom: a@acme.test\r\n\r\nx",
		"DKIM-Signature: v=1; a=rsa-sha256; d=ex ample; s=a b; h=from; bh=; b=\r\nFrom: a@b.test\r\n\r\n",
		"ARC-Seal: nonsense\r\n\r\n"} {
		v, err := e.v.Verify(context.Background(), strings.NewReader(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if v.Temporary {
			t.Fatalf("%q: malformed input must not be temporary: %+v", in, v)
		}
	}
	// Header too large.
	e.v.MaxHeaderBytes = 1000
	_, err = e.v.Verify(context.Background(), strings.NewReader("X: "+strings.Repeat("a", 2000)+"\r\n\r\n"))
	if !errors.Is(err, ErrHeaderTooLarge) {
		t.Fatalf("want ErrHeaderTooLarge, got %v", err)
	}
	// Read error.
	_, err = (&Verifier{Resolver: e.res}).Verify(context.Background(), io.MultiReader(strings.NewReader("From: a@b.test\r\n\r\nbody"), errReader{}))
	if err == nil {
		t.Fatal("want read error")
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestSignatureExpiryUsesNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := rsaKey(t, "acme", 2048)
	e.publish("rsa", "acme.test", k)
	msg := dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "rsa", k, func(o *dkim.SignOptions) {
		o.Expiration = time.Now().Add(time.Hour)
	})
	if r := onlyDKIM(t, e.verify(t, msg)); r.Result != ResultPass {
		t.Fatalf("%+v", r)
	}
	e.v.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if r := onlyDKIM(t, e.verify(t, msg)); r.Result != ResultPermError || !strings.Contains(r.Reason, "expired") {
		t.Fatalf("%+v", r)
	}
}

func BenchmarkVerifyCached(b *testing.B) {
	e := newEnv(b)
	k := rsaKey(b, "acme", 2048)
	e.publish("rsa", "acme.test", k)
	msg := dkimSign(b, message("carl@acme.test", "Re: interview", strings.Repeat("A line of body text.\r\n", 200)), "acme.test", "rsa", k, nil)
	ctx := context.Background()
	if v, err := e.v.Verify(ctx, bytes.NewReader(msg)); err != nil || !v.Pass {
		b.Fatalf("%v %+v", err, v)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := e.v.Verify(ctx, bytes.NewReader(msg))
		if err != nil || !v.Pass {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if q := e.srv.Queries(); q != 1 {
		b.Fatalf("DNS queries = %d, want 1 (cached)", q)
	}
}

func TestConcurrentVerify(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	e.srv.SetDelay(50 * time.Millisecond) // make the lookups overlap
	msgs := [][]byte{
		forwardedViaGoogle(t, keys, origPass),
		dkimSign(t, message("carl@acme.test", "s", body), "acme.test", "sel", keys["acme.test"], nil),
	}
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		go func() {
			v, err := e.v.Verify(context.Background(), bytes.NewReader(msgs[i%2]))
			if err == nil {
				if ok, reason := Decide(v, nil, []string{"google.com"}); !ok {
					err = errors.New(reason)
				}
			}
			errs <- err
		}()
	}
	for i := 0; i < 20; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if q := e.srv.Queries(); q != 2 {
		t.Fatalf("DNS queries = %d, want 2 (one per key, shared)", q)
	}
}

func ExampleAuthResults() {
	v := Verdict{
		DKIM: []Result{
			{Domain: "acme.test", Selector: "s1", Result: ResultPass, Algorithm: "rsa-sha256"},
			{Domain: "acme.test", Selector: "old", Result: ResultPolicy, Reason: "rsa-sha1 is not accepted (RFC 8301)", Algorithm: "rsa-sha1"},
		},
		ARC: ARCResult{Result: ARCPass, Sealer: "google.com", Instances: 1},
	}
	fmt.Println(AuthResults("relay.example", v))
	// Output: relay.example; dkim=pass header.d=acme.test; dkim=policy reason="rsa-sha1 is not accepted RFC 8301" header.d=acme.test; arc=pass header.d=google.com
}
