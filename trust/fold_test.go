package trust

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

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

// slowLimit is how many times the baseline a Verify may take. The
// quadratic cases took 142x to 734x before the fix and 1x to 6x after; the
// limit leaves room for a machine busy with other test packages (12.7x was
// seen once under go test ./...).
const slowLimit = 30

// timeVerify returns the best of three Verify times of flat, the baseline
// (which must pass), and of msg, with msg's result, and fails t when msg
// took slowLimit times flat.
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
	// Best of up to five for msg too, stopping once it is under the limit,
	// or at once when it is far over it (the quadratic cost takes seconds:
	// no need to wait for more).
	for i := 0; i < 5 && (i == 0 || (d > slowLimit*base && d < 100*base)); i++ {
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
	t.Logf("verify: baseline %v, this %v (%.1fx)", base, d, float64(d)/float64(base))
	if d > slowLimit*base {
		t.Errorf("took %v, %.0fx the baseline's %v (want < %dx)", d, float64(d)/float64(base), base, slowLimit)
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

// What still reaches go-msgauth as received is bounded too: a simple
// signature over MaxSignedFields fields of MaxFoldedLines long lines each,
// filling the header, verifies in about the time of the same bytes
// unfolded.
func TestVerifyFieldsAtFoldLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("times 1 MiB headers")
	}
	_, rec := dkimtest.RSA(t, 0)
	e := newEnv(t)
	e.srv.SetTXT("sel._domainkey.cand.test", rec)
	n := MaxSignedFields - len(signedHeaders)
	build := func(folded bool) []byte {
		var fields []string
		for j := 0; j < n; j++ {
			var f strings.Builder
			f.WriteString("X-Padding:")
			for line := 0; line < MaxFoldedLines; line++ {
				if line > 0 && folded {
					f.WriteString("\r\n")
				}
				for id := 0; id < 5; id++ {
					fmt.Fprintf(&f, " <%03d.%02d.%d.abcdefghijklmnopqrstuvwxyz@cand.example.test>", j, line, id)
				}
			}
			fields = append(fields, f.String()+crlf)
		}
		keys := append(slices.Repeat([]string{"X-Padding"}, n), signedHeaders...)
		return signKeys(t, prepend(message("carl@cand.test", "Re: interview", "Thanks!\r\n"), fields...), false, keys)
	}
	flat, folded := build(false), build(true)
	t.Logf("message sizes: flat %d, folded %d bytes", len(flat), len(folded))
	_, _, v := timeVerify(t, e, flat, folded)
	if !v.Pass {
		t.Errorf("at the limit: %+v", v.DKIM)
	}
}

// go-msgauth's picker scans the header bottom-up for each h= entry: an
// entry naming an absent field (or one only at the top) costs a scan of
// the whole header, so an h= of many such entries over a header of many
// short fields is quadratic. Verify hands go-msgauth only the fields a
// signature can pick, and does not verify a signature listing over
// MaxSignedFields names. The baseline is the same message signed without
// the absent names in h=.
func TestVerifyManySignedInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("times 1 MiB headers")
	}
	_, rec := dkimtest.RSA(t, 0)
	const instances = 100000 // 800 KB of "X-B: 1", not signed
	tests := []struct {
		name   string
		listed int // times h= lists X-A, which the header lacks
		result string
		reason string
	}{
		{"at the h= limit", MaxSignedFields - len(signedHeaders), ResultPass, ""},
		{"just over the h= limit", MaxSignedFields + 1 - len(signedHeaders), ResultPolicy, tooManySignedReason},
		// 2,000 scans of 100,000 fields: 3 s and more before.
		{"far over the h= limit", 2000, ResultPolicy, tooManySignedReason},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.srv.SetTXT("sel._domainkey.cand.test", rec)
			msg := prepend(message("carl@cand.test", "Re: interview", "Thanks!\r\n"), slices.Repeat([]string{"X-B: 1\r\n"}, instances)...)
			unlisted := signKeys(t, msg, true, signedHeaders)
			listed := signKeys(t, msg, true, append(slices.Repeat([]string{"X-A"}, tc.listed), signedHeaders...))
			_, _, v := timeVerify(t, e, unlisted, listed)
			if len(v.DKIM) != 1 || v.DKIM[0].Result != tc.result || v.DKIM[0].Reason != tc.reason {
				t.Errorf("%+v, want %s %q", v.DKIM, tc.result, tc.reason)
			}
		})
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
		"Stra\u00dfe", "STRASSE", "stra\u00dfe", "\u03a3igma", "\u03c3igma", "\u03c2igma", "", " from",
		"Message-ID", "message-id", "MESSAGE-ID", "Message-Id", "DKIM-Signature", "dkim-signature", "Dkim-signature"}
	for k, v := range commonFoldKeys {
		if v != strings.ToUpper(k) {
			t.Errorf("commonFoldKeys[%q] = %q, want %q", k, v, strings.ToUpper(k))
		}
		names = append(names, k)
	}
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

// go-msgauth gives the same result for every signature on the view as on
// the whole header: the view drops only fields no signature can pick.
func TestMsgauthViewKeepsResults(t *testing.T) {
	key, rec := dkimtest.RSA(t, 0)
	lookup := func(name string) ([]string, error) { return []string{rec}, nil }
	base := message("carl@cand.test", "Re: interview", "Thanks!\r\n")
	sign := func(msg []byte, relaxed bool, keys ...string) []byte {
		return signKeys(t, msg, relaxed, keys)
	}
	_ = key
	tests := []struct {
		name string
		msg  []byte
	}{
		{"plain", sign(base, true, signedHeaders...)},
		{"oversigned", sign(base, true, append(signedHeaders, "From", "Subject", "Subject", "Cc")...)},
		{"unsigned padding", prepend(sign(base, true, signedHeaders...), "X-B: 1\r\n", "X-B: 2\r\n")},
		{"added Subject below", []byte(strings.Replace(string(sign(base, false, signedHeaders...)), "\r\n\r\n", "\r\nSubject: evil\r\n\r\n", 1))},
		{"added long-s Subject below", []byte(strings.Replace(string(sign(base, true, signedHeaders...)), "\r\n\r\n", "\r\n\u017fubject: evil\r\n\r\n", 1))},
		{"added Kelvin field below", []byte(strings.Replace(string(sign(prepend(base, "X-K: 1\r\n"), true, append(signedHeaders, "x-k")...)), "\r\n\r\n", "\r\nX-\u212a: 2\r\n\r\n", 1))},
		{"two signatures, one signs the other", sign(sign(base, true, signedHeaders...), false, append(signedHeaders, "DKIM-Signature")...)},
		{"too many names", sign(base, true, append(slices.Repeat([]string{"X-A"}, MaxSignedFields), signedHeaders...)...)},
		{"folded References, relaxed", sign(bigReferences(200, true), true, append(signedHeaders, "References")...)},
		{"folded References, simple", sign(bigReferences(200, true), false, append(signedHeaders, "References")...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fields, body := splitMessage(t, tc.msg)
			var sigs []string
			for _, f := range fields {
				if equalLower(fieldName(f), "dkim-signature") {
					sigs = append(sigs, f)
				}
			}
			view, policy := msgauthView(fields, sigs)
			opts := &dkim.VerifyOptions{LookupTXT: lookup}
			whole, err := dkim.VerifyWithOptions(bytes.NewReader(joinMessage(fields, body)), opts)
			if err != nil {
				t.Fatal(err)
			}
			viewed, err := dkim.VerifyWithOptions(bytes.NewReader(joinMessage(view, body)), opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(whole) != len(viewed) {
				t.Fatalf("%d results on the whole header, %d on the view", len(whole), len(viewed))
			}
			for i := range whole {
				if policy[i] != "" {
					t.Logf("signature %d: policy %q (whole header: %v)", i, policy[i], whole[i].Err)
					continue
				}
				if fmt.Sprint(whole[i].Err) != fmt.Sprint(viewed[i].Err) {
					t.Errorf("signature %d: %v on the whole header, %v on the view", i, whole[i].Err, viewed[i].Err)
				}
			}
			t.Logf("%d fields, view %d; results %v", len(fields), len(view), errs(whole))
		})
	}
}

func errs(vs []*dkim.Verification) []string {
	var out []string
	for _, v := range vs {
		out = append(out, fmt.Sprint(v.Err))
	}
	return out
}

// The usual field names cost no allocation (strings.ToUpper's copy, about
// ten per verified message before commonFoldKeys).
func TestFoldKeyCommonNamesAllocate(t *testing.T) {
	for _, n := range []string{"From", "Subject", "Message-ID", "dkim-signature", "Content-Type"} {
		if a := testing.AllocsPerRun(100, func() { foldKey(n) }); a != 0 {
			t.Errorf("foldKey(%q): %v allocations", n, a)
		}
	}
}
