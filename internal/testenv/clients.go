package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// API calls the daemon's HTTP API with d.Token and returns the status and
// the decoded JSON object (nil when the body is not one).
func (d *Daemon) API(t testing.TB, method, path, body string) (int, map[string]any) {
	t.Helper()
	code, m, _ := Call(t, "http://"+d.HTTP, d.Token, "", method, path, body)
	return code, m
}

// Call is one HTTP API request to base with a bearer token and, if actor
// is set, X-Acting-User. It returns the status, the body decoded as a JSON
// object (nil when it is not one) and the raw body.
func Call(t testing.TB, base, token, actor, method, path, body string) (int, map[string]any, []byte) {
	t.Helper()
	code, _, raw := Do(t, base, token, actor, method, path, body)
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		m = nil
	}
	return code, m, raw
}

// Do is Call returning the response headers instead of decoding the body.
func Do(t testing.TB, base, token, actor, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if actor != "" {
		req.Header.Set("X-Acting-User", actor)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, raw
}

// SMTPServer is what ServeSMTP serves (an *smtpd.Server; an interface so
// that smtpd's own tests may use this package).
type SMTPServer interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// ServeSMTP serves srv on a new loopback listener until the test ends
// (then shuts it down, waiting 10 s at most) and returns its address.
func ServeSMTP(t testing.TB, srv SMTPServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// Envelope is one SMTP transaction's envelope and client name.
type Envelope struct {
	Helo, From string
	To         []string
}

// Send runs one transaction over a new connection to addr. It returns the
// reply to the end of DATA: its code and text (without the enhanced code
// for a 250). A failure before DATA's end fails the test.
func Send(t testing.TB, addr string, env Envelope, raw string) (int, string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	must(t, err)
	defer c.Close()
	must(t, c.Hello(env.Helo))
	code, text := SendOn(t, c, env, raw)
	c.Quit()
	return code, text
}

// SendOn runs one transaction on an open, greeted client c (see Send).
func SendOn(t testing.TB, c *smtp.Client, env Envelope, raw string) (int, string) {
	t.Helper()
	must(t, c.Mail(env.From, nil))
	for _, r := range env.To {
		must(t, c.Rcpt(r, nil))
	}
	w, err := c.Data()
	must(t, err)
	_, err = io.WriteString(w, raw)
	must(t, err)
	resp, err := w.CloseWithResponse()
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, se.Message
	}
	must(t, err)
	return 250, strings.TrimPrefix(resp.StatusText, "2.0.0 ")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
