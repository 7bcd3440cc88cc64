package devmode

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

// The demo's fixed names, so the commands it prints afterwards work.
const (
	DemoTenant    = "acme"
	DemoUser      = "u-rita"
	DemoCandidate = "c-carl"
	DemoGrantor   = "u-hugo"
	demoGrantMail = "hugo@acme.test"
	demoUserMail  = "rita@acme.test"
	demoStranger  = "deals@shop.test"
)

// Demo is one run of the walkthrough against a ready `serve -dev`.
type Demo struct {
	State State
	Token string // an API bearer token
	// TokenHint is the shell words that give Token, for the closing
	// hints (e.g. "$(cat data/api-token)").
	TokenHint string
	Out       io.Writer

	http *http.Client
	step int
}

// Run drives the loop through the public API and SMTP as the ATS, the
// candidate and a stranger would, printing each step; it fails if the
// reply is not stored or the stranger's message not discarded.
func (d *Demo) Run(ctx context.Context) error {
	d.http = &http.Client{Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waitReady(wctx, "http://"+d.State.HTTP); err != nil {
		return fmt.Errorf("the dev daemon at %s does not answer (was it stopped?): %w", d.State.HTTP, err)
	}
	inbound, err := d.setup(ctx)
	if err != nil {
		return err
	}
	sent, err := d.send(ctx)
	if err != nil {
		return err
	}
	if err := d.reply(ctx, inbound, sent); err != nil {
		return err
	}
	if err := d.stranger(ctx, inbound); err != nil {
		return err
	}
	if err := d.timeline(ctx, sent); err != nil {
		return err
	}
	if err := d.sendFor(ctx); err != nil {
		return err
	}
	d.next()
	return nil
}

func (d *Demo) say(title string) {
	d.step++
	fmt.Fprintf(d.Out, "\n%d. %s\n", d.step, title)
}

func (d *Demo) show(format string, args ...any) { fmt.Fprintf(d.Out, "   "+format+"\n", args...) }

// setup creates (or, on a second run, finds) the tenant, the user with a
// connected grant and the candidate; it returns the inbound address.
func (d *Demo) setup(ctx context.Context) (string, error) {
	d.say("Create tenant " + DemoTenant + " (a Google Workspace company)")
	var ten struct {
		InboundAddress string `json:"inbound_address"`
	}
	if err := d.create(ctx, "/v1/tenants", "/v1/tenants/"+DemoTenant,
		`{"id":"`+DemoTenant+`","name":"Acme","domains":["acme.test"],"provider":"google"}`, &ten); err != nil {
		return "", err
	}
	d.show("inbound address: %s  (the Google routing rule copies mail here)", ten.InboundAddress)

	d.say("Create user " + DemoUser + " <" + demoUserMail + "> and candidate " + DemoCandidate + " <carl@" + d.State.CandidateDomain + ">")
	if err := d.create(ctx, "/v1/tenants/"+DemoTenant+"/users", "/v1/tenants/"+DemoTenant+"/users/"+DemoUser,
		`{"id":"`+DemoUser+`","email":"`+demoUserMail+`","name":"Rita","role":"team_member"}`, nil); err != nil {
		return "", err
	}
	if err := d.create(ctx, "/v1/tenants/"+DemoTenant+"/candidates", "/v1/tenants/"+DemoTenant+"/candidates/"+DemoCandidate,
		`{"id":"`+DemoCandidate+`","name":"Carl","emails":["carl@`+d.State.CandidateDomain+`"]}`, nil); err != nil {
		return "", err
	}
	d.show("ok")

	d.say("Connect Rita's mailbox (send-only Gmail grant)")
	if err := d.connect(ctx); err != nil {
		return "", err
	}
	return ten.InboundAddress, nil
}

// create POSTs body; when the object exists (a second run) it GETs it.
func (d *Demo) create(ctx context.Context, path, getPath, body string, out any) error {
	code, b, _, err := d.call(ctx, http.MethodPost, path, "", body)
	if err == nil && code == http.StatusConflict {
		code, b, _, err = d.call(ctx, http.MethodGet, getPath, "", "")
	}
	if err != nil {
		return err
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", path, code, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// connect plays the browser: /oauth/google/start, the stand-in's consent
// page (which approves at once) and the callback.
func (d *Demo) connect(ctx context.Context) error {
	code, b, h, err := d.call(ctx, http.MethodGet, "/oauth/google/start?tenant="+DemoTenant+"&user="+DemoUser, DemoUser, "")
	if err != nil {
		return err
	}
	if code != http.StatusFound {
		return fmt.Errorf("oauth start: HTTP %d: %s", code, b)
	}
	consent := h.Get("Location")
	d.show("GET /oauth/google/start -> consent page of the local Google stand-in")
	callback, err := d.follow(ctx, consent, http.StatusFound)
	if err != nil {
		return fmt.Errorf("consent: %w", err)
	}
	d.show("consent approved at once -> %s", strings.SplitN(callback, "?", 2)[0])
	if _, err := d.follow(ctx, callback, http.StatusOK); err != nil {
		return fmt.Errorf("oauth callback: %w", err)
	}
	d.show("grant stored (encrypted); Rita can send through syncrelay")
	return nil
}

// follow GETs a URL without credentials (a browser) and returns Location.
func (d *Demo) follow(ctx context.Context, u string, want int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return resp.Header.Get("Location"), nil
}

type sentMsg struct {
	MessageID         string `json:"message_id"`
	ThreadID          string `json:"thread_id"`
	Status            string `json:"status"`
	InternetMessageID string `json:"internet_message_id"`
	raw               []byte // as the Gmail stand-in received it
}

// send sends through the API as Rita and finds the message the Gmail
// stand-in recorded.
func (d *Demo) send(ctx context.Context) (*sentMsg, error) {
	d.say("Rita writes to Carl through the API (POST /v1/tenants/" + DemoTenant + "/messages)")
	code, b, _, err := d.call(ctx, http.MethodPost, "/v1/tenants/"+DemoTenant+"/messages", DemoUser,
		`{"candidate":"`+DemoCandidate+`","subject":"Interview on Tuesday?","text":"Hi Carl,\n\ndoes Tuesday at 10:00 work for you?\n\nRita","kind":"one_off"}`)
	if err != nil {
		return nil, err
	}
	var s sentMsg
	if code != http.StatusCreated || json.Unmarshal(b, &s) != nil || s.Status != "sent" {
		return nil, fmt.Errorf("send: HTTP %d: %s", code, b)
	}
	d.show("status %s, thread %s, message %s", s.Status, s.ThreadID, s.MessageID)
	d.show("Message-ID <%s>  (the thread token the routing rule matches)", s.InternetMessageID)
	if s.raw, err = d.recorded(ctx, s.InternetMessageID); err != nil {
		return nil, err
	}
	m, _ := mail.ReadMessage(bytes.NewReader(s.raw))
	d.show("the Gmail stand-in received it: From %s, To %s, Subject %q", m.Header.Get("From"), m.Header.Get("To"), m.Header.Get("Subject"))
	return &s, nil
}

// recorded returns the MIME the Gmail stand-in accepted with this
// Message-ID.
func (d *Demo) recorded(ctx context.Context, msgid string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.State.GoogleSentURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("Gmail stand-in: %w", err)
	}
	defer resp.Body.Close()
	var list []struct{ Raw []byte }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("Gmail stand-in: %w", err)
	}
	for _, s := range list {
		if m, err := mail.ReadMessage(bytes.NewReader(s.Raw)); err == nil && strings.Trim(m.Header.Get("Message-ID"), "<> ") == msgid {
			return s.Raw, nil
		}
	}
	return nil, fmt.Errorf("the Gmail stand-in recorded no message <%s>", msgid)
}

// reply has Carl answer the recorded message from his own domain, signed
// with its DKIM key, and delivers the copy Google's routing rule would
// forward to the inbound address.
func (d *Demo) reply(ctx context.Context, inbound string, s *sentMsg) error {
	d.say("Carl replies; Rita's routing rule forwards a copy over SMTP to " + inbound)
	orig, err := mail.ReadMessage(bytes.NewReader(s.raw))
	if err != nil {
		return fmt.Errorf("recorded message: %w", err)
	}
	refs := strings.TrimSpace(orig.Header.Get("References") + " <" + s.InternetMessageID + ">")
	from := "carl@" + d.State.CandidateDomain
	raw := crlf(fmt.Sprintf("From: Carl <%s>\nTo: %s\nSubject: Re: %s\nDate: %s\nMessage-ID: <%s@%s>\nIn-Reply-To: <%s>\nReferences: %s\n"+
		"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nTuesday at 10:00 works for me.\n\nCarl\n",
		from, orig.Header.Get("From"), orig.Header.Get("Subject"), time.Now().Format(time.RFC1123Z), randID(), d.State.CandidateDomain,
		s.InternetMessageID, refs))
	signed, err := d.sign(raw)
	if err != nil {
		return err
	}
	d.show("In-Reply-To <%s>, DKIM-Signature d=%s s=%s", s.InternetMessageID, d.State.CandidateDomain, d.State.Selector)
	return d.deliver(ctx, from, inbound, signed, "stored")
}

// stranger delivers mail that has nothing to do with any thread.
func (d *Demo) stranger(ctx context.Context, inbound string) error {
	d.say("An unrelated message reaches the inbound address (a rule that forwards too much)")
	raw := crlf(fmt.Sprintf("From: Shop <%s>\nTo: %s\nSubject: 50%% off today\nDate: %s\nMessage-ID: <%s@shop.test>\n\nBuy now.\n",
		demoStranger, demoUserMail, time.Now().Format(time.RFC1123Z), randID()))
	return d.deliver(ctx, demoStranger, inbound, []byte(raw), "discarded")
}

func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

func randID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *Demo) sign(raw string) ([]byte, error) {
	pemBytes, err := os.ReadFile(d.State.DKIMKeyFile)
	if err != nil {
		return nil, fmt.Errorf("DKIM key: %w", err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, fmt.Errorf("DKIM key %s: not PEM", d.State.DKIMKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("DKIM key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("DKIM key %s: not a signing key", d.State.DKIMKeyFile)
	}
	var out bytes.Buffer
	err = dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: d.State.CandidateDomain, Selector: d.State.Selector,
		Signer: signer, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
	if err != nil {
		return nil, fmt.Errorf("DKIM sign: %w", err)
	}
	return out.Bytes(), nil
}

// deliver speaks SMTP to the daemon and checks the decision in its reply
// to DATA.
func (d *Demo) deliver(ctx context.Context, from, rcpt string, msg []byte, want string) error {
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", d.State.SMTP)
	if err != nil {
		return fmt.Errorf("smtp: %w", err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("mx.forwarder.test"); err != nil {
		return fmt.Errorf("smtp: %w", err)
	}
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("smtp MAIL: %w", err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return fmt.Errorf("smtp RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("smtp DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		d.show("SMTP reply: %d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		return fmt.Errorf("expected the message to be %s, got %d %s", want, se.Code, se.Message)
	}
	if err != nil {
		return fmt.Errorf("smtp DATA: %w", err)
	}
	_ = c.Quit()
	d.show("SMTP reply: 250 %s", resp.StatusText)
	// "2.0.0 OK: stored (reason=token)": the decision, then the reason.
	if !strings.HasSuffix(resp.StatusText, "OK: "+want) && !strings.Contains(resp.StatusText, "OK: "+want+" (reason=") {
		return fmt.Errorf("expected the message to be %s, got %q", want, resp.StatusText)
	}
	return nil
}

// timeline prints the thread as the ATS reads it, and the tenant's
// decision counts.
func (d *Demo) timeline(ctx context.Context, s *sentMsg) error {
	d.say("The candidate's timeline (GET /v1/tenants/" + DemoTenant + "/candidates/" + DemoCandidate + "/threads)")
	code, b, _, err := d.call(ctx, http.MethodGet, "/v1/tenants/"+DemoTenant+"/candidates/"+DemoCandidate+"/threads", DemoUser, "")
	if err != nil {
		return err
	}
	var tl struct {
		Threads []struct {
			ID       string `json:"id"`
			Subject  string `json:"subject"`
			Messages []struct {
				Direction string `json:"direction"`
				From      string `json:"from"`
				Subject   string `json:"subject"`
				Text      string `json:"text"`
				DKIM      []struct {
					Domain string `json:"domain"`
					Result string `json:"result"`
				} `json:"dkim"`
			} `json:"messages"`
		} `json:"threads"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &tl) != nil {
		return fmt.Errorf("timeline: HTTP %d: %s", code, b)
	}
	for _, th := range tl.Threads {
		if th.ID != s.ThreadID {
			continue
		}
		for i := range th.Messages {
			th.Messages[i].Text = firstLine(th.Messages[i].Text)
		}
		out, _ := json.MarshalIndent(th, "   ", "  ")
		d.show("%s", out)
		var inbound bool
		for _, m := range th.Messages {
			if m.From == demoStranger {
				return fmt.Errorf("the unrelated message is on the timeline")
			}
			inbound = inbound || m.Direction == "inbound"
		}
		if !inbound {
			return fmt.Errorf("Carl's reply is not on thread %s", th.ID)
		}
		return d.decisions(ctx)
	}
	return fmt.Errorf("thread %s is not on the timeline", s.ThreadID)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// decisions prints the last hour's decisions from the tenant status.
func (d *Demo) decisions(ctx context.Context) error {
	d.say("Decisions of the last hour (GET /v1/tenants/" + DemoTenant + "/status)")
	code, b, _, err := d.call(ctx, http.MethodGet, "/v1/tenants/"+DemoTenant+"/status", "", "")
	if err != nil {
		return err
	}
	var st struct {
		Forwarding string `json:"forwarding"`
		LastHour   struct {
			Reasons map[string]uint64 `json:"reasons"`
		} `json:"last_hour"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &st) != nil {
		return fmt.Errorf("status: HTTP %d: %s", code, b)
	}
	for _, k := range slices.Sorted(maps.Keys(st.LastHour.Reasons)) {
		d.show("%-28s %d", k, st.LastHour.Reasons[k])
	}
	d.show("(the unrelated message left only this counter: it was not stored or logged)")
	return nil
}

// sendFor asks Hugo for Send For permission with approval by email and
// prints the link the Gmail stand-in received (through Rita's grant).
func (d *Demo) sendFor(ctx context.Context) error {
	d.say("Rita asks Hugo for Send For; the tenant wants approval by email")
	base := "/v1/tenants/" + DemoTenant
	if code, b, _, err := d.call(ctx, http.MethodPatch, base, "", `{"delegation_approval":"email"}`); err != nil || code != http.StatusOK {
		return fmt.Errorf("PATCH %s: HTTP %d %v: %s", base, code, err, b)
	}
	if err := d.create(ctx, base+"/users", base+"/users/"+DemoGrantor,
		`{"id":"`+DemoGrantor+`","email":"`+demoGrantMail+`","name":"Hugo","role":"team_member"}`, nil); err != nil {
		return err
	}
	body := `{"requester":"` + DemoUser + `","grantor":"` + DemoGrantor + `"}`
	code, b, _, err := d.call(ctx, http.MethodPost, base+"/delegations", DemoUser, body)
	if err == nil && code == http.StatusConflict {
		// A second run: end the earlier request and ask again.
		if err := d.revokeOpen(ctx); err != nil {
			return err
		}
		code, b, _, err = d.call(ctx, http.MethodPost, base+"/delegations", DemoUser, body)
	}
	if err != nil {
		return err
	}
	var dl struct {
		ID            string `json:"id"`
		ApprovalEmail struct {
			Status, Error string
		} `json:"approval_email"`
	}
	if code != http.StatusCreated || json.Unmarshal(b, &dl) != nil {
		return fmt.Errorf("POST %s/delegations: HTTP %d: %s", base, code, b)
	}
	d.show("delegation %s requested; approval_email: %s %s", dl.ID, dl.ApprovalEmail.Status, dl.ApprovalEmail.Error)
	if dl.ApprovalEmail.Status != "sent" {
		return fmt.Errorf("the approval email was not sent: %s", b)
	}
	link, err := d.approvalLink(ctx)
	if err != nil {
		return err
	}
	d.show("the Gmail stand-in received the email to %s, with the link:", demoGrantMail)
	d.show("%s", link)
	d.show("(open it in a browser to approve or decline, as Hugo; it works once)")
	return nil
}

// revokeOpen revokes Rita's open Send For requests to Hugo.
func (d *Demo) revokeOpen(ctx context.Context) error {
	base := "/v1/tenants/" + DemoTenant + "/delegations"
	code, b, _, err := d.call(ctx, http.MethodGet, base+"?requester="+DemoUser+"&grantor="+DemoGrantor, "", "")
	if err != nil {
		return err
	}
	var list struct {
		Delegations []struct{ ID, Status string } `json:"delegations"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
		return fmt.Errorf("GET %s: HTTP %d: %s", base, code, b)
	}
	for _, x := range list.Delegations {
		if x.Status == "requested" || x.Status == "active" {
			if code, b, _, err := d.call(ctx, http.MethodDelete, base+"/"+x.ID, "", ""); err != nil || code != http.StatusOK {
				return fmt.Errorf("revoke %s: HTTP %d %v: %s", x.ID, code, err, b)
			}
		}
	}
	return nil
}

var approvalLinkRE = regexp.MustCompile(`https?://\S+/p/delegation\?t=[A-Za-z0-9_.%-]+`)

// approvalLink is the link in the newest approval email the Gmail
// stand-in recorded for Hugo.
func (d *Demo) approvalLink(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.State.GoogleSentURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("Gmail stand-in: %w", err)
	}
	defer resp.Body.Close()
	var list []struct{ Raw []byte }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return "", fmt.Errorf("Gmail stand-in: %w", err)
	}
	for i := len(list) - 1; i >= 0; i-- {
		m, err := mail.ReadMessage(bytes.NewReader(list[i].Raw))
		if err != nil || !strings.Contains(m.Header.Get("To"), demoGrantMail) {
			continue
		}
		// The text part is quoted-printable at most: undo soft breaks.
		raw := strings.ReplaceAll(strings.ReplaceAll(string(list[i].Raw), "=\r\n", ""), "=3D", "=")
		if l := approvalLinkRE.FindString(raw); l != "" {
			return l, nil
		}
	}
	return "", errors.New("the Gmail stand-in recorded no approval email with a link for " + demoGrantMail)
}

func (d *Demo) next() {
	fmt.Fprintf(d.Out, `
Done: a message sent, the signed reply stored on the candidate, the stranger discarded,
and a Send For request emailed to its grantor for approval.

Look around with the API:

    TOKEN=%s
    curl -s -H "Authorization: Bearer $TOKEN" -H 'X-Acting-User: %s' http://%s/v1/tenants/%s/candidates/%s/threads
    curl -s -H "Authorization: Bearer $TOKEN" http://%s/v1/tenants/%s/status

Run the demo again to add another thread; stop the dev daemon with Ctrl-C.
`, d.TokenHint, DemoUser, d.State.HTTP, DemoTenant, DemoCandidate, d.State.HTTP, DemoTenant)
}

// call does one API request, as actor when not "".
func (d *Demo) call(ctx context.Context, method, path, actor, body string) (int, []byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+d.State.HTTP+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.Token)
	if actor != "" {
		req.Header.Set("X-Acting-User", actor)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: %w", method, (&url.URL{Path: path}).Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, resp.Header, err
}
