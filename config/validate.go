package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
)

// Validate checks c and returns every problem, joined with errors.Join and
// ordered by line; each is an *Error naming the key (and, for a parsed file,
// the file and line) and saying what to do. Values of secrets never appear in
// messages.
func (c *Config) Validate() error {
	return errors.Join(sortByLine(c.problems())...)
}

func (c *Config) problems() []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, c.errAt(key, format, args...))
	}

	// Every duration must be positive.
	c.eachDuration(func(key string, d Duration) {
		if d.Duration <= 0 {
			add(key, "must be a positive duration (e.g. \"30s\"), got %q", d.String())
		}
	})

	// [smtp]
	s := &c.SMTP
	if err := checkListen(s.Listen); err != nil {
		add("smtp.listen", "%v", err)
	}
	if err := checkHostname(s.Hostname); err != nil {
		add("smtp.hostname", "%v; use the relay's public host name, e.g. \"relay.example.com\"", err)
	}
	switch {
	case s.TLSCertFile != "" && s.TLSKeyFile == "":
		add("smtp.tls_cert_file", "is set but smtp.tls_key_file is empty; set both (to offer STARTTLS) or neither")
	case s.TLSCertFile == "" && s.TLSKeyFile != "":
		add("smtp.tls_key_file", "is set but smtp.tls_cert_file is empty; set both (to offer STARTTLS) or neither")
	}
	checkFile := func(key, path string) {
		if path == "" {
			return
		}
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			add(key, "%v; fix the path (relative paths are relative to the config file)", err)
		case fi.IsDir():
			add(key, "%q is a directory; give a file", path)
		}
	}
	checkFile("smtp.tls_cert_file", s.TLSCertFile)
	checkFile("smtp.tls_key_file", s.TLSKeyFile)
	positive := func(key string, v int64) {
		if v <= 0 {
			add(key, "must be greater than 0, got %d", v)
		}
	}
	positive("smtp.max_message_bytes", s.MaxMessageBytes)
	positive("smtp.max_recipients", int64(s.MaxRecipients))
	positive("smtp.max_header_bytes", s.MaxHeaderBytes)
	positive("smtp.max_mime_depth", int64(s.MaxMIMEDepth))
	if s.MaxLineLength < 1000 {
		add("smtp.max_line_length", "must be at least 1000 (the RFC 5321 minimum line length), got %d", s.MaxLineLength)
	}
	positive("smtp.max_connections", int64(s.MaxConnections))
	positive("smtp.max_connections_per_ip", int64(s.MaxConnectionsPerIP))
	if s.MaxConnectionsPerIP > s.MaxConnections && s.MaxConnections > 0 {
		add("smtp.max_connections_per_ip", "(%d) is greater than smtp.max_connections (%d); lower it or raise max_connections",
			s.MaxConnectionsPerIP, s.MaxConnections)
	}
	positive("smtp.max_dkim_signatures", int64(s.MaxDKIMSignatures))

	// [http]
	if err := checkListen(c.HTTP.Listen); err != nil {
		add("http.listen", "%v", err)
	} else if sameListen(c.HTTP.Listen, s.Listen) {
		add("http.listen", "%q is also smtp.listen; give each server its own port", c.HTTP.Listen)
	}
	positive("http.max_body_bytes", c.HTTP.MaxBodyBytes)
	if u := c.HTTP.PublicURL; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.RawQuery != "" || pu.Fragment != "" {
			add("http.public_url", "%q is not an http(s) URL without query, e.g. \"https://relay.example.com\"", u)
		}
	}

	// [store]
	if strings.TrimSpace(c.Store.Dir) == "" {
		add("store.dir", "is empty; give the data directory, e.g. \"/var/lib/syncrelay\"")
	}
	switch c.Store.Backend {
	case BackendBolt:
		if c.Store.DSN != "" {
			add("store.backend", "is %q but a PostgreSQL DSN is set (store.dsn, store.dsn_file or %s); set backend = %q or remove the DSN",
				BackendBolt, EnvStoreDSN, BackendPostgres)
		}
	case BackendPostgres:
		if c.Store.DSN == "" {
			add("store.backend", "is %q but there is no DSN; set store.dsn, store.dsn_file or %s (e.g. \"postgres://syncrelay@db.internal/syncrelay\")",
				BackendPostgres, EnvStoreDSN)
		}
	default:
		add("store.backend", "must be %q or %q, got %q", BackendBolt, BackendPostgres, c.Store.Backend)
	}

	// [dns]
	if r := c.DNS.Resolver; r != "" {
		if _, err := netip.ParseAddr(r); err == nil {
			add("dns.resolver", "%q has no port; write %q", r, net.JoinHostPort(r, "53"))
		} else if err := checkHostPort(r, false); err != nil {
			add("dns.resolver", "%v; or leave it empty for the system resolver", err)
		}
	}
	checkFile("dns.zone_file", c.DNS.ZoneFile)

	// [webhooks]
	w := &c.Webhooks
	if w.URL != "" {
		if err := checkURL(w.URL); err != nil {
			add("webhooks.url", "%v; or leave it empty to disable webhooks", err)
		}
		if w.Secret == "" {
			add("webhooks.url", "is set but there is no signing secret; set webhooks.secret, webhooks.secret_file or %s", EnvWebhooksSecret)
		}
	}
	positive("webhooks.max_attempts", int64(w.MaxAttempts))

	// [providers]
	for _, p := range []struct {
		name, env string
		p         *Provider
	}{
		{"google", EnvGoogleClientSecret, &c.Providers.Google},
		{"microsoft", EnvMicrosoftClientSecret, &c.Providers.Microsoft},
	} {
		k := "providers." + p.name + "."
		for _, u := range []struct{ key, val string }{
			{"auth_url", p.p.AuthURL}, {"token_url", p.p.TokenURL}, {"api_base", p.p.APIBase},
		} {
			if err := checkURL(u.val); err != nil {
				add(k+u.key, "%v", err)
			}
		}
		if p.p.RedirectURL != "" {
			if err := checkURL(p.p.RedirectURL); err != nil {
				add(k+"redirect_url", "%v", err)
			}
		}
		if p.p.ClientID != "" && p.p.ClientSecret == "" {
			add(k+"client_id", "is set but there is no client secret; set %sclient_secret, %sclient_secret_file or %s", k, k, p.env)
		}
	}
	if t := c.Providers.Google.Tenant; t != "" {
		add("providers.google.tenant", "only [providers.microsoft] has a tenant; remove it")
	}
	if t := c.Providers.Microsoft.Tenant; !validTenant(t) {
		add("providers.microsoft.tenant", "%q is not a tenant; use \"common\", \"organizations\", a tenant domain or a tenant ID", t)
	}

	// [outbound]
	o := &c.Outbound
	if o.MaxRetries < 0 {
		add("outbound.max_retries", "must be 0 (no retries) or more, got %d", o.MaxRetries)
	}
	if o.RetryBaseDelay.Duration > 0 && o.MaxRetryDelay.Duration > 0 && o.RetryBaseDelay.Duration > o.MaxRetryDelay.Duration {
		add("outbound.retry_base_delay", "(%s) is longer than outbound.max_retry_delay (%s); lower it or raise max_retry_delay",
			o.RetryBaseDelay, o.MaxRetryDelay)
	}
	positive("outbound.sender_rate_per_minute", int64(o.SenderRatePerMinute))

	// [log]
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q is not a level; use one of \"debug\", \"info\", \"warn\", \"error\"", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "%q is not a format; use \"text\" or \"json\"", c.Log.Format)
	}
	return errs
}

// eachDuration calls fn for every Duration field with its dotted key.
func (c *Config) eachDuration(fn func(key string, d Duration)) {
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag, _, _ := strings.Cut(sf.Tag.Get("toml"), ",")
			if !sf.IsExported() || tag == "" || tag == "-" {
				continue
			}
			fv := v.Field(i)
			switch {
			case sf.Type == durationType:
				fn(joinKey(prefix, tag), fv.Interface().(Duration))
			case sf.Type.Kind() == reflect.Struct:
				walk(fv, joinKey(prefix, tag))
			}
		}
	}
	walk(reflect.ValueOf(c).Elem(), "")
}

// checkListen checks a listen address.
func checkListen(s string) error {
	return checkHostPort(s, true)
}

// checkHostPort checks host:port. With listen, the host may be empty (all
// interfaces) and the port 0 (any free port).
func checkHostPort(s string, listen bool) error {
	example := "\"127.0.0.1:2525\" or \":25\""
	if !listen {
		example = "\"192.0.2.53:53\""
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. %s)", s, example)
	}
	lo := 1
	if listen {
		lo = 0 // any free port
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < lo || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from %d to 65535 (e.g. %s)", s, port, lo, example)
	}
	if host == "" {
		if listen {
			return nil
		}
		return fmt.Errorf("%q has no host (e.g. %s)", s, example)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := checkHostname(host); err != nil {
		return fmt.Errorf("%q: host is neither an IP address nor a host name", s)
	}
	return nil
}

// checkHostname checks that s is a valid DNS host name (not an IP address).
func checkHostname(s string) error {
	if s == "" {
		return errors.New("is empty")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return fmt.Errorf("%q is an IP address, not a DNS name", s)
	}
	name := strings.TrimSuffix(s, ".")
	if len(name) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("%q is not a valid DNS name: it has an empty label", s)
		}
		if len(l) > 63 {
			return fmt.Errorf("%q is not a valid DNS name: label %q is longer than 63 characters", s, l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not a valid DNS name: label %q starts or ends with '-'", s, l)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q is not a valid DNS name: label %q contains %q (only letters, digits and '-')", s, l, r)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("%q is not a valid DNS name: the last label is all digits", s)
	}
	return nil
}

// checkURL checks an absolute http(s) URL. The URL itself is not repeated in
// the message (it may carry credentials); the line number points at it.
func checkURL(s string) error {
	if s == "" {
		return errors.New("is empty; give an absolute http:// or https:// URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("is not a valid URL; give an absolute http:// or https:// URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must start with http:// or https://")
	}
	if u.Host == "" {
		return errors.New("has no host; give an absolute URL such as https://example.com/path")
	}
	return nil
}

// validTenant reports whether t looks like an Entra tenant: "common",
// "organizations", "consumers", a domain or a GUID.
func validTenant(t string) bool {
	if t == "" {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// sameListen reports whether two listen addresses would collide.
func sameListen(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}
