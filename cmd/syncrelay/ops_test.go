package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/dnstest"
	"syncrelay/internal/testenv"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

// Operations tests: check, backup/restore under load, SIGHUP certificate
// reload, bounded shutdown, metrics after traffic and the log-leak test.

// --- fixtures ---

// opsEnv is a data directory seeded as the ATS would have left it: a
// tenant, a user, a candidate and one sent message (a thread), with a
// known secret key and API token.
type opsEnv struct {
	dir, data   string
	masterHex   string
	apiToken    string
	tokensFile  string
	inbound     string
	refs        string // "<sr.TOKEN@relay.test>" of the sent message
	threadToken string // its TOKEN
}

func newOpsEnv(t *testing.T, policy string) *opsEnv {
	t.Helper()
	e := &opsEnv{dir: t.TempDir()}
	e.data = filepath.Join(e.dir, "data")
	must(t, os.MkdirAll(e.data, 0o700))
	master := make([]byte, config.SecretKeySize)
	rand.Read(master)
	e.masterHex = hex.EncodeToString(master)
	must(t, os.WriteFile(filepath.Join(e.data, config.SecretKeyFileName), []byte(e.masterHex+"\n"), 0o600))
	e.apiToken = "tok-" + hex.EncodeToString(master[:12])
	e.tokensFile = filepath.Join(e.dir, "api-tokens")
	must(t, os.WriteFile(e.tokensFile, []byte("# the ATS\n"+e.apiToken+"\n"), 0o600))

	c := &config.Config{Store: config.Store{Dir: e.data}}
	keys, _, err := daemon.LoadKeys(c, false)
	must(t, err)
	kr, err := token.New(keys.Token, "relay.test")
	must(t, err)
	st, err := bolt.Open(e.data, bolt.Options{})
	must(t, err)
	defer st.Close()
	ctx := context.Background()
	e.inbound = "acme-inboundsecret7q@relay.test"
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: e.inbound, DKIMPolicy: policy}))
	must(t, st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Role: store.RoleTeamMember}))
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}))
	th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec", Subject: "Hello"}
	m := store.Message{From: "rec@acme.test", SentBy: "u-rec", Status: "sent", Subject: "Hello"}
	must(t, st.CreateOutbound(ctx, &th, &m, func(thread, id uint64) (string, string) {
		conv := kr.ConversationIndex("acme", thread)
		return strings.Trim(kr.MessageID(token.ID{Tenant: "acme", Thread: thread, Message: id}), "<>"), hex.EncodeToString(conv[:])
	}))
	e.refs = "<" + m.InternetMessageID + ">"
	e.threadToken = strings.TrimPrefix(strings.Split(m.InternetMessageID, "@")[0], "sr.")
	return e
}

// config writes a config for e with extra TOML appended (sections after
// the [smtp] keys must come in extra).
func (e *opsEnv) config(t *testing.T, name, smtpExtra, extra string) string {
	t.Helper()
	return testenv.WriteConfig(t, filepath.Join(e.dir, name), testenv.Config{Data: e.data,
		ShutdownTimeout: "10s", CommandTimeout: "10s", SMTP: smtpExtra, TokensFile: e.tokensFile, Extra: extra})
}

// genCert writes a self-signed ECDSA certificate and key for hosts.
func genCert(t *testing.T, dir, name string, hosts []string, notBefore, notAfter time.Time) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	serial, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: hosts[0]}, DNSNames: hosts,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile, serial
}

// startAddrDNS serves A and MX records on 127.0.0.1 (internal/dnstest
// only answers TXT); other names get NXDOMAIN.
func startAddrDNS(t *testing.T, a map[string]string, mx map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	up := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(up) }, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
		ip, hasA := a[name]
		target, hasMX := mx[name]
		switch {
		case !hasA && !hasMX:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA && hasA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		case q.Qtype == dns.TypeMX && hasMX:
			m.Answer = append(m.Answer, &dns.MX{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 60}, Preference: 10, Mx: dns.Fqdn(target)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	<-up
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// runCmd runs a command in-process and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func checkJSON(t *testing.T, args ...string) (int, *checkReport) {
	t.Helper()
	code, out, errs := runCmd(t, append([]string{"check", "-json"}, args...)...)
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check -json output %q (stderr %q): %v", out, errs, err)
	}
	return code, &rep
}

func (r *checkReport) get(t *testing.T, name string) checkResult {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %q check in %+v", name, r.Checks)
	return checkResult{}
}

// --- check ---

func TestCheck(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyRequire)
	now := time.Now()
	good, goodKey, _ := genCert(t, e.dir, "good", []string{"relay.test"}, now.Add(-time.Hour), now.Add(90*24*time.Hour))
	resolver := startAddrDNS(t, map[string]string{"relay.test": "127.0.0.1"}, nil)
	secret := filepath.Join(e.dir, "google.secret")
	must(t, os.WriteFile(secret, []byte("s3cret\n"), 0o600))
	providers := fmt.Sprintf(`[providers.google]
client_id = "123.apps.googleusercontent.com"
client_secret_file = %q
redirect_url = "https://relay.test/oauth/google/callback"
[webhooks]
url = "https://ats.test/hooks"
secret = "whsec"
`, secret)
	tlsKeys := func(cert, key string) string {
		return fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q", cert, key)
	}
	smtpGood := tlsKeys(good, goodKey)
	// Port 25 is what the check wants; nothing binds it here.
	cfg := e.config(t, "good.toml", smtpGood, fmt.Sprintf("[dns]\nresolver = %q\n", resolver)+providers)
	rewrite := func(p string) {
		b, _ := os.ReadFile(p)
		os.WriteFile(p, bytes.Replace(b, []byte(`listen = "127.0.0.1:0"`), []byte(`listen = "127.0.0.1:25"`), 1), 0o600)
	}
	rewrite(cfg)

	t.Run("good", func(t *testing.T) {
		code, rep := checkJSON(t, "-config", cfg, "-tenant", "acme")
		if code != 0 || !rep.OK {
			t.Fatalf("exit %d: %+v", code, rep.Checks)
		}
		for _, c := range rep.Checks {
			want := checkOK
			if c.Name == "tls" {
				want = checkWarn // self-signed: no public CA here
			}
			if c.Status != want {
				t.Errorf("%s: %s %q (fix %q)", c.Name, c.Status, c.Message, c.Fix)
			}
		}
		if m := rep.get(t, "dns").Message; m != "relay.test A/AAAA: relay.test 127.0.0.1 (this host)" {
			t.Errorf("dns message %q", m)
		}
		if m := rep.get(t, "secret-key").Message; !strings.Contains(m, "matches the data") {
			t.Errorf("secret-key %q", m)
		}
		r := rep.Tenant
		if r == nil || r.InboundAddress != e.inbound {
			t.Fatalf("tenant rules %+v", r)
		}
		if r.Google.Regex != `(?i)sr\.[a-z0-9]+@relay\.test|x-syncrelay-thread:|thread-index:\s*AQG5Sync` || r.Google.AlsoDeliver != e.inbound ||
			strings.Join(r.Google.Directions, ",") != "Inbound,Outbound,Internal - sending,Internal - receiving" ||
			r.Google.Location != "Full headers" || r.Google.MatchType != "Matches regex" {
			t.Errorf("google rule %+v", r.Google)
		}
		wantPS := []string{
			`New-TransportRule -Name 'syncrelay acme: References' -HeaderMatchesMessageHeader 'References' -HeaderMatchesPatterns 'sr\.\w*@relay\.test' -BlindCopyTo '` + e.inbound + `' -Mode Enforce`,
			`New-TransportRule -Name 'syncrelay acme: In-Reply-To' -HeaderMatchesMessageHeader 'In-Reply-To' -HeaderMatchesPatterns 'sr\.\w*@relay\.test' -BlindCopyTo '` + e.inbound + `' -Mode Enforce`,
			`New-TransportRule -Name 'syncrelay acme: X-Syncrelay-Thread' -HeaderMatchesMessageHeader 'X-Syncrelay-Thread' -HeaderMatchesPatterns '^\w\w*$' -BlindCopyTo '` + e.inbound + `' -Mode Enforce`,
			`New-TransportRule -Name 'syncrelay acme: Thread-Index' -HeaderMatchesMessageHeader 'Thread-Index' -HeaderMatchesPatterns '^AQG5Sync' -BlindCopyTo '` + e.inbound + `' -Mode Enforce`,
		}
		if strings.Join(r.Exchange.PowerShell, "\n") != strings.Join(wantPS, "\n") {
			t.Errorf("exchange rules:\n%s\nwant\n%s", strings.Join(r.Exchange.PowerShell, "\n"), strings.Join(wantPS, "\n"))
		}
		// The Google regex (RE2) matches what the routing rule must catch
		// in the full headers, and not unrelated mail.
		re := regexp.MustCompile(r.Google.Regex)
		for hdr, want := range map[string]bool{
			"References: <a@b.test> " + e.refs:                      true,
			"In-Reply-To: " + strings.ToUpper(e.refs):               true, // case-folding forwarders
			"X-Syncrelay-Thread: " + e.threadToken:                  true,
			"References: <sr.abc@other-relay.test>":                 false,
			"Subject: sr. something@relay.test\nFrom: x@relay.test": false,
		} {
			if re.MatchString(hdr) != want {
				t.Errorf("google regex on %q: got %v", hdr, !want)
			}
		}

		// Text output: the rules as an admin reads them, exit 0.
		code, out, _ := runCmd(t, "check", "-config", cfg, "-tenant", "acme")
		for _, s := range []string{
			"Google Workspace: content compliance rule",
			"Expression:  (?i)sr\\.[a-z0-9]+@relay\\.test|x-syncrelay-thread:|thread-index:\\s*AQG5Sync",
			"Also deliver to > Add more recipients > Add > Basic > " + e.inbound,
			"Add recipients > to the Bcc box > " + e.inbound,
			"All checks passed (1 warning).",
		} {
			if !strings.Contains(out, s) {
				t.Errorf("text output lacks %q:\n%s", s, out)
			}
		}
		if code != 0 {
			t.Errorf("text exit %d", code)
		}
	})

	t.Run("expired certificate", func(t *testing.T) {
		na := now.Add(-48 * time.Hour)
		c, k, _ := genCert(t, e.dir, "expired", []string{"relay.test"}, now.Add(-90*24*time.Hour), na)
		p := e.config(t, "expired.toml", tlsKeys(c, k), fmt.Sprintf("[dns]\nresolver = %q\n", resolver)+providers)
		code, rep := checkJSON(t, "-config", p)
		got := rep.get(t, "tls")
		want := c + " expired on " + na.UTC().Format("2006-01-02 15:04 UTC") + " (2 days ago)"
		if code != 1 || rep.OK || got.Status != checkFail || got.Message != want {
			t.Fatalf("exit %d, tls %+v\nwant message %q", code, got, want)
		}
		if got.Fix != "renew the certificate for relay.test, install it at smtp.tls_cert_file and smtp.tls_key_file, then run `systemctl reload syncrelay` (SIGHUP: no connection is dropped)" {
			t.Fatalf("fix %q", got.Fix)
		}
	})

	t.Run("certificate expiring within 14 days", func(t *testing.T) {
		na := now.Add(5*24*time.Hour + time.Minute)
		c, k, _ := genCert(t, e.dir, "soon", []string{"relay.test"}, now.Add(-time.Hour), na)
		p := e.config(t, "soon.toml", tlsKeys(c, k), fmt.Sprintf("[dns]\nresolver = %q\n", resolver)+providers)
		_, rep := checkJSON(t, "-config", p)
		want := c + " expires on " + na.UTC().Format("2006-01-02 15:04 UTC") + ", in 5 days (less than 14)"
		if got := rep.get(t, "tls"); got.Status != checkFail || got.Message != want {
			t.Fatalf("tls %+v, want %q", got, want)
		}
	})

	t.Run("certificate for another name", func(t *testing.T) {
		c, k, _ := genCert(t, e.dir, "other", []string{"mail.other.test", "other.test"}, now.Add(-time.Hour), now.Add(90*24*time.Hour))
		p := e.config(t, "other.toml", tlsKeys(c, k), fmt.Sprintf("[dns]\nresolver = %q\n", resolver)+providers)
		_, rep := checkJSON(t, "-config", p)
		want := c + " is valid for mail.other.test, other.test, not for smtp.hostname relay.test"
		if got := rep.get(t, "tls"); got.Status != checkFail || got.Message != want || got.Fix != "get a certificate whose names include relay.test" {
			t.Fatalf("tls %+v, want %q", got, want)
		}
	})

	t.Run("unknown hostname", func(t *testing.T) {
		srv := dnstest.Start(t) // knows no names: NXDOMAIN
		p := e.config(t, "nohost.toml", smtpGood, fmt.Sprintf("[dns]\nresolver = %q\n", srv.Addr())+providers)
		b, _ := os.ReadFile(p)
		os.WriteFile(p, bytes.Replace(b, []byte(`hostname = "relay.test"`), []byte(`hostname = "nohost.test"`), 1), 0o600)
		code, rep := checkJSON(t, "-config", p)
		got := rep.get(t, "dns")
		if code != 1 || got.Status != checkFail || got.Message != "nohost.test does not exist in DNS (NXDOMAIN from "+srv.Addr()+")" ||
			got.Fix != "create an A record for nohost.test with this server's public address (or an MX record naming a host that has one): forwarding servers look it up to deliver to the inbound addresses" {
			t.Fatalf("exit %d, dns %+v", code, got)
		}
		if srv.Queries() == 0 {
			t.Fatal("the configured resolver was not asked")
		}
	})

	t.Run("MX without address", func(t *testing.T) {
		r := startAddrDNS(t, nil, map[string]string{"relay.test": "mx.gone.test"})
		p := e.config(t, "mx.toml", smtpGood, fmt.Sprintf("[dns]\nresolver = %q\n", r)+providers)
		_, rep := checkJSON(t, "-config", p)
		if got := rep.get(t, "dns"); got.Status != checkFail || got.Message != "relay.test has MX mx.gone.test, but none of them has an address (asked "+r+")" {
			t.Fatalf("dns %+v", got)
		}
	})

	t.Run("missing provider keys", func(t *testing.T) {
		p := e.config(t, "noprov.toml", smtpGood, fmt.Sprintf("[dns]\nresolver = %q\n", resolver))
		code, rep := checkJSON(t, "-config", p, "-tenant", "acme")
		got := rep.get(t, "google")
		if code != 1 || got.Status != checkFail ||
			got.Message != `tenant "acme" uses google, but [providers.google] has no client_id: its users cannot connect the send-only grant, so nothing can be sent for them` ||
			got.Fix != "create an OAuth client in the Google Cloud console (APIs & Services > Credentials; scope https://www.googleapis.com/auth/gmail.send only), then set providers.google.client_id and providers.google.client_secret_file (or SYNCRELAY_GOOGLE_CLIENT_SECRET)" {
			t.Fatalf("exit %d, google %+v", code, got)
		}
		if rep.Tenant == nil {
			t.Fatal("rules not printed although the tenant exists")
		}
	})

	t.Run("wrong secret key", func(t *testing.T) {
		other := filepath.Join(e.dir, "other.key")
		os.WriteFile(other, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
		p := e.config(t, "wrongkey.toml", smtpGood, fmt.Sprintf("[secrets]\nkey_file = %q\n[dns]\nresolver = %q\n", other, resolver)+providers)
		_, rep := checkJSON(t, "-config", p)
		if got := rep.get(t, "secret-key"); got.Status != checkFail || !strings.Contains(got.Message, "did NOT mint the tokens") {
			t.Fatalf("secret-key %+v", got)
		}
	})

	t.Run("unknown tenant and bad config", func(t *testing.T) {
		_, rep := checkJSON(t, "-config", cfg, "-tenant", "nope")
		if got := rep.get(t, "tenant"); got.Status != checkFail || got.Message != `no tenant "nope" (tenants: acme)` {
			t.Fatalf("tenant %+v", got)
		}
		bad := filepath.Join(e.dir, "bad.toml")
		os.WriteFile(bad, []byte("[smtp]\nhostnme = \"x\"\n"), 0o600)
		code, rep := checkJSON(t, "-config", bad)
		if code != 1 || len(rep.Checks) != 1 || rep.get(t, "config").Status != checkFail || !strings.Contains(rep.Checks[0].Message, "bad.toml:2") {
			t.Fatalf("bad config: %d %+v", code, rep.Checks)
		}
	})
}

// --- metrics, logs, status (in-process daemon) ---

// TestTrafficMetricsStatusAndNoLeaks runs the daemon in-process with
// debug JSON logs, sends a discarded message full of secrets, a kept
// DKIM-signed reply and API calls, then checks the metrics, the forwarding
// status, that every line of a connection carries its session id, and that
// no token, key, body, or subject/address of discarded mail was logged.
func TestTrafficMetricsStatusAndNoLeaks(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyRequire)
	key, txt := dkimtest.RSA(t, 0)
	zone := filepath.Join(e.dir, "zone.txt")
	must(t, os.WriteFile(zone, []byte(fmt.Sprintf("s1._domainkey.cand.test TXT %q\n", txt)), 0o600))
	cfgPath := e.config(t, "leak.toml", "", fmt.Sprintf("[dns]\nzone_file = %q\n[log]\nlevel = \"debug\"\nformat = \"json\"\n", zone))
	c, err := config.Load(cfgPath)
	must(t, err)

	d := testenv.StartInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return daemon.Run(ctx, c, daemon.NewLogger(c, logs), io.Discard)
	})
	logs, smtpAddr, httpAddr := d.Logs, d.SMTP, d.HTTP
	stop := func() { d.Stop(t) }
	defer stop()

	// Discarded: secrets everywhere, including a real thread token in
	// X-Syncrelay-Thread (rule 3 needs a tenant user as sender) and a
	// forged one in References.
	discard := "From: \"Leaky Person\" <leaky.person@leak.test>\r\nTo: someone.private@leak.test\r\n" +
		"Subject: TOPSECRET-SUBJECT-7781\r\nMessage-ID: <discard-7781@leak.test>\r\n" +
		"References: <sr.forgedtokenaaaaaaaaaaaaaaaaaaaaaaaaaa@relay.test>\r\nX-Syncrelay-Thread: " + e.threadToken + "\r\n\r\n" +
		"BODY-SECRET-7781 password hunter2\r\n"
	cl, err := smtp.Dial(smtpAddr)
	must(t, err)
	must(t, cl.Hello("fwd.test"))
	must(t, cl.Mail("secret-sender@leak.test", nil))
	if err := cl.Rcpt("postmaster@relay.test", nil); err == nil {
		t.Fatal("foreign recipient accepted")
	}
	must(t, cl.Rcpt(e.inbound, nil))
	w, err := cl.Data()
	must(t, err)
	io.WriteString(w, discard)
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.Contains(resp.StatusText, "discarded") {
		t.Fatalf("discard: %v %v", resp, err)
	}
	cl.Quit()

	// Kept: a DKIM-signed reply on the thread.
	reply := "From: carl@cand.test\r\nTo: rec@acme.test\r\nSubject: Re: Hello KEPT-SUBJECT\r\nMessage-ID: <kept-1@cand.test>\r\n" +
		"References: " + e.refs + "\r\n\r\nKEPT-BODY-4242 see you Tuesday\r\n"
	var signed bytes.Buffer
	must(t, dkim.Sign(&signed, strings.NewReader(reply), &dkim.SignOptions{Domain: "cand.test", Selector: "s1", Signer: key}))
	cl, err = smtp.Dial(smtpAddr)
	must(t, err)
	must(t, cl.Hello("fwd.test"))
	must(t, cl.Mail("carl@cand.test", nil))
	must(t, cl.Rcpt(e.inbound, nil))
	w, err = cl.Data()
	must(t, err)
	w.Write(signed.Bytes())
	resp, err = w.CloseWithResponse()
	if err != nil || !strings.Contains(resp.StatusText, "stored") {
		t.Fatalf("reply: %v %v", resp, err)
	}
	cl.Quit()

	get := func(path, tok string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+httpAddr+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		r, err := http.DefaultClient.Do(req)
		must(t, err)
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if code, _ := get("/v1/tenants", "WRONG-TOKEN-9911"); code != 401 {
		t.Fatalf("bad token: %d", code)
	}
	code, body := get("/v1/tenants/acme/status", e.apiToken)
	var st map[string]any
	json.Unmarshal([]byte(body), &st)
	if code != 200 || st["forwarding"] != "ok" {
		t.Fatalf("status %d %s", code, body)
	}
	if a := st["authentication"].(map[string]any); a["checked"].(float64) != 1 || a["dkim_pass"].(float64) != 1 || a["pass_rate"].(float64) != 1 {
		t.Fatalf("authentication %v", a)
	}
	if h := st["last_hour"].(map[string]any); h["reasons"].(map[string]any)["discarded/no_match"].(float64) != 1 ||
		h["reasons"].(map[string]any)["stored/token"].(float64) != 1 {
		t.Fatalf("last_hour %v", h)
	}

	// Metrics after traffic. The session counters move when the daemon
	// has finished with a session, a moment after the client's QUIT
	// returned: the scrape is repeated (up to 20 s) until every series
	// reaches its minimum, and only then are the misses reported.
	wants := []struct {
		series string
		min    float64
	}{
		{`syncrelay_smtp_connections_total`, 2},
		{`syncrelay_smtp_sessions_total{tls="false"}`, 2},
		{`syncrelay_smtp_replies_total{code="550",stage="rcpt"}`, 1},
		{`syncrelay_smtp_replies_total{code="250",stage="data"}`, 2},
		{`syncrelay_messages_total{decision="discarded",reason="no_match"}`, 1},
		{`syncrelay_messages_total{decision="stored",reason="token"}`, 1},
		{`syncrelay_auth_results_total{method="dkim",result="pass"}`, 1},
		{`syncrelay_auth_results_total{method="arc",result="none"}`, 1},
		{`syncrelay_smtp_data_reply_seconds_count`, 2},
		{`syncrelay_store_commit_seconds_count{op="commit_inbound"}`, 1},
		{`syncrelay_store_commit_batches_total`, 1},
		{`syncrelay_store_commit_batched_requests_total`, 1},
		{`syncrelay_store_commit_batch_seconds_total`, 0},
		{`syncrelay_smtp_connections_refused_total{reason="max_connections"}`, 0},
		{`syncrelay_webhook_outbox_pending`, 0},
		{`go_goroutines`, 1},
	}
	var mtext string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, mtext = get("/metrics", "")
		short := false
		for _, want := range wants {
			if v, ok := metricValue(mtext, want.series); !ok || v < want.min {
				short = true
			}
		}
		if !short || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range wants {
		v, ok := metricValue(mtext, want.series)
		if !ok || v < want.min {
			t.Errorf("%s = %v (present %v), want >= %v", want.series, v, ok, want.min)
		}
	}
	if !regexp.MustCompile(`(?m)^syncrelay_build_info\{`).MatchString(mtext) {
		t.Error("syncrelay_build_info missing")
	}
	if strings.Contains(mtext, "syncrelay_tls_certificate_expiry_timestamp_seconds") {
		t.Error("certificate expiry exported without a certificate")
	}
	// Closed sessions are released asynchronously: poll (up to 20 s).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		v, _ := metricValue(mtext, "syncrelay_smtp_connections_active")
		if v == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("connections_active %v after all sessions closed", v)
			break
		}
		_, mtext = get("/metrics", "")
	}
	stop()

	out := logs.String()
	lower := strings.ToLower(out)
	for what, secret := range map[string]string{
		"API token":                  e.apiToken,
		"rejected API token":         "WRONG-TOKEN-9911",
		"secret key":                 e.masterHex,
		"thread token":               e.threadToken,
		"forged token":               "forgedtokenaaaa",
		"discarded subject":          "TOPSECRET-SUBJECT-7781",
		"discarded From":             "leaky.person@leak.test",
		"discarded From name":        "Leaky Person",
		"discarded To":               "someone.private@leak.test",
		"discarded envelope sender":  "secret-sender@leak.test",
		"discarded Message-ID":       "discard-7781",
		"discarded body":             "BODY-SECRET-7781",
		"body secret":                "hunter2",
		"kept body":                  "KEPT-BODY-4242",
		"inbound address (a secret)": e.inbound,
		"refused recipient":          "postmaster@relay.test",
	} {
		if strings.Contains(lower, strings.ToLower(secret)) {
			t.Errorf("the log contains the %s %q", what, secret)
		}
	}

	// Every line about a connection names its session; the router's
	// decision rides on the message line of its session (under
	// "tenant_<id>" when the message went to several tenants).
	sessionRE := regexp.MustCompile(`^[0-9a-f]{12}$`)
	perMsg := map[string][]string{}
	connLines := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON log line: %q", l)
		}
		msg, _ := m["msg"].(string)
		if msg == "message" {
			msg += ":" + decisionOf(m)
		}
		switch strings.SplitN(msg, ":", 2)[0] {
		case "connection opened", "connection closed", "session", "mail", "rcpt", "message", "discarded", "stored":
			connLines++
			sid, _ := m["session"].(string)
			if !sessionRE.MatchString(sid) {
				t.Errorf("line without a session id: %s", l)
			}
			perMsg[sid] = append(perMsg[sid], msg)
		}
	}
	if connLines < 10 || len(perMsg) != 2 {
		t.Fatalf("%d connection lines in %d sessions: %v\n%s", connLines, len(perMsg), perMsg, out)
	}
	for sid, msgs := range perMsg {
		j := strings.Join(msgs, ",")
		if !strings.Contains(j, "message:discarded") && !strings.Contains(j, "message:stored") {
			t.Errorf("session %s lines %v: the decision is not tied to the session", sid, msgs)
		}
	}
}

// decisionOf returns the router decision(s) on a "message" log line.
func decisionOf(line map[string]any) string {
	if d, ok := line["decision"].(string); ok {
		return d
	}
	var ds []string
	for k, v := range line {
		if g, ok := v.(map[string]any); ok && strings.HasPrefix(k, "tenant_") {
			if d, ok := g["decision"].(string); ok {
				ds = append(ds, d)
			}
		}
	}
	sort.Strings(ds)
	return strings.Join(ds, "+")
}

// metricValue finds `series value` in Prometheus text output; series is
// the name with its labels in exposition order.
func metricValue(text, series string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// --- backup and restore while serving (real binary) ---

// TestBackupRestoreUnderLoad backs up through the running daemon while
// replies stream in, restores into an empty directory and compares; then
// backs up the stopped store directly, and checks restore's refusals.
func TestBackupRestoreUnderLoad(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyOff) // no DKIM signing needed for load
	cfg := e.config(t, "serve.toml", "max_connections_per_ip = 100", "")
	b, _ := os.ReadFile(cfg)
	b = bytes.Replace(b, []byte("[http]\nlisten = \"127.0.0.1:0\""), []byte("[http]\nlisten = \""+freePort(t)+"\""), 1)
	must(t, os.WriteFile(cfg, b, 0o600))
	d := startDaemon(t, e.dir, "-config", cfg)
	d.Token = e.apiToken

	// check against the running daemon (the store is locked by it).
	code, rep := checkJSON(t, "-config", cfg, "-tenant", "acme")
	if s := rep.get(t, "store"); s.Status != checkOK || !strings.Contains(s.Message, "in use by the running daemon") {
		t.Fatalf("store check with the daemon running: %+v", s)
	}
	if rep.Tenant == nil || rep.Tenant.InboundAddress != e.inbound {
		t.Fatalf("tenant via the API: %+v (exit %d)", rep.Tenant, code)
	}

	var (
		n       atomic.Int64
		stop    atomic.Bool
		mu      sync.Mutex
		stored  = map[string]time.Time{} // Message-ID -> acknowledged
		wg      sync.WaitGroup
		loadErr = make(chan error, 8)
	)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(d.SMTP)
			if err != nil {
				loadErr <- err
				return
			}
			defer c.Close()
			if err := c.Hello("load.test"); err != nil {
				loadErr <- err
				return
			}
			for !stop.Load() {
				i := n.Add(1)
				id := fmt.Sprintf("load%d@cand.test", i)
				msg := fmt.Sprintf("From: carl@cand.test\r\nSubject: Re: Hello\r\nMessage-ID: <%s>\r\nReferences: %s\r\n\r\nreply %d %s\r\n",
					id, e.refs, i, strings.Repeat("z", int(i%500)))
				if err := c.Mail("carl@cand.test", nil); err != nil {
					loadErr <- err
					return
				}
				if err := c.Rcpt(e.inbound, nil); err != nil {
					loadErr <- err
					return
				}
				wr, err := c.Data()
				if err != nil {
					loadErr <- err
					return
				}
				io.WriteString(wr, msg)
				resp, err := wr.CloseWithResponse()
				if err != nil || !strings.Contains(resp.StatusText, "stored") {
					loadErr <- fmt.Errorf("load message %d: %v %v", i, resp, err)
					return
				}
				mu.Lock()
				stored[id] = time.Now()
				mu.Unlock()
			}
		}()
	}
	for n.Load() < 100 {
		time.Sleep(5 * time.Millisecond)
	}
	archive := filepath.Join(e.dir, "live.tar")
	started := time.Now()
	out, err := exec.Command(bins.Syncrelay, "backup", "-config", cfg, "-o", archive).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "through the running daemon") {
		t.Fatalf("backup while serving: %v\n%s", err, out)
	}
	for n.Load() < 250 { // keep writing after the backup
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(loadErr)
	for err := range loadErr {
		t.Fatal(err)
	}
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(t); code != 0 {
		t.Fatalf("daemon exit %d", code)
	}

	// Restore into a new, empty data dir holding only the copied key.
	rdir := filepath.Join(e.dir, "restored")
	must(t, os.MkdirAll(rdir, 0o700))
	keyBytes, _ := os.ReadFile(filepath.Join(e.data, "secret.key"))
	must(t, os.WriteFile(filepath.Join(rdir, "secret.key"), keyBytes, 0o600))
	rcfg := filepath.Join(e.dir, "restored.toml")
	must(t, os.WriteFile(rcfg, []byte(fmt.Sprintf("[smtp]\nhostname = \"relay.test\"\n[store]\ndir = %q\n[api]\ntokens_file = %q\n", rdir, e.tokensFile)), 0o600))
	out, err = exec.Command(bins.Syncrelay, "restore", "-config", rcfg, archive).CombinedOutput()
	if err != nil || strings.Contains(string(out), "WARNING") {
		t.Fatalf("restore: %v\n%s", err, out)
	}

	orig := messagesByID(t, e.data)
	restored := messagesByID(t, rdir)
	mu.Lock()
	for id, at := range stored {
		if at.Before(started) {
			if _, ok := restored[id]; !ok {
				t.Errorf("%s was acknowledged before the backup started but is not in it", id)
			}
		}
	}
	mu.Unlock()
	if len(restored) >= len(orig) || len(restored) < 100 {
		t.Errorf("restored %d messages, the store has %d after more load", len(restored), len(orig))
	}
	for id, raw := range restored {
		if orig[id] != raw {
			t.Errorf("%s differs between the restored and the original store", id)
		}
	}
	// The restored data passes check's key test.
	_, rep = checkJSON(t, "-config", rcfg)
	if s := rep.get(t, "secret-key"); s.Status != checkOK || !strings.Contains(s.Message, "matches the data") {
		t.Errorf("secret-key on the restored store: %+v", s)
	}

	// Restore refuses a directory that is not empty.
	out, err = exec.Command(bins.Syncrelay, "restore", "-config", rcfg, archive).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not empty (it holds raw, syncrelay.db)") {
		t.Fatalf("restore into a non-empty dir: %v\n%s", err, out)
	}

	// With the daemon stopped, backup reads the store directly; the
	// output file must not exist.
	cold := filepath.Join(e.dir, "cold.tar")
	out, err = exec.Command(bins.Syncrelay, "backup", "-config", cfg, "-o", cold).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no daemon running") {
		t.Fatalf("cold backup: %v\n%s", err, out)
	}
	out, err = exec.Command(bins.Syncrelay, "backup", "-config", cfg, "-o", cold).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already exists") {
		t.Fatalf("backup over an existing file: %v\n%s", err, out)
	}
	r2 := filepath.Join(e.dir, "restored2")
	r2cfg := filepath.Join(e.dir, "restored2.toml")
	must(t, os.WriteFile(r2cfg, []byte(fmt.Sprintf("[store]\ndir = %q\n", r2)), 0o600))
	cmd := exec.Command(bins.Syncrelay, "restore", "-config", r2cfg, "-")
	cmd.Stdin, _ = os.Open(cold)
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "WARNING: no usable secret key") {
		t.Fatalf("restore from stdin without the key: %v\n%s", err, out)
	}
	if got := messagesByID(t, r2); len(got) != len(orig) {
		t.Fatalf("cold backup restored %d messages, want %d", len(got), len(orig))
	}
}

// messagesByID maps each stored inbound message's Message-ID to its raw bytes.
func messagesByID(t *testing.T, dir string) map[string]string {
	t.Helper()
	st, err := bolt.Open(dir, bolt.Options{ReadOnly: true})
	must(t, err)
	defer st.Close()
	ctx := context.Background()
	ths, err := st.CandidateThreads(ctx, "acme", "c-1")
	must(t, err)
	out := map[string]string{}
	for _, th := range ths {
		ms, err := st.ThreadMessages(ctx, "acme", th.ID)
		must(t, err)
		for _, m := range ms {
			if m.Raw == "" {
				continue
			}
			f, err := st.OpenRaw(context.Background(), m.Raw)
			must(t, err)
			b, _ := io.ReadAll(f)
			f.Close()
			out[m.InternetMessageID] = string(b)
		}
	}
	return out
}

// --- SIGHUP and SIGTERM (real binary) ---

func TestSIGHUPReloadsCertificate(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyOff)
	now := time.Now()
	certA, keyA, serialA := genCert(t, e.dir, "a", []string{"relay.test"}, now.Add(-time.Hour), now.Add(30*24*time.Hour))
	cfg := e.config(t, "tls.toml", fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q", certA, keyA), "")
	d := startDaemon(t, e.dir, "-config", cfg)

	dialTLS := func() (*smtp.Client, *big.Int) {
		c, err := smtp.DialStartTLS(d.SMTP, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test"})
		must(t, err)
		must(t, c.Noop()) // EHLO and NOOP over TLS: the handshake is done
		st, ok := c.TLSConnectionState()
		if !ok {
			t.Fatal("no TLS")
		}
		return c, st.PeerCertificates[0].SerialNumber
	}
	old, s := dialTLS()
	defer old.Close()
	if s.Cmp(serialA) != 0 {
		t.Fatal("not serving certificate A")
	}

	// Replace the files in place, as certbot's deploy hook would, and HUP.
	_, _, serialB := genCert(t, e.dir, "b", []string{"relay.test"}, now.Add(-time.Hour), now.Add(60*24*time.Hour))
	for _, f := range []string{".crt", ".key"} {
		b, _ := os.ReadFile(filepath.Join(e.dir, "b"+f))
		must(t, os.WriteFile(filepath.Join(e.dir, "a"+f), b, 0o600))
	}
	must(t, d.Signal(syscall.SIGHUP))
	waitFor(t, func() bool { return strings.Contains(d.Logs.String(), "TLS certificate reloaded") }, d.Logs)

	// The old session is intact and still works; new ones get B.
	must(t, old.Noop())
	must(t, old.Mail("a@b.test", nil))
	must(t, old.Reset())
	fresh, s := dialTLS()
	defer fresh.Close()
	if s.Cmp(serialB) != 0 {
		t.Fatal("a new session does not get the reloaded certificate")
	}

	// A broken certificate is refused and B stays in use.
	must(t, os.WriteFile(certA, []byte("garbage"), 0o600))
	must(t, d.Signal(syscall.SIGHUP))
	waitFor(t, func() bool { return strings.Contains(d.Logs.String(), "still using the previous one") }, d.Logs)
	third, s := dialTLS()
	defer third.Close()
	if s.Cmp(serialB) != 0 {
		t.Fatal("a failed reload changed the certificate")
	}
	resp, err := http.Get("http://" + d.HTTP + "/metrics")
	must(t, err)
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for series, want := range map[string]float64{
		`syncrelay_tls_reloads_total{result="ok"}`:    1,
		`syncrelay_tls_reloads_total{result="error"}`: 1,
	} {
		if v, _ := metricValue(string(mb), series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	if v, ok := metricValue(string(mb), "syncrelay_tls_certificate_expiry_timestamp_seconds"); !ok || v < float64(now.Add(59*24*time.Hour).Unix()) {
		t.Errorf("expiry gauge %v %v: not the reloaded certificate's", v, ok)
	}
}

func waitFor(t *testing.T, cond func() bool, logs fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out; log:\n%s", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShutdownWithinBound: a client stuck in the middle of DATA cannot hold
// the daemon past smtp.shutdown_timeout; it exits 0, and readyz turns
// false as soon as draining starts.
func TestShutdownWithinBound(t *testing.T) {
	e := newOpsEnv(t, store.PolicyOff)
	cfg := e.config(t, "bound.toml", "", "")
	b, _ := os.ReadFile(cfg)
	// A bound of 250 ms: this test runs alone (it times the shutdown), so
	// every parallel test waits for it. The readyz check below lands about
	// 6 ms into the drain, well inside it.
	b = bytes.Replace(b, []byte(`shutdown_timeout = "10s"`), []byte(`shutdown_timeout = "250ms"`), 1)
	b = bytes.Replace(b, []byte("[http]\n"), []byte("[http]\nshutdown_timeout = \"250ms\"\n"), 1)
	must(t, os.WriteFile(cfg, b, 0o600))
	d := startDaemon(t, e.dir, "-config", cfg)
	d.Token = e.apiToken
	if code, _ := d.API(t, "GET", "/readyz", ""); code != 200 {
		t.Fatalf("readyz %d", code)
	}

	c, err := smtp.Dial(d.SMTP)
	must(t, err)
	defer c.Close()
	must(t, c.Hello("slow.test"))
	must(t, c.Mail("a@b.test", nil))
	must(t, c.Rcpt(e.inbound, nil))
	w, err := c.Data()
	must(t, err)
	io.WriteString(w, "Subject: never finished\r\n\r\n")

	start := time.Now()
	must(t, d.Signal(syscall.SIGTERM))
	// While draining, readyz is false (the listener may already be gone);
	// draining has begun once it is logged (readyz turns false just before).
	d.WaitLog(t, "shutting down: no new connections")
	if code, err := readyz(d.HTTP); err == nil && code == 200 {
		t.Error("readyz still 200 while draining")
	}
	code := d.Wait(t)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Logs)
	}
	if took > 4*time.Second {
		t.Fatalf("shutdown took %v with shutdown_timeout 250ms", took)
	}
	if !strings.Contains(d.Logs.String(), "shutdown deadline reached; closing connection") {
		t.Fatalf("the stuck session was not cut at the deadline:\n%s", d.Logs)
	}
	// Its message line says it was cut, not that it got a 451 (issue 16).
	if logs := d.Logs.String(); !regexp.MustCompile(`msg=message .*code=0 close=shutdown_deadline`).MatchString(logs) ||
		strings.Contains(logs, "answering 451") {
		t.Fatalf("the cut message is not logged as cut:\n%s", logs)
	}
}

// readyz GETs /readyz once. Its callers ask after a state the daemon set
// before the log line they waited for (SetReady precedes "syncrelay
// serving" and "shutting down"), so it does not wait first.
func readyz(addr string) (int, error) {
	r, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err
	}
	r.Body.Close()
	return r.StatusCode, nil
}

// freePort returns a loopback address that was free a moment ago (for
// configs the CLI must find the daemon's API by).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().String()
}

// --- packaging ---

// TestDistConfigAndUnit keeps dist/ honest: the example production config
// loads (strict: no unknown key) once its files exist, and the unit has
// the hardening and the timeouts the daemon relies on.
func TestDistConfigAndUnit(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../dist/syncrelay.toml")
	must(t, err)
	etc := t.TempDir()
	for _, f := range []string{"secret.key", "api-tokens", "webhook.secret", "google.secret", "microsoft.secret", "tls/fullchain.pem", "tls/privkey.pem"} {
		p := filepath.Join(etc, f)
		must(t, os.MkdirAll(filepath.Dir(p), 0o700))
		content := "x\n"
		if f == "secret.key" {
			content = strings.Repeat("0a", 32) + "\n"
		}
		must(t, os.WriteFile(p, []byte(content), 0o600))
	}
	c, err := config.Parse(bytes.ReplaceAll(raw, []byte("/etc/syncrelay/"), []byte(etc+"/")), "syncrelay.toml")
	if err != nil {
		t.Fatalf("dist/syncrelay.toml: %v", err)
	}
	if c.SMTP.Listen != ":25" || c.Log.Format != "json" || c.Store.Dir != "/var/lib/syncrelay" || !c.SMTP.TLSEnabled() ||
		c.HTTP.Listen != "127.0.0.1:8025" || c.Status.StaleAfter.Duration != 24*time.Hour {
		t.Fatalf("unexpected values: %+v", c)
	}

	unit, err := os.ReadFile("../../dist/syncrelay.service")
	must(t, err)
	u := string(unit)
	for _, d := range []string{
		"User=syncrelay", "ProtectSystem=strict", "StateDirectory=syncrelay", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID",
		"ExecStart=/usr/local/bin/syncrelay serve -config /etc/syncrelay/syncrelay.toml",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(d) + `$`).MatchString(u) {
			t.Errorf("unit lacks %q", d)
		}
	}
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(u)
	if m == nil {
		t.Fatal("no TimeoutStopSec")
	}
	stopSec, err := time.ParseDuration(m[1])
	must(t, err)
	if drain := c.SMTP.ShutdownTimeout.Duration + c.HTTP.ShutdownTimeout.Duration; stopSec <= drain {
		t.Errorf("TimeoutStopSec %v does not cover the drain bound %v", stopSec, drain)
	}
}

// TestStartupCollectsOrphans: raw files a crash left without a commit, and
// a backup's staging directory, are gone once the daemon reports ready;
// committed raw files stay.
func TestStartupCollectsOrphans(t *testing.T) {
	t.Parallel()
	e := newOpsEnv(t, store.PolicyOff)
	st, err := bolt.Open(e.data, bolt.Options{})
	must(t, err)
	st.Close()
	// A large message's file written, never committed.
	orphanPath := filepath.Join(e.data, "raw", "big", strings.Repeat("ab", 32)+"-0123456789abcdef")
	must(t, os.MkdirAll(filepath.Dir(orphanPath), 0o700))
	must(t, os.WriteFile(orphanPath, []byte("written, never committed\r\n"), 0o600))
	staging := filepath.Join(e.data, "raw", "tmp", "backup-123")
	must(t, os.MkdirAll(staging, 0o700))
	must(t, os.WriteFile(filepath.Join(staging, "syncrelay.db"), []byte("x"), 0o600))

	d := startDaemon(t, e.dir, "-config", e.config(t, "orphans.toml", "", ""))
	if code, err := readyz(d.HTTP); err != nil || code != 200 {
		t.Fatalf("readyz %d %v", code, err)
	}
	if _, err := os.Stat(orphanPath); !os.IsNotExist(err) {
		t.Fatalf("orphan still there: %v", err)
	}
	if _, err := os.Stat(staging); !os.IsNotExist(err) {
		t.Fatalf("backup staging left over: %v", err)
	}
	if !strings.Contains(d.Logs.String(), "collected orphaned raw files") {
		t.Fatalf("no log of the collection:\n%s", d.Logs)
	}
}

func TestOpsCommandsHelpAndUsage(t *testing.T) {
	t.Parallel()
	for _, c := range []string{"check", "backup", "restore"} {
		code, _, errs := runCmd(t, c, "-h")
		if code != 0 || !strings.Contains(errs, "usage: syncrelay "+c) {
			t.Errorf("%s -h: %d %q", c, code, errs)
		}
	}
	if code, _, errs := runCmd(t, "backup"); code != 2 || !strings.Contains(errs, "-o FILE is required") {
		t.Errorf("backup without -o: %d %q", code, errs)
	}
	if code, _, errs := runCmd(t, "restore"); code != 2 || !strings.Contains(errs, "give one backup archive") {
		t.Errorf("restore without a file: %d %q", code, errs)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("[store]\ndir = %q\n", filepath.Join(dir, "none"))), 0o600))
	if code, _, errs := runCmd(t, "backup", "-config", cfg, "-o", filepath.Join(dir, "x.tar")); code != 1 || !strings.Contains(errs, "no store at") {
		t.Errorf("backup of a missing store: %d %q", code, errs)
	}
}
