package smtpd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// finalReplyTimeout bounds the write of a reply that ends a connection: a
// client that does not read must not hold a shutdown.
const finalReplyTimeout = 5 * time.Second

// errEnded is what reads return once this package has ended a connection.
// It wraps net.ErrClosed because that (or io.EOF) is what go-smtp closes a
// connection on without writing a reply of its own.
var errEnded = fmt.Errorf("smtpd: connection ended: %w", net.ErrClosed)

// capListener admits connections under the global and per-IP caps. A
// connection over a cap (or arriving while the server shuts down) is answered
// with a 421 and closed here; go-smtp never sees it.
type capListener struct {
	net.Listener
	s *Server
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := l.s.admit(c); tc != nil {
			return tc, nil
		}
	}
}

// ipKey is the unit of the per-IP cap: the IPv4 address, or the /64 of an
// IPv6 address (one IPv6 host usually owns a whole /64).
func ipKey(a net.Addr) string {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.String()
		}
	}
	if !ip.IsValid() {
		return a.String()
	}
	return ip.String()
}

func newSessionID() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// admit registers c, or refuses it with a 421 and returns nil.
func (s *Server) admit(c net.Conn) *trackedConn {
	id := newSessionID()
	key := ipKey(c.RemoteAddr())
	log := s.log.With("session", id)

	s.mu.Lock()
	var refuse, reason string
	switch {
	case s.draining:
		refuse, reason = replyShuttingDown, "shutting_down"
	case s.o.MaxConnections > 0 && len(s.conns) >= s.o.MaxConnections:
		refuse, reason = replyTooMany, "max_connections"
	case s.o.MaxConnectionsPerIP > 0 && s.perIP[key] >= s.o.MaxConnectionsPerIP:
		refuse, reason = replyTooMany, "max_connections_per_ip"
	}
	if refuse != "" {
		s.mu.Unlock()
		s.o.Observer.ConnRefused(reason)
		log.Warn("connection refused", "reason", reason, "remote_ip", key)
		// A fresh socket's send buffer is empty: this write does not block,
		// the deadline is only a guard.
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte(refuse))
		c.Close()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	tc := &trackedConn{Conn: c, s: s, id: id, key: key, log: log, ctx: ctx, cancel: cancel, opened: time.Now()}
	tc.replyTo = tc
	s.conns[tc] = struct{}{}
	s.perIP[key]++
	s.wg.Add(1)
	s.mu.Unlock()

	s.o.Observer.ConnOpened()
	log.Debug("connection opened", "remote_ip", key)
	return tc
}

// trackedConn is the net.Conn go-smtp reads and writes (directly, or under
// a tls.Conn after STARTTLS). It carries the session id and the per-connection
// context, releases its cap slots on Close, makes read errors sticky, decides
// how a connection ends outside a message body (endWith), and lets Shutdown
// end every session that is not inside DATA/BDAT at once.
type trackedConn struct {
	net.Conn
	s      *Server
	id     string
	key    string
	log    *slog.Logger
	ctx    context.Context // canceled when the connection is closed
	cancel context.CancelFunc
	opened time.Time

	// bodies counts the Session.Data calls running: a DATA or BDAT body
	// being received or committed. Shutdown lets those finish.
	bodies atomic.Int32
	// dataBody is set while readBody reads a DATA body on go-smtp's
	// goroutine: read errors then go back to it as they are, and reads
	// go through ahead.
	dataBody atomic.Bool
	// ahead holds what a read inside a DATA body took from the socket
	// beyond what go-smtp asked for (its 4 KiB buffer): the rest of a
	// message of a few KiB, returned by the next Reads without a
	// read(2) each. aheadBuf is its pooled buffer, given back once it is
	// empty. Only Read (go-smtp's goroutine) touches them.
	ahead    []byte
	aheadBuf *[]byte
	// session: 0 before EHLO/HELO, sessionPlain or sessionTLS after (the
	// last one wins: STARTTLS). Counted once, when the connection closes.
	session atomic.Int32
	// cut is set by Shutdown's deadline before it closes the socket: a
	// message in flight on it gets no reply.
	cut atomic.Bool

	mu           sync.Mutex
	readDeadline time.Time // as last set by go-smtp or the session
	kicked       bool      // Shutdown asked this connection to end
	rerr         error     // first read error, returned by every later Read
	dead         bool      // poisoned: no further transaction may run
	ended        bool      // endWith ran
	endReply     string    // the reply endWith sent ("" for none)
	// replyTo is what go-smtp writes replies to: this conn, the tls.Conn
	// over it once a session runs over TLS, nil while a TLS handshake is
	// under way (no reply can be written until the next EHLO).
	replyTo net.Conn

	// sockRead and sockWrite are the deadlines the socket has (under mu;
	// see keepDeadline).
	sockRead, sockWrite time.Time

	closeOnce sync.Once

	// Replies are held in wbuf and written when go-smtp next needs input
	// (Read), when the connection ends, or when wbuf grows large. go-smtp
	// flushes every reply line with its own write(2); holding them until
	// the next read gives a pipelining client all its replies in one
	// segment, as Postfix does, and never delays a reply a client waits
	// for, since the server only reads again after replying.
	wmu  sync.Mutex
	wbuf []byte
	werr error // first write error, returned by every later Write or flush
}

// wbufMax bounds the replies held back; a reply larger than that (a long
// multi-line EHLO answer cannot be) is written at once.
const wbufMax = 4096

func (c *trackedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if len(c.wbuf)+len(p) > wbufMax {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > wbufMax {
			if c.cut.Load() {
				c.werr = errEnded
				return 0, c.werr
			}
			n, err := c.Conn.Write(p)
			if err != nil {
				c.werr = err
			}
			return n, err
		}
	}
	if c.wbuf == nil {
		c.wbuf = make([]byte, 0, 512)
	}
	c.wbuf = append(c.wbuf, p...)
	return len(p), nil
}

// flush writes the held replies under the write deadline go-smtp set when
// it wrote them.
func (c *trackedConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *trackedConn) flushLocked() error {
	if c.werr != nil {
		return c.werr
	}
	if c.cut.Load() {
		// Shutdown's deadline cut this connection: it says nothing more,
		// even before its socket is closed (the message in flight is
		// logged with code 0 and not counted; see session.Data).
		c.werr = errEnded
		return c.werr
	}
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if err != nil {
		c.werr = err
	}
	return err
}

// Read makes every read error sticky. go-smtp resets the read deadline
// before each command, so without this a timed-out DATA or BDAT would be
// followed by go-smtp reading the rest of the message body as commands:
// after the first error, a connection only ever gets its reply and closes.
func (c *trackedConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.rerr != nil {
			err := c.rerr
			c.mu.Unlock()
			return 0, err
		}
		idle := c.kicked && c.bodies.Load() == 0
		c.mu.Unlock()
		if idle {
			// Shutdown, and not inside a message: a sender whose
			// transaction is cut before DATA retries (SPEC §12).
			c.endWith(replyShuttingDown)
			return 0, errEnded
		}

		if len(c.ahead) > 0 {
			// Nothing to wait for: the held replies wait for the next
			// read(2), as they do while go-smtp's own buffer serves it.
			return c.readAhead(p), nil
		}
		if err := c.flush(); err != nil {
			c.mu.Lock()
			if c.rerr == nil {
				c.rerr = err
			}
			c.mu.Unlock()
			return 0, err
		}
		n, err := c.readConn(p)
		if err == nil {
			return n, nil
		}
		if c.wokenByKick(err) {
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, c.readFailed(err)
	}
}

// readConn reads from the socket. Inside a DATA body it reads up to a
// pooled buffer's worth (readBufSize) and keeps what does not fit in p
// for the next Reads: a 4 KiB message with its header takes one read(2),
// not two, and a large one half as many. Outside a body it reads into p,
// so an idle connection holds no buffer while it waits.
func (c *trackedConn) readConn(p []byte) (int, error) {
	if !c.dataBody.Load() || len(p) >= readBufSize {
		return c.Conn.Read(p)
	}
	b := c.s.readBufs.get()
	n, err := c.Conn.Read(*b)
	c.ahead, c.aheadBuf = (*b)[:n], b
	return c.readAhead(p), err
}

// readAhead copies what ahead holds into p, and gives its buffer back
// once it is empty.
func (c *trackedConn) readAhead(p []byte) int {
	n := copy(p, c.ahead)
	c.ahead = c.ahead[n:]
	if len(c.ahead) == 0 {
		c.s.readBufs.put(c.aheadBuf)
		c.ahead, c.aheadBuf = nil, nil
	}
	return n
}

// wokenByKick reports whether err is the timeout kick provoked rather than
// a real one; inside a message the read then goes on under its own deadline.
func (c *trackedConn) wokenByKick(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ne net.Error
	if !c.kicked || !errors.As(err, &ne) || !ne.Timeout() ||
		(!c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline)) {
		return false
	}
	if c.bodies.Load() > 0 {
		c.sockRead = c.readDeadline
		c.Conn.SetReadDeadline(c.readDeadline)
	}
	return true
}

// readFailed decides what a failed read means. In a DATA body the error
// goes back to readBody, which turns it into the reply. Anywhere else (a
// command, a BDAT chunk, a TLS handshake) the connection ends here: go-smtp
// would answer a timeout in a BDAT chunk with "554 5.0.0" and the error's
// text, and take a client that went away in the middle of a chunk for the
// end of the chunk (io.Copy ends at EOF without error), delivering what
// arrived. So a timeout gets a 421, anything else a silent close, and
// go-smtp only sees errEnded.
func (c *trackedConn) readFailed(err error) error {
	c.mu.Lock()
	if c.rerr != nil { // endWith ran meanwhile (Mail while draining)
		err = c.rerr
		c.mu.Unlock()
		return err
	}
	if c.dataBody.Load() {
		c.rerr = errEnded // after this error, go-smtp's drain and next command end quietly
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	var ne net.Error
	switch {
	case !errors.As(err, &ne) || !ne.Timeout():
		c.endWith("")
	case c.bodies.Load() > 0: // between or inside BDAT chunks
		c.endWith(replyBDATTimeout)
	default:
		c.endWith(replyIdleTimeout)
	}
	return errEnded
}

// endWith ends the connection on go-smtp's goroutine (from a Read or a
// session callback). It sends reply ("" for none) as the last thing the
// client gets, through TLS when the session runs over it, then shuts the
// sending side (TLS close_notify, TCP FIN), so that nothing go-smtp may
// still write reaches the client, and every later read returns errEnded,
// on which go-smtp closes the connection quietly.
func (c *trackedConn) endWith(reply string) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	if c.replyTo != nil { // mid TLS handshake nothing can be said (below)
		c.endReply = reply
	}
	if c.rerr == nil {
		c.rerr = errEnded
	}
	to := c.replyTo
	c.mu.Unlock()

	if to == nil {
		reply = "" // mid TLS handshake: nothing can be said
	}
	c.log.Debug("ending connection", "reply", strings.TrimSpace(reply))
	if reply != "" {
		to.SetWriteDeadline(time.Now().Add(finalReplyTimeout))
		io.WriteString(to, reply)
	}
	if tc, ok := to.(*tls.Conn); ok {
		tc.CloseWrite() // sends close_notify; later writes through TLS fail
	}
	c.wmu.Lock()
	c.flushLocked()
	if c.werr == nil {
		c.werr = errEnded
	}
	c.wmu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// endedWith reports whether reads on the connection have failed (the
// client went away, a timeout, or endWith ran) and the reply endWith sent
// as the connection's last ("" for none).
func (c *trackedConn) endedWith() (failed bool, reply string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rerr != nil, c.endReply
}

func (c *trackedConn) setReplyTo(w net.Conn) {
	c.mu.Lock()
	c.replyTo = w
	c.mu.Unlock()
}

// stopReading makes every later read fail: the DATA reader stopped before
// go-smtp's end of data, and go-smtp's drain must not wait for more.
func (c *trackedConn) stopReading() {
	c.mu.Lock()
	if c.rerr == nil {
		c.rerr = errEnded
	}
	c.mu.Unlock()
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	if keepDeadline(c.sockRead, t) {
		return nil
	}
	c.sockRead = withSlack(t)
	return c.Conn.SetReadDeadline(c.sockRead)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.flushBefore(t)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	c.sockRead, c.sockWrite = t, t
	return c.Conn.SetDeadline(t)
}

func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	c.flushBefore(t)
	c.mu.Lock()
	defer c.mu.Unlock()
	if keepDeadline(c.sockWrite, t) {
		return nil
	}
	c.sockWrite = withSlack(t)
	return c.Conn.SetWriteDeadline(c.sockWrite)
}

// keepDeadline reports whether a socket whose deadline is cur may keep it
// when t is asked for: cur is not earlier than t and later by no more than
// the slack withSlack adds, so the socket times out at most a sixteenth of
// the timeout late and never early (RFC 5321 4.5.3.2 sets the minimum
// timeouts; a 5 minute command timeout ends a session after 5 to 5 min
// 19 s). go-smtp sets a deadline before every command and every reply,
// each a runtime timer update under a lock (4 % of the discard path); a
// busy session now moves it about once per sixteenth of the timeout.
// An earlier deadline, none, or one from none is always set.
func keepDeadline(cur, t time.Time) bool {
	if cur.IsZero() || t.IsZero() || cur.Before(t) {
		return false
	}
	return cur.Sub(t) <= time.Until(t)/16
}

// withSlack is the socket deadline set for t: a sixteenth of the time
// until t later, so that the deadlines asked for in the next sixteenth
// of the timeout keep it. A deadline now or past (a kick, a close) is set
// as it is.
func withSlack(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	if d := time.Until(t); d > 0 {
		return t.Add(d / 16)
	}
	return t
}

// flushBefore writes the held replies before a write deadline that has
// already passed takes effect: they were written before it was set. A
// tls.Conn closing sends close_notify and then sets the deadline to now,
// which would otherwise lose the last reply (221, 421) and the alert.
func (c *trackedConn) flushBefore(t time.Time) {
	if !t.IsZero() && !t.After(time.Now()) {
		c.flush()
	}
}

// kick wakes a Read blocked on this connection so that a session outside a
// message notices the shutdown; one inside DATA/BDAT goes on reading.
func (c *trackedConn) kick() {
	c.mu.Lock()
	c.kicked = true
	c.sockRead = time.Unix(1, 0)
	c.Conn.SetReadDeadline(c.sockRead)
	c.mu.Unlock()
}

// poison ends the connection right after a reply has been written: no more
// bytes are read from or written to the client (the write side is shut now;
// go-smtp closes the rest when its next read fails), and the session
// refuses any command go-smtp may still find in its read buffer.
func (c *trackedConn) poison() {
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
	c.endWith("")
}

// Values of trackedConn.session.
const (
	sessionPlain = 1
	sessionTLS   = 2
)

// sessionStarted records an EHLO/HELO that started a session (again after
// STARTTLS, with tls true).
func (c *trackedConn) sessionStarted(tls bool) {
	st := int32(sessionPlain)
	if tls {
		st = sessionTLS
	}
	c.session.Store(st)
}

// wasCut reports whether Shutdown's deadline closed this connection.
func (c *trackedConn) wasCut() bool { return c.cut.Load() }

func (c *trackedConn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

func (c *trackedConn) Close() error {
	c.flush() // the last reply (221, 421 ...); a dead peer's error is moot
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.cancel()
		c.s.release(c)
		if st := c.session.Load(); st != 0 {
			c.s.o.Observer.SessionEnded(st == sessionTLS)
		}
		c.s.o.Observer.ConnClosed()
		c.log.Debug("connection closed", "duration_ms", time.Since(c.opened).Milliseconds())
	})
	return err
}

func (s *Server) release(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.perIP[c.key]--; s.perIP[c.key] <= 0 {
		delete(s.perIP, c.key)
	}
	if len(s.recent) >= 1024 {
		clear(s.recent)
	}
	s.recent[c.RemoteAddr().String()] = c.log
	s.mu.Unlock()
	s.wg.Done()
}

// trackedOf finds our connection under whatever go-smtp holds (a tls.Conn
// after STARTTLS).
func trackedOf(c net.Conn) *trackedConn {
	for i := 0; i < 4 && c != nil; i++ {
		switch x := c.(type) {
		case *trackedConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
