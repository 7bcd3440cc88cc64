package main

import (
	"bytes"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/internal/dnstest"
	"syncrelay/internal/testenv"
	"syncrelay/store"
)

// smtpSend delivers raw to rcpt over real SMTP and returns the reply to
// DATA.
func smtpSend(t *testing.T, addr, rcpt, raw string) (int, string) {
	t.Helper()
	return testenv.Send(t, addr, testenv.Envelope{Helo: "mx.forwarder.test", From: "fwd@acme.test", To: []string{rcpt}}, raw)
}

// leakRE matches internal detail an SMTP reply must not carry.
var leakRE = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|/|(?i)lookup|no such host|zone|dnsres`)

// TestProviderSigningDomainsStatusAndCheck runs the real binary: a Google
// tenant's own mail signed only by Google's default gappssmtp domain is
// stored over SMTP; look-alikes are refused, without internal detail in
// the reply, and show up as dkim_unaligned in the status and in `check
// -tenant`; signing_domains set over HTTP makes acme.onmicrosoft.com
// count; a forward-everything rule shows as over_forwarding.
func TestProviderSigningDomainsStatusAndCheck(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyRequire)
	const (
		gapps = "acme-test.20230601.gappssmtp.com"
		evil  = "acme-test.evil.gappssmtp.com"
		ms    = "acme.onmicrosoft.com"
		nokey = "nokey.test"
	)
	signers := map[string]crypto.Signer{}
	var zone strings.Builder
	for _, d := range []string{gapps, evil, ms, nokey} {
		key, txt := dnstest.GenEd25519(t)
		signers[d] = key
		if d != nokey {
			fmt.Fprintf(&zone, "s1._domainkey.%s TXT %q\n", d, txt)
		}
	}
	zonePath := filepath.Join(e.dir, "zone.txt")
	must(t, os.WriteFile(zonePath, []byte(zone.String()), 0o600))
	cfg := e.config(t, "dkim.toml", "", fmt.Sprintf("[dns]\nzone_file = %q\n", zonePath))
	b, _ := os.ReadFile(cfg)
	b = bytes.Replace(b, []byte("[http]\nlisten = \"127.0.0.1:0\""), []byte("[http]\nlisten = \""+freePort(t)+"\""), 1)
	must(t, os.WriteFile(cfg, b, 0o600))
	d := startDaemon(t, e.dir, "-config", cfg)
	d.Token = e.apiToken

	n := 0
	send := func(signer, from string) (int, string) {
		t.Helper()
		n++
		raw := fmt.Sprintf("From: %s\r\nTo: carl@cand.test\r\nSubject: Re: Hello\r\nMessage-ID: <own%d@acme.test>\r\nReferences: %s\r\n\r\nSee you Tuesday.\r\n",
			from, n, e.refs)
		var out bytes.Buffer
		must(t, dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: signer, Selector: "s1", Signer: signers[signer]}))
		return smtpSend(t, d.SMTP, e.inbound, out.String())
	}

	// The user's own reply, signed only by Google's default domain: stored.
	if code, text := send(gapps, "rec@acme.test"); code != 250 || text != "OK: stored (reason=token)" {
		t.Errorf("own mail signed by %s: %d %q", gapps, code, text)
	}
	// Look-alike and Microsoft's default domain (not configured): refused,
	// the reply names the reason but no internal detail.
	for _, s := range []string{evil, ms} {
		code, text := send(s, "rec@acme.test")
		if code != 550 || !strings.Contains(text, s) {
			t.Errorf("own mail signed by %s: %d %q", s, code, text)
		}
		if m := leakRE.FindString(text); m != "" {
			t.Errorf("reply %q carries %q", text, m)
		}
	}
	// A key missing from the zone file: the reply does not name the file.
	if code, text := send(nokey, "carl@nokey.test"); code != 550 || strings.Contains(text, e.dir) || leakRE.MatchString(text) {
		t.Errorf("missing key: %d %q", code, text)
	}

	// The status names the refusals of the tenant's own mail and the
	// signing domains seen, with an action for the email admin.
	code, st := d.API(t, "GET", "/v1/tenants/acme/status", "")
	if code != 200 {
		t.Fatalf("status %d %v", code, st)
	}
	reasons, _ := st["last_hour"].(map[string]any)["reasons"].(map[string]any)
	if reasons["rejected/dkim_unaligned"] != 2.0 || reasons["rejected/dkim_fail"] != 1.0 || reasons["stored/token"] != 1.0 {
		t.Errorf("reasons %v", reasons)
	}
	un := issue(st, "dkim_unaligned")
	if un == nil {
		t.Errorf("no dkim_unaligned issue in %v", st["issues"])
	} else {
		doms := fmt.Sprint(un["signing_domains"])
		action, _ := un["action"].(string)
		if un["count"] != 2.0 || !strings.Contains(doms, evil) || !strings.Contains(doms, ms) ||
			!strings.Contains(action, "Google Admin console") || shellish(action) {
			t.Errorf("dkim_unaligned issue %v", un)
		}
	}
	if st["forwarding"] != "ok" {
		t.Errorf("forwarding %v", st["forwarding"])
	}

	// check -tenant (through the running daemon) says so too.
	_, rep := checkJSON(t, "-config", cfg, "-tenant", "acme")
	if c := findCheck(rep, "dkim-unaligned"); c == nil || c.Status != checkWarn || !strings.Contains(c.Message, evil) || !strings.Contains(c.Fix, "signing_domains") {
		t.Errorf("check -tenant with the daemon running: %+v", rep.Checks)
	}

	// signing_domains over HTTP: Microsoft's default domain now counts.
	if code, body := d.API(t, "PATCH", "/v1/tenants/acme", `{"signing_domains":["not a domain"]}`); code != 400 {
		t.Errorf("invalid signing_domains: %d %v", code, body)
	}
	code, ten := d.API(t, "PATCH", "/v1/tenants/acme", `{"signing_domains":["ACME.onmicrosoft.com"]}`)
	if code != 200 || fmt.Sprint(ten["signing_domains"]) != "["+ms+"]" {
		t.Errorf("PATCH signing_domains: %d %v", code, ten)
	}
	if code, ten := d.API(t, "GET", "/v1/tenants/acme", ""); code != 200 || fmt.Sprint(ten["signing_domains"]) != "["+ms+"]" {
		t.Errorf("GET tenant: %d %v", code, ten)
	}
	if code, text := send(ms, "rec@acme.test"); code != 250 || text != "OK: stored (reason=token)" {
		t.Errorf("own mail signed by %s after PATCH: %d %q", ms, code, text)
	}
	if code, text := send(evil, "rec@acme.test"); code != 550 {
		t.Errorf("look-alike after PATCH: %d %q", code, text)
	}

	// A rule that forwards everything: most mail is discarded.
	for i := range 12 {
		raw := fmt.Sprintf("From: someone@else.test\r\nTo: rec@acme.test\r\nSubject: lunch\r\nMessage-ID: <other%d@else.test>\r\n\r\nhi\r\n", i)
		if code, text := smtpSend(t, d.SMTP, e.inbound, raw); code != 250 || text != "OK: discarded (reason=no_match)" {
			t.Fatalf("unrelated mail: %d %q", code, text)
		}
	}
	_, st = d.API(t, "GET", "/v1/tenants/acme/status", "")
	action, _ := st["action"].(string)
	if st["forwarding"] != "over_forwarding" || !strings.Contains(action, "Google Admin console") ||
		!strings.Contains(action, `sr\.[a-z0-9]+@relay\.test`) || shellish(action) {
		t.Errorf("over-forwarding status: %v / %q", st["forwarding"], action)
	}
	if of := issue(st, "over_forwarding"); of == nil || of["count"] != 12.0 {
		t.Errorf("over_forwarding issue: %v", st["issues"])
	}

	// With the daemon stopped, check reads the store itself.
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(t); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}
	_, rep = checkJSON(t, "-config", cfg, "-tenant", "acme")
	if c := findCheck(rep, "dkim-unaligned"); c == nil || c.Status != checkWarn || !strings.Contains(c.Message, evil) {
		t.Errorf("check -tenant from the store: dkim-unaligned %+v", c)
	}
	if c := findCheck(rep, "over-forwarding"); c == nil || c.Status != checkWarn {
		t.Errorf("check -tenant from the store: over-forwarding %+v", c)
	}
}

// issue returns the status issue with code, or nil.
func issue(st map[string]any, code string) map[string]any {
	list, _ := st["issues"].([]any)
	for _, x := range list {
		if m, ok := x.(map[string]any); ok && m["code"] == code {
			return m
		}
	}
	return nil
}

func findCheck(rep *checkReport, name string) *checkResult {
	for i := range rep.Checks {
		if rep.Checks[i].Name == name {
			return &rep.Checks[i]
		}
	}
	return nil
}

// shellish reports whether an email admin's action text points at a shell
// command or the API.
func shellish(s string) bool {
	return strings.Contains(s, "`") || strings.Contains(s, "syncrelay check") || strings.Contains(s, "curl") ||
		strings.Contains(s, "PATCH ") || strings.Contains(s, "docs/")
}
