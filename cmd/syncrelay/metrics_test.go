package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"syncrelay/internal/testenv"
)

// TestMetricsFromTheFirstSecond starts the real binary and scrapes
// /metrics as soon as it serves: every known label combination of the
// counters alerts are written on exists at 0 (so that
// rate(syncrelay_messages_total{decision="tempfail"}[15m]) > 0 fires on
// the first tempfail after a restart), and the HTTP API is measured by
// route pattern and status code, never by raw path (issue 16, item 2).
func TestMetricsFromTheFirstSecond(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer hook.Close()
	for _, f := range []string{"webhook.secret", "google.secret", "microsoft.secret"} {
		must(t, os.WriteFile(filepath.Join(dir, f), []byte("s3cret\n"), 0o600))
	}
	cfg := writeConfig(t, dir, `
[webhooks]
url = "`+hook.URL+`"
secret_file = "`+filepath.Join(dir, "webhook.secret")+`"
[providers.google]
client_id = "g-client"
client_secret_file = "`+filepath.Join(dir, "google.secret")+`"
redirect_url = "http://127.0.0.1/oauth/google/callback"
[providers.microsoft]
client_id = "m-client"
client_secret_file = "`+filepath.Join(dir, "microsoft.secret")+`"
redirect_url = "http://127.0.0.1/oauth/microsoft/callback"
`)
	d := startDaemon(t, dir, "-config", cfg)
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + d.HTTP + "/metrics")
		must(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		must(t, err)
		return string(b)
	}

	first := scrape()
	for _, series := range []string{
		// Every decision × reason the router can return.
		`syncrelay_messages_total{decision="tempfail",reason="local_error"}`,
		`syncrelay_messages_total{decision="tempfail",reason="dkim_temperror"}`,
		`syncrelay_messages_total{decision="rejected",reason="dkim_fail"}`,
		`syncrelay_messages_total{decision="rejected",reason="dkim_unaligned"}`,
		`syncrelay_messages_total{decision="rejected",reason="malformed_header"}`,
		`syncrelay_messages_total{decision="quarantined",reason="dkim_fail"}`,
		`syncrelay_messages_total{decision="discarded",reason="no_match"}`,
		`syncrelay_messages_total{decision="stored",reason="token"}`,
		`syncrelay_messages_total{decision="stored",reason="bounce"}`,
		`syncrelay_messages_total{decision="duplicate",reason="duplicate"}`,
		// smtpd's own refusals and its spool's trouble, in the same
		// family and the same list (issue 16).
		`syncrelay_messages_total{decision="rejected",reason="message_too_large"}`,
		`syncrelay_messages_total{decision="rejected",reason="bare_eol"}`,
		`syncrelay_messages_total{decision="rejected",reason="line_too_long"}`,
		// Every reply code smtpd can send, by stage.
		`syncrelay_smtp_replies_total{code="250",stage="mail"}`,
		`syncrelay_smtp_replies_total{code="503",stage="mail"}`,
		`syncrelay_smtp_replies_total{code="550",stage="rcpt"}`,
		`syncrelay_smtp_replies_total{code="452",stage="rcpt"}`,
		`syncrelay_smtp_replies_total{code="250",stage="data"}`,
		`syncrelay_smtp_replies_total{code="421",stage="data"}`,
		`syncrelay_smtp_replies_total{code="451",stage="data"}`,
		`syncrelay_smtp_replies_total{code="452",stage="data"}`,
		`syncrelay_smtp_replies_total{code="550",stage="data"}`,
		`syncrelay_smtp_replies_total{code="552",stage="data"}`,
		`syncrelay_smtp_replies_total{code="554",stage="data"}`,
		// Authentication results.
		`syncrelay_auth_results_total{method="dkim",result="pass"}`,
		`syncrelay_auth_results_total{method="dkim",result="fail"}`,
		`syncrelay_auth_results_total{method="dkim",result="temperror"}`,
		`syncrelay_auth_results_total{method="arc",result="fail"}`,
		`syncrelay_auth_results_total{method="arc",result="none"}`,
		// Token refreshes, sends and retries per provider.
		`syncrelay_oauth_refreshes_total{provider="google",result="invalid_grant"}`,
		`syncrelay_oauth_refreshes_total{provider="microsoft",result="error"}`,
		`syncrelay_outbound_sends_total{provider="google",result="failed"}`,
		`syncrelay_outbound_sends_total{provider="microsoft",result="sent"}`,
		`syncrelay_outbound_retries_total{provider="google"}`,
		`syncrelay_outbound_retries_total{provider="microsoft"}`,
		// Webhook deliveries.
		`syncrelay_webhook_deliveries_total{outcome="dead"}`,
		`syncrelay_webhook_deliveries_total{outcome="retry"}`,
	} {
		if v, ok := metricValue(first, series); !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0 from start", series, v, ok)
		}
	}

	// smtpd's own refusals over real SMTP are counted as decisions, their
	// replies carry the reason token.
	d.Token = readToken(t, filepath.Join(dir, "data"))
	code, ten := d.API(t, "POST", "/v1/tenants", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`)
	if code != 201 {
		t.Fatalf("create tenant %d %v", code, ten)
	}
	env := testenv.Envelope{Helo: "client.test", From: "sender@elsewhere.test", To: []string{ten["inbound_address"].(string)}}
	if got, text := testenv.Send(t, d.SMTP, env, "From: a@elsewhere.test\r\nSubject: x\r\n\r\n"+strings.Repeat("y", 1200)+"\r\n"); got != 554 || !strings.HasSuffix(text, "(reason=line_too_long)") {
		t.Errorf("over-long line: reply %d %q, want 554 with its reason token", got, text)
	}
	// go-smtp's client turns a bare LF into CRLF: by hand.
	if got := sendRaw(t, d.SMTP, env, "From: a@elsewhere.test\r\nSubject: x\r\n\r\nbare\nLF\r\n.\r\n"); !strings.HasPrefix(got, "550 5.6.0 ") || !strings.HasSuffix(got, "(reason=bare_eol)") {
		t.Errorf("bare LF: reply %q, want 550 with its reason token", got)
	}
	traffic := scrape()
	for series, want := range map[string]float64{
		`syncrelay_messages_total{decision="rejected",reason="line_too_long"}`: 1,
		`syncrelay_messages_total{decision="rejected",reason="bare_eol"}`:      1,
		`syncrelay_smtp_replies_total{code="554",stage="data"}`:                1,
		`syncrelay_smtp_replies_total{code="550",stage="data"}`:                1,
	} {
		if v, ok := metricValue(traffic, series); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}

	// The HTTP API: by route pattern and code, with a latency histogram.
	// A tenant id in the path never becomes a label value.
	for _, p := range []string{"/v1/tenants/acme-secret-tenant/status", "/v1/tenants/acme-secret-tenant/users/u-9", "/no/such/endpoint-secret"} {
		resp, err := http.Get("http://" + d.HTTP + p)
		must(t, err)
		resp.Body.Close()
	}
	after := scrape()
	for series, want := range map[string]float64{
		`syncrelay_http_requests_total{code="200",route="GET /metrics"}`:                    2,
		`syncrelay_http_requests_total{code="401",route="GET /v1/tenants/{t}/status"}`:      1,
		`syncrelay_http_requests_total{code="401",route="GET /v1/tenants/{t}/users/{u}"}`:   1,
		`syncrelay_http_requests_total{code="404",route="unmatched"}`:                       1,
		`syncrelay_http_request_duration_seconds_count{route="GET /metrics"}`:               2,
		`syncrelay_http_request_duration_seconds_count{route="GET /v1/tenants/{t}/status"}`: 1,
	} {
		if v, ok := metricValue(after, series); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}
	if !regexp.MustCompile(`(?m)^syncrelay_http_request_duration_seconds_bucket\{route="GET /metrics",le="0\.005"\} `).MatchString(after) {
		t.Error("no latency histogram buckets for GET /metrics")
	}
	for _, leak := range []string{"acme-secret-tenant", "u-9", "endpoint-secret"} {
		if strings.Contains(after, leak) {
			t.Errorf("a raw path reached a label: %q", leak)
		}
	}
}

// sendRaw runs one transaction by hand (for what go-smtp's client would
// not send as is) and returns the last line of the reply to the message.
func sendRaw(t *testing.T, addr string, env testenv.Envelope, data string) string {
	t.Helper()
	c, err := textproto.Dial("tcp", addr)
	must(t, err)
	defer c.Close()
	step := func(cmd string, code int) {
		t.Helper()
		if cmd != "" {
			must(t, c.PrintfLine("%s", cmd))
		}
		if _, msg, err := c.ReadResponse(code); err != nil {
			t.Fatalf("%q: %v %s", cmd, err, msg)
		}
	}
	step("", 220)
	step("EHLO "+env.Helo, 250)
	step("MAIL FROM:<"+env.From+">", 250)
	step("RCPT TO:<"+env.To[0]+">", 250)
	step("DATA", 354)
	_, err = c.W.WriteString(data)
	must(t, err)
	must(t, c.W.Flush())
	line, err := c.ReadLine()
	must(t, err)
	return line
}
