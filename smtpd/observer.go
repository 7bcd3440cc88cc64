package smtpd

// Observer receives the events of the SMTP front door, for metrics. Its
// methods are called synchronously on connection goroutines: they must be
// cheap and safe for concurrent use. Options.Observer nil means none.
type Observer interface {
	// ConnOpened: a connection was admitted (it gets the greeting).
	ConnOpened()
	// ConnClosed: an admitted connection ended.
	ConnClosed()
	// ConnRefused: a connection got a 421 from the listener and was
	// closed; reason is max_connections, max_connections_per_ip or
	// shutting_down.
	ConnRefused(reason string)
	// SessionEnded: a connection that started a session (EHLO/HELO)
	// closed; tls is its final state, so a session that upgraded with
	// STARTTLS counts once, as TLS.
	SessionEnded(tls bool)
	// Reply: the reply to MAIL, RCPT or DATA/BDAT (stage "mail", "rcpt"
	// or "data") after the error mapping, as the client sees it.
	Reply(stage string, code int)
	// Decision: a decision this package made itself about a message,
	// without the Deliverer (Outcomes: its refusals of a body, a spool
	// that cannot be written), once per message whose reply was sent.
	// The Deliverer's decisions are its own to count.
	Decision(decision, reason string)
}

type nopObserver struct{}

func (nopObserver) ConnOpened()             {}
func (nopObserver) ConnClosed()             {}
func (nopObserver) ConnRefused(string)      {}
func (nopObserver) SessionEnded(bool)       {}
func (nopObserver) Reply(string, int)       {}
func (nopObserver) Decision(string, string) {}
