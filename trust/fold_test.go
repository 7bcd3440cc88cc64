package trust

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"syncrelay/internal/dkimtest"
)

// bigReferences is a message whose References holds n msg-ids (58
// bytes each: n = 17000 is just under 1 MiB), one per line when folded, all on one
// line otherwise.
func bigReferences(n int, folded bool) []byte {
	var refs strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			if folded {
				refs.WriteString("\r\n ")
			} else {
				refs.WriteString(" ")
			}
		}
		fmt.Fprintf(&refs, "<%08d.abcdefghijklmnopqrstuvwxyz@cand.example.test>", i)
	}
	msg := message("carl@cand.test", "Re: interview", "Thanks!\r\n")
	return prepend(msg, "References: "+refs.String()+crlf)
}

// signRefs signs msg (References included) with the fixed key 0 of
// dkimtest, by hand: go-msgauth's signer is itself quadratic in the number
// of folded lines.
func signRefs(t testing.TB, msg []byte, relaxed bool) []byte {
	return signKeys(t, msg, relaxed, append([]string{"References"}, signedHeaders...))
}

func signKeys(t testing.TB, msg []byte, relaxed bool, headerKeys []string) []byte {
	t.Helper()
	key, _ := dkimtest.RSA(t, 0)
	c := "simple/simple"
	if relaxed {
		c = "relaxed/relaxed"
	}
	f := signField(t, msg, key, sigSpec{
		name:       "DKIM-Signature",
		tags:       [][2]string{{"v", "1"}, {"a", "rsa-sha256"}, {"c", c}, {"d", "cand.test"}, {"s", "sel"}},
		headerKeys: headerKeys,
		relaxed:    relaxed,
		bodyLimit:  -1,
	})
	return prepend(msg, f)
}

// timeVerify returns the best of three Verify times of flat (which must
// pass) and of msg, with msg's result, and fails t when msg took 10x flat.
func timeVerify(t *testing.T, e *env, flat, msg []byte) (base, d time.Duration, v Verdict) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		start := time.Now()
		v, err := e.v.Verify(ctx, bytes.NewReader(flat))
		if err != nil || !v.Pass {
			t.Fatalf("flat: %v %+v", err, v.DKIM)
		}
		if d := time.Since(start); i == 0 || d < base {
			base = d
		}
	}
	// Best of three for msg too, unless the first run shows the quadratic
	// cost already (seconds: no need to wait for two more).
	for i := 0; i < 3 && (i == 0 || d < 10*base); i++ {
		start := time.Now()
		var err error
		v, err = e.v.Verify(ctx, bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if di := time.Since(start); i == 0 || di < d {
			d = di
		}
	}
	t.Logf("verify: flat %v, folded %v (%.1fx)", base, d, float64(d)/float64(base))
	if d > 10*base {
		t.Errorf("folded header took %v, %.0fx the %v of the same bytes unfolded (want < 10x)", d, float64(d)/float64(base), base)
	}
	return base, d, v
}

// A header field folded over thousands of short lines must cost about what
// the same bytes on one line cost: go-msgauth's header reader appends each
// continuation line to the field's string, copying the whole field every
// time (quadratic: 7 s for 1 MiB in 17k lines, on a message any
// candidate holding one thread token can send). Relaxed signatures over
// such a field still verify; simple ones covering it get "policy".
func TestVerifyManyFoldedLinesIsLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("times 1 MiB headers")
	}
	_, rec := dkimtest.RSA(t, 0)
	all := append([]string{"References"}, signedHeaders...)
	tests := []struct {
		name       string
		relaxed    bool
		headerKeys []string
		result     string
		reason     string
	}{
		{"relaxed", true, all, ResultPass, ""},
		{"simple covering References", false, all, ResultPolicy, tooFoldedReason},
		{"simple not covering References", false, signedHeaders, ResultPass, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.srv.SetTXT("sel._domainkey.cand.test", rec)
			flat := signKeys(t, bigReferences(17000, false), tc.relaxed, tc.headerKeys)
			folded := signKeys(t, bigReferences(17000, true), tc.relaxed, tc.headerKeys)
			t.Logf("message sizes: flat %d, folded %d bytes", len(flat), len(folded))
			_, _, v := timeVerify(t, e, flat, folded)
			if len(v.DKIM) != 1 || v.DKIM[0].Result != tc.result || v.DKIM[0].Reason != tc.reason {
				t.Errorf("folded: %+v, want %s %q", v.DKIM, tc.result, tc.reason)
			}
		})
	}
}

// What still reaches go-msgauth as received, fields of MaxFoldedLines
// lines filling the header, is bounded too; a simple signature over them
// verifies.
func TestVerifyFieldsAtFoldLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("times 1 MiB headers")
	}
	_, rec := dkimtest.RSA(t, 0)
	e := newEnv(t)
	e.srv.SetTXT("sel._domainkey.cand.test", rec)
	build := func(folded bool) []byte {
		var fields []string
		for n := 0; n < 17000; n += MaxFoldedLines {
			var f strings.Builder
			f.WriteString("X-Padding:")
			for i := n; i < n+MaxFoldedLines; i++ {
				if i > n && folded {
					f.WriteString("\r\n")
				}
				fmt.Fprintf(&f, " <%08d.abcdefghijklmnopqrstuvwxyz@cand.example.test>", i)
			}
			fields = append(fields, f.String()+crlf)
		}
		keys := append(slices.Repeat([]string{"X-Padding"}, len(fields)), signedHeaders...)
		return signKeys(t, prepend(message("carl@cand.test", "Re: interview", "Thanks!\r\n"), fields...), false, keys)
	}
	_, _, v := timeVerify(t, e, build(false), build(true))
	if !v.Pass {
		t.Errorf("at the limit: %+v", v.DKIM)
	}
}

// unfold keeps the relaxed canonical form of a field whose name is not
// folded; a folded name stays one no h= list can name.
func TestUnfold(t *testing.T) {
	for _, tc := range []struct {
		field      string
		foldedName bool
	}{
		{"References: <a@b>\r\n <c@d>\r\n\t<e@f>\r\n", false},
		{"Subject: a  \r\n \r\n\t b\r\n", false},
		{"Subject: lone\rcr\r\n x\r\n", false},
		{"Subject:\r\n x: y\r\n z\r\n", false},
		{"Empty:\r\n \r\n", false},
		{"Sub\r\n ject : x\r\n y\r\n", true},
		{"no colon\r\n at all\r\n", true},
	} {
		u := unfold(tc.field)
		if strings.Count(u, crlf) != 1 || !strings.HasSuffix(u, crlf) {
			t.Errorf("unfold(%q) = %q", tc.field, u)
		}
		if tc.foldedName {
			if name := fieldName(u); !strings.ContainsAny(name, " \t") {
				t.Errorf("unfold(%q): name %q became nameable", tc.field, name)
			}
			continue
		}
		got, want := string(appendCanonHeader(nil, u, true)), string(appendCanonHeader(nil, tc.field, true))
		if got != want {
			t.Errorf("%q: unfolded %q, want %q", tc.field, got, want)
		}
	}
}

// foldKey(a) == foldKey(b) exactly when strings.EqualFold(a, b), as the
// header picker's matching was before it indexed names.
func TestFoldKeyMatchesEqualFold(t *testing.T) {
	names := []string{"From", "from", "FROM", "Subject", "\u017fubject", "subject", "X-K", "x-\u212a", "x-k",
		"Stra\u00dfe", "STRASSE", "stra\u00dfe", "\u03a3igma", "\u03c3igma", "\u03c2igma", "", " from"}
	for _, a := range names {
		for _, b := range names {
			if got, want := foldKey(a) == foldKey(b), strings.EqualFold(a, b); got != want {
				t.Errorf("foldKey(%q) == foldKey(%q): %v, EqualFold: %v", a, b, got, want)
			}
		}
	}
}

// The header picker costs one pass over the header, whatever h= lists: an
// h= naming one field thousands of times over as many instances of it.
func TestPickerIsLinear(t *testing.T) {
	const n = 50000
	fields := slices.Repeat([]string{"X-A: 1\r\n"}, n)
	fields = append(fields, "From: a@b\r\n")
	p := newHeaderPicker(fields)
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, ok := p.pick("x-a"); !ok {
			t.Fatalf("pick %d: none", i)
		}
	}
	if _, ok := p.pick("X-A"); ok {
		t.Error("picked more X-A than there are")
	}
	if f, ok := p.pick("FROM"); !ok || f != "From: a@b\r\n" {
		t.Errorf("From: %q %v", f, ok)
	}
	// Quadratic (one scan per pick) is over 10 s here; linear, milliseconds.
	if d := time.Since(start); d > time.Second {
		t.Errorf("%d picks took %v", n, d)
	}
}
