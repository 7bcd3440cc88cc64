package webhook

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"syncrelay/store"
	"syncrelay/store/bolt"
)

const secret = "whsec-test"

type delivery struct {
	header http.Header
	body   []byte
}

// receiver is a local webhook endpoint that answers the i-th request with
// codes[i] (the last code repeats).
type receiver struct {
	mu    sync.Mutex
	got   []delivery
	codes []int
	extra func(w http.ResponseWriter)
	srv   *httptest.Server
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	r := &receiver{codes: codes}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, delivery{req.Header.Clone(), b})
		code := r.codes[min(len(r.got)-1, len(r.codes)-1)]
		extra := r.extra
		r.mu.Unlock()
		if extra != nil {
			extra(w)
		}
		w.WriteHeader(code)
		io.WriteString(w, "receiver says "+strconv.Itoa(code))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func start(t *testing.T, st Store, o Options) (*Deliverer, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Secret = secret
	o.Registerer = reg
	if o.BaseDelay == 0 {
		o.BaseDelay = 10 * time.Millisecond
	}
	if o.MaxDelay == 0 {
		o.MaxDelay = 40 * time.Millisecond
	}
	o.PollInterval = 5 * time.Millisecond
	d, err := New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return d, reg, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func eventState(t *testing.T, st *bolt.Store, seq uint64) *store.Event {
	t.Helper()
	e, err := st.OutboxEvent(context.Background(), seq)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestRetryUntilDelivered(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	rcv := newReceiver(t, 500, 502, 503, 200)
	data := map[string]any{"message_id": "m-2", "thread_id": "th-1", "candidate": "c-1", "direction": "inbound",
		"auto_reply": false, "notify_users": []string{"u-rec", "u-hm"}}
	if err := st.Enqueue(context.Background(), "acme", "message.received", data); err != nil {
		t.Fatal(err)
	}
	_, reg, stop := start(t, st, Options{URL: rcv.srv.URL, MaxAttempts: 10})
	waitFor(t, "delivery", func() bool { return eventState(t, st, 1).State == store.EventDelivered })
	stop()

	got := rcv.deliveries()
	if len(got) != 4 {
		t.Fatalf("%d requests, want 4 (3 failures then success)", len(got))
	}
	for i, g := range got {
		if string(g.body) != string(got[0].body) {
			t.Fatalf("attempt %d body differs: the body must be identical on every attempt", i+1)
		}
		if g.header.Get(HeaderAttempt) != strconv.Itoa(i+1) || g.header.Get(HeaderEventID) != "evt-1" ||
			g.header.Get(HeaderEventType) != "message.received" || g.header.Get("Content-Type") != "application/json" {
			t.Fatalf("attempt %d headers %v", i+1, g.header)
		}
		if err := Verify([]byte(secret), g.header, g.body, time.Now(), 0); err != nil {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	// The body is exactly SPEC Appendix A's shape.
	var body map[string]any
	if err := json.Unmarshal(got[0].body, &body); err != nil {
		t.Fatal(err)
	}
	if len(body) != 5 || body["id"] != "evt-1" || body["type"] != "message.received" || body["tenant"] != "acme" {
		t.Fatalf("body %s", got[0].body)
	}
	if _, err := time.Parse(time.RFC3339, body["created_at"].(string)); err != nil {
		t.Fatalf("created_at: %v", err)
	}
	d := body["data"].(map[string]any)
	if d["message_id"] != "m-2" || d["thread_id"] != "th-1" || d["candidate"] != "c-1" || d["direction"] != "inbound" ||
		d["auto_reply"] != false || len(d["notify_users"].([]any)) != 2 {
		t.Fatalf("data %v", d)
	}
	if v := counter(t, reg, "retry"); v != 3 {
		t.Fatalf("retry count %v", v)
	}
	if v := counter(t, reg, "delivered"); v != 1 {
		t.Fatalf("delivered count %v", v)
	}
	e := eventState(t, st, 1)
	if e.Attempts != 4 || e.LastError != "" {
		t.Fatalf("final state %+v", e)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "syncrelay_webhook_deliveries_total" {
			continue
		}
		for _, m := range mf.Metric {
			if m.Label[0].GetValue() == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no counter for %s", outcome)
	return 0
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestDeadLetterAndRedeliver(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	rcv := newReceiver(t, 503)
	ctx := context.Background()
	if err := st.Enqueue(ctx, "beta", "grant.broken", map[string]any{"user": "u-b"}); err != nil {
		t.Fatal(err)
	}
	_, reg, stop := start(t, st, Options{URL: rcv.srv.URL, MaxAttempts: 3})
	waitFor(t, "dead letter", func() bool { return eventState(t, st, 1).State == store.EventDead })
	time.Sleep(100 * time.Millisecond) // longer than the backoff: no attempt after death
	if n := len(rcv.deliveries()); n != 3 {
		t.Fatalf("%d attempts, want exactly max_attempts=3", n)
	}
	e := eventState(t, st, 1)
	if !strings.Contains(e.LastError, "HTTP 503") || !strings.Contains(e.LastError, "receiver says 503") {
		t.Fatalf("last error %q", e.LastError)
	}
	if gauge(t, reg, "syncrelay_webhook_dead_letters") != 1 || gauge(t, reg, "syncrelay_webhook_outbox_pending") != 0 {
		t.Fatal("dead-letter gauges")
	}
	if v := counter(t, reg, "dead"); v != 1 {
		t.Fatalf("dead counter %v", v)
	}

	// The receiver is fixed; an operator redelivers.
	rcv.mu.Lock()
	rcv.codes = []int{204}
	rcv.mu.Unlock()
	if _, err := st.Redeliver(ctx, "", []uint64{1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redelivery", func() bool { return eventState(t, st, 1).State == store.EventDelivered })
	stop()
	got := rcv.deliveries()
	if len(got) != 4 || got[3].header.Get(HeaderAttempt) != "1" {
		t.Fatalf("redelivery: %d requests, attempt header %q", len(got), got[len(got)-1].header.Get(HeaderAttempt))
	}
	var body map[string]any
	_ = json.Unmarshal(got[3].body, &body)
	if body["tenant"] != "beta" || body["type"] != "grant.broken" {
		t.Fatalf("body %s", got[3].body)
	}
}

func TestRedirectIsAFailure(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	target := newReceiver(t, 200)
	rcv := newReceiver(t, http.StatusFound)
	rcv.extra = func(w http.ResponseWriter) { w.Header().Set("Location", target.srv.URL) }
	if err := st.Enqueue(context.Background(), "acme", "message.bounced", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	start(t, st, Options{URL: rcv.srv.URL, MaxAttempts: 1})
	waitFor(t, "dead letter", func() bool { return eventState(t, st, 1).State == store.EventDead })
	if len(target.deliveries()) != 0 {
		t.Fatal("redirect followed: a signed event went to an unconfigured URL")
	}
}

func TestUnreachableReceiverAndShutdown(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	// A receiver that hangs until the test releases it.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.WriteHeader(200)
	}))
	defer slow.Close()
	if err := st.Enqueue(context.Background(), "acme", "message.received", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	_, _, stop := start(t, st, Options{URL: slow.URL, Timeout: 5 * time.Second})
	waitFor(t, "claim", func() bool { return eventState(t, st, 1).Attempts == 1 })
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Run returned with a delivery in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-stopped
	if e := eventState(t, st, 1); e.State != store.EventDelivered {
		t.Fatalf("in-flight delivery outcome not recorded at shutdown: %+v", e)
	}

	// Connection refused is retried like any failure.
	st2 := openStore(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	if err := st2.Enqueue(context.Background(), "acme", "message.received", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	start(t, st2, Options{URL: url, MaxAttempts: 2})
	waitFor(t, "dead letter", func() bool { return eventState(t, st2, 1).State == store.EventDead })
	if e := eventState(t, st2, 1); !strings.Contains(e.LastError, "POST") {
		t.Fatalf("last error %q", e.LastError)
	}
}

func TestSignatures(t *testing.T) {
	t.Parallel()
	body := []byte(`{"id":"evt-1","type":"message.received","created_at":"2025-01-01T00:00:00Z","tenant":"acme","data":{}}`)
	now := time.Unix(1_700_000_000, 0)
	// Known answer: HMAC-SHA256("whsec-test", body), computed independently.
	h := http.Header{}
	h.Set(HeaderSignature, Sign([]byte(secret), body))
	if !strings.HasPrefix(h.Get(HeaderSignature), "sha256=") || len(h.Get(HeaderSignature)) != 7+64 {
		t.Fatalf("format %q", h.Get(HeaderSignature))
	}
	if err := Verify([]byte(secret), h, body, now, 0); err != nil {
		t.Fatalf("v1 only: %v", err)
	}
	if err := Verify([]byte("other"), h, body, now, 0); err != ErrBadSignature {
		t.Fatalf("wrong secret: %v", err)
	}
	tampered := append([]byte(nil), body...)
	tampered[10] = 'X'
	if err := Verify([]byte(secret), h, tampered, now, 0); err != ErrBadSignature {
		t.Fatalf("tampered body: %v", err)
	}
	h.Set(HeaderSignatureV2, SignV2([]byte(secret), now.Unix(), body))
	if err := Verify([]byte(secret), h, body, now.Add(time.Minute), 0); err != nil {
		t.Fatalf("v2: %v", err)
	}
	if err := Verify([]byte(secret), h, body, now.Add(10*time.Minute), 0); err != ErrStale {
		t.Fatalf("replayed after 10 min: %v", err)
	}
	// Moving the timestamp breaks the V2 signature.
	h.Set(HeaderSignatureV2, strings.Replace(h.Get(HeaderSignatureV2), "t=1700000000", "t=1700000600", 1))
	if err := Verify([]byte(secret), h, body, now.Add(10*time.Minute), 0); err != ErrBadSignature {
		t.Fatalf("moved timestamp: %v", err)
	}
}

func TestSignatureKnownAnswer(t *testing.T) {
	t.Parallel()
	// RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
	got := Sign([]byte("Jefe"), []byte("what do ya want for nothing?"))
	if got != "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
		t.Fatal(got)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	d := &Deliverer{o: Options{BaseDelay: 30 * time.Second, MaxDelay: time.Hour}}
	for attempt, want := range map[int]time.Duration{1: 30 * time.Second, 2: time.Minute, 3: 2 * time.Minute, 8: time.Hour, 40: time.Hour} {
		for i := 0; i < 20; i++ {
			got := d.backoff(attempt, 0)
			if got < want/2 || got > want {
				t.Fatalf("attempt %d: %v not in [%v, %v]", attempt, got, want/2, want)
			}
		}
	}
	if got := d.backoff(1, 10*time.Minute); got != 10*time.Minute {
		t.Fatalf("Retry-After not honoured: %v", got)
	}
	if got := d.backoff(1, 48*time.Hour); got != time.Hour {
		t.Fatalf("Retry-After not capped: %v", got)
	}
	now := time.Now()
	if parseRetryAfter("120", now) != 2*time.Minute || parseRetryAfter(now.Add(time.Hour).UTC().Format(http.TimeFormat), now) < 59*time.Minute || parseRetryAfter("soon", now) != 0 {
		t.Fatal("parseRetryAfter")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	for _, o := range []Options{{}, {URL: "ftp://x", Secret: "s"}, {URL: "http://127.0.0.1:1/"}} {
		if _, err := New(st, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	if got := redactURL("https://user:pw@hooks.test/x?token=abc"); got != "https://hooks.test/x" {
		t.Fatal(got)
	}
}
