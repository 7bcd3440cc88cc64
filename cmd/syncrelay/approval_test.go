package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"syncrelay/devmode"
	"syncrelay/internal/testenv"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// TestServeDevSendForApprovalByEmail: the daemon wires Send For approval
// by email (SPEC §7a): with `serve -dev`, a tenant set to
// delegation_approval "email" gets, on a request, an email through the
// requester's grant (recorded by the dev Gmail stand-in) whose link opens
// /p/delegation on the daemon's own listener, and Approve there makes the
// delegation active in the API.
func TestServeDevSendForApprovalByEmail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir, "-dev", "-config", writeConfig(t, dir, ""))
	waitStdout(t, d, "dev mode is ready")
	d.Token = readToken(t, filepath.Join(dir, "data"))
	st, err := devmode.ReadState(filepath.Join(dir, "data", devmode.StateFileName))
	must(t, err)
	base := "http://" + d.HTTP
	call := func(actor, method, path, body string, want int) map[string]any {
		t.Helper()
		code, m, raw := testenv.Call(t, base, d.Token, actor, method, path, body)
		if code != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, code, want, raw)
		}
		return m
	}
	call("", "POST", "/v1/tenants", `{"id":"sf","name":"SF","domains":["sf.test"],"provider":"google","delegation_approval":"email"}`, 201)
	call("", "POST", "/v1/tenants/sf/users", `{"id":"u-rec","email":"rec@sf.test","name":"Rita","role":"team_member"}`, 201)
	call("", "POST", "/v1/tenants/sf/users", `{"id":"u-hm","email":"hm@sf.test","name":"Hugo","role":"team_member"}`, 201)
	// Consent through the dev stand-in (approves at once; redirects followed).
	if code, _, raw := testenv.Do(t, base, d.Token, "u-rec", "GET", "/oauth/google/start?tenant=sf&user=u-rec", ""); code != 200 || !bytes.Contains(raw, []byte("connected")) {
		t.Fatalf("consent: %d %s", code, raw)
	}

	dl := call("u-rec", "POST", "/v1/tenants/sf/delegations", `{"requester":"u-rec","grantor":"u-hm"}`, 201)
	if ae, _ := dl["approval_email"].(map[string]any); ae["status"] != "sent" {
		t.Fatalf("approval_email %v", dl["approval_email"])
	}

	// The email, as the Gmail stand-in recorded it.
	resp, err := http.Get(st.GoogleSentURL)
	must(t, err)
	var sent []struct{ Raw []byte }
	must(t, json.NewDecoder(resp.Body).Decode(&sent))
	resp.Body.Close()
	var link string
	for _, s := range sent {
		mr, err := gomail.CreateReader(bytes.NewReader(s.Raw))
		if err != nil {
			continue
		}
		if to, _ := mr.Header.AddressList("To"); len(to) != 1 || to[0].Address != "hm@sf.test" {
			continue
		}
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(p.Body)
			if l := regexp.MustCompile(`http://\S+/p/delegation\?t=\S+`).FindString(string(b)); l != "" {
				link = l
				break
			}
		}
	}
	if !strings.HasPrefix(link, base+"/p/delegation?t=") {
		t.Fatalf("no approval link to %s in the stand-in's mail: %q", base, link)
	}

	// The grantor's browser, without JavaScript.
	jar, _ := cookiejar.New(nil)
	b := &http.Client{Jar: jar}
	resp, err = b.Get(link)
	must(t, err)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte("rec@sf.test")) || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("page %d:\n%s", resp.StatusCode, page)
	}
	form := url.Values{"action": {"approve"}}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="(\w+)" value="([^"]*)">`).FindAllStringSubmatch(string(page), -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	resp, err = b.PostForm(base+"/p/delegation", form)
	must(t, err)
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte("You approved")) {
		t.Fatalf("approve %d:\n%s", resp.StatusCode, page)
	}
	if got := call("", "GET", "/v1/tenants/sf/delegations/"+dl["id"].(string), "", 200); got["status"] != "active" {
		t.Fatalf("after approval: %v", got)
	}
}

// TestServeDevApprovalEmailAfterRestart: the daemon stopped after it
// committed a Send For request and before the approval email went (the
// store holds it queued, under the request's lease). Restarted on the same
// store, the daemon's queue sends it once the lease ends, once, and GET of
// the delegation shows it sent.
func TestServeDevApprovalEmailAfterRestart(t *testing.T) {
	// On ports of its own (a config), it mostly waits for the lease; it
	// goes parallel once the restarted daemon's clock runs (see below).
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := writeConfig(t, dir, "")
	d := startDaemon(t, dir, "-dev", "-config", cfg)
	waitStdout(t, d, "dev mode is ready")
	d.Token = readToken(t, data)
	call := func(d *testenv.Daemon, method, path, body string, want int) map[string]any {
		t.Helper()
		code, m, raw := testenv.Call(t, "http://"+d.HTTP, d.Token, "", method, path, body)
		if code != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, code, want, raw)
		}
		return m
	}
	call(d, "POST", "/v1/tenants", `{"id":"sf","name":"SF","domains":["sf.test"],"provider":"google","delegation_approval":"email"}`, 201)
	call(d, "POST", "/v1/tenants/sf/users", `{"id":"u-rec","email":"rec@sf.test","name":"Rita","role":"team_member"}`, 201)
	call(d, "POST", "/v1/tenants/sf/users", `{"id":"u-hm","email":"hm@sf.test","name":"Hugo","role":"team_member"}`, 201)
	if code := d.Stop(t); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}

	// What a crash between the request's commit and its send leaves: the
	// email is due when the lease ends, leaseLeft from now. The restarted
	// daemon's queue looks at its start and then every 2 s
	// (delegation.DefaultPollInterval). The start comes a fraction of a
	// second from now (0.13-0.25 s to "ready" measured while the package's
	// parallel tests ran), before the email is due; the look 2 s later is
	// after it, and takes it. Reconnecting Rita below must end between the
	// two looks: it ends 0.01 s after "ready". (4 s, as this was, made it
	// the third look, 2 s later.)
	const leaseLeft = 2 * time.Second
	st, err := bolt.Open(data, bolt.Options{})
	must(t, err)
	dl := &store.Delegation{Tenant: "sf", Requester: "u-rec", Grantor: "u-hm",
		ApprovalEmail: &store.ApprovalMail{Status: store.EmailQueued, Via: "u-rec", To: "u-hm", Attempts: 1, NextAttempt: time.Now().Add(leaseLeft)}}
	must(t, st.CreateDelegation(context.Background(), dl, "u-rec"))
	must(t, st.Close())

	d2 := startDaemon(t, dir, "-dev", "-config", cfg)
	waitStdout(t, d2, "dev mode is ready")
	d2.Token = d.Token
	// The dev stand-in is new with the process: connect Rita again before
	// the lease ends.
	if code, _, raw := testenv.Do(t, "http://"+d2.HTTP, d2.Token, "u-rec", "GET", "/oauth/google/start?tenant=sf&user=u-rec", ""); code != 200 || !bytes.Contains(raw, []byte("connected")) {
		t.Fatalf("consent: %d %s", code, raw)
	}
	// The rest waits for the daemon's queue, which runs on its own clock
	// now: parallel from here, the test holds no slot of -parallel while
	// the lease runs out, and a slot taken late (Go orders the parallel
	// tests as it likes) no longer ends the package 3 s after it.
	t.Parallel()
	ds, err := devmode.ReadState(filepath.Join(data, devmode.StateFileName))
	must(t, err)
	path := "/v1/tenants/sf/delegations/" + store.DelegationRef(dl.ID)
	deadline := time.Now().Add(45 * time.Second)
	var sentAt time.Time
	for {
		g := call(d2, "GET", path, "", 200)
		ae, _ := g["approval_email"].(map[string]any)
		if ae["status"] == "sent" {
			sentAt, err = time.Parse(time.RFC3339Nano, fmt.Sprint(ae["sent_at"]))
			if err != nil {
				t.Fatalf("approval_email %v: sent_at: %v", ae, err)
			}
			break
		}
		if ae["status"] != "queued" || time.Now().After(deadline) {
			t.Fatalf("approval_email %v\n%s", ae, d2.Logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A second email would be recorded within a second of the first: count
	// once that second has passed since the send (sent_at, recorded after
	// it), not a second from now, as the test may get its slot long after
	// the send.
	time.Sleep(time.Until(sentAt.Add(time.Second)))
	resp, err := http.Get(ds.GoogleSentURL)
	must(t, err)
	var sent []struct{ Raw []byte }
	must(t, json.NewDecoder(resp.Body).Decode(&sent))
	resp.Body.Close()
	n := 0
	for _, s := range sent {
		if bytes.Contains(s.Raw, []byte("hm@sf.test")) && bytes.Contains(s.Raw, []byte("/p/delegation?t=")) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d approval emails recorded by the stand-in, want 1", n)
	}
}
