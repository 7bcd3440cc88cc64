package pages_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/devmode"
	"syncrelay/internal/browsertest"
	"syncrelay/internal/testenv"
	"syncrelay/setup"
	"syncrelay/signedlink"
	"syncrelay/store"
)

// devStack is `serve -dev` in this process after `demo` ran: tenant acme,
// Rita with a Gmail grant on the Google stand-in, Carl's stored reply.
type devStack struct {
	c     *config.Config
	d     *testenv.Daemon
	base  string
	token string
	dir   string
}

func startDev(t *testing.T) *devStack {
	t.Helper()
	dir := t.TempDir()
	cfgText := testenv.Config{Data: filepath.Join(dir, "data")}.TOML()
	c, err := config.Parse([]byte(cfgText), filepath.Join(dir, "syncrelay.toml"))
	if err != nil {
		t.Fatal(err)
	}
	// The admin page reloads itself every second, not every 5 s, while the
	// probe is out: TestAdminPageInBrowser waits for a reload when the
	// probe comes back after the page rendered (pages_test.go checks the
	// default's meta refresh).
	c.HTTP.PageRefresh = time.Second
	d := testenv.StartInProcess(t, func(ctx context.Context, logs io.Writer) error {
		log := daemon.NewLogger(c, logs)
		env, err := devmode.Setup(c, log)
		if err != nil {
			return err
		}
		defer env.Close()
		go env.AnnounceWhenReady(ctx, io.Discard, log)
		return daemon.Run(ctx, c, log, io.Discard)
	})
	s := &devStack{c: c, d: d, base: "http://" + d.HTTP, dir: dir}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon logs:\n%s", d.Logs)
		}
	})
	var st devmode.State
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err = devmode.ReadState(devmode.StatePath(c)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev mode not ready: %v\n%s", err, d.Logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, err := os.ReadFile(c.APITokenPath())
	if err != nil {
		t.Fatal(err)
	}
	s.token = strings.TrimSpace(string(tok))
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := (&devmode.Demo{State: st, Token: s.token, TokenHint: "x", Out: &out}).Run(ctx); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), d.Logs)
	}
	return s
}

func (s *devStack) api(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	code, m, _ := testenv.Call(t, s.base, s.token, "", method, path, body)
	return code, m
}

func (s *devStack) adminLink(t *testing.T) string {
	t.Helper()
	code, m := s.api(t, "POST", "/v1/tenants/acme/admin-links", `{"ttl":"1h"}`)
	if code != http.StatusCreated {
		t.Fatalf("admin-links: %d %v", code, m)
	}
	u, _ := m["url"].(string)
	if !strings.HasPrefix(u, s.base+"/p/admin?t=") {
		t.Fatalf("admin link %q does not start with %s", u, s.base)
	}
	return u
}

// linksKey derives the daemon's links key from its secret key file, as
// daemon.OpenKeys does, to sign links the API would not issue (expired).
func (s *devStack) linksKey(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(s.c.SecretKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	master, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, master)
	m.Write([]byte("syncrelay/links"))
	return m.Sum(nil)
}

type thread struct {
	Messages []struct {
		ID        string `json:"id"`
		Direction string `json:"direction"`
	} `json:"messages"`
}

// sentMessageID is the Message-ID (with <>) of the demo's sent message,
// from its raw copy.
func (s *devStack) sentMessageID(t *testing.T, threads []thread) string {
	t.Helper()
	for _, th := range threads {
		for _, m := range th.Messages {
			if m.Direction != "outbound" {
				continue
			}
			code, _, raw := testenv.Do(t, s.base, s.token, "u-rita", "GET", "/v1/tenants/acme/messages/"+m.ID+"/raw", "")
			if code != 200 {
				t.Fatalf("raw %s: %d %s", m.ID, code, raw)
			}
			msg, err := mail.ReadMessage(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			return msg.Header.Get("Message-ID")
		}
	}
	t.Fatal("no outbound message on the timeline")
	return ""
}

// waitText waits until the element with id holds want, asking from Go:
// the page may navigate meanwhile (a form's redirect, the page's own
// reload), which would end a poll running inside it.
func waitText(t *testing.T, b *browsertest.Browser, id, want string) {
	t.Helper()
	js := `(document.getElementById(` + strconv.Quote(id) + `)||{}).textContent||""`
	var got string
	for deadline := time.Now().Add(40 * time.Second); ; {
		txt, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string](js))
		if err == nil {
			got = txt
			if strings.Contains(txt, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("#%s never said %q (last: %q, %v)", id, want, got, err)
		}
		// Often: a click's redirect usually lands in a few ms, and each
		// poll is one cheap Evaluate.
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAdminPageInBrowser(t *testing.T) {
	t.Parallel()                       // each has its own daemon or env, browser and ports; they mostly wait
	browser := browsertest.Starting(t) // skips (or fails under SYNCRELAY_REQUIRE_BROWSER=1) without chromium
	s := startDev(t)                   // while Chromium starts
	link := s.adminLink(t)
	b := browser()

	// Open the link: the page shows the inbound address and the rules.
	resp := browsertest.Get(b, chromedp.NavigateResponse(link))
	if resp.Status != 200 {
		t.Fatalf("admin page: HTTP %d", resp.Status)
	}
	_, ten := s.api(t, "GET", "/v1/tenants/acme", "")
	inbound, _ := ten["inbound_address"].(string)
	if got := browsertest.Get(b, chromedp.Text(chromedp.ID("inbound-address"))); got != inbound || inbound == "" {
		t.Fatalf("inbound address on the page %q, API %q", got, inbound)
	}
	rules := setup.For(s.c.SMTP.Hostname, &store.Tenant{ID: "acme", InboundAddress: inbound, Provider: "google"})
	if got := browsertest.Get(b, chromedp.Text(chromedp.ID("google-regex"))); got != rules.Google.Regex {
		t.Fatalf("Google regex on the page %q, check prints %q", got, rules.Google.Regex)
	}
	exch := browsertest.Get(b, chromedp.TextContent(chromedp.ID("exchange-rules")))
	if !strings.Contains(exch, rules.Exchange.PowerShell[3]) || !strings.Contains(exch, "Thread-Index") {
		t.Fatalf("Exchange rules lack the Thread-Index rule:\n%s", exch)
	}
	// The demo's decisions are on the chart (one stored, one discarded).
	if n := browsertest.Get(b, chromedp.Evaluate[int](`document.querySelectorAll("svg.chart rect.s-stored").length`)); n == 0 {
		t.Error("no stored bar on the charts")
	}
	b.Screenshot(t, "admin")

	// Copy a rule: the button says so, and the clipboard holds the rule.
	b.GrantClipboard(s.base)
	b.Do(chromedp.Click(chromedp.CSS(`button[data-copy="google-regex"]`)))
	if _, err := chromedp.Run(b.Ctx, chromedp.Poll[bool](`document.querySelector('button[data-copy="google-regex"]').textContent === "Copied"`,
		chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		t.Fatalf("copy button did not show Copied: %v", err)
	}
	clip, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string](`navigator.clipboard.readText()`, chromedp.EvalAwaitPromise))
	switch {
	case err != nil:
		t.Logf("clipboard not readable in this browser (%v); the Copied state was checked", err)
	case clip != rules.Google.Regex:
		t.Fatalf("clipboard %q, want %q", clip, rules.Google.Regex)
	}
	b.Screenshot(t, "copied")

	// Verify forwarding: the probe goes through Rita's grant to the Gmail
	// stand-in, dev mode plays the rule and delivers it over SMTP, and the
	// page (reloading itself) says it came back.
	b.Do(chromedp.Click(chromedp.ID("verify-button")), chromedp.WaitVisible(chromedp.ID("probe-status")))
	// The page reloads itself every 5 s while the probe is out.
	waitText(t, b, "probe-status", "Forwarding works")
	b.Screenshot(t, "verified")
	// The probe is on no candidate: the timeline still holds the demo's one thread.
	code, _, raw := testenv.Do(t, s.base, s.token, "u-rita", "GET", "/v1/tenants/acme/candidates/c-carl/threads", "")
	if code != 200 || strings.Contains(string(raw), "forwarding check") {
		t.Fatalf("timeline after the probe: %d %s", code, raw)
	}
	var tl struct{ Threads []thread }
	_ = json.Unmarshal(raw, &tl)
	if len(tl.Threads) != 1 {
		t.Fatalf("timeline has %d threads after the probe", len(tl.Threads))
	}

	// The quarantine: Carl's unsigned replies fail DKIM and, under
	// dkim_policy=quarantine, wait on the page. One is released (it is
	// then on the timeline, via the API), the other deleted.
	if code, m := s.api(t, "PATCH", "/v1/tenants/acme", `{"dkim_policy":"quarantine"}`); code != 200 {
		t.Fatalf("PATCH dkim_policy: %d %v", code, m)
	}
	sentID := s.sentMessageID(t, tl.Threads)
	for _, subj := range []string{"release me", "delete me"} {
		raw := strings.ReplaceAll("From: Carl <carl@cand.test>\nTo: rita@acme.test\nSubject: Re: "+subj+"\nDate: "+time.Now().Format(time.RFC1123Z)+
			"\nMessage-ID: <"+strings.ReplaceAll(subj, " ", "-")+"@cand.test>\nIn-Reply-To: "+sentID+"\nReferences: "+sentID+
			"\n\nUnsigned, so DKIM fails.\n", "\n", "\r\n")
		code, text := testenv.Send(t, s.d.SMTP, testenv.Envelope{Helo: "mx.cand.test", From: "carl@cand.test", To: []string{inbound}}, raw)
		if code != 250 || !strings.Contains(text, "OK: quarantined") {
			t.Fatalf("unsigned reply %q: %d %s", subj, code, text)
		}
	}
	b.Do(chromedp.Navigate(link), chromedp.WaitVisible(chromedp.ID("quarantine-list")))
	if n := browsertest.Get(b, chromedp.Evaluate[int](`document.querySelectorAll("#quarantine-list button.release").length`)); n != 2 {
		t.Fatalf("quarantine rows with a Release button: %d", n)
	}
	if txt := browsertest.Get(b, chromedp.Text(chromedp.ID("quarantine"))); strings.Contains(txt, "release me") || strings.Contains(txt, "Unsigned") {
		t.Fatalf("the quarantine list shows message content: %q", txt)
	}
	b.Screenshot(t, "quarantine")
	b.Do(chromedp.Click(chromedp.CSS(`#quarantine-list tr:nth-child(2) button.release`)))
	waitText(t, b, "notice", "released")
	b.Do(chromedp.Click(chromedp.CSS(`#quarantine-list tr:nth-child(2) button.delete`)))
	waitText(t, b, "notice", "deleted")
	if txt := browsertest.Get(b, chromedp.Text(chromedp.ID("quarantine-list"))); !strings.Contains(txt, "empty") {
		t.Fatalf("quarantine after release and delete: %q", txt)
	}
	// Both actions are recorded and listed, with the link that acted.
	acts := browsertest.Get(b, chromedp.Text(chromedp.ID("quarantine-actions")))
	if !strings.Contains(acts, "released") || !strings.Contains(acts, "deleted") || strings.Count(acts, "admin link n=") != 2 ||
		strings.Contains(acts, "release me") {
		t.Fatalf("recent quarantine actions: %q", acts)
	}
	b.Screenshot(t, "released")
	code, _, raw = testenv.Do(t, s.base, s.token, "u-rita", "GET", "/v1/tenants/acme/candidates/c-carl/threads", "")
	if code != 200 || !strings.Contains(string(raw), "Re: release me") || strings.Contains(string(raw), "Re: delete me") {
		t.Fatalf("timeline after release/delete: %d %s", code, raw)
	}

	// Bad links get a clear page: a sentence and a 4xx, no stack trace.
	u, _ := url.Parse(link)
	tok := u.Query().Get("t")
	sig := signedlink.New(s.linksKey(t), nil)
	expired, err := sig.Sign(signedlink.Claims{Purpose: signedlink.PurposeAdmin, Tenant: "acme", Expires: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, url string
		status    int64
		sentence  string
	}{
		{"tampered", s.base + "/p/admin?t=" + url.QueryEscape(tok[:len(tok)-4]+"AAAA"), 403, "This link is not valid."},
		{"expired", s.base + "/p/admin?t=" + url.QueryEscape(expired), 410, "This link has expired."},
	} {
		resp := browsertest.Get(b, chromedp.NavigateResponse(tc.url))
		text := browsertest.Get(b, chromedp.Text(chromedp.CSS("body")))
		if resp.Status != tc.status || !strings.Contains(text, tc.sentence) || strings.Contains(text, "goroutine") {
			t.Errorf("%s link: HTTP %d %q, want %d with %q", tc.name, resp.Status, text, tc.status, tc.sentence)
		}
		b.Screenshot(t, tc.name)
	}
	// Rotating revokes the link the browser used.
	if code, m := s.api(t, "POST", "/v1/tenants/acme/admin-links/rotate", ""); code != 200 {
		t.Fatalf("rotate: %d %v", code, m)
	}
	resp = browsertest.Get(b, chromedp.NavigateResponse(link))
	if text := browsertest.Get(b, chromedp.Text(chromedp.CSS("body"))); resp.Status != 410 || !strings.Contains(text, "revoked") {
		t.Errorf("revoked link: HTTP %d %q", resp.Status, text)
	}
	b.Screenshot(t, "revoked")
}

// TestVerifyForwardingOverHTTP runs the probe loop without a browser (so
// it runs where Chromium is missing): the page's form over plain HTTP with
// its cookie, the Gmail stand-in, dev mode's rule, SMTP back to the relay.
func TestVerifyForwardingOverHTTP(t *testing.T) {
	t.Parallel() // each has its own daemon or env, browser and ports; they mostly wait
	s := startDev(t)
	link := s.adminLink(t)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	page := func() string {
		t.Helper()
		resp, err := c.Get(link)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("page: %d %s", resp.StatusCode, b)
		}
		return string(b)
	}
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page())
	if m == nil {
		t.Fatal("no CSRF field")
	}
	u, _ := url.Parse(link)
	resp, err := c.PostForm(s.base+"/p/admin/verify", url.Values{"t": {u.Query().Get("t")}, "csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("verify: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		body := page()
		if strings.Contains(body, "Forwarding works") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe did not come back:\n%s\n%s", body, s.d.Logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The page sees the probe as soon as it is recorded; the session logs
	// its line after replying, a moment later.
	for !strings.Contains(s.d.Logs.String(), "reason=probe") {
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not log the probe's return as a discard:\n%s", s.d.Logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
