package smtpd

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"
)

func reply(r smtp.SMTPError) *smtp.SMTPError { return &r }

// panicError is what a recovered panic in a callback becomes.
type panicError struct {
	val   any
	stack []byte
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.val) }

// recoverTo turns a panic into *errp = *panicError. Use as
// defer recoverTo(&err).
func recoverTo(errp *error) {
	if v := recover(); v != nil {
		*errp = &panicError{val: v, stack: debug.Stack()}
	}
}

// Stages of a transaction, for mapError and the logs.
const (
	stageMail = "mail"
	stageRcpt = "rcpt"
	stageData = "data"
)

// mapError is the one place where an error from a callback becomes the
// SMTP reply (see the package documentation):
//
//   - nil stays nil: go-smtp answers 250;
//   - an *smtp.SMTPError (exactly that type, not wrapped) is a deliberate
//     reply and is sent as is, after sanitizing: its code must be 2xx, 4xx
//     or 5xx (4xx or 5xx for MAIL and RCPT, where go-smtp treats any error
//     as a refusal), its enhanced code must be of the same class (or it
//     becomes X.0.0), and its text loses control characters;
//   - a *Verdict (a Deliverer's decision) is answered from the reply
//     table (ReplyFor, replies.go), then treated as that SMTPError;
//   - an error that is a full disk (syscall.ENOSPC, from the spool or the
//     store) is logged and answered "452 4.3.1 Insufficient system
//     storage, try again later";
//   - anything else, including a recovered panic, is an internal error:
//     it is logged with the session id and answered "451 4.3.0 Temporary
//     local problem, try again later", so the sender retries and no
//     internal text reaches the client.
//
// It is never handed anything else: go-smtp itself answers a non-SMTPError
// from Data with a permanent 554 that includes the error text.
func mapError(log *slog.Logger, stage string, err error) error {
	if err == nil {
		return nil
	}
	if v, ok := err.(*Verdict); ok {
		r, known := ReplyFor(*v)
		if !known {
			log.Error("unknown verdict; answering 451", "stage", stage, "decision", v.Decision, "reason", v.Reason)
			return reply(replyTempLocal)
		}
		return sanitized(log, stage, &r)
	}
	if se, ok := err.(*smtp.SMTPError); ok {
		return sanitized(log, stage, se)
	}
	if p, ok := err.(*panicError); ok {
		log.Error("panic in callback; answering 451",
			"stage", stage, "panic", fmt.Sprint(p.val), "stack", string(p.stack))
		return reply(replyTempLocal)
	}
	if errors.Is(err, syscall.ENOSPC) {
		log.Error("disk full; answering 452", "stage", stage, "err", err.Error())
		return reply(replyNoSpace)
	}
	log.Error("internal error; answering 451", "stage", stage, "err", err.Error())
	return reply(replyTempLocal)
}

// DataReply is the reply to DATA when the Deliverer returns err, as
// mapError makes it (for replay, which runs the Deliverer without a
// session); log gets what mapError logs.
func DataReply(log *slog.Logger, err error) *smtp.SMTPError {
	if r, ok := mapError(log, stageData, err).(*smtp.SMTPError); ok {
		return r
	}
	return reply(replyOK)
}

// sanitized is se made safe to send (sanitize), or 451 when it is not usable.
func sanitized(log *slog.Logger, stage string, se *smtp.SMTPError) *smtp.SMTPError {
	if r, ok := sanitize(se, stage); ok {
		return r
	}
	log.Error("callback returned an unusable SMTP reply; answering 451",
		"stage", stage, "code", se.Code)
	return reply(replyTempLocal)
}

func sanitize(se *smtp.SMTPError, stage string) (*smtp.SMTPError, bool) {
	class := se.Code / 100
	switch {
	case se.Code < 200 || se.Code > 599:
		return nil, false
	case class == 4 || class == 5:
	case class == 2 && stage == stageData:
	default:
		return nil, false
	}
	r := &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode}
	ec := se.EnhancedCode
	if ec[0] != class || ec[1] < 0 || ec[1] > 999 || ec[2] < 0 || ec[2] > 999 {
		r.EnhancedCode = smtp.EnhancedCodeNotSet // go-smtp writes X.0.0
	}
	lines := strings.Split(se.Message, "\n")
	if len(lines) > 10 {
		lines = lines[:10]
	}
	for i, l := range lines {
		l = strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, l)
		if len(l) > 400 {
			l = strings.ToValidUTF8(l[:400], "")
		}
		lines[i] = l
	}
	r.Message = strings.TrimSpace(strings.Join(lines, "\n"))
	if r.Message == "" {
		switch class {
		case 2:
			r.Message = "OK"
		case 4:
			r.Message = "Try again later"
		default:
			r.Message = "Rejected"
		}
	}
	return r, true
}

// replyCode is the code the client will see for err after mapError.
func replyCode(err error) int {
	if err == nil {
		return 250
	}
	if se, ok := err.(*smtp.SMTPError); ok {
		return se.Code
	}
	return 0
}
