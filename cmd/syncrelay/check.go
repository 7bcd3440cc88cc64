package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"syncrelay/api"
	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/setup"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// `syncrelay check` is what an email admin (or ops) runs to know whether
// this installation can receive forwarded mail: every check prints ok,
// warn or FAIL, and each problem says what to do. The exit status is 0
// only when no check failed (warnings do not fail). With -tenant it also
// prints the exact routing rules to create for the tenant.

// Check statuses.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"
)

// certMinValidity: the certificate must stay valid at least this long.
const certMinValidity = 14 * 24 * time.Hour

type checkResult struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

type checkReport struct {
	OK     bool          `json:"ok"`
	Config string        `json:"config"`
	Checks []checkResult `json:"checks"`
	Tenant *setup.Rules  `json:"tenant,omitempty"`
}

func (r *checkReport) add(name, status, msg, fix string) {
	r.Checks = append(r.Checks, checkResult{Name: name, Status: status, Message: msg, Fix: fix})
}

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", "check [-config FILE] [-tenant T] [-json]", stderr)
	cfgPath := fs.String("config", "", "config file (TOML); without it the embedded defaults are checked")
	tenant := fs.String("tenant", "", "tenant id: also check it and print its Google Workspace and Exchange Online routing rules")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "syncrelay check: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	rep := checkAll(ctx, *cfgPath, *tenant)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printReport(stdout, rep)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// checkAll runs every check; it never stops at the first failure (except
// for an unreadable config, on which everything else depends).
func checkAll(ctx context.Context, cfgPath, tenantID string) *checkReport {
	rep := &checkReport{Config: cfgPath}
	if cfgPath == "" {
		rep.Config = "(embedded defaults)"
	}
	c, err := config.Load(cfgPath)
	if err != nil {
		rep.add("config", checkFail, strings.ReplaceAll(err.Error(), "\n", "; "),
			"fix the config file as the messages say (docs/config.md lists every key)")
		rep.OK = false
		return rep
	}
	rep.add("config", checkOK, rep.Config+" is valid", "")

	checkHostnameAndPorts(rep, c)
	checkTLS(rep, c, time.Now())
	checkDNS(ctx, rep, c)
	sv := checkStore(ctx, rep, c, tenantID)
	checkSecrets(rep, c, sv)
	checkProviders(rep, c, sv, tenantID)
	if c.Webhooks.URL == "" {
		rep.add("webhooks", checkWarn, "webhooks.url is empty: the ATS is not told about replies, bounces or broken grants (events wait in the outbox)",
			"set webhooks.url and webhooks.secret_file to the ATS endpoint")
	} else {
		rep.add("webhooks", checkOK, "events are sent to "+redactURL(c.Webhooks.URL), "")
	}
	if tenantID != "" {
		checkTenant(ctx, rep, c, sv, tenantID)
	}

	rep.OK = true
	for _, ch := range rep.Checks {
		if ch.Status == checkFail {
			rep.OK = false
		}
	}
	return rep
}

func checkHostnameAndPorts(rep *checkReport, c *config.Config) {
	h := c.SMTP.Hostname
	if h == "localhost" || !strings.Contains(h, ".") {
		rep.add("hostname", checkFail, fmt.Sprintf("smtp.hostname is %q: inbound addresses and Message-IDs need the relay's public DNS name", h),
			`set smtp.hostname to the relay's public name, e.g. "relay.example.com"`)
	} else {
		rep.add("hostname", checkOK, "smtp.hostname is "+h, "")
	}
	if _, port, err := net.SplitHostPort(c.SMTP.Listen); err == nil && port != "25" {
		rep.add("smtp-port", checkWarn, fmt.Sprintf("smtp.listen is %s: forwarding servers deliver to port 25", c.SMTP.Listen),
			`set smtp.listen = ":25" (the systemd unit grants CAP_NET_BIND_SERVICE), or forward port 25 to this port`)
	} else {
		rep.add("smtp-port", checkOK, "SMTP listens on "+c.SMTP.Listen, "")
	}
	if host, _, err := net.SplitHostPort(c.HTTP.Listen); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && !ip.IsLoopback()) {
			rep.add("http-listen", checkWarn, fmt.Sprintf("http.listen is %s: the API, /metrics and the backup endpoint are reachable from the network", c.HTTP.Listen),
				"keep http.listen on 127.0.0.1 behind a TLS reverse proxy, or firewall it to the ATS and the monitoring hosts")
		}
	}
}

// --- TLS ---

func checkTLS(rep *checkReport, c *config.Config, now time.Time) {
	s := c.SMTP
	if !s.TLSEnabled() {
		rep.add("tls", checkFail, "no certificate: smtp.tls_cert_file and smtp.tls_key_file are not set, so STARTTLS is not offered and forwarded mail crosses the Internet unencrypted",
			fmt.Sprintf("get a certificate for %s (e.g. from Let's Encrypt) and set smtp.tls_cert_file and smtp.tls_key_file", s.Hostname))
		return
	}
	file := s.TLSCertFile
	pair, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
	if err != nil {
		rep.add("tls", checkFail, fmt.Sprintf("%s: cannot load the certificate and key: %v", file, err),
			"smtp.tls_cert_file must be the PEM certificate chain and smtp.tls_key_file its PEM private key")
		return
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		rep.add("tls", checkFail, fmt.Sprintf("%s: %v", file, err), "replace the certificate")
		return
	}
	renew := fmt.Sprintf("renew the certificate for %s, install it at smtp.tls_cert_file and smtp.tls_key_file, then run `systemctl reload syncrelay` (SIGHUP: no connection is dropped)", s.Hostname)
	day := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }
	days := func(d time.Duration) int { return int(math.Round(d.Hours() / 24)) }
	switch {
	case now.Before(leaf.NotBefore):
		rep.add("tls", checkFail, fmt.Sprintf("%s is not valid before %s", file, day(leaf.NotBefore)), "check this host's clock, or install a certificate that is valid now")
		return
	case !now.Before(leaf.NotAfter):
		rep.add("tls", checkFail, fmt.Sprintf("%s expired on %s (%d days ago)", file, day(leaf.NotAfter), days(now.Sub(leaf.NotAfter))), renew)
		return
	case leaf.NotAfter.Sub(now) < certMinValidity:
		rep.add("tls", checkFail, fmt.Sprintf("%s expires on %s, in %d days (less than 14)", file, day(leaf.NotAfter), days(leaf.NotAfter.Sub(now))), renew)
		return
	}
	if err := leaf.VerifyHostname(s.Hostname); err != nil {
		names := leaf.DNSNames
		if len(names) == 0 && leaf.Subject.CommonName != "" {
			names = []string{leaf.Subject.CommonName}
		}
		rep.add("tls", checkFail, fmt.Sprintf("%s is valid for %s, not for smtp.hostname %s", file, strings.Join(names, ", "), s.Hostname),
			fmt.Sprintf("get a certificate whose names include %s", s.Hostname))
		return
	}
	msg := fmt.Sprintf("%s is valid for %s until %s (%d days)", file, s.Hostname, day(leaf.NotAfter), days(leaf.NotAfter.Sub(now)))
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Intermediates: inter, CurrentTime: now}); err != nil {
		rep.add("tls", checkWarn, msg+", but it is not signed by a certificate authority this host trusts (self-signed, or the chain file lacks the intermediate certificates)",
			"Google and Microsoft deliver with opportunistic TLS and accept it; senders that enforce TLS (MTA-STS, DANE) would not: use a certificate from a public CA with its full chain")
		return
	}
	rep.add("tls", checkOK, msg, "")
}

// --- DNS ---

// dnsAnswer is what the hostname resolves to.
type dnsAnswer struct {
	mx    []string            // MX targets, by preference
	addrs map[string][]string // host -> addresses
}

type dnsNotFound struct{ name, server string }

func (e *dnsNotFound) Error() string { return e.name + " does not exist (NXDOMAIN)" }

func checkDNS(ctx context.Context, rep *checkReport, c *config.Config) {
	host := c.SMTP.Hostname
	via := "the system resolver"
	if c.DNS.Resolver != "" {
		via = c.DNS.Resolver
	}
	ctx, cancel := context.WithTimeout(ctx, 3*c.DNS.Timeout.Duration)
	defer cancel()
	ans, err := resolveHost(ctx, c, host)
	fix := fmt.Sprintf("create an A record for %s with this server's public address (or an MX record naming a host that has one): forwarding servers look it up to deliver to the inbound addresses", host)
	var nf *dnsNotFound
	switch {
	case errors.As(err, &nf):
		rep.add("dns", checkFail, fmt.Sprintf("%s does not exist in DNS (NXDOMAIN from %s)", host, via), fix)
		return
	case err != nil:
		rep.add("dns", checkFail, fmt.Sprintf("cannot resolve %s through %s: %v", host, via, err),
			"check dns.resolver and this host's network, then run check again")
		return
	}
	var targets []string
	if len(ans.mx) > 0 {
		targets = ans.mx
	} else {
		targets = []string{host}
	}
	var all []string
	var desc []string
	for _, t := range targets {
		a := ans.addrs[t]
		all = append(all, a...)
		if len(a) == 0 {
			desc = append(desc, t+" (no address)")
		} else {
			desc = append(desc, t+" "+strings.Join(a, " "))
		}
	}
	what := "A/AAAA"
	if len(ans.mx) > 0 {
		what = "MX"
	}
	if len(all) == 0 {
		msg := fmt.Sprintf("%s has no MX, A or AAAA record (asked %s)", host, via)
		if len(ans.mx) > 0 {
			msg = fmt.Sprintf("%s has MX %s, but none of them has an address (asked %s)", host, strings.Join(ans.mx, ", "), via)
		}
		rep.add("dns", checkFail, msg, fix)
		return
	}
	msg := fmt.Sprintf("%s %s: %s", host, what, strings.Join(desc, "; "))
	if !anyLocal(all) {
		rep.add("dns", checkWarn, msg+"; none of these is an address of this host",
			"fine if NAT or a load balancer forwards port 25 here; otherwise point the record at this server")
		return
	}
	rep.add("dns", checkOK, msg+" (this host)", "")
}

func anyLocal(addrs []string) bool {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	local := map[string]bool{}
	for _, a := range ifs {
		if ipn, ok := a.(*net.IPNet); ok {
			local[ipn.IP.String()] = true
		}
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip != nil && local[ip.String()] {
			return true
		}
	}
	return false
}

// resolveHost looks up host's MX and the addresses of the MX targets (or of
// host itself when it has no MX), through dns.resolver when set, else the
// system resolver.
func resolveHost(ctx context.Context, c *config.Config, host string) (*dnsAnswer, error) {
	if c.DNS.Resolver == "" {
		return resolveSystem(ctx, host)
	}
	q := &dnsQuerier{server: c.DNS.Resolver, timeout: c.DNS.Timeout.Duration}
	ans := &dnsAnswer{addrs: map[string][]string{}}
	mx, err := q.query(ctx, host, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	for _, rr := range mx {
		if m, ok := rr.(*dns.MX); ok && m.Mx != "." {
			ans.mx = append(ans.mx, strings.TrimSuffix(strings.ToLower(m.Mx), "."))
		}
	}
	targets := ans.mx
	if len(targets) == 0 {
		targets = []string{host}
	}
	for _, t := range targets {
		for _, typ := range []uint16{dns.TypeA, dns.TypeAAAA} {
			rrs, err := q.query(ctx, t, typ)
			var nf *dnsNotFound
			if errors.As(err, &nf) && t != host {
				break // a dangling MX target: reported as "no address"
			}
			if err != nil {
				return nil, err
			}
			for _, rr := range rrs {
				switch a := rr.(type) {
				case *dns.A:
					ans.addrs[t] = append(ans.addrs[t], a.A.String())
				case *dns.AAAA:
					ans.addrs[t] = append(ans.addrs[t], a.AAAA.String())
				}
			}
		}
	}
	return ans, nil
}

type dnsQuerier struct {
	server  string
	timeout time.Duration
}

func (q *dnsQuerier) query(ctx context.Context, name string, typ uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), typ)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	cl := &dns.Client{Net: "udp", UDPSize: 1232, Timeout: q.timeout}
	r, _, err := cl.ExchangeContext(ctx, m, q.server)
	if err == nil && r.Truncated {
		cl = &dns.Client{Net: "tcp", Timeout: q.timeout}
		r, _, err = cl.ExchangeContext(ctx, m, q.server)
	}
	if err != nil {
		return nil, err
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
		return r.Answer, nil
	case dns.RcodeNameError:
		return nil, &dnsNotFound{name: name, server: q.server}
	default:
		return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[typ], dns.RcodeToString[r.Rcode])
	}
}

func resolveSystem(ctx context.Context, host string) (*dnsAnswer, error) {
	r := net.DefaultResolver
	ans := &dnsAnswer{addrs: map[string][]string{}}
	notFound := func(err error) bool {
		var de *net.DNSError
		return errors.As(err, &de) && de.IsNotFound
	}
	mxs, err := r.LookupMX(ctx, host)
	if err != nil && !notFound(err) {
		return nil, err
	}
	for _, m := range mxs {
		if m.Host != "." {
			ans.mx = append(ans.mx, strings.TrimSuffix(strings.ToLower(m.Host), "."))
		}
	}
	targets := ans.mx
	if len(targets) == 0 {
		targets = []string{host}
	}
	for _, t := range targets {
		ips, err := r.LookupIPAddr(ctx, t)
		if notFound(err) {
			if t == host && len(ans.mx) == 0 {
				return nil, &dnsNotFound{name: host, server: "system"}
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, ip := range ips {
			ans.addrs[t] = append(ans.addrs[t], ip.IP.String())
		}
	}
	return ans, nil
}

// --- store ---

// storeView is what check learned about the store: directly when no
// daemon holds it, else from the running daemon's API.
type storeView struct {
	tenants []*store.Tenant
	known   bool // tenants is the real list
	// issued is the Message-ID of a message syncrelay sent, when the
	// store could be read directly (to test the secret key against).
	issued string
	// activity is the -tenant's forwarding activity, when the store could
	// be read directly; daemon asks the running daemon for its status
	// instead.
	activity *store.TenantActivity
	daemon   *adminClient
	// keyFP is the secret key fingerprint recorded with the data ("" if
	// none), read directly or, while the daemon runs, through its API.
	keyFP    string
	hasData  bool  // the store holds data a new key would orphan
	keyFPErr error // the running daemon could not say
}

func checkStore(ctx context.Context, rep *checkReport, c *config.Config, tenantID string) *storeView {
	if c.Store.Backend == config.BackendPostgres {
		return checkPostgresStore(ctx, rep, c, tenantID)
	}
	sv := &storeView{}
	dir := c.Store.Dir
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		sv.known = true
		if perr := writable(filepath.Dir(filepath.Clean(dir))); perr != nil {
			rep.add("store", checkFail, fmt.Sprintf("store.dir %s does not exist, and this user (uid %d) cannot create it: %v", dir, os.Getuid(), perr),
				"create it, owned by the daemon's user, mode 0700 (the systemd unit's StateDirectory= does this)")
			return sv
		}
		rep.add("store", checkOK, fmt.Sprintf("store.dir %s does not exist yet; the daemon creates it at first start", dir), "")
		return sv
	case err != nil:
		rep.add("store", checkFail, fmt.Sprintf("store.dir %s: %v", dir, err), "fix the path or its permissions")
		return sv
	case !fi.IsDir():
		rep.add("store", checkFail, fmt.Sprintf("store.dir %s is not a directory", dir), "point store.dir at the data directory")
		return sv
	}
	if err := writable(dir); err != nil {
		rep.add("store", checkFail, fmt.Sprintf("store.dir %s is not writable by this user (uid %d): %v", dir, os.Getuid(), err),
			"run check as the daemon's user (sudo -u syncrelay syncrelay check ...), or give that user the directory")
		return sv
	}
	if _, err := os.Stat(filepath.Join(dir, config.DBFileName)); errors.Is(err, os.ErrNotExist) {
		rep.add("store", checkOK, fmt.Sprintf("store.dir %s is writable; no database yet (created at first start)", dir), "")
		sv.known = true
		return sv
	}
	st, err := bolt.Open(dir, bolt.Options{ReadOnly: true, LockTimeout: 300 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		cl, cerr := newAdminClient(c)
		if cerr == nil {
			cerr = cl.ready(ctx)
		}
		if cerr != nil {
			rep.add("store", checkFail, fmt.Sprintf("the store in %s is locked by another process, and no daemon answers on %s: %v", dir, c.HTTP.Listen, cerr),
				"find the process holding "+c.DBPath()+" (fuser), or check http.listen and the API token")
			return sv
		}
		rep.add("store", checkOK, fmt.Sprintf("store.dir %s is in use by the running daemon, which is ready", dir), "")
		sv.daemon = cl
		if ts, err := cl.tenants(ctx); err == nil {
			sv.tenants, sv.known = ts, true
		}
		// The daemon recorded its key's fingerprint at start.
		sv.keyFP, sv.keyFPErr = cl.keyFingerprint(ctx)
		sv.hasData = sv.keyFP != ""
		return sv
	}
	if err != nil {
		rep.add("store", checkFail, fmt.Sprintf("cannot open the store in %s: %v", dir, err), "restore the data directory from a backup (syncrelay restore) if it is damaged")
		return sv
	}
	// Read what the other checks need and let go of the lock at once: a
	// daemon starting now waits for it (store.open_timeout).
	ts, err := st.Tenants(ctx)
	if err == nil {
		sv.issued, _, err = st.LatestIssuedMessageID(ctx)
	}
	if err == nil && tenantID != "" {
		now := time.Now()
		sv.activity, err = st.TenantActivity(ctx, tenantID, now, now.Add(-24*time.Hour))
	}
	if err == nil {
		sv.keyFP, _, err = st.KeyFingerprint(ctx)
	}
	if err == nil {
		sv.hasData, err = st.HasData(ctx)
	}
	st.Close()
	if err != nil {
		rep.add("store", checkFail, fmt.Sprintf("cannot read the store in %s: %v", dir, err), "restore the data directory from a backup")
		return sv
	}
	sv.tenants, sv.known = ts, true
	rep.add("store", checkOK, fmt.Sprintf("store.dir %s is writable; the database opens (%s); no daemon is running", dir, plural(len(ts), "tenant", "tenants")), "")
	return sv
}

func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".syncrelay-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// --- secrets ---

func checkSecrets(rep *checkReport, c *config.Config, sv *storeView) {
	hasData := len(sv.tenants) > 0 || sv.hasData
	keys, _, err := daemon.LoadKeys(c, false)
	switch {
	case err != nil && errors.Is(err, os.ErrNotExist) && !hasData:
		rep.add("secret-key", checkOK, fmt.Sprintf("no key at %s yet: the daemon generates it at first start (back it up, it is not in backups)", c.SecretKeyPath()), "")
	case err != nil && errors.Is(err, os.ErrNotExist):
		rep.add("secret-key", checkFail, fmt.Sprintf("the store has data but there is no secret key at %s: the daemon refuses to start without it (a new key would make every stored grant undecryptable and every reply to earlier mail unmatched)", c.SecretKeyPath()),
			"restore the key file that was backed up with this store: copy secret.key from the old server or from where you keep it (it is not part of syncrelay backups), or set "+config.EnvSecretKey)
	case err != nil:
		rep.add("secret-key", checkFail, err.Error(), "the key file holds 64 hex characters on one line (openssl rand -hex 32)")
	default:
		status, msg, fix := keyAgainstData(c, keys, sv)
		rep.add("secret-key", status, msg, fix)
	}
	if len(c.API.Tokens) == 0 {
		rep.add("api-tokens", checkWarn, fmt.Sprintf("no api.tokens_file: the API accepts the development token in %s", c.APITokenPath()),
			"put the ATS's tokens in a file (one a line, mode 0600) and set api.tokens_file")
	} else {
		rep.add("api-tokens", checkOK, fmt.Sprintf("%s configured", plural(len(c.API.Tokens), "API token", "API tokens")), "")
	}
}

// keyAgainstData compares the configured key with the data: by the key
// fingerprint recorded in the store, else (data from before fingerprints)
// by the latest token syncrelay issued.
func keyAgainstData(c *config.Config, keys *daemon.Keys, sv *storeView) (status, msg, fix string) {
	msg = "secret key " + daemon.KeySource(c)
	restore := "restore the key file that was backed up with this store; a different key makes every stored grant undecryptable and every reply to earlier mail unmatched"
	switch {
	case sv.keyFPErr != nil:
		return checkWarn, msg + fmt.Sprintf(": cannot compare it with the data, the running daemon did not give its key fingerprint (%v)", sv.keyFPErr),
			"upgrade the running daemon, or stop it and run check again"
	case sv.keyFP == keys.Fingerprint:
		return checkOK, msg + " matches the data (the key fingerprint recorded in store.dir)", ""
	case sv.keyFP != "":
		msg += fmt.Sprintf(" does not match the data in store.dir %s: it is not the key this data was created with", c.Store.Dir)
		if sv.daemon != nil {
			msg += "; the running daemon still uses the key it read at start, but will refuse to start again with this one"
		}
		return checkFail, msg, restore
	case sv.issued != "" && keys.Minted(sv.issued):
		return checkOK, msg + " matches the data (it minted the latest sent message's token)", ""
	case sv.issued != "":
		return checkFail, msg + " did NOT mint the tokens in this store: replies to earlier mail will not match", restore
	}
	return checkOK, msg, ""
}

// --- providers ---

type providerInfo struct {
	name, section, env, console string
	p                           config.Provider
	defAuth, defToken, defAPI   string
}

func providersOf(c *config.Config) []providerInfo {
	return []providerInfo{
		{name: "google", section: "[providers.google]", env: config.EnvGoogleClientSecret, p: c.Providers.Google,
			console: "create an OAuth client in the Google Cloud console (APIs & Services > Credentials; scope https://www.googleapis.com/auth/gmail.send only)",
			defAuth: config.DefaultGoogleAuthURL, defToken: config.DefaultGoogleTokenURL, defAPI: config.DefaultGoogleAPIBase},
		{name: "microsoft", section: "[providers.microsoft]", env: config.EnvMicrosoftClientSecret, p: c.Providers.Microsoft,
			console: "register an app in Microsoft Entra ID (App registrations; delegated permissions Mail.Send and offline_access only)",
			defAuth: config.DefaultMicrosoftAuthURL, defToken: config.DefaultMicrosoftTokenURL, defAPI: config.DefaultMicrosoftAPIBase},
	}
}

func checkProviders(rep *checkReport, c *config.Config, sv *storeView, tenantID string) {
	users := map[string][]string{} // provider -> tenants using it
	for _, t := range sv.tenants {
		if tenantID == "" || t.ID == tenantID {
			users[t.Provider] = append(users[t.Provider], t.ID)
		}
	}
	configured := 0
	for _, pi := range providersOf(c) {
		p := pi.p
		key := "providers." + pi.name
		ts := users[pi.name]
		if p.ClientID == "" {
			if len(ts) > 0 {
				rep.add(pi.name, checkFail, fmt.Sprintf("%s %s %s %s, but %s has no client_id: its users cannot connect the send-only grant, so nothing can be sent for them",
					verb(len(ts), "tenant", "tenants"), quoteList(ts), verb(len(ts), "uses", "use"), pi.name, pi.section),
					fmt.Sprintf("%s, then set %s.client_id and %s.client_secret_file (or %s)", pi.console, key, key, pi.env))
			}
			continue
		}
		configured++
		status, msg, fix := checkOK, fmt.Sprintf("client %s configured", p.ClientID), ""
		var notes []string
		if u, err := url.Parse(p.RedirectURL); err == nil {
			local := u.Hostname() == "localhost" || net.ParseIP(u.Hostname()) != nil && net.ParseIP(u.Hostname()).IsLoopback()
			switch {
			case local:
				status = checkWarn
				notes = append(notes, fmt.Sprintf("redirect_url %s only works from a browser on this host", p.RedirectURL))
				fix = fmt.Sprintf("set %s.redirect_url to the public https URL of /oauth/%s/callback registered with the OAuth client", key, pi.name)
			case u.Scheme != "https":
				status = checkWarn
				notes = append(notes, fmt.Sprintf("redirect_url %s is not https (providers refuse it)", p.RedirectURL))
				fix = fmt.Sprintf("serve the callback over https and set %s.redirect_url accordingly", key)
			}
		}
		for _, e := range []struct{ key, val, def string }{{"auth_url", p.AuthURL, pi.defAuth}, {"token_url", p.TokenURL, pi.defToken}, {"api_base", p.APIBase, pi.defAPI}} {
			if e.val != e.def && !(pi.name == "microsoft" && e.key != "api_base" && strings.HasPrefix(e.val, "https://login.microsoftonline.com/")) {
				status = checkWarn
				notes = append(notes, fmt.Sprintf("%s points at %s, not the real %s endpoint (a test server?)", e.key, redactURL(e.val), pi.name))
				if fix == "" {
					fix = fmt.Sprintf("remove %s.%s to use the default", key, e.key)
				}
			}
		}
		if len(notes) > 0 {
			msg += "; " + strings.Join(notes, "; ")
		}
		rep.add(pi.name, status, msg, fix)
	}
	if configured == 0 && len(users) == 0 {
		rep.add("providers", checkWarn, "no OAuth provider is configured: users cannot connect a send-only grant, so syncrelay cannot send",
			"configure [providers.google] and/or [providers.microsoft] (client_id, client_secret_file)")
	}
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func verb(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// redactURL shows scheme://host/path of u, never credentials or a query.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return "(invalid URL)"
	}
	return p.Scheme + "://" + p.Host + p.Path
}

// --- tenant and its routing rules ---

func checkTenant(ctx context.Context, rep *checkReport, c *config.Config, sv *storeView, id string) {
	if !sv.known {
		rep.add("tenant", checkFail, fmt.Sprintf("tenant %q: the store could not be read (see above)", id), "fix the store check first")
		return
	}
	var t *store.Tenant
	var ids []string
	for _, x := range sv.tenants {
		ids = append(ids, x.ID)
		if x.ID == id {
			t = x
		}
	}
	if t == nil {
		known := "there are no tenants yet"
		if len(ids) > 0 {
			known = "tenants: " + strings.Join(ids, ", ")
		}
		rep.add("tenant", checkFail, fmt.Sprintf("no tenant %q (%s)", id, known), "create it with POST /v1/tenants (see README), or fix -tenant")
		return
	}
	rep.add("tenant", checkOK, fmt.Sprintf("tenant %q (%s, dkim_policy %s), inbound address %s", t.ID, t.Provider, t.DKIMPolicy, t.InboundAddress), "")
	if t.DKIMPolicy == store.PolicyOff {
		rep.add("dkim-policy", checkWarn, fmt.Sprintf("tenant %q has dkim_policy off: forged mail can reach candidate profiles", t.ID),
			`set it back with PATCH /v1/tenants/`+t.ID+` {"dkim_policy":"require"}`)
	}
	rep.Tenant = setup.For(c.SMTP.Hostname, t)
	checkTenantIssues(ctx, rep, sv, t, rep.Tenant)
}

// checkTenantIssues reports what the tenant's last day of forwarded mail
// shows (over-forwarding, its own users' mail refused as dkim_unaligned),
// as the status endpoint does: from the store, or from the running daemon.
func checkTenantIssues(ctx context.Context, rep *checkReport, sv *storeView, t *store.Tenant, rules *setup.Rules) {
	var issues []api.StatusIssue
	switch {
	case sv.activity != nil:
		issues = api.TenantIssues(t, sv.activity, rules)
	case sv.daemon != nil:
		var err error
		if issues, err = sv.daemon.issues(ctx, t.ID); err != nil {
			rep.add("tenant-status", checkWarn, fmt.Sprintf("cannot read tenant %q's forwarding status from the daemon: %v", t.ID, err),
				"check the API token (api.tokens_file) and run check again")
			return
		}
	default:
		return
	}
	for _, is := range issues {
		fix := is.Action
		if is.Code == api.IssueDKIMUnaligned && len(is.SigningDomains) > 0 {
			add, _ := json.Marshal(map[string][]string{"signing_domains": append(slices.Clone(t.SigningDomains), is.SigningDomains...)})
			fix += fmt.Sprintf(" As the relay operator, once the company confirms it sends through these domains: PATCH /v1/tenants/%s %s", t.ID, add)
		}
		rep.add(strings.ReplaceAll(is.Code, "_", "-"), checkWarn, is.Detail, fix)
	}
}

// issues reads a tenant's status issues from the running daemon.
func (a *adminClient) issues(ctx context.Context, tenant string) ([]api.StatusIssue, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	path := "/v1/tenants/" + url.PathEscape(tenant) + "/status"
	resp, err := a.get(ctx, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Issues []api.StatusIssue `json:"issues"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return out.Issues, nil
}

func printReport(w io.Writer, rep *checkReport) {
	fmt.Fprintf(w, "syncrelay check, config %s\n\n", rep.Config)
	failed, warned := 0, 0
	for _, ch := range rep.Checks {
		label := ch.Status
		switch ch.Status {
		case checkFail:
			label = "FAIL"
			failed++
		case checkWarn:
			warned++
		}
		fmt.Fprintf(w, "%-5s %-11s %s\n", label, ch.Name, ch.Message)
		if ch.Fix != "" && ch.Status != checkOK {
			fmt.Fprintf(w, "%-5s %-11s fix: %s\n", "", "", ch.Fix)
		}
	}
	if rep.Tenant != nil {
		rep.Tenant.Print(w)
	}
	fmt.Fprintln(w)
	switch {
	case failed > 0:
		fmt.Fprintf(w, "%s failed: fix %s and run syncrelay check again.\n", plural(failed, "check", "checks"), verb(failed, "it", "them"))
	case warned > 0:
		fmt.Fprintf(w, "All checks passed (%s).\n", plural(warned, "warning", "warnings"))
	default:
		fmt.Fprintln(w, "All checks passed.")
	}
}
