package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/spool"
)

// Defaults used for zero Options fields (SPEC §4).
const (
	DefaultAddr                = "127.0.0.1:2525"
	DefaultHostname            = "localhost"
	DefaultMaxMessageBytes     = 25 << 20
	DefaultMaxRecipients       = 50
	DefaultMaxLineLength       = 1000
	DefaultCommandTimeout      = 5 * time.Minute
	DefaultDataTimeout         = 5 * time.Minute
	DefaultMaxConnections      = 1000
	DefaultMaxConnectionsPerIP = 50
	DefaultMaxHeaderBytes      = 1 << 20
)

// Options configures a Server. A zero field takes its Default value; a
// negative limit or timeout means "none" (not recommended outside tests).
type Options struct {
	Addr     string      // listen address for ListenAndServe
	Hostname string      // our name in the greeting
	TLS      *tls.Config // nil: no STARTTLS

	// MaxMessageBytes is the largest message accepted (552 5.3.4 beyond),
	// advertised as SIZE.
	MaxMessageBytes int64
	// MaxRecipients is the most RCPT TO commands one transaction may issue,
	// accepted or not (452 4.5.3 beyond).
	MaxRecipients int
	// MaxLineLength is the longest command or message line, CRLF included.
	// A longer line gets a 5xx and the connection is closed.
	MaxLineLength int
	// CommandTimeout is how long the server waits for a command, and for a
	// reply to be written.
	CommandTimeout time.Duration
	// DataTimeout is how long the server waits for more message data
	// during DATA (an inactivity timeout, re-armed as data arrives). BDAT
	// chunks are read under CommandTimeout, re-armed at each BDAT command.
	DataTimeout time.Duration

	MaxConnections      int // open connections in all
	MaxConnectionsPerIP int // per IPv4 address or IPv6 /64

	// MaxHeaderBytes is not enforced here (the router parses headers); it
	// is carried so one Options value describes the whole [smtp] section.
	MaxHeaderBytes int64

	SpoolDir string       // where large messages spill; "" = os.TempDir()
	Logger   *slog.Logger // nil: discard
	Observer Observer     // nil: none (metrics hooks, see Observer)
}

// Server is the inbound SMTP server. It is never an open relay: RCPT TO must
// be a tenant's inbound address.
type Server struct {
	o     Options
	rcpts Recipients
	d     Deliverer
	log   *slog.Logger
	srv   *smtp.Server

	tlsCfg atomic.Pointer[tls.Config]

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*trackedConn]struct{}
	perIP    map[string]int
	draining bool
	wg       sync.WaitGroup // one per admitted connection
	// recent maps the remote address of recently closed connections to
	// their session id, for go-smtp's log lines written after the close.
	recent map[string]*slog.Logger
	// readBufs are the sessions' buffers for reading a message body.
	readBufs readBufs
	// spoolBufs are the in-memory buffers of the messages' spools.
	spoolBufs sync.Pool
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0 // go-smtp and this package: 0 = no limit
	}
	return v
}

// New checks o and returns a Server that answers RCPT TO from rcpts and
// hands every complete message to d.
func New(o Options, rcpts Recipients, d Deliverer) (*Server, error) {
	if rcpts == nil || d == nil {
		return nil, errors.New("smtpd: Recipients and Deliverer are required")
	}
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.Hostname == "" {
		o.Hostname = DefaultHostname
	}
	if strings.ContainsAny(o.Hostname, " \t\r\n") {
		return nil, fmt.Errorf("smtpd: invalid hostname %q", o.Hostname)
	}
	o.MaxMessageBytes = orDefault(o.MaxMessageBytes, DefaultMaxMessageBytes)
	o.MaxRecipients = orDefault(o.MaxRecipients, DefaultMaxRecipients)
	o.MaxLineLength = orDefault(o.MaxLineLength, DefaultMaxLineLength)
	o.CommandTimeout = orDefault(o.CommandTimeout, DefaultCommandTimeout)
	o.DataTimeout = orDefault(o.DataTimeout, DefaultDataTimeout)
	o.MaxConnections = orDefault(o.MaxConnections, DefaultMaxConnections)
	o.MaxConnectionsPerIP = orDefault(o.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)
	o.MaxHeaderBytes = orDefault(o.MaxHeaderBytes, DefaultMaxHeaderBytes)
	if o.SpoolDir != "" {
		fi, err := os.Stat(o.SpoolDir)
		if err != nil {
			return nil, fmt.Errorf("smtpd: spool dir: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("smtpd: spool dir %s is not a directory", o.SpoolDir)
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}

	s := &Server{
		o:      o,
		rcpts:  rcpts,
		d:      d,
		log:    log,
		conns:  make(map[*trackedConn]struct{}),
		perIP:  make(map[string]int),
		recent: make(map[string]*slog.Logger),
	}

	srv := smtp.NewServer(backend{s})
	srv.Addr = o.Addr
	srv.Domain = o.Hostname
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.MaxRecipients = o.MaxRecipients
	srv.MaxLineLength = o.MaxLineLength
	srv.ReadTimeout = o.CommandTimeout
	srv.WriteTimeout = o.CommandTimeout
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = libLogger{s}
	if o.TLS != nil {
		s.tlsCfg.Store(o.TLS)
		// go-smtp reads Server.TLSConfig without synchronisation, so it is
		// set once here and never replaced: SetTLSConfig swaps what this
		// indirection returns instead.
		srv.TLSConfig = &tls.Config{
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				if tc := trackedOf(hello.Conn); tc != nil {
					// TLS from here on: a reply of ours in clear text
					// would break the stream; the next EHLO sets the
					// tls.Conn to write to.
					tc.setReplyTo(nil)
				}
				return s.tlsCfg.Load(), nil
			},
		}
	}
	s.srv = srv
	return s, nil
}

// Serve accepts connections on l until Shutdown. It returns nil after
// Shutdown, or the listener's error.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return smtp.ErrServerClosed
	}
	s.ln = l
	s.mu.Unlock()
	err := s.srv.Serve(&capListener{Listener: l, s: s})
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining && errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// ListenAndServe listens on Options.Addr and calls Serve.
func (s *Server) ListenAndServe() error {
	l, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Addr is the address being served, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// SetTLSConfig replaces the TLS configuration used by STARTTLS handshakes
// from now on (e.g. a reloaded certificate); established sessions are not
// affected. STARTTLS cannot be turned on or off at run time: on a Server
// created without TLS, or with a nil c, this logs an error and does nothing.
func (s *Server) SetTLSConfig(c *tls.Config) {
	if s.srv.TLSConfig == nil || c == nil {
		s.log.Error("SetTLSConfig ignored: STARTTLS can only be enabled or disabled by a restart")
		return
	}
	s.tlsCfg.Store(c)
}

// Shutdown stops accepting connections (new ones are refused), ends every
// session that is not inside a message (idle, or between commands,
// including after MAIL/RCPT) at once with "421 4.3.2", and lets the
// sessions inside DATA/BDAT (receiving the body or waiting for its commit)
// finish and get their reply, then ends them likewise (SPEC §12). It
// returns nil once all connections are closed, or ctx's error after closing
// the remaining ones by force when ctx ends first (their per-transaction
// contexts are canceled too).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	ln := s.ln
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	if ln != nil {
		ln.Close()
	}
	for _, c := range conns {
		c.kick()
	}

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}

	s.mu.Lock()
	conns = conns[:0]
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.log.Warn("shutdown deadline reached; closing connection")
		c.cut.Store(true) // before the cancel: a Deliverer returning on it sees the cut
		c.cancel()
		c.Conn.Close() // the raw socket; go-smtp closes its side as it unwinds
	}
	// Let the cut sessions unwind so their message lines and counts are
	// written before the process exits; bounded, since a Deliverer that
	// ignores its cancelled context must not hold the exit.
	select {
	case <-done:
	case <-time.After(cutGrace):
	}
	return ctx.Err()
}

// cutGrace is how long Shutdown waits, after cutting the sessions left at
// its deadline, for them to log and count what happened.
const cutGrace = time.Second

// newSpool returns a spool for one message, with a pooled in-memory
// buffer, and the function that closes it and pools its buffer again (a
// new 8 KiB buffer per message was a twentieth of the discard path's
// CPU). Delivery.Message is valid only until Deliver returns, so nothing
// reads the spool after that.
func (s *Server) newSpool() (*spool.Spool, func()) {
	sp := spool.New(s.o.SpoolDir, 0)
	b, _ := s.spoolBufs.Get().(*spoolBuf)
	if b != nil {
		sp.Reuse(b.mem)
	} else {
		b = &spoolBuf{}
	}
	return sp, func() {
		mem, _ := sp.Release()
		if mem == nil || cap(mem) > maxPooledSpool {
			return // a large message's memory is not kept
		}
		b.mem = mem
		s.spoolBufs.Put(b)
	}
}

// spoolBuf is a pooled spool buffer (a pointer, so that pooling it does
// not allocate).
type spoolBuf struct{ mem []byte }

// maxPooledSpool is the largest spool buffer kept for the next message.
const maxPooledSpool = 64 << 10

// libLogger sends go-smtp's own log lines (accept errors, connection errors,
// recovered panics in go-smtp itself) to our logger, with the session id
// when the line names the remote address of one of our connections (go-smtp
// writes "error handling ADDR: ..." and "panic serving ADDR: ...").
type libLogger struct{ s *Server }

func (l libLogger) Printf(format string, v ...any) { l.s.logLib(fmt.Sprintf(format, v...)) }
func (l libLogger) Println(v ...any)               { l.s.logLib(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (s *Server) logLib(msg string) {
	log := s.log
	s.mu.Lock()
	for c := range s.conns {
		if strings.Contains(msg, c.RemoteAddr().String()+":") {
			log = c.log
			break
		}
	}
	for addr, l := range s.recent {
		if log == s.log && strings.Contains(msg, addr+":") {
			log = l
		}
	}
	s.mu.Unlock()
	if strings.HasPrefix(msg, "panic") {
		log.Error("go-smtp", "msg", msg)
		return
	}
	log.Debug("go-smtp", "msg", msg)
}
