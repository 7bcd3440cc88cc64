package trust

import (
	"bytes"
	"context"
	"fmt"
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
	t.Helper()
	key, _ := dkimtest.RSA(t, 0)
	c := "simple/simple"
	if relaxed {
		c = "relaxed/relaxed"
	}
	f := signField(t, msg, key, sigSpec{
		name:       "DKIM-Signature",
		tags:       [][2]string{{"v", "1"}, {"a", "rsa-sha256"}, {"c", c}, {"d", "cand.test"}, {"s", "sel"}},
		headerKeys: append([]string{"References"}, signedHeaders...),
		relaxed:    relaxed,
		bodyLimit:  -1,
	})
	return prepend(msg, f)
}

// A header field folded over thousands of short lines must cost about what
// the same bytes on one line cost: go-msgauth's header reader appends each
// continuation line to the field's string, copying the whole field every
// time (quadratic: seconds of CPU for 1 MiB in 20k lines, on a message any
// candidate holding one thread token can send).
func TestVerifyManyFoldedLinesIsLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("times 1 MiB headers")
	}
	_, rec := dkimtest.RSA(t, 0)
	for _, relaxed := range []bool{true, false} {
		t.Run(fmt.Sprintf("relaxed=%v", relaxed), func(t *testing.T) {
			e := newEnv(t)
			e.srv.SetTXT("sel._domainkey.cand.test", rec)
			ctx := context.Background()
			run := func(msg []byte) (Verdict, error, time.Duration) {
				start := time.Now()
				v, err := e.v.Verify(ctx, bytes.NewReader(msg))
				return v, err, time.Since(start)
			}
			flat := signRefs(t, bigReferences(17000, false), relaxed)
			folded := signRefs(t, bigReferences(17000, true), relaxed)
			t.Logf("header sizes: flat %d, folded %d bytes", len(flat), len(folded))
			// Warm the key cache and take the best of three for the baseline.
			var base time.Duration
			for i := 0; i < 3; i++ {
				v, err, d := run(flat)
				if err != nil || !v.Pass {
					t.Fatalf("flat: %v %+v", err, v.DKIM)
				}
				if i == 0 || d < base {
					base = d
				}
			}
			v, err, d := run(folded)
			t.Logf("verify: flat %v, folded %v (%.1fx)", base, d, float64(d)/float64(base))
			if err == nil && !v.Pass {
				t.Errorf("folded: %+v", v.DKIM)
			}
			if d > 10*base {
				t.Errorf("folded header took %v, %.0fx the %v of the same bytes unfolded (want < 10x)", d, float64(d)/float64(base), base)
			}
		})
	}
}
