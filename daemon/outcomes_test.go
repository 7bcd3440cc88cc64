package daemon

import (
	"slices"
	"testing"

	"syncrelay/router"
	"syncrelay/smtpd"
)

// Outcomes is one list: every outcome of the router and of smtpd, once
// each, and each answered by smtpd's reply table with its reason token
// (so replay -smtp reads back what in-process replay prints).
func TestOutcomesOneList(t *testing.T) {
	all := Outcomes()
	for _, o := range append(router.Outcomes(), smtpd.Outcomes()...) {
		if !slices.Contains(all, o) {
			t.Errorf("%v missing", o)
		}
	}
	seen := map[[2]string]bool{}
	for _, o := range all {
		if seen[o] {
			t.Errorf("%v listed twice", o)
		}
		seen[o] = true
		r, ok := smtpd.ReplyFor(smtpd.Verdict{Decision: o[0], Reason: o[1]})
		if !ok || smtpd.ReasonOf(r.Message) != o[1] {
			t.Errorf("%v: reply %+v (%v) does not carry its reason", o, r, ok)
		}
	}
}
