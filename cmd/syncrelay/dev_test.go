package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syncrelay/internal/testenv"
	"syscall"
	"testing"
	"time"
)

// readmeTryingIt returns the `go run ./cmd/syncrelay ...` commands of the
// README's "Trying it" section, as argument lists.
func readmeTryingIt(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	must(t, err)
	_, sec, ok := strings.Cut(string(b), "\n## Trying it\n")
	if !ok {
		t.Fatal("README has no \"Trying it\" section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var cmds [][]string
	for _, line := range strings.Split(sec, "\n") {
		if rest, ok := strings.CutPrefix(line, "    go run ./cmd/syncrelay "); ok {
			cmds = append(cmds, strings.Fields(rest))
		}
	}
	return cmds
}

// TestReadmeTryingIt runs the README's "Trying it" commands against the
// real binary in a fresh directory, as a newcomer would, and checks the
// loop independently through the API.
func TestReadmeTryingIt(t *testing.T) {
	defaultPorts(t)
	cmds := readmeTryingIt(t)
	if len(cmds) != 2 || cmds[0][0] != "serve" || cmds[1][0] != "demo" {
		t.Fatalf("README's Trying it: want `serve ...` then `demo ...`, got %q", cmds)
	}
	dir := t.TempDir()
	d := startDaemon(t, dir, cmds[0][1:]...)
	waitStdout(t, d, "dev mode is ready")
	out := d.Stdout.String()
	if !strings.Contains(out, "NOT FOR PRODUCTION") || !strings.Contains(d.Logs.String(), "DEV MODE: NOT FOR PRODUCTION") {
		t.Errorf("not marked as dev mode:\n%s\n%s", out, d.Logs)
	}
	// First-run output names the README's next command.
	if !strings.Contains(out, "go run ./cmd/syncrelay "+strings.Join(cmds[1], " ")) {
		t.Errorf("first-run output does not say what to do next:\n%s", out)
	}
	if !strings.Contains(d.SMTP, "127.0.0.1:") || !strings.Contains(d.HTTP, "127.0.0.1:") {
		t.Errorf("listening on %s / %s", d.SMTP, d.HTTP)
	}

	demo := func() (string, error) {
		c := exec.Command(bins.Syncrelay, cmds[1]...)
		c.Dir = dir
		b, err := c.CombinedOutput()
		return string(b), err
	}
	dout, err := demo()
	if err != nil {
		t.Fatalf("demo: %v\n%s\ndaemon:\n%s", err, dout, d.Logs)
	}
	for _, want := range []string{"status sent", "consent approved", "the Gmail stand-in received it", "250 2.0.0 OK: stored",
		"250 2.0.0 OK: discarded", `"from": "carl@cand.test"`, "stored/token", "discarded/no_match", "curl ",
		"approval_email: sent", "the Gmail stand-in received the email to hugo@acme.test"} {
		if !strings.Contains(dout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, dout)
		}
	}
	// The Send For step printed the emailed approval link: it opens the page.
	link := regexp.MustCompile(`http://\S+/p/delegation\?t=\S+`).FindString(dout)
	if link == "" {
		t.Fatalf("demo printed no approval link:\n%s", dout)
	}
	resp, err := http.Get(link)
	must(t, err)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "Approve") || !strings.Contains(string(page), "rita@acme.test") {
		t.Fatalf("approval page %d:\n%s", resp.StatusCode, page)
	}

	// The API agrees: the signed reply is on the candidate's thread, the
	// stranger nowhere.
	d.Token = readToken(t, filepath.Join(dir, "data"))
	checkTimeline(t, timelineAs(t, d, "u-rita"), 1)
	code, st := d.API(t, "GET", "/v1/tenants/acme/status", "")
	reasons, _ := st["last_hour"].(map[string]any)["reasons"].(map[string]any)
	if code != 200 || reasons["stored/token"] != 1.0 || reasons["discarded/no_match"] != 1.0 {
		t.Errorf("status %d %v", code, st)
	}
	// Nothing of the discarded message is logged.
	for _, s := range []string{"deals@shop.test", "50% off", "Buy now"} {
		if strings.Contains(d.Logs.String(), s) {
			t.Errorf("log carries %q of the discarded message", s)
		}
	}

	// The demo can be run again: it adds a thread.
	if dout, err := demo(); err != nil {
		t.Fatalf("second demo: %v\n%s", err, dout)
	}
	checkTimeline(t, timelineAs(t, d, "u-rita"), 2)

	// Stopping removes the state file; the demo then says what to do.
	must(t, d.Cmd.Process.Signal(syscall.SIGTERM))
	if code := d.Wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Logs)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "dev-mode.json")); !os.IsNotExist(err) {
		t.Errorf("dev-mode.json left behind: %v", err)
	}
	if dout, err := demo(); err == nil || !strings.Contains(dout, "serve -dev") {
		t.Errorf("demo without a daemon: %v\n%s", err, dout)
	}
}

func timelineAs(t *testing.T, d *testenv.Daemon, user string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+d.HTTP+"/v1/tenants/acme/candidates/c-carl/threads", nil)
	req.Header.Set("Authorization", "Bearer "+d.Token)
	req.Header.Set("X-Acting-User", user)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	var m map[string]any
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&m) != nil {
		t.Fatalf("timeline: %d", resp.StatusCode)
	}
	return m
}

// checkTimeline wants n threads, each with the outbound message and Carl's
// DKIM-passing reply, and no message from the stranger.
func checkTimeline(t *testing.T, tl map[string]any, n int) {
	t.Helper()
	threads, _ := tl["threads"].([]any)
	if len(threads) != n {
		t.Fatalf("want %d threads: %v", n, tl)
	}
	for _, x := range threads {
		msgs, _ := x.(map[string]any)["messages"].([]any)
		var reply bool
		for _, y := range msgs {
			m := y.(map[string]any)
			if m["from"] == "deals@shop.test" {
				t.Errorf("the stranger's message is on the timeline: %v", m)
			}
			if m["direction"] == "inbound" && m["from"] == "carl@cand.test" && strings.Contains(fmt.Sprint(m["dkim"]), "pass") {
				reply = true
			}
		}
		if len(msgs) != 2 || !reply {
			t.Errorf("thread %v", x)
		}
	}
}

func waitStdout(t *testing.T, d *testenv.Daemon, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(d.Stdout.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on stdout:\n%s\n%s", s, d.Stdout, d.Logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeDevRefusesNonLoopback: dev mode's stand-ins accept anyone, so
// it never listens beyond loopback, and refuses before touching the store.
func TestServeDevRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, smtp, http string }{
		{"smtp wildcard", "0.0.0.0:0", "127.0.0.1:0"},
		{"smtp no host", ":0", "127.0.0.1:0"},
		{"http wildcard", "127.0.0.1:0", "[::]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "syncrelay.toml")
			must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("[smtp]\nlisten = %q\n[http]\nlisten = %q\n[store]\ndir = %q\n",
				tc.smtp, tc.http, filepath.Join(dir, "data"))), 0o600))
			out, err := exec.Command(bins.Syncrelay, "serve", "-dev", "-config", cfg).CombinedOutput()
			var ee *exec.ExitError
			if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "loopback") {
				t.Fatalf("serve -dev on %s / %s: %v\n%s", tc.smtp, tc.http, err, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
				t.Errorf("store created before refusing: %v", err)
			}
		})
	}
}
