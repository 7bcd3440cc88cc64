// Package smtpd is syncrelay's inbound SMTP server (SPEC §4), built on
// github.com/emersion/go-smtp. It is never an open relay: a RCPT TO is
// accepted only when Recipients names the tenant whose inbound address it
// is, and every complete message goes to one Deliverer, which decides and,
// for kept mail, commits it before answering.
//
// # Replies and the error mapping rule
//
// Every reply that depends on our own code — the MAIL, RCPT and DATA/BDAT
// callbacks — is produced by one function, mapError:
//
//   - nil means success: 250.
//   - A *Verdict (the decision of the Deliverer: stored, discarded,
//     rejected ...) is answered from the reply table in replies.go, the
//     one home of syncrelay's replies. Its text ends with the decision's
//     reason as a machine token, "250 2.0.0 OK: stored (reason=token)",
//     which ReasonOf reads back (replay -smtp).
//   - An *smtp.SMTPError, returned as that exact type (not wrapped), is a
//     deliberate reply and is sent as is: any 2xx/4xx/5xx code for DATA
//     (a Deliverer may answer 250 with its own text, 550 5.7.1 for a DKIM
//     failure, 451 4.4.3 for a DNS temporary failure...), 4xx/5xx for MAIL
//     and RCPT. Its enhanced code must be of the same class as the code,
//     else X.0.0 is sent; control characters are removed from its text.
//   - Any other error, and any panic in a callback, is an internal problem:
//     it is logged (error level, with the session id) and the client gets
//     "451 4.3.0 Temporary local problem, try again later" ("452 4.3.1
//     Insufficient system storage, try again later" when the error is
//     ENOSPC: the disk is full), never the
//     error's text. The sender keeps the message and retries: nothing we
//     could not handle is lost, and nothing internal leaks.
//
// This matters because go-smtp itself turns any non-SMTPError returned by
// Session.Data into a permanent "554 5.0.0 Error: transaction failed: <the
// error text>", which would both bounce mail we failed to store and show our
// internals. Nothing reaches go-smtp without passing through mapError.
//
// Replies chosen by this package (they also go through mapError):
//
//	550 5.1.1 No such recipient here         RCPT to an address that is not a tenant's
//	451 4.3.0 Temporary local problem, ...   Recipients lookup or Deliverer error, panic
//	452 4.3.1 Insufficient system storage... such an error that is ENOSPC (a full disk)
//	452 4.5.3 Too many recipients            more than MaxRecipients RCPT commands
//	552 5.3.4 Maximum message size exceeded (reason=message_too_large)
//	                                         body over MaxMessageBytes (DATA, or BDAT at the chunk that
//	                                         goes over: the chunk is read and discarded, the session goes
//	                                         on), or MAIL's SIZE= over it
//	550 5.6.0 Bare CR or LF not allowed (reason=bare_eol)
//	                                         see below; after DATA the connection closes
//	554 5.6.0 Message line too long (reason=line_too_long)
//	                                         a line over MaxLineLength; the connection closes
//	                                         (DATA: the rest of the line cannot be framed; one reply,
//	                                         not go-smtp's extra "500 Too long line")
//	421 4.4.2 Timeout waiting for message data, closing connection
//	421 4.4.2 Idle timeout, closing connection
//	421 4.3.2 Service shutting down, try again later
//	421 4.7.0 Too many connections, try again later   (written by the listener)
//
// # Message bodies and SMTP smuggling
//
// A message body may contain a CR only as part of CRLF and an LF only after
// a CR. A body with a bare CR or bare LF is read to its end and rejected
// with one 550 5.6.0; the Deliverer never sees it. DATA is framed on
// CRLF.CRLF exactly (RFC 5321 §4.5.2, with dot-unstuffing; "\n.\r\n" never
// ends a good message). A DATA body with a bare CR or LF ends at CRLF.CRLF
// or at the first "." line a lenient sender would end it with ("x\n.\r\n",
// "\r\n.\n", "\r.\r"; also a bare CR or LF at the start of a line, since
// go-smtp's decoder has removed any dot before it), whichever comes first,
// and is refused there. After
// rejecting such a DATA body the server closes the connection: where a
// malformed message ends is exactly what a sending MTA and we may disagree
// on (that disagreement is SMTP smuggling, e.g. "\r\r\n.\r\n"), so nothing
// after it is ever read as a command. BDAT bodies, framed by byte counts,
// get the same checks and the session goes on. DATA is decoded by a
// patched go-smtp (third_party/go-smtp): upstream's decoder drops the CR of
// a line starting ".\r"; see body.go.
//
// # Logging
//
// Every log line about a connection carries its random "session" id. Logs
// never contain envelope addresses, headers or bodies: only decisions,
// reply codes, sizes and timings. (The text of an internal error is logged
// as returned by the Recipients or Deliverer implementation, which must
// keep addresses out of its error messages.)
//
// Each DATA/BDAT gets one "message" line: "code" (the reply; 0 when none
// was sent, e.g. for a BDAT transfer the client reset with RSET or left),
// "close" (why the connection ends after it: none, bare_eol,
// line_too_long, data_timeout, client_gone, shutdown, shutdown_deadline),
// sizes and timings, and the Deliverer's LogArgs (its decision). A body
// this package refuses itself never reaches the Deliverer; its line carries
// decision "rejected" and reason message_too_large, bare_eol or
// line_too_long, like the Deliverer's refusals. These refusals are
// Verdicts answered from the reply table, so their replies end with the
// reason token too, and Observer.Decision reports them (with a spool that
// cannot be written, tempfail/local_error): Outcomes lists them all, and
// ReplyCodes every code Observer.Reply can report, for metrics that exist
// at 0 from start. A MAIL whose SIZE= is over MaxMessageBytes is refused
// the same way (552, reason message_too_large), logged as an info "mail"
// line with its decision and reason, and counted as a decision too: a
// sender that declares its size never sends the message.
//
// go-smtp enforces the size limit too, but its patched copy leaves every
// reply about it to this package: DATA's and BDAT's readers return
// ErrDataTooLarge past the limit (BDAT: at the chunk that goes over it,
// even the first), and MAIL's SIZE= reaches Mail (patches 5 and 6,
// third_party/go-smtp/SYNCRELAY.md). Each refusal is thus one reply,
// one line and one count.
//
// # Connections and shutdown
//
// The listener caps open connections globally and per IP (an IPv6 /64
// counts as one IP); over a cap a client gets 421 4.7.0 and is closed.
// After any read error or timeout, a connection gets its reply and is
// closed: go-smtp would otherwise reset the deadline and read what is left
// of a message body as commands. Outside a DATA body this package, not
// go-smtp, ends the connection (trackedConn.endWith): a timeout gets
// "421 4.4.2" (also inside a BDAT chunk, where go-smtp would answer 554 with
// the error's text), a client that goes away a silent close (go-smtp would
// take the end of the stream for the end of a BDAT chunk and deliver what
// arrived). Over TLS the last reply is sent, then close_notify.
//
// Shutdown refuses new connections and ends every session that is not
// inside DATA/BDAT (idle, or between commands, including after MAIL/RCPT)
// at once with "421 4.3.2 Service shutting down, try again later": its
// sender retries. A session receiving a message body or waiting for its
// commit finishes it and gets its reply, then the same 421. At the Shutdown
// deadline the rest are closed and their contexts canceled; a message cut
// there is logged with code 0 and close=shutdown_deadline (no reply reached
// the client, so none is counted either).
//
// Observer.SessionEnded counts a session once, when its connection closes,
// by its final state: a session upgraded with STARTTLS is one TLS session.
//
// Contexts: Recipients and the Deliverer get the transaction's context,
// canceled when the transaction ends (reply sent, RSET) or the connection is
// closed by the server. A client that disconnects while the Deliverer runs
// is not noticed until the reply is written: nobody reads the socket then.
package smtpd
