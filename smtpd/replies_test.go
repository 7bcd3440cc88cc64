package smtpd

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Deliverer's Verdict is answered from the reply table; a full disk is
// 452 4.3.1; anything unknown is the 451 default.
func TestVerdictReplies(t *testing.T) {
	ts := startServer(t, Options{})
	for _, tc := range []struct {
		name string
		err  error
		want string // "code enhanced text"
	}{
		{"stored", &Verdict{Decision: "stored", Reason: "token"}, "250 2.0.0 OK: stored"},
		{"duplicate", &Verdict{Decision: "duplicate", Reason: "sent_copy"}, "250 2.0.0 OK: duplicate"},
		{"discarded", &Verdict{Decision: "discarded", Reason: "no_match"}, "250 2.0.0 OK: discarded"},
		{"quarantined", &Verdict{Decision: "quarantined", Reason: "dkim_fail"}, "250 2.0.0 OK: quarantined"},
		{"header too large", &Verdict{Decision: "rejected", Reason: "header_too_large", Detail: "1048576"},
			"552 5.3.4 Message header exceeds 1048576 bytes"},
		{"malformed header", &Verdict{Decision: "rejected", Reason: "malformed_header"}, "554 5.6.0 Malformed message header"},
		{"mime too deep", &Verdict{Decision: "rejected", Reason: "mime_too_deep", Detail: "20"}, "554 5.6.0 MIME nesting deeper than 20"},
		{"dkim", &Verdict{Decision: "rejected", Reason: "dkim_fail", Detail: "no valid signature"},
			"550 5.7.1 DKIM verification failed: no valid signature"},
		{"dkim unaligned", &Verdict{Decision: "rejected", Reason: "dkim_unaligned", Detail: "d=other.test"},
			"550 5.7.1 DKIM verification failed: d=other.test"},
		{"other refusal", &Verdict{Decision: "rejected", Reason: "new_reason", Detail: "ignored"}, "554 5.0.0 Message refused"},
		{"dns", &Verdict{Decision: "tempfail", Reason: "dkim_temperror"}, "451 4.4.3 Temporary DNS failure verifying DKIM, try again later"},
		{"local", &Verdict{Decision: "tempfail", Reason: "local_error"}, "451 4.3.0 Temporary local problem, try again later"},
		{"unknown decision", &Verdict{Decision: "maybe"}, "451 4.3.0 Temporary local problem, try again later"},
		{"full disk", fmt.Errorf("router: commit: %w", &os.PathError{Op: "write", Path: "/srv/data/raw/seg", Err: syscall.ENOSPC}),
			"452 4.3.1 Insufficient system storage, try again later"},
		{"other error", fmt.Errorf("router: commit: %w", syscall.EIO), "451 4.3.0 Temporary local problem, try again later"},
	} {
		ts.del.setFn(func(context.Context, *Delivery) error { return tc.err })
		r := ts.inData(t, inboundAddr)
		r.send(simpleBody + ".\r\n")
		code, text, _ := r.reply(5 * time.Second)
		if got := fmt.Sprintf("%d %s", code, text); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
		// DataReply (replay) gives the same.
		if r := DataReply(discardLogger(), tc.err); fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message) != tc.want {
			t.Errorf("%s: DataReply %+v, want %q", tc.name, r, tc.want)
		}
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "/srv/data") {
		t.Error("the full disk's error is not logged")
	}
}

func TestReplyForCoversEveryDecision(t *testing.T) {
	for _, d := range []string{"stored", "duplicate", "discarded", "quarantined", "rejected", "tempfail"} {
		r, ok := ReplyFor(Verdict{Decision: d, Reason: "some_reason"})
		if !ok || r.Code/100 == 3 || r.EnhancedCode[0] != r.Code/100 || r.Message == "" {
			t.Errorf("%s: %+v %v", d, r, ok)
		}
	}
	if _, ok := ReplyFor(Verdict{Decision: "other"}); ok {
		t.Error("unknown decision answered")
	}
}
