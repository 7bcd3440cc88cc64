package smtpd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Replies written by the listener itself, before go-smtp sees a connection.
const (
	replyTooMany      = "421 4.7.0 Too many connections, try again later\r\n"
	replyShuttingDown = "421 4.3.2 Service shutting down, try again later\r\n"
)

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
// context, releases its cap slots on Close, makes read errors sticky, and lets
// Shutdown end idle sessions without cutting a transaction short.
type trackedConn struct {
	net.Conn
	s      *Server
	id     string
	key    string
	log    *slog.Logger
	ctx    context.Context // canceled when the connection is closed
	cancel context.CancelFunc
	opened time.Time

	// inTxn is true from an accepted MAIL until the transaction ends
	// (reply to DATA/BDAT LAST, RSET, or a new EHLO).
	inTxn atomic.Bool

	mu           sync.Mutex
	readDeadline time.Time // as last set by go-smtp or the session
	kicked       bool      // Shutdown asked this connection to end
	rerr         error     // first read error, returned by every later Read
	dead         bool      // poisoned: no further transaction may run

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

// errShuttingDown is what a Read returns once Shutdown has asked an idle
// session to end. It is a timeout so that go-smtp answers "421 4.4.2" and
// closes the connection (rather than closing silently).
var errShuttingDown error = shutdownError{}

type shutdownError struct{}

func (shutdownError) Error() string   { return "smtpd: server shutting down" }
func (shutdownError) Timeout() bool   { return true }
func (shutdownError) Temporary() bool { return true }

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
		if c.kicked && !c.inTxn.Load() {
			c.rerr = errShuttingDown
			c.mu.Unlock()
			return 0, errShuttingDown
		}
		c.mu.Unlock()

		if err := c.flush(); err != nil {
			c.mu.Lock()
			if c.rerr == nil {
				c.rerr = err
			}
			c.mu.Unlock()
			return 0, err
		}
		n, err := c.Conn.Read(p)
		if err == nil {
			return n, nil
		}
		c.mu.Lock()
		var ne net.Error
		if c.kicked && c.inTxn.Load() && errors.As(err, &ne) && ne.Timeout() &&
			(c.readDeadline.IsZero() || time.Now().Before(c.readDeadline)) {
			// Woken by Shutdown in the middle of a transaction: let it
			// finish under its own deadline.
			c.Conn.SetReadDeadline(c.readDeadline)
			c.mu.Unlock()
			if n > 0 {
				return n, nil
			}
			continue
		}
		c.rerr = err
		c.mu.Unlock()
		return n, err
	}
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.Conn.SetDeadline(t)
}

// kick wakes a Read blocked on this connection so that an idle session
// notices the shutdown; a session in a transaction goes on reading.
func (c *trackedConn) kick() {
	c.mu.Lock()
	c.kicked = true
	c.Conn.SetReadDeadline(time.Unix(1, 0))
	c.mu.Unlock()
}

// poison ends the connection right after a reply has been written: no more
// bytes are read from or written to the client (the write side gets a FIN
// now; go-smtp closes the rest when its next read fails), and the session
// refuses any command go-smtp may still find in its read buffer.
func (c *trackedConn) poison() {
	c.mu.Lock()
	c.dead = true
	if c.rerr == nil {
		c.rerr = net.ErrClosed // go-smtp ends the session quietly on this
	}
	c.mu.Unlock()
	c.flush()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Conn.Close()
	}
}

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
