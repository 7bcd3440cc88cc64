package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/testenv"
	"syncrelay/outbound/providertest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestOutboundEndToEndOverSMTP runs the real daemon: a user connects a
// (stub) Gmail mailbox, the ATS sends through the API, the candidate's
// DKIM-signed reply comes back over SMTP to the tenant's inbound address
// and lands on the candidate's timeline.
func TestOutboundEndToEndOverSMTP(t *testing.T) {
	t.Parallel()
	stub := providertest.Start(t, "google")
	dir := t.TempDir()
	httpAddr := freeAddr(t) // in the config before the start: the OAuth redirect URL names it
	key, txt := dkimtest.RSA(t, 0)
	var quoted []string
	for len(txt) > 0 {
		n := min(len(txt), 200)
		quoted = append(quoted, `"`+txt[:n]+`"`)
		txt = txt[n:]
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "zone.txt"), []byte("s1._domainkey.cand.test TXT "+strings.Join(quoted, " ")+"\n"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "tokens"), []byte("e2e-token\n"), 0o600))
	cfg := testenv.Config{Data: "data", HTTPListen: httpAddr, Zone: "zone.txt", TokensFile: "tokens", Extra: fmt.Sprintf(`[providers.google]
client_id = %q
client_secret = %q
redirect_url = "http://%s/oauth/google/callback"
auth_url = %q
token_url = %q
api_base = %q
[outbound]
retry_base_delay = "10ms"
max_retry_delay = "1s"
`, providertest.ClientID, providertest.ClientSecret, httpAddr, stub.AuthURL(), stub.TokenURL(), stub.APIBase())}.TOML()
	c, err := config.Parse([]byte(cfg), filepath.Join(dir, "syncrelay.toml"))
	must(err)
	d := testenv.StartInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return daemon.Run(ctx, c, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), io.Discard)
	})
	logs, smtpAddr, stop := d.Logs, d.SMTP, func() { d.Stop(t) }
	base := "http://" + httpAddr
	call := func(method, path, actor, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer e2e-token")
		if actor != "" {
			req.Header.Set("X-Acting-User", actor)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		must(err)
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		if want == http.StatusFound {
			m["location"] = resp.Header.Get("Location")
		}
		return m
	}
	ten := call("POST", "/v1/tenants", "", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`, 201)
	inbound := ten["inbound_address"].(string)
	call("POST", "/v1/tenants/acme/users", "", `{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`, 201)
	call("POST", "/v1/tenants/acme/candidates", "", `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`, 201)

	start := call("GET", "/oauth/google/start?tenant=acme&user=u-rec", "u-rec", "", http.StatusFound)
	resp, err := http.Get(stub.Authorize(t, start["location"].(string)))
	must(err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("callback %d", resp.StatusCode)
	}

	sent := call("POST", "/v1/tenants/acme/messages", "u-rec", `{"candidate":"c-1","subject":"Interview","text":"Tuesday?","kind":"one_off"}`, 201)
	if sent["status"] != "sent" {
		t.Fatalf("send: %v", sent)
	}
	msgid := sent["internet_message_id"].(string)

	reply := strings.ReplaceAll(fmt.Sprintf("From: Carl <carl@cand.test>\nTo: Rita <rec@acme.test>\nSubject: Re: Interview\n"+
		"Date: %s\nMessage-ID: <reply-1@cand.test>\nIn-Reply-To: <%s>\nReferences: <%s>\nMIME-Version: 1.0\n"+
		"Content-Type: text/plain; charset=utf-8\n\nTuesday works.\n", time.Now().Format(time.RFC1123Z), msgid, msgid), "\n", "\r\n")
	var signed bytes.Buffer
	must(dkim.Sign(&signed, strings.NewReader(reply), &dkim.SignOptions{Domain: "cand.test", Selector: "s1", Signer: key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}))
	// Google's routing rule delivers a copy to the tenant's inbound address.
	must(smtp.SendMail(smtpAddr, nil, "carl@cand.test", []string{inbound}, signed.Bytes()))

	tl := call("GET", "/v1/tenants/acme/candidates/c-1/threads", "u-rec", "", 200)
	threads := tl["threads"].([]any)
	if len(threads) != 1 {
		t.Fatalf("timeline %v", tl)
	}
	th := threads[0].(map[string]any)
	msgs := th["messages"].([]any)
	if th["id"] != sent["thread_id"] || len(msgs) != 2 {
		t.Fatalf("thread %v", th)
	}
	got := msgs[1].(map[string]any)
	if got["direction"] != "inbound" || got["from"] != "carl@cand.test" || !strings.Contains(fmt.Sprint(got["text"]), "Tuesday works") {
		t.Fatalf("reply on the timeline: %v", got)
	}
	if first := msgs[0].(map[string]any); first["direction"] != "outbound" || first["sent_by"] != "u-rec" {
		t.Fatalf("sent message on the timeline: %v", first)
	}
	// No provider token in the logs or on disk.
	stop()
	for _, tok := range stub.Issued() {
		if strings.Contains(logs.String(), tok) {
			t.Fatal("a provider token was logged")
		}
	}
	assertNoSecrets(t, filepath.Join(dir, "data"), stub.Issued())
}

func assertNoSecrets(t *testing.T, dir string, secrets []string) {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s contains a provider token", p)
			}
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walk %s: %d files, %v", dir, n, err)
	}
}
