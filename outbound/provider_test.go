package outbound

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"syncrelay/store"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, body, retryAfter string
		status                 int
		code                   string
		temporary, unauth      bool
		wait                   time.Duration
	}{
		{"gmail 429", `{"error":{"code":429,"message":"Too many","errors":[{"reason":"rateLimitExceeded"}],"status":"RESOURCE_EXHAUSTED"}}`, "7", 429, "rateLimitExceeded", true, false, 7 * time.Second},
		{"gmail user rate 403", `{"error":{"code":403,"message":"User-rate limit exceeded","errors":[{"reason":"userRateLimitExceeded"}]}}`, "", 403, "userRateLimitExceeded", true, false, 0},
		{"gmail daily limit 403", `{"error":{"code":403,"message":"Daily limit","errors":[{"reason":"dailyLimitExceeded"}]}}`, "", 403, "dailyLimitExceeded", false, false, 0},
		{"gmail 400", `{"error":{"code":400,"message":"Invalid To header","errors":[{"reason":"invalidArgument"}],"status":"INVALID_ARGUMENT"}}`, "", 400, "invalidArgument", false, false, 0},
		{"gmail 401", `{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}`, "", 401, "UNAUTHENTICATED", false, true, 0},
		{"graph 429", `{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}`, "30", 429, "ApplicationThrottled", true, false, 30 * time.Second},
		{"graph 403 send as", `{"error":{"code":"ErrorSendAsDenied","message":"The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."}}`, "", 403, "ErrorSendAsDenied", false, false, 0},
		{"graph 503", `{"error":{"code":"ServiceUnavailable","message":"Service Unavailable"}}`, "", 503, "ServiceUnavailable", true, false, 0},
		{"graph 504 html", `<html>gateway</html>`, "", 504, "", true, false, 0},
		{"501 not retried", `{}`, "", 501, "", false, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: c.status, Header: http.Header{}}
			if c.retryAfter != "" {
				resp.Header.Set("Retry-After", c.retryAfter)
			}
			e := classify("p", resp, []byte(c.body))
			if e.Status != c.status || e.Code != c.code || e.Temporary != c.temporary || e.Unauthorized != c.unauth || e.RetryAfter != c.wait {
				t.Fatalf("%+v", e)
			}
			if strings.ContainsAny(e.Error(), "\r\n") {
				t.Fatal("error text has line breaks")
			}
		})
	}
}

func TestRetryAfterDate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := retryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); d != 90*time.Second {
		t.Fatalf("date: %s", d)
	}
	for _, v := range []string{"", "soon", "-5", now.Add(-time.Hour).Format(http.TimeFormat)} {
		if d := retryAfter(v, now); d != 0 {
			t.Fatalf("%q: %s", v, d)
		}
	}
}

func TestProvidersRequestShape(t *testing.T) {
	t.Parallel()
	var got *http.Request
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		b := make([]byte, 1024)
		n, _ := r.Body.Read(b)
		body = string(b[:n])
		if strings.HasSuffix(r.URL.Path, "/sendMail") {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		_, _ = w.Write([]byte(`{"id":"m1","threadId":"t1","labelIds":["SENT"]}`))
	}))
	defer srv.Close()
	ctx := context.Background()
	raw := []byte("Subject: x\r\n\r\nhi?>\r\n")

	sent, err := (&Gmail{BaseURL: srv.URL}).Send(ctx, "AT", raw)
	if err != nil || sent.ProviderID != "m1" || sent.ProviderThread != "t1" {
		t.Fatalf("gmail: %+v %v", sent, err)
	}
	if got.URL.Path != "/gmail/v1/users/me/messages/send" || got.Header.Get("Authorization") != "Bearer AT" ||
		got.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(body, `{"raw":"`) || strings.ContainsAny(body, "+/") {
		t.Fatalf("gmail request %s %v %s", got.URL.Path, got.Header, body)
	}

	if _, err := (&Graph{BaseURL: srv.URL + "/v1.0"}).Send(ctx, "AT", raw); err != nil {
		t.Fatal(err)
	}
	if got.URL.Path != "/v1.0/me/sendMail" || got.Header.Get("Content-Type") != "text/plain" || body != "U3ViamVjdDogeA0KDQpoaT8+DQo=" {
		t.Fatalf("graph request %s %v %q", got.URL.Path, got.Header, body)
	}
}

func TestTransportErrorIsTemporary(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := (&Graph{BaseURL: url}).Send(context.Background(), "AT", []byte("x"))
	var pe *Error
	if !errors.As(err, &pe) || !pe.Temporary || pe.Status != 0 || strings.Contains(pe.Error(), url) {
		t.Fatalf("%v", err)
	}
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	s := &Service{o: Options{MaxRetries: 4, RetryBaseDelay: time.Second, MaxRetryDelay: 10 * time.Second}}
	for n, hi := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		for range 50 {
			d, ok := s.retryDelay(n, 0)
			if !ok || d < hi/2 || d > hi {
				t.Fatalf("retry %d: %s (want %s..%s)", n, d, hi/2, hi)
			}
		}
	}
	if _, ok := s.retryDelay(4, 0); ok {
		t.Fatal("retry beyond MaxRetries")
	}
	if d, ok := s.retryDelay(0, 7*time.Second); !ok || d != 7*time.Second {
		t.Fatalf("Retry-After not honoured: %s", d)
	}
	if _, ok := s.retryDelay(0, 11*time.Second); ok {
		t.Fatal("waited longer than MaxRetryDelay")
	}
	s.o.MaxRetries = 100
	if d, _ := s.retryDelay(80, 0); d > 10*time.Second || d < 5*time.Second {
		t.Fatalf("large retry count: %s", d)
	}
}

func TestReferences(t *testing.T) {
	t.Parallel()
	msgs := []*store.Message{
		{ID: 1, InternetMessageID: "sr.a@relay.test", Direction: store.Outbound, LearnedIDs: []string{"prov-a@mail.test"}},
		{ID: 2, InternetMessageID: "cand-b@cand.test", Direction: store.Inbound},
		{ID: 3, InternetMessageID: "no-id.3@syncrelay.invalid", Direction: store.Inbound},
		{ID: 4, InternetMessageID: "cand-d@cand.test", Direction: store.Inbound},
	}
	got := references(msgs, msgs[1])
	if strings.Join(got, " ") != "sr.a@relay.test prov-a@mail.test cand-b@cand.test" {
		t.Fatalf("references %v", got)
	}
	if id := visibleID(msgs[0]); id != "prov-a@mail.test" {
		t.Fatalf("in-reply-to of a rewritten sent message: %q", id)
	}
	if id := visibleID(msgs[2]); id != "" {
		t.Fatalf("synthetic id used: %q", id)
	}
	var long []*store.Message
	for i := range 50 {
		long = append(long, &store.Message{ID: uint64(i + 1), InternetMessageID: strings.Repeat("x", i+1) + "@t"})
	}
	got = references(long, long[49])
	if len(got) != maxReferences || got[0] != long[0].InternetMessageID || got[len(got)-1] != long[49].InternetMessageID {
		t.Fatalf("bounded references: %d %v", len(got), got)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := func() Request {
		return Request{Tenant: "acme", ActingUser: "u-rec", Candidate: "c-1", Subject: "s", Text: "t"}
	}
	r := ok()
	if err := Validate(&r); err != nil || r.Kind != KindOneOff {
		t.Fatalf("%v %q", err, r.Kind)
	}
	bad := map[string]func(*Request){
		"kind":           func(r *Request) { r.Kind = "spam" },
		"candidate":      func(r *Request) { r.Candidate = "" },
		"to":             func(r *Request) { r.To = []string{"Carl <c@x.test>"} },
		"to crlf":        func(r *Request) { r.To = []string{"c@x.test\r\nBcc: v@x.test"} },
		"cc":             func(r *Request) { r.Cc = []string{"nope"} },
		"subject":        func(r *Request) { r.Subject = " " },
		"text":           func(r *Request) { r.Text = "" },
		"reply":          func(r *Request) { r.ReplyTo = "th-1" },
		"too many rcpts": func(r *Request) { r.To = make([]string, 101); fill(r.To) },
	}
	for name, mod := range bad {
		r := ok()
		mod(&r)
		var rf *Refusal
		if err := Validate(&r); !errors.As(err, &rf) || rf.Status != 400 {
			t.Errorf("%s: %v", name, err)
		}
	}
	r = ok()
	r.SendFor, r.Kind = "u-hm", KindAutomation
	var rf *Refusal
	if err := Validate(&r); !errors.As(err, &rf) || rf.Status != 422 {
		t.Fatalf("automation send_for: %v", err)
	}
	r = ok()
	r.SendFor, r.Kind = "u-rec", KindAutomation // Send For oneself is no Send For
	if err := Validate(&r); err != nil || r.SendFor != "" {
		t.Fatalf("self send_for: %v", err)
	}
	r = ok()
	r.To = []string{"Carl@Cand.Test", "carl@cand.test"}
	if err := Validate(&r); err != nil || len(r.To) != 1 || r.To[0] != "carl@cand.test" {
		t.Fatalf("addresses not normalised: %v %v", err, r.To)
	}
}

func fill(s []string) {
	for i := range s {
		s[i] = "a" + strings.Repeat("b", i) + "@x.test"
	}
}
