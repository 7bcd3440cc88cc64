package smtpd

import (
	"strings"

	"github.com/emersion/go-smtp"
)

// The replies of syncrelay's SMTP server, in one place: those this package
// chooses itself, and the table that turns a Deliverer's Verdict into a
// reply. Every one of them goes out through mapError (but for the raw
// ones at the end, written before or after go-smtp runs a session).

// Replies this package chooses itself.
var (
	replyOK        = smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK"}
	replyTempLocal = smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary local problem, try again later"}
	// A full disk (ENOSPC from the spool or the store): the sender retries
	// (RFC 3463 X.3.1 "mail system full").
	replyNoSpace = smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "Insufficient system storage, try again later"}
	replyNoSuchRcpt = smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "No such recipient here"}
	replyTooManyRcpts = smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients"}
	replyTooBig = smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Maximum message size exceeded"}
	// RFC 3463 has no code for bare line endings; X.6.0 "other or
	// undefined media error" is the registered code that fits a body
	// whose line structure is invalid. (5.6.11 is not in the IANA
	// registry of enhanced status codes.)
	replyBareEOL = smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Bare CR or LF not allowed"}
	// Same reasoning: RFC 5321 §4.5.3.1.6 line limit, a media error.
	replyLineTooLong = smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message line too long"}
	replyDataTimeout = smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout waiting for message data, closing connection"}
	replyAborted = smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0},
		Message: "Message transfer aborted"}
	replyShutdown = smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Service shutting down, try again later"}
	replyNestedMail = smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Nested MAIL command"}
	replyNoRcpts = smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "No valid recipients"}
)

// Verdict is what a Deliverer decided for a message. Returned (as a
// pointer) from Deliver, it is answered from the reply table (ReplyFor):
// the Deliverer decides, this package says it in SMTP.
type Verdict struct {
	Decision string // the router's: stored, duplicate, discarded, quarantined, rejected or tempfail
	Reason   string // e.g. "dkim_fail"; picks the reply of a refusal
	// Detail completes the reply text of some refusals in fixed words (the
	// DKIM failure, a limit); never internal detail.
	Detail string
}

func (v *Verdict) Error() string { return "smtpd: verdict " + v.Decision + " (" + v.Reason + ")" }

// verdictReply is one row of the table: a decision, and for refusals a
// reason ("" matches any), answered with reply. Its text is completed by
// the Verdict's Detail and suffix (detail), or by the decision's name
// (namesDecision: "OK: stored", which helps admins reading the sender's
// logs and replay -smtp, and tells the sender nothing its own forwarding
// server should not know). ReplyFor then appends the reason token.
type verdictReply struct {
	decision, reason string
	reply            smtp.SMTPError
	detail           bool
	suffix           string
	namesDecision    bool
}

var replyDKIMFailed = smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "DKIM verification failed: "}

// verdictReplies is the table, first match wins.
var verdictReplies = []verdictReply{
	{decision: "stored", reply: replyOK, namesDecision: true},
	{decision: "duplicate", reply: replyOK, namesDecision: true},
	{decision: "discarded", reply: replyOK, namesDecision: true},
	{decision: "quarantined", reply: replyOK, namesDecision: true},
	{decision: "rejected", reason: "header_too_large", reply: smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message header exceeds "}, detail: true, suffix: " bytes"},
	{decision: "rejected", reason: "malformed_header", reply: smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Malformed message header"}},
	{decision: "rejected", reason: "mime_too_deep", reply: smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "MIME nesting deeper than "}, detail: true},
	// dkim_fail, dkim_unaligned: the reply gives the reason in fixed
	// words; resolver addresses, zone file paths and Go errors stay in the
	// log.
	{decision: "rejected", reason: "dkim_fail", reply: replyDKIMFailed, detail: true},
	{decision: "rejected", reason: "dkim_unaligned", reply: replyDKIMFailed, detail: true},
	// Refusals of the body this package makes itself, before any
	// Deliverer (body.go): Verdicts too, so that their replies carry the
	// reason token like the Deliverer's.
	{decision: "rejected", reason: reasonMessageTooLarge, reply: replyTooBig},
	{decision: "rejected", reason: reasonBareEOL, reply: replyBareEOL},
	{decision: "rejected", reason: reasonLineTooLong, reply: replyLineTooLong},
	// A refusal this table does not name yet.
	{decision: "rejected", reply: smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 0, 0}, Message: "Message refused"}},
	{decision: "tempfail", reason: "dkim_temperror", reply: smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 3},
		Message: "Temporary DNS failure verifying DKIM, try again later"}},
	{decision: "tempfail", reply: replyTempLocal},
}

// ReplyFor returns the reply to v from the table; ok is false for a
// decision the table does not know (mapError answers that 451).
func ReplyFor(v Verdict) (r smtp.SMTPError, ok bool) {
	for i := range verdictReplies {
		row := &verdictReplies[i]
		if row.decision != v.Decision || (row.reason != "" && row.reason != v.Reason) {
			continue
		}
		r = row.reply
		switch {
		case row.namesDecision:
			r.Message += ": " + v.Decision
		case row.detail:
			r.Message += v.Detail + row.suffix
		}
		if isReasonToken(v.Reason) {
			r.Message += reasonPrefix + v.Reason + ")"
		}
		return r, true
	}
	return smtp.SMTPError{}, false
}

// Every reply from the table ends with the router's reason as a machine
// token, "(reason=dkim_fail)", so that replay -smtp (and an admin reading
// the forwarder's logs) gets the same reason as in-process replay: the
// human text alone cannot tell dkim_fail from dkim_unaligned, or a thread
// token from a Thread-Index. The tokens name only what the pipeline
// decided (SPEC §8's reasons), never anything about the message.
const reasonPrefix = " (reason="

// isReasonToken accepts what the router uses as reasons: lower-case
// letters, digits and underscores. Anything else is not echoed.
func isReasonToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// ReasonOf returns the reason token at the end of a reply text written by
// ReplyFor ("2.0.0 OK: stored (reason=token)" gives "token"), or "" when
// the text carries none (another server, or a reply this package chose
// itself).
func ReasonOf(text string) string {
	i := strings.LastIndex(text, reasonPrefix)
	if i < 0 || !strings.HasSuffix(text, ")") {
		return ""
	}
	tok := text[i+len(reasonPrefix) : len(text)-1]
	if !isReasonToken(tok) {
		return ""
	}
	return tok
}

// Outcomes lists the decisions this package makes itself about a message,
// without a Deliverer, and reports to Observer.Decision: the refusals of
// a body it reads (size, bare CR or LF, line length) and a spool that
// cannot be written (tempfail, as the router's own local errors). The
// daemon exports them at 0 from start with the router's outcomes.
func Outcomes() [][2]string {
	return [][2]string{
		{decisionRejected, reasonMessageTooLarge}, {decisionRejected, reasonBareEOL}, {decisionRejected, reasonLineTooLong},
		{decisionTempfail, reasonLocalError},
	}
}

// ReplyCodes lists, by stage ("mail", "rcpt", "data"), every code
// Observer.Reply can report when the Deliverer answers with Verdicts and
// errors only (as syncrelay's does): the replies above, the reply table,
// and the size limit (552 to MAIL's SIZE= and to DATA/BDAT, go-smtp's
// limit included: its patches 5 and 6 leave those replies to this
// package). syncrelay_smtp_replies_total exports them at 0 from start.
// (Replies go-smtp writes without calling this package, such as a syntax
// error, a command out of sequence, or a BDAT chunk pipelined after a
// refused one, are not counted.)
func ReplyCodes() map[string][]int {
	return map[string][]int{
		stageMail: {250, 421, 451, 503, 552},
		stageRcpt: {250, 451, 452, 550},
		stageData: {250, 421, 451, 452, 503, 550, 552, 554},
	}
}

// Replies written by this package itself rather than through go-smtp: by
// the listener before go-smtp sees a connection, and as the last reply of a
// connection that ends outside a message (trackedConn.endWith).
const (
	replyTooMany      = "421 4.7.0 Too many connections, try again later\r\n"
	replyShuttingDown = "421 4.3.2 Service shutting down, try again later\r\n"
	replyIdleTimeout  = "421 4.4.2 Idle timeout, closing connection\r\n"
	replyBDATTimeout  = "421 4.4.2 Timeout waiting for message data, closing connection\r\n"
)
