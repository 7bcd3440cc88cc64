package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/spool"
)

// Recipients says which RCPT TO addresses are ours: a tenant's inbound
// address. addr is lowercased. An error is an internal problem (451).
type Recipients interface {
	InboundTenant(ctx context.Context, addr string) (tenant string, ok bool, err error)
}

// Delivery is one accepted transaction handed to the Deliverer after DATA
// was read in full and passed the wire checks.
type Delivery struct {
	SessionID string
	Remote    net.Addr
	Helo      string
	TLS       bool
	MailFrom  string   // as given ("" for the null reverse-path)
	Rcpts     []string // accepted recipients, lowercased, without duplicates
	Tenants   []string // parallel to Rcpts
	// Message is the message as received (dot-unstuffed, CRLF line
	// endings). It is valid only until Deliver returns; the server closes
	// it then.
	Message  *spool.Spool
	Received time.Time
	// LogArgs, set by the Deliverer, are key-value pairs added to the
	// session's "message" log line (what was decided, and why: the
	// router's Outcome.Log).
	LogArgs []any
}

// Deliverer decides and (for kept mail) durably commits one message. Return
// nil for "250 2.0.0 OK"; a *Verdict for a decision, answered from the
// reply table (replies.go); an *smtp.SMTPError (unwrapped) for any other
// deliberate reply, any code including 250 with a custom text; any other
// error becomes "451 4.3.0 Temporary local problem, try again later" (452
// 4.3.1 for a full disk) and is logged with the session id. A panic is
// recovered and treated likewise. ctx is canceled when the connection ends.
type Deliverer interface {
	Deliver(ctx context.Context, d *Delivery) error
}

type backend struct{ s *Server }

// NewSession is called by go-smtp at each EHLO/HELO that starts a session:
// the first one, and the first one after STARTTLS.
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	nc := c.Conn()
	tc := trackedOf(nc)
	if tc != nil && tc.isDead() {
		return nil, reply(replyAborted)
	}
	ss := &session{s: s, conn: c, nc: nc, tc: tc, remote: nc.RemoteAddr()}
	if tc != nil {
		ss.id, ss.log, ss.connCtx = tc.id, tc.log, tc.ctx
		tc.setReplyTo(nc) // the tls.Conn after STARTTLS
	} else { // not through our listener; cannot happen via Serve
		ss.id = newSessionID()
		ss.log = s.log.With("session", ss.id)
		ss.connCtx = context.Background()
	}
	st, isTLS := c.TLSConnectionState()
	if tc != nil {
		// Counted when the connection ends, by its final state: a session
		// that upgrades with STARTTLS is one session, over TLS.
		tc.sessionStarted(isTLS)
	}
	if isTLS {
		ss.tls = true
		ss.log.Debug("session", "tls", true, "tls_version", tls.VersionName(st.Version))
	} else {
		ss.log.Debug("session", "tls", false)
	}
	return ss, nil
}

type session struct {
	s       *Server
	conn    *smtp.Conn
	nc      net.Conn // what go-smtp reads: trackedConn, or tls.Conn over it
	tc      *trackedConn
	id      string
	log     *slog.Logger
	connCtx context.Context
	remote  net.Addr
	tls     bool

	mu       sync.Mutex // go-smtp calls Data on its own goroutine for BDAT
	active   bool       // a transaction is open (MAIL accepted)
	ctx      context.Context
	cancel   context.CancelFunc
	from     string
	helo     string
	rcpts    []string
	tenants  []string
	attempts int // RCPT commands in this transaction
	// closeAfter: the connection is to be closed once the reply to this
	// DATA has been written (see Reset).
	closeAfter bool
}

// dead reports whether the connection was poisoned: any command go-smtp
// still finds in its buffer is refused (and its reply is never sent).
func (ss *session) dead() bool { return ss.tc != nil && ss.tc.isDead() }

func (ss *session) draining() bool {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	return ss.s.draining
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	var size int64
	if opts != nil {
		size = opts.Size
	}
	verr := ss.mail(from, size)
	err := mapError(ss.log, stageMail, verr)
	code := replyCode(err)
	ss.s.o.Observer.Reply(stageMail, code)
	if v, ok := verr.(*Verdict); ok {
		// A message refused before it is sent (SIZE= over the limit):
		// logged and counted as the refusal of its body would be, since
		// a sender that declares its size never sends it. go-smtp asks
		// us first (its patch 6), so this is the only count.
		ss.s.o.Observer.Decision(v.Decision, v.Reason)
		ss.log.Info("mail", "code", code, "decision", v.Decision, "reason", v.Reason, "size", size)
	} else if err != nil {
		ss.log.Debug("mail", "code", code)
	}
	return err
}

// mail begins a transaction; size is MAIL's SIZE= (0: none given).
func (ss *session) mail(from string, size int64) error {
	if ss.dead() {
		return reply(replyAborted)
	}
	if ss.draining() {
		// A MAIL go-smtp found in its buffer after Shutdown began (the
		// next transaction pipelined behind a message being committed):
		// end here rather than answer the rest of the pipeline.
		if ss.tc != nil {
			ss.tc.endWith(replyShuttingDown)
		}
		return reply(replyShutdown)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.active {
		return reply(replyNestedMail)
	}
	if max := ss.s.o.MaxMessageBytes; max > 0 && size > max {
		return refusal(reasonMessageTooLarge)
	}
	ss.active = true
	ss.ctx, ss.cancel = context.WithCancel(ss.connCtx)
	ss.from = from
	ss.helo = ss.conn.Hostname()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	err := mapError(ss.log, stageRcpt, ss.rcpt(to))
	ss.s.o.Observer.Reply(stageRcpt, replyCode(err))
	ss.log.Debug("rcpt", "code", replyCode(err))
	return err
}

func (ss *session) rcpt(to string) (err error) {
	defer recoverTo(&err)
	if ss.dead() {
		return reply(replyAborted)
	}
	addr := strings.ToLower(to)

	ss.mu.Lock()
	ss.attempts++
	max := ss.s.o.MaxRecipients
	if max > 0 && ss.attempts > max {
		ss.mu.Unlock()
		return reply(replyTooManyRcpts)
	}
	ctx := ss.ctx
	if ctx == nil {
		ctx = ss.connCtx
	}
	for _, r := range ss.rcpts {
		if r == addr { // a repeated RCPT: accept, keep one copy
			ss.mu.Unlock()
			return nil
		}
	}
	ss.mu.Unlock()

	tenant, ok, err := ss.s.rcpts.InboundTenant(ctx, addr)
	if err != nil {
		return err
	}
	if !ok {
		return reply(replyNoSuchRcpt)
	}
	ss.mu.Lock()
	ss.rcpts = append(ss.rcpts, addr)
	ss.tenants = append(ss.tenants, tenant)
	ss.mu.Unlock()
	return nil
}

// Data reads the message (DATA or BDAT), checks it, and hands it to the
// Deliverer. It always reads the message to its end first.
func (ss *session) Data(r io.Reader) error {
	start := time.Now()
	_, bdat := r.(*io.PipeReader)
	if ss.tc != nil {
		// Inside a message until the reply is decided: Shutdown waits.
		ss.tc.bodies.Add(1)
		defer ss.tc.bodies.Add(-1)
	}

	ss.mu.Lock()
	ctx, active := ss.ctx, ss.active
	d := &Delivery{
		SessionID: ss.id,
		Remote:    ss.remote,
		Helo:      ss.helo,
		TLS:       ss.tls,
		MailFrom:  ss.from,
		Rcpts:     append([]string(nil), ss.rcpts...),
		Tenants:   append([]string(nil), ss.tenants...),
	}
	ss.mu.Unlock()

	if ss.dead() {
		return reply(replyAborted)
	}
	sp, release := ss.s.newSpool()
	defer release()
	body, err := ss.readBody(r, bdat, sp)
	if body.close == closeBareEOL || body.close == closeLineTooLong {
		ss.mu.Lock()
		ss.closeAfter = true
		ss.mu.Unlock()
	}
	if body.decision != "" {
		// Decided before any Deliverer saw it: the message line still says
		// what was decided, as the Deliverer's lines do.
		d.LogArgs = append(d.LogArgs, "decision", body.decision, "reason", body.reason)
	}
	if err == nil && (!active || len(d.Rcpts) == 0) {
		err = reply(replyNoRcpts)
	}
	if err == nil {
		d.Message = sp
		d.Received = time.Now()
		err = ss.deliver(ctx, d)
	}
	code := 0
	if ss.tc != nil && ss.tc.wasCut() {
		// Shutdown's deadline closed the connection under this message
		// (while it arrived or was being committed): no reply reaches the
		// client, whatever go-smtp now writes into the closed socket, so
		// none is logged or counted, and a canceled commit is no internal
		// error. The sender retries; a message that did commit is then a
		// duplicate.
		body.close = closeShutdownDeadline
		err = reply(replyAborted)
	} else if body.reset {
		// go-smtp aborted the BDAT transfer and writes no reply to it: a
		// client that reset it (RSET, EHLO) got the reply to that command
		// and goes on; one that went away got nothing; a timeout got the
		// 421 trackedConn wrote, counted here. Not the 451 returned below,
		// which nobody sees.
		err = reply(replyAborted)
		body.close = closeNone
		if ss.tc != nil {
			if failed, last := ss.tc.endedWith(); last == replyBDATTimeout {
				code, body.close = replyDataTimeout.Code, closeDataTimeout
				ss.s.o.Observer.Reply(stageData, code)
			} else if failed {
				body.close = closeClientGone
			}
		}
	} else {
		if err = mapError(ss.log, stageData, err); err == nil {
			err = reply(replyOK) // go-smtp's own default says "queued"; we are not a queue
		}
		code = replyCode(err)
		ss.s.o.Observer.Reply(stageData, code)
		if body.decision != "" {
			ss.s.o.Observer.Decision(body.decision, body.reason)
		}
		if body.close == closeNone && ss.draining() {
			body.close = closeShutdown // the next read ends the session with 421 4.3.2
		}
	}
	ss.log.Info("message", append([]any{
		"code", code,
		"close", body.close,
		"bytes", body.size,
		"rcpts", len(d.Rcpts),
		"bdat", bdat,
		"tls", ss.tls,
		"duration_ms", time.Since(start).Milliseconds()}, d.LogArgs...)...)
	return err
}

func (ss *session) deliver(ctx context.Context, d *Delivery) (err error) {
	defer recoverTo(&err)
	return ss.s.d.Deliver(ctx, d)
}

// bodyRead is what readBody found, for the session's "message" line.
type bodyRead struct {
	size int64
	// decision and reason are what smtpd decided itself (Outcomes): a
	// refusal (message_too_large, bare_eol, line_too_long) or a spool
	// that could not be written; "" when the message goes to the
	// Deliverer, or never arrived whole (timeout, client gone).
	decision, reason string
	// close says why the connection ends after the reply (closeNone: it
	// does not, as far as the body goes).
	close string
	// reset: go-smtp aborted the BDAT transfer (RSET or EHLO between
	// chunks, the connection ending) and writes no reply to it.
	reset bool
}

// Reasons of the refusals smtpd makes itself, logged with decision
// "rejected" like the router's (they never reach a Deliverer).
const (
	decisionRejected      = "rejected"
	reasonMessageTooLarge = "message_too_large"
	reasonBareEOL         = "bare_eol"
	reasonLineTooLong     = "line_too_long"
	// A spool that cannot be written: the sender retries (451, or 452 for
	// a full disk), as for the router's own local errors.
	decisionTempfail = "tempfail"
	reasonLocalError = "local_error"
)

// refusal is the Verdict of a body this package refuses itself.
func refusal(reason string) *Verdict {
	return &Verdict{Decision: decisionRejected, Reason: reason}
}

// Values of the "close" field of the "message" log line: whether, and
// why, the connection ends after this message.
const (
	closeNone             = "none"              // the session goes on
	closeBareEOL          = "bare_eol"          // closed after the 550 (SMTP smuggling guard)
	closeLineTooLong      = "line_too_long"     // closed after the 554: the rest of the line cannot be framed
	closeDataTimeout      = "data_timeout"      // closed after the 421
	closeClientGone       = "client_gone"       // the client went away mid-message
	closeShutdown         = "shutdown"          // answered, then ended with 421 4.3.2 (SIGTERM)
	closeShutdownDeadline = "shutdown_deadline" // cut by Shutdown's deadline; no reply sent
)

// readBody reads the whole body into sp and returns what it found and nil,
// a reply for a rejected body, or an internal error. A DATA body with a
// bare CR or LF is read to the first CRLF.CRLF (RFC 5321 framing), but
// where a sending MTA thinks a malformed message ends is anybody's guess —
// that disagreement is what SMTP smuggling exploits — so the connection is
// closed after the reply and nothing after it is ever taken as a command.
// BDAT is framed by byte counts and stays open. A DATA line over go-smtp's
// line limit leaves its reader in error with the rest of the line unread:
// that connection is closed after the reply too (one reply, not go-smtp's
// extra "500 Too long line").
func (ss *session) readBody(r io.Reader, bdat bool, sp *spool.Spool) (res bodyRead, err error) {
	b := &bodyChecker{dst: sp, max: ss.s.o.MaxMessageBytes, maxLine: ss.s.o.MaxLineLength}
	res.close = closeNone
	defer func() { res.size = b.n }()
	if !bdat && ss.tc != nil {
		// A read error in a DATA body comes back here and becomes the
		// reply (trackedConn.readFailed).
		ss.tc.dataBody.Store(true)
		defer ss.tc.dataBody.Store(false)
	}
	buf := ss.s.readBufs.get()
	defer ss.s.readBufs.put(buf)
	if bdat {
		err = readDecoded(r, b, *buf, false, func() {})
	} else if err = readDecoded(r, b, *buf, true, ss.dataTimer()); err == nil && b.fakeEnd && ss.tc != nil {
		// We stopped before go-smtp's end of data: its drain must not
		// wait for one. The connection closes after the reply.
		ss.tc.stopReading()
	}
	if err != nil {
		var reason string
		reason, res.close = readErrorKind(err)
		res.reset = bdat && errors.Is(err, smtp.ErrDataReset)
		if reason != "" {
			res.decision, res.reason = decisionRejected, reason
		}
		return res, readError(err)
	}
	err = b.end()
	if v, ok := err.(*Verdict); ok {
		// A refusal; a line too long was read to its end: the session is
		// in step.
		res.decision, res.reason = v.Decision, v.Reason
		if v.Reason == reasonBareEOL && !bdat {
			res.close = closeBareEOL
		}
	} else if err != nil {
		res.decision, res.reason = decisionTempfail, reasonLocalError
	}
	return res, err
}

// dataTimer returns the function readDecoded calls before each read: it moves
// the read deadline DataTimeout ahead, at most a few times per timeout.
func (ss *session) dataTimer() func() {
	t := ss.s.o.DataTimeout
	if t <= 0 {
		return func() {}
	}
	step := t / 4
	var last time.Time
	return func() {
		now := time.Now()
		if now.Sub(last) >= step {
			last = now
			ss.nc.SetReadDeadline(now.Add(t))
		}
	}
}

// Reset ends the transaction: after the reply to DATA/BDAT, on RSET, on a
// new EHLO, and before STARTTLS.
func (ss *session) Reset() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closeAfter && ss.tc != nil {
		// go-smtp calls Reset right after writing the reply to DATA.
		ss.closeAfter = false
		ss.tc.poison()
	}
	if ss.cancel != nil {
		ss.cancel()
	}
	ss.active = false
	ss.ctx, ss.cancel = nil, nil
	ss.from, ss.helo = "", ""
	ss.rcpts, ss.tenants = nil, nil
	ss.attempts = 0
}

// Logout is called when the connection closes (and at STARTTLS).
func (ss *session) Logout() error {
	ss.Reset()
	return nil
}
