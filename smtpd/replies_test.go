package smtpd

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
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
		{"stored", &Verdict{Decision: "stored", Reason: "token"}, "250 2.0.0 OK: stored (reason=token)"},
		{"duplicate", &Verdict{Decision: "duplicate", Reason: "sent_copy"}, "250 2.0.0 OK: duplicate (reason=sent_copy)"},
		{"discarded", &Verdict{Decision: "discarded", Reason: "no_match"}, "250 2.0.0 OK: discarded (reason=no_match)"},
		{"quarantined", &Verdict{Decision: "quarantined", Reason: "dkim_fail"}, "250 2.0.0 OK: quarantined (reason=dkim_fail)"},
		{"header too large", &Verdict{Decision: "rejected", Reason: "header_too_large", Detail: "1048576"},
			"552 5.3.4 Message header exceeds 1048576 bytes (reason=header_too_large)"},
		{"malformed header", &Verdict{Decision: "rejected", Reason: "malformed_header"}, "554 5.6.0 Malformed message header (reason=malformed_header)"},
		{"mime too deep", &Verdict{Decision: "rejected", Reason: "mime_too_deep", Detail: "20"}, "554 5.6.0 MIME nesting deeper than 20 (reason=mime_too_deep)"},
		{"dkim", &Verdict{Decision: "rejected", Reason: "dkim_fail", Detail: "no valid signature"},
			"550 5.7.1 DKIM verification failed: no valid signature (reason=dkim_fail)"},
		{"dkim unaligned", &Verdict{Decision: "rejected", Reason: "dkim_unaligned", Detail: "d=other.test"},
			"550 5.7.1 DKIM verification failed: d=other.test (reason=dkim_unaligned)"},
		{"other refusal", &Verdict{Decision: "rejected", Reason: "new_reason", Detail: "ignored"}, "554 5.0.0 Message refused (reason=new_reason)"},
		{"dns", &Verdict{Decision: "tempfail", Reason: "dkim_temperror"}, "451 4.4.3 Temporary DNS failure verifying DKIM, try again later (reason=dkim_temperror)"},
		{"local", &Verdict{Decision: "tempfail", Reason: "local_error"}, "451 4.3.0 Temporary local problem, try again later (reason=local_error)"},
		// Only a machine token is echoed: nothing a caller put in Reason by
		// mistake (an error text, an address) reaches the sender.
		{"reason not a token", &Verdict{Decision: "discarded", Reason: "no match <a@b.test>\r\n"}, "250 2.0.0 OK: discarded"},
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

// ReasonOf reads back what ReplyFor wrote, whatever the reply's text.
func TestReasonOf(t *testing.T) {
	for _, d := range []string{"stored", "duplicate", "discarded", "quarantined", "rejected", "tempfail"} {
		for _, reason := range []string{"token", "dkim_fail", "header_too_large", "local_error"} {
			r, _ := ReplyFor(Verdict{Decision: d, Reason: reason, Detail: "20"})
			if got := ReasonOf(r.Message); got != reason {
				t.Errorf("%s/%s: ReasonOf(%q) = %q", d, reason, r.Message, got)
			}
		}
	}
	for _, text := range []string{"2.0.0 OK: queued as 12345", "Temporary local problem, try again later", "OK (reason=)", "x (reason=a b)", ""} {
		if got := ReasonOf(text); got != "" {
			t.Errorf("ReasonOf(%q) = %q, want none", text, got)
		}
	}
}

// ReplyCodes lists every code the reply table can give a DATA/BDAT, and
// the package's own replies at each stage (the harness checks every code
// a test sees against it too).
func TestReplyCodesCoverTheTable(t *testing.T) {
	codes := ReplyCodes()
	for _, row := range verdictReplies {
		if !slices.Contains(codes[stageData], row.reply.Code) {
			t.Errorf("table row %s/%s answers %d, not in ReplyCodes()[data] %v", row.decision, row.reason, row.reply.Code, codes[stageData])
		}
	}
	for stage, rs := range map[string][]smtp.SMTPError{
		stageMail: {replyTempLocal, replyAborted, replyShutdown, replyNestedMail, replyTooBig},
		stageRcpt: {replyTempLocal, replyNoSpace, replyAborted, replyNoSuchRcpt, replyTooManyRcpts},
		stageData: {replyOK, replyTempLocal, replyNoSpace, replyDataTimeout, replyAborted, replyNoRcpts, *smtp.ErrDataTooLarge},
	} {
		for _, r := range rs {
			if !slices.Contains(codes[stage], r.Code) {
				t.Errorf("%s: %d %s not in ReplyCodes() %v", stage, r.Code, r.Message, codes[stage])
			}
		}
	}
	for _, o := range Outcomes() {
		r, ok := ReplyFor(Verdict{Decision: o[0], Reason: o[1]})
		if !ok || ReasonOf(r.Message) != o[1] || !slices.Contains(codes[stageData], r.Code) {
			t.Errorf("own outcome %v: reply %+v (%v)", o, r, ok)
		}
	}
}

// CheckMessage (replay in-process) refuses what a session refuses, with
// the same Verdict.
func TestCheckMessage(t *testing.T) {
	for _, tc := range []struct {
		name, msg       string
		maxBytes        int64
		maxLine         int
		decision, reaso string
	}{
		{"fine", simpleBody, 0, 0, "", ""},
		{"too big", simpleBody, 20, 0, "rejected", "message_too_large"},
		{"long line", "Subject: x\r\n\r\n" + strings.Repeat("y", 1200) + "\r\n", 0, 0, "rejected", "line_too_long"},
		{"long line, no limit", "Subject: x\r\n\r\n" + strings.Repeat("y", 1200) + "\r\n", 0, -1, "", ""},
		{"bare LF", "Subject: x\r\n\r\nbare\nLF\r\n", 0, 0, "rejected", "bare_eol"},
	} {
		v := CheckMessage(strings.NewReader(tc.msg), tc.maxBytes, tc.maxLine)
		switch {
		case tc.decision == "" && v != nil:
			t.Errorf("%s: refused %+v", tc.name, v)
		case tc.decision != "" && (v == nil || v.Decision != tc.decision || v.Reason != tc.reaso):
			t.Errorf("%s: %+v, want %s/%s", tc.name, v, tc.decision, tc.reaso)
		}
	}
}
