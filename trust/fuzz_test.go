package trust

import (
	"maps"
	"regexp"
	"strings"
	"testing"
)

// Seeds: ARC sets as Google, Microsoft 365 and a forwarding MTA write them
// (signatures shortened; the parsers do not verify anything).
var arcSeeds = []struct{ as, ams, aar string }{
	{
		as: "ARC-Seal: i=1; a=rsa-sha256; t=1700000000; cv=none;\r\n" +
			"        d=google.com; s=arc-20160816;\r\n" +
			"        b=Vx3bW0yLpH0mI8PzZk0w4kqUH8Vb6UaQ3Y0v+f1nQz2VgQ==\r\n",
		ams: "ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=google.com; s=arc-20160816;\r\n" +
			"        h=to:subject:message-id:date:from:in-reply-to:references:mime-version\r\n" +
			"         :dkim-signature;\r\n" +
			"        bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n" +
			"        fh=abc=; b=K2aXc9mUq3Y4m0Z8gJp1VQ==\r\n",
		aar: "ARC-Authentication-Results: i=1; mx.google.com;\r\n" +
			"       dkim=pass header.i=@cand.test header.s=s1 header.b=abcd1234;\r\n" +
			"       spf=pass (google.com: domain of carl@cand.test designates 192.0.2.1 as permitted sender) smtp.mailfrom=carl@cand.test;\r\n" +
			"       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=cand.test\r\n",
	},
	{
		as: "ARC-Seal: i=2; a=rsa-sha256; s=arcselector10001; d=microsoft.com; cv=pass;\r\n" +
			" b=Ymq3mN0Q2l3q==\r\n",
		ams: "ARC-Message-Signature: i=2; a=rsa-sha256; c=relaxed/relaxed; d=microsoft.com;\r\n" +
			" s=arcselector10001;\r\n" +
			" h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:X-MS-Exchange-AntiSpam-MessageData-ChunkCount;\r\n" +
			" bh=frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=;\r\n" +
			" b=PnZ5eQ==\r\n",
		aar: "ARC-Authentication-Results: i=2; mx.microsoft.com 1; spf=pass\r\n" +
			" smtp.mailfrom=acme.test; dmarc=pass action=none header.from=acme.test;\r\n" +
			" dkim=pass header.d=Acme.Test.; arc=pass (0 oda=1 ltdi=1\r\n" +
			" spf=[1,1,smtp.mailfrom=acme.test] dkim=[1,1,header.d=acme.test])\r\n",
	},
	{
		as:  "ARC-Seal: i=1; a=ed25519-sha256; cv=none; d=fwd.test; s=ed; b=AAAA\r\n",
		ams: "ARC-Message-Signature: i=1; a=ed25519-sha256; c=simple; d=fwd.test; s=ed; h=from; bh=AAAA; b=AAAA; l=10\r\n",
		aar: "ARC-Authentication-Results: i = 1 ; fwd.test; dkim=fail (\"bad (nested) comment\") reason=\"x\" header.d=cand.test\r\n",
	},
	{as: "ARC-Seal: nonsense\r\n", ams: "ARC-Message-Signature: i=1;;; =x\r\n", aar: "ARC-Authentication-Results: i=01;\r\n"},
	{as: "arc-seal: i=51; cv=fail; i=1\r\n", ams: "ARC-MESSAGE-SIGNATURE:\r\n", aar: "Arc-Authentication-Results: x; dkim=pass\r\n"},
}

// aarInstanceRE is the expression aarInstance is documented to match.
var aarInstanceRE = regexp.MustCompile(`^\s*i\s*=\s*([0-9]+)\s*;`)

// FuzzARCTags checks trust's own tag parsers on arbitrary ARC header fields:
// parseTags, aarInstance, parseAARDKIM and the chain set-up in newARCState
// never panic, and each keeps its documented contract.
func FuzzARCTags(f *testing.F) {
	for _, s := range arcSeeds {
		f.Add(s.as, s.ams, s.aar)
	}
	f.Fuzz(func(t *testing.T, as, ams, aar string) {
		for _, field := range []string{as, ams, aar} {
			checkParseTags(t, rawValue(field))
			checkAARInstance(t, rawValue(field))
			checkAARDKIM(t, field)
		}
		checkARCState(t, []string{aar, ams, as})
	})
}

// checkParseTags: a parsed tag-list has trimmed, non-empty, unique names and
// trimmed values, and writing it back out parses to the same map.
func checkParseTags(t *testing.T, s string) {
	tags, err := parseTags(s)
	if err != nil {
		return
	}
	var b strings.Builder
	for k, v := range tags {
		if k == "" || k != strings.TrimSpace(k) || strings.ContainsAny(k, "=;") {
			t.Fatalf("parseTags(%q): bad tag name %q", s, k)
		}
		if v != strings.TrimSpace(v) || strings.Contains(v, ";") {
			t.Fatalf("parseTags(%q): untrimmed value %q=%q", s, k, v)
		}
		b.WriteString(k + "=" + v + ";")
	}
	again, err := parseTags(b.String())
	if err != nil || !maps.Equal(tags, again) {
		t.Fatalf("parseTags(%q) = %v, but its re-serialisation %q parses to %v, %v", s, tags, b.String(), again, err)
	}
}

// checkAARInstance: the hand-written matcher agrees with its regexp.
func checkAARInstance(t *testing.T, s string) {
	digits, rest, ok := aarInstance(s)
	m := aarInstanceRE.FindStringSubmatch(s)
	if ok != (m != nil) {
		t.Fatalf("aarInstance(%q) ok=%v, regexp match %q", s, ok, m)
	}
	if ok && (digits != m[1] || rest != s[len(m[0]):]) {
		t.Fatalf("aarInstance(%q) = %q, %q; regexp %q, %q", s, digits, rest, m[1], s[len(m[0]):])
	}
}

// checkAARDKIM: every result names a lower-case domain without a trailing dot.
func checkAARDKIM(t *testing.T, field string) {
	for _, r := range parseAARDKIM(field) {
		if r.Domain != strings.ToLower(r.Domain) || strings.HasSuffix(r.Domain, ".") {
			t.Fatalf("parseAARDKIM(%q): domain %q not normalised", field, r.Domain)
		}
	}
}

// checkARCState: set-up either ends (none or fail, with a reason) or leaves
// a complete chain of 1..50 instances ready to hash the body.
func checkARCState(t *testing.T, fields []string) {
	st := newARCState(fields)
	if st.done {
		if st.body != nil || (st.res.Result != ARCNone && st.res.Result != ARCFail) {
			t.Fatalf("%q: finished early with %+v", fields, st.res)
		}
		if st.res.Result == ARCFail && st.res.Reason == "" {
			t.Fatalf("%q: failed without a reason", fields)
		}
		return
	}
	n := st.res.Instances
	if n < 1 || n > maxARCInstances || len(st.sets) != n || st.body == nil {
		t.Fatalf("%q: pending with %d instances, %d sets", fields, n, len(st.sets))
	}
	for i, set := range st.sets {
		if !set.hasAS || !set.hasAMS || !set.hasAAR {
			t.Fatalf("%q: set %d incomplete", fields, i+1)
		}
	}
}
