package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/pgtest"
	"syncrelay/internal/testenv"
	"syncrelay/outbound/providertest"
	"syncrelay/store"
	"syncrelay/store/postgres"
	"syncrelay/token"
)

// TestTwoNodesOnePostgres runs two real `syncrelay serve` processes with
// the same config, DSN and secret key: a tenant created through node A is
// accepted by node B at once, the same copy delivered to both at once is
// stored once, and mail delivered to node B is on the timeline (and its
// raw bytes) read through node A.
func TestTwoNodesOnePostgres(t *testing.T) {
	t.Parallel() // its own nodes, database and ports; it mostly waits
	n := startTwoNodes(t, "")
	a, b, inbound, reply := n.a, n.b, n.inbound, n.reply

	// The same copy reaching both nodes at once is stored once.
	for i := range 5 {
		msg := reply(fmt.Sprintf("both%d", i), "Both nodes.")
		var wg sync.WaitGroup
		got := make([]string, 2)
		for j, n := range []*testenv.Daemon{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); got[j] = deliver(t, n.SMTP, inbound, msg) }()
		}
		wg.Wait()
		if strings.Join(got, "|") != "2.0.0 OK: stored (reason=token)|2.0.0 OK: duplicate (reason=duplicate)" && strings.Join(got, "|") != "2.0.0 OK: duplicate (reason=duplicate)|2.0.0 OK: stored (reason=token)" {
			t.Errorf("copy %d on both nodes: %q", i, got)
		}
	}

	// Mail delivered to B is on the timeline read through A, bytes too.
	if got := deliver(t, b.SMTP, inbound, reply("viaB", "Delivered to B.")); got != "2.0.0 OK: stored (reason=token)" {
		t.Fatalf("delivery to B: %q", got)
	}
	code, threads := actingGet(t, a, "/v1/tenants/acme/candidates/c-1/threads")
	if code != 200 {
		t.Fatalf("threads on A: %d %v", code, threads)
	}
	th := threads["threads"].([]any)[0].(map[string]any)
	code, full := actingGet(t, a, "/v1/tenants/acme/threads/"+th["id"].(string)+"/messages?limit=100")
	if code != 200 {
		t.Fatalf("thread messages on A: %d %v", code, full)
	}
	var viaB string
	msgs := full["messages"].([]any)
	for _, m := range msgs {
		if m := m.(map[string]any); m["text"] == "Delivered to B." {
			viaB = m["id"].(string)
		}
	}
	if len(msgs) != 1+5+1 || viaB == "" {
		t.Fatalf("A's timeline has %d messages (want 7, one delivered to B): %v", len(msgs), msgs)
	}
	req, _ := http.NewRequest("GET", "http://"+a.HTTP+"/v1/tenants/acme/messages/"+viaB+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+a.Token)
	req.Header.Set("X-Acting-User", "u-rec")
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(raw, []byte("Delivered to B.")) {
		t.Errorf("raw of B's message through A: %d %q", resp.StatusCode, raw)
	}
}

// twoNodes are two real nodes on one database, with a tenant, a user, a
// candidate and a thread started in syncrelay.
type twoNodes struct {
	a, b    *testenv.Daemon
	dir     string   // the nodes' working directory
	cfg     string   // their config file
	env     []string // added to their environment (secrets)
	dsn     string
	inbound string
	// reply is a DKIM-signed reply on the thread with Message-ID <id@cand.test>.
	reply func(id, body string) []byte
}

func startTwoNodes(t *testing.T, extra string) *twoNodes {
	t.Helper()
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	// The nodes' environment, not the test's (t.Setenv): the tests run in
	// parallel.
	env := []string{config.EnvSecretKey + "=" + multinodeKey, config.EnvAPITokens + "=multinode-token-0123456789abcdef"}
	dkimKey, txt := dkimtest.RSA(t, 0)
	zone := filepath.Join(dir, "zone.txt")
	must(t, os.WriteFile(zone, []byte(fmt.Sprintf("s1._domainkey.cand.test TXT %q\n", txt)), 0o600))
	cfgPath := writeConfig(t, dir, fmt.Sprintf("backend = \"postgres\"\ndsn = %q\n[dns]\nzone_file = %q\n%s", dsn, zone, extra))
	n := &twoNodes{dir: dir, cfg: cfgPath, env: env}
	a, b := n.start(t), n.start(t)
	a.Token, b.Token = "multinode-token-0123456789abcdef", "multinode-token-0123456789abcdef"

	code, ten := a.API(t, "POST", "/v1/tenants", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`)
	if code != 201 {
		t.Fatalf("create tenant on A: %d %v", code, ten)
	}
	inbound := ten["inbound_address"].(string)
	// Node B accepts the new tenant's address at once (no 550 5.1.1).
	if got := deliver(t, b.SMTP, inbound, []byte("From: x@else.test\r\nMessage-ID: <u1@else.test>\r\nSubject: x\r\n\r\nnot of interest\r\n")); got != "2.0.0 OK: discarded (reason=no_match)" {
		t.Fatalf("node B, tenant created on A: %q", got)
	}
	if code, _ := b.API(t, "POST", "/v1/tenants/acme/candidates", `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`); code != 201 {
		t.Fatalf("create candidate on B: %d", code)
	}
	if code, _ := a.API(t, "POST", "/v1/tenants/acme/users", `{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"admin"}`); code != 201 {
		t.Fatalf("create user on A: %d", code)
	}

	// A thread started in syncrelay, as the ATS would through the API.
	refs := seedThread(t, cfgPath, dsn)
	signer := &dkim.SignOptions{Domain: "cand.test", Selector: "s1", Signer: dkimKey,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}
	reply := func(id, body string) []byte {
		raw := fmt.Sprintf("From: carl@cand.test\r\nTo: rec@acme.test\r\nSubject: Re: hello\r\nMessage-ID: <%s@cand.test>\r\nReferences: %s\r\n\r\n%s\r\n", id, refs, body)
		var out bytes.Buffer
		must(t, dkim.Sign(&out, strings.NewReader(raw), signer))
		return out.Bytes()
	}
	n.a, n.b, n.dsn, n.inbound, n.reply = a, b, dsn, inbound, reply
	return n
}

// actingGet is a GET through the API as the tenant's admin u-rec.
func actingGet(t *testing.T, d *testenv.Daemon, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+d.HTTP+path, nil)
	req.Header.Set("Authorization", "Bearer "+d.Token)
	req.Header.Set("X-Acting-User", "u-rec")
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// seedThread records a sent message (and its thread) in the shared
// database with the nodes' key, and returns its Message-ID as References.
func seedThread(t *testing.T, cfgPath, dsn string) string {
	t.Helper()
	c, err := config.Load(cfgPath)
	must(t, err)
	c.Secrets.Key, err = hex.DecodeString(multinodeKey) // the nodes have it from their environment
	must(t, err)
	keys, _, err := daemon.LoadKeys(c, false)
	must(t, err)
	kr, err := token.New(keys.Token, c.SMTP.Hostname)
	must(t, err)
	st, err := postgres.Open(context.Background(), dsn, postgres.Options{})
	must(t, err)
	defer st.Close()
	th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec"}
	m := store.Message{From: "rec@acme.test", SentBy: "u-rec", Status: "sent"}
	must(t, st.CreateOutbound(context.Background(), &th, &m, func(thread, id uint64) (string, string) {
		conv := kr.ConversationIndex("acme", thread)
		return strings.Trim(kr.MessageID(token.ID{Tenant: "acme", Thread: thread, Message: id}), "<>"), hex.EncodeToString(conv[:])
	}))
	return "<" + m.InternetMessageID + ">"
}

// multinodeKey is the nodes' shared secret key (config.EnvSecretKey).
var multinodeKey = strings.Repeat("ab", config.SecretKeySize)

// start starts one more node (or a node again).
func (n *twoNodes) start(t *testing.T) *testenv.Daemon {
	t.Helper()
	return testenv.StartBinary(t, bins.Syncrelay, testenv.Proc{Dir: n.dir, Args: []string{"-config", n.cfg}, Env: n.env})
}

// deliver sends one message over a new SMTP session and returns the reply
// text of DATA (or the error).
func deliver(t *testing.T, addr, rcpt string, msg []byte) string {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err.Error()
	}
	if err := c.Mail("fwd@acme.test", nil); err != nil {
		return err.Error()
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err.Error()
	}
	w, err := c.Data()
	if err != nil {
		return err.Error()
	}
	w.Write(msg)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return err.Error()
	}
	c.Quit()
	return resp.StatusText
}

// TestKill9OneNodeLosesNothing: several SMTP clients deliver to both
// nodes; node A is killed with SIGKILL mid-load (and restarted, for the
// next cycle). Every message that got a 250 from either node is in the
// database with its bytes, and node B keeps storing mail while A is down.
// One cycle by default; SYNCRELAY_CRASH_CYCLES=20 for the long version.
func TestKill9OneNodeLosesNothing(t *testing.T) {
	t.Parallel() // its own nodes, database and ports; it mostly waits
	cycles := 1
	if v, err := strconv.Atoi(os.Getenv("SYNCRELAY_CRASH_CYCLES")); err == nil && v > 0 {
		cycles = v
	}
	n := startTwoNodes(t, "")
	type ack struct{ id, text string }
	var (
		mu     sync.Mutex
		acks   []ack
		a      = n.a // the node killed and restarted (under mu)
		aDown  bool  // a is dead (under mu)
		afterB int   // messages B stored while A was down (under mu)
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	for c := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				node, down := a, aDown
				mu.Unlock()
				if (c+i)%2 == 1 {
					node = n.b
				}
				id := fmt.Sprintf("k%d.%d", c, i)
				got := deliver(t, node.SMTP, n.inbound, n.reply(id, "Load "+id+"."))
				if !strings.HasPrefix(got, "2.0.0 OK: stored") {
					continue // refused or cut by the kill: the sender retries it
				}
				mu.Lock()
				acks = append(acks, ack{id, got})
				if down && node == n.b {
					afterB++
				}
				mu.Unlock()
			}
		}()
	}
	waitAcks := func(k int) {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			got := len(acks)
			mu.Unlock()
			if got >= k {
				return
			}
		}
		t.Fatalf("fewer than %d acknowledged messages", k)
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	for cycle := range cycles {
		waitAcks(count() + 40)
		mu.Lock()
		victim := a
		mu.Unlock()
		victim.Kill9(t)
		mu.Lock()
		aDown = true
		mu.Unlock()
		waitAcks(count() + 20) // B serves alone
		if cycle < cycles-1 {
			restarted := n.start(t)
			mu.Lock()
			a, aDown = restarted, false
			mu.Unlock()
		}
	}
	close(stop)
	wg.Wait()
	if afterB == 0 {
		t.Fatal("node B stored nothing while node A was down")
	}

	st, err := postgres.Open(context.Background(), n.dsn, postgres.Options{})
	must(t, err)
	defer st.Close()
	ctx := context.Background()
	for _, a := range acks {
		ref, ok, err := st.LookupMsgID(ctx, "acme", a.id+"@cand.test")
		if err != nil || !ok {
			t.Errorf("LOST: %s answered %q is not in the database (%v)", a.id, a.text, err)
			continue
		}
		m, err := st.Message(ctx, "acme", ref.Message)
		must(t, err)
		f, err := st.OpenRaw(ctx, m.Raw)
		if err != nil {
			t.Errorf("%s: raw %q: %v", a.id, m.Raw, err)
			continue
		}
		raw, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Contains(raw, []byte("Load "+a.id+".")) || int64(len(raw)) != m.Size {
			t.Errorf("%s: raw bytes (%d, record says %d) are not its message", a.id, len(raw), m.Size)
		}
	}
	t.Logf("%d acknowledged messages verified after %d kills (%d stored by B while A was down)", len(acks), cycles, afterB)
}

// TestWebhooksAcrossNodeRestarts: with both nodes delivering webhooks from
// the shared outbox, every message.received event reaches the ATS (at
// least once, de-duplicable by id) while node A stops and starts again.
func TestWebhooksAcrossNodeRestarts(t *testing.T) {
	t.Parallel() // its own nodes, database and ports; it mostly waits
	var mu sync.Mutex
	got := map[string]int{} // event id -> deliveries
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		}
		if json.NewDecoder(r.Body).Decode(&ev) == nil && ev.Type == "message.received" {
			mu.Lock()
			got[ev.ID]++
			mu.Unlock()
		}
	}))
	defer hook.Close()
	// The secret in the config, not the environment: seedThread loads the
	// config in this process, and the tests run in parallel (no t.Setenv).
	n := startTwoNodes(t, fmt.Sprintf("[webhooks]\nurl = %q\nsecret = \"multinode-webhook-secret\"\n", hook.URL+"/hook"))

	stored := 0
	send := func(node *testenv.Daemon, from, to int) {
		for i := from; i < to; i++ {
			id := fmt.Sprintf("w%d", i)
			if r := deliver(t, node.SMTP, n.inbound, n.reply(id, "Hook "+id+".")); r != "2.0.0 OK: stored (reason=token)" {
				t.Fatalf("%s: %q", id, r)
			}
			stored++
		}
	}
	send(n.a, 0, 10)
	send(n.b, 10, 20)
	stopped := time.Now()
	must(t, n.a.Signal(syscall.SIGTERM))
	if code := n.a.Wait(t); code != 0 {
		t.Fatalf("node A exit %d", code)
	}
	send(n.b, 20, 30) // only B delivers now
	a2 := n.start(t)
	send(a2, 30, 40)
	send(n.b, 40, 50)

	// The receiver never fails and node A stops gracefully, so no event
	// has to wait for a retry (webhooks.timeout and its backoff) or for a
	// claim's lease (webhooks.timeout + 30 s) to run out: a stop finishes
	// what it claimed. 30 s after the last message is ample for the rest.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k == stored {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d of %d message.received events delivered; node A was stopped %v ago", k, stored, time.Since(stopped).Round(time.Millisecond))
			reportUndelivered(t, n.dsn, func(id string) bool { mu.Lock(); defer mu.Unlock(); return got[id] > 0 })
			t.FailNow()
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	dups := 0
	for _, c := range got {
		dups += c - 1
	}
	t.Logf("%d events delivered (%d delivered twice)", len(got), dups)
}

// reportUndelivered logs, for each message.received event in the outbox
// the receiver has not seen, its outbox state: a claim abandoned by a
// stopping node (attempts > 0, no error, next attempt = claim + lease)
// reads differently from a failed attempt waiting for its retry.
func reportUndelivered(t *testing.T, dsn string, seen func(id string) bool) {
	t.Helper()
	st, err := postgres.Open(context.Background(), dsn, postgres.Options{})
	if err != nil {
		t.Errorf("open the outbox: %v", err)
		return
	}
	defer st.Close()
	evs, err := st.Events(context.Background(), "")
	if err != nil {
		t.Errorf("list the outbox: %v", err)
		return
	}
	now := time.Now()
	for _, ev := range evs {
		if ev.Type != "message.received" || seen(ev.ID) {
			continue
		}
		next := "none"
		if !ev.NextAttempt.IsZero() {
			next = fmt.Sprintf("in %v", ev.NextAttempt.Sub(now).Round(time.Millisecond))
		}
		t.Errorf("missing %s: state %s, attempts %d, next attempt %s, last error %q, created %v ago",
			ev.ID, ev.State, ev.Attempts, next, ev.LastError, now.Sub(ev.Created).Round(time.Millisecond))
	}
}

// TestConsentAndIdempotencyAcrossNodes: the OAuth consent started on node
// A completes on node B (its state is in the database), a second use of
// the state fails on either node, and an API send with the same
// Idempotency-Key sent to both nodes at once reaches the provider once.
func TestConsentAndIdempotencyAcrossNodes(t *testing.T) {
	t.Parallel() // its own nodes, database and ports; it mostly waits
	stub := providertest.Start(t, "google")
	n := startTwoNodes(t, fmt.Sprintf(`[providers.google]
client_id = %q
client_secret = %q
redirect_url = "http://relay.test/oauth/google/callback"
auth_url = %q
token_url = %q
api_base = %q
`, providertest.ClientID, providertest.ClientSecret, stub.AuthURL(), stub.TokenURL(), stub.APIBase()))

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+n.a.HTTP+"/oauth/google/start?tenant=acme&user=u-rec", nil)
	req.Header.Set("Authorization", "Bearer "+n.a.Token)
	req.Header.Set("X-Acting-User", "u-rec")
	resp, err := noFollow.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("consent start on A: %d", resp.StatusCode)
	}
	cb, err := url.Parse(stub.Authorize(t, resp.Header.Get("Location")))
	must(t, err)
	callback := func(node *testenv.Daemon) int {
		u := *cb
		u.Host = node.HTTP // the load balancer may pick any node
		r, err := http.Get(u.String())
		must(t, err)
		r.Body.Close()
		return r.StatusCode
	}
	if code := callback(n.b); code != 200 {
		t.Fatalf("consent callback on B: %d", code)
	}
	for _, node := range []*testenv.Daemon{n.a, n.b} {
		if code := callback(node); code < 400 {
			t.Errorf("second use of the OAuth state: %d", code)
		}
	}

	send := func(node *testenv.Daemon) int {
		req, _ := http.NewRequest("POST", "http://"+node.HTTP+"/v1/tenants/acme/messages",
			strings.NewReader(`{"candidate":"c-1","subject":"Interview","text":"Hello Carl","kind":"one_off"}`))
		req.Header.Set("Authorization", "Bearer "+node.Token)
		req.Header.Set("X-Acting-User", "u-rec")
		req.Header.Set("Idempotency-Key", "once-across-nodes")
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		r.Body.Close()
		return r.StatusCode
	}
	codes := make([]int, 2)
	var wg sync.WaitGroup
	for i, node := range []*testenv.Daemon{n.a, n.b} {
		wg.Add(1)
		go func() { defer wg.Done(); codes[i] = send(node) }()
	}
	wg.Wait()
	// One node sends (201); the other replays it (201) or says the same
	// request is in progress (409).
	for _, c := range codes {
		if c != 201 && c != 409 {
			t.Errorf("send codes %v", codes)
		}
	}
	if got := len(stub.Requests()); got != 1 {
		t.Errorf("%d provider sends for one Idempotency-Key on two nodes (codes %v)", got, codes)
	}
}
