package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Client is a minimal SMTP client for load: it pipelines MAIL/RCPT/DATA
// when the server offers PIPELINING (as Postfix does), and times the final
// "." separately from the body.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader
	bw         *bufio.Writer
	Timeout    time.Duration
	Pipelining bool
	Greeting   Reply
}

// Reply is one SMTP reply; Text is the text of its last line.
type Reply struct {
	Code int
	Text string
}

func (r Reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Text) }

// ReplyError is a non-success reply at some stage of a transaction.
type ReplyError struct {
	Stage string
	Reply
	// Closed is set when the connection is no longer usable (a 421, or
	// an error while resetting the transaction).
	Closed bool
}

func (e *ReplyError) Error() string { return e.Stage + ": " + e.Reply.String() }

// Dial connects, reads the greeting and says EHLO (no EHLO if helo is "").
func Dial(addr, helo string, timeout time.Duration) (*Client, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &Client{nc: nc, br: bufio.NewReaderSize(nc, 4096), bw: bufio.NewWriterSize(nc, 64<<10), Timeout: timeout}
	r, _, err := c.read()
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.Greeting = r
	if r.Code != 220 {
		nc.Close()
		return nil, &ReplyError{Stage: "greeting", Reply: r}
	}
	if helo == "" {
		return c, nil
	}
	if err := c.cmd("EHLO " + helo); err != nil {
		nc.Close()
		return nil, err
	}
	r, lines, err := c.read()
	if err != nil {
		nc.Close()
		return nil, err
	}
	if r.Code != 250 {
		nc.Close()
		return nil, &ReplyError{Stage: "ehlo", Reply: r}
	}
	for _, l := range lines {
		if strings.EqualFold(strings.TrimSpace(l), "PIPELINING") {
			c.Pipelining = true
		}
	}
	return c, nil
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.nc.Close() }

// Quit says QUIT (best effort) and closes.
func (c *Client) Quit() {
	c.nc.SetDeadline(time.Now().Add(time.Second))
	if c.cmd("QUIT") == nil {
		c.read()
	}
	c.nc.Close()
}

func (c *Client) cmd(line string) error {
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	c.nc.SetWriteDeadline(time.Now().Add(c.Timeout))
	return c.bw.Flush()
}

// read reads one (possibly multi-line) reply; lines are the texts of the
// lines after the first.
func (c *Client) read() (Reply, []string, error) {
	c.nc.SetReadDeadline(time.Now().Add(c.Timeout))
	var lines []string
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && l == "" {
				err = io.ErrUnexpectedEOF
			}
			return Reply{}, nil, err
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 3 {
			return Reply{}, nil, fmt.Errorf("malformed reply %q", l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil {
			return Reply{}, nil, fmt.Errorf("malformed reply %q", l)
		}
		text := ""
		if len(l) > 4 {
			text = l[4:]
		}
		if len(l) > 3 && l[3] == '-' {
			lines = append(lines, text)
			continue
		}
		if len(lines) > 0 {
			lines = lines[1:] // the first line is the greeting/hostname
			lines = append(lines, text)
		}
		return Reply{Code: code, Text: text}, lines, nil
	}
}

// Send runs one transaction. It returns the reply to the final "." and the
// time from writing the "." to reading that reply. An error is either a
// *ReplyError (the transaction was refused before DATA completed; the
// connection is still usable unless the code is 421) or an I/O error (the
// connection is unusable).
func (c *Client) Send(from, rcpt string, m *Message) (Reply, time.Duration, error) {
	mail, rc := "MAIL FROM:<"+from+">", "RCPT TO:<"+rcpt+">"
	var replies [3]Reply
	if c.Pipelining {
		c.bw.WriteString(mail + "\r\n" + rc + "\r\n" + "DATA\r\n")
		c.nc.SetWriteDeadline(time.Now().Add(c.Timeout))
		if err := c.bw.Flush(); err != nil {
			return Reply{}, 0, err
		}
		for i := range replies {
			r, _, err := c.read()
			if err != nil {
				return Reply{}, 0, err
			}
			replies[i] = r
		}
	} else {
		for i, line := range []string{mail, rc, "DATA"} {
			if err := c.cmd(line); err != nil {
				return Reply{}, 0, err
			}
			r, _, err := c.read()
			if err != nil {
				return Reply{}, 0, err
			}
			replies[i] = r
			if r.Code/100 != 2 {
				break
			}
		}
	}
	for i, stage := range []string{"mail", "rcpt"} {
		if replies[i].Code/100 != 2 {
			if replies[2].Code == 354 {
				// A server that takes DATA after a refused RCPT: send an
				// empty message and ignore its reply.
				if err := c.cmd("."); err != nil {
					return Reply{}, 0, err
				}
				if _, _, err := c.read(); err != nil {
					return Reply{}, 0, err
				}
			}
			err := c.reset(replies[i].Code)
			return replies[i], 0, &ReplyError{Stage: stage, Reply: replies[i], Closed: err != nil}
		}
	}
	if replies[2].Code != 354 {
		err := c.reset(replies[2].Code)
		return replies[2], 0, &ReplyError{Stage: "data", Reply: replies[2], Closed: err != nil}
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.Timeout))
	if _, err := m.WriteTo(c.bw); err != nil {
		return Reply{}, 0, err
	}
	// The message's tail (at most the 64 KiB buffer: a large message has
	// mostly gone out already) is written together with the ".": one
	// syscall less per message for the load tool, and writing 64 KiB to a
	// loopback socket takes microseconds of the measured time.
	start := time.Now()
	if err := c.cmd("."); err != nil {
		return Reply{}, 0, err
	}
	r, _, err := c.read()
	lat := time.Since(start)
	if err != nil {
		return Reply{}, 0, err
	}
	return r, lat, nil
}

// reset sends RSET after a refused command unless the server is closing.
func (c *Client) reset(code int) error {
	if code == 421 {
		return fmt.Errorf("server closing: %d", code)
	}
	if err := c.cmd("RSET"); err != nil {
		return err
	}
	_, _, err := c.read()
	return err
}
