// Package config loads the syncrelay daemon's single TOML configuration file.
//
// The file is strict: an unknown key, a value of the wrong type or a duration
// that is not a Go duration string is an error that names the file, the line
// and the key. Every key has a default (see Default), so an empty file, or no
// file at all, is a valid configuration for local use.
//
// Loading happens in this order:
//
//  1. the embedded defaults (Default);
//  2. the file, if any; relative paths written in the file are relative to the
//     file's directory and are made absolute;
//  3. the SYNCRELAY_* environment variables (only secrets, see the Env*
//     constants); an empty variable counts as unset;
//  4. secrets given as *_file paths are read into their plain fields
//     (Webhooks.Secret, Provider.ClientSecret), API tokens are read;
//  5. derived values (see Provider.RedirectURL, Provider.Tenant and
//     Provider.APIBase; a trailing dot of smtp.hostname is dropped);
//  6. Validate.
//
// docs/config.md is the reference of every key.
package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Environment variables that override secrets from the file.
const (
	// EnvSecretKey holds the server secret key, hex encoded (32 bytes = 64
	// hex characters). It overrides secrets.key_file.
	EnvSecretKey = "SYNCRELAY_SECRET_KEY"
	// EnvAPITokens holds the API bearer tokens, comma separated. It overrides
	// api.tokens_file.
	EnvAPITokens = "SYNCRELAY_API_TOKENS"
	// EnvWebhooksSecret overrides webhooks.secret / webhooks.secret_file.
	EnvWebhooksSecret = "SYNCRELAY_WEBHOOKS_SECRET"
	// EnvGoogleClientSecret overrides providers.google.client_secret(_file).
	EnvGoogleClientSecret = "SYNCRELAY_GOOGLE_CLIENT_SECRET"
	// EnvMicrosoftClientSecret overrides providers.microsoft.client_secret(_file).
	EnvMicrosoftClientSecret = "SYNCRELAY_MICROSOFT_CLIENT_SECRET"
	// EnvStoreDSN overrides store.dsn / store.dsn_file (postgres backend).
	EnvStoreDSN = "SYNCRELAY_STORE_DSN"
)

// SecretKeySize is the length in bytes of the server secret key given in
// SYNCRELAY_SECRET_KEY.
const SecretKeySize = 32

// File names inside store.dir.
const (
	DBFileName        = "syncrelay.db"
	RawDirName        = "raw"
	SecretKeyFileName = "secret.key"
	APITokenFileName  = "api-token"
)

// Default provider endpoints.
const (
	DefaultGoogleAuthURL     = "https://accounts.google.com/o/oauth2/auth"
	DefaultGoogleTokenURL    = "https://oauth2.googleapis.com/token"
	DefaultGoogleAPIBase     = "https://gmail.googleapis.com"
	DefaultMicrosoftTenant   = "common"
	DefaultMicrosoftAuthURL  = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
	DefaultMicrosoftTokenURL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
	DefaultMicrosoftAPIBase  = "https://graph.microsoft.com/v1.0"
)

// Config is the whole configuration. Field names map to snake_case TOML keys.
type Config struct {
	SMTP      SMTP      `toml:"smtp"`
	HTTP      HTTP      `toml:"http"`
	Store     Store     `toml:"store"`
	DNS       DNS       `toml:"dns"`
	Secrets   Secrets   `toml:"secrets"`
	API       API       `toml:"api"`
	Webhooks  Webhooks  `toml:"webhooks"`
	Providers Providers `toml:"providers"`
	Outbound  Outbound  `toml:"outbound"`
	Status    Status    `toml:"status"`
	Log       Log       `toml:"log"`

	// src describes where the values came from (file name, directory, the
	// line of every key); nil for a Config that was not parsed from a file.
	src *source
}

// SMTP is the [smtp] section: the inbound SMTP server.
type SMTP struct {
	Listen              string   `toml:"listen"`
	Hostname            string   `toml:"hostname"`
	TLSCertFile         string   `toml:"tls_cert_file"`
	TLSKeyFile          string   `toml:"tls_key_file"`
	MaxMessageBytes     int64    `toml:"max_message_bytes"`
	MaxRecipients       int      `toml:"max_recipients"`
	MaxHeaderBytes      int64    `toml:"max_header_bytes"`
	MaxMIMEDepth        int      `toml:"max_mime_depth"`
	MaxLineLength       int      `toml:"max_line_length"`
	CommandTimeout      Duration `toml:"command_timeout"`
	DataTimeout         Duration `toml:"data_timeout"`
	MaxConnections      int      `toml:"max_connections"`
	MaxConnectionsPerIP int      `toml:"max_connections_per_ip"`
	ShutdownTimeout     Duration `toml:"shutdown_timeout"`
	MaxDKIMSignatures   int      `toml:"max_dkim_signatures"`
}

// TLSEnabled reports whether a certificate is configured (STARTTLS offered).
func (s SMTP) TLSEnabled() bool { return s.TLSCertFile != "" && s.TLSKeyFile != "" }

// HTTP is the [http] section: the JSON API, OAuth callbacks, health and
// metrics.
type HTTP struct {
	Listen            string   `toml:"listen"`
	ReadHeaderTimeout Duration `toml:"read_header_timeout"`
	MaxBodyBytes      int64    `toml:"max_body_bytes"`
	ShutdownTimeout   Duration `toml:"shutdown_timeout"`
	// PublicURL is where people reach this listener (through the reverse
	// proxy): hosted-page links start with it. "": http://<http.listen>.
	PublicURL string `toml:"public_url"`
	// PageRefresh is how often the admin page reloads itself while a
	// forwarding probe is out; 0 means every 5 s. Not a config key: tests
	// set it short so as not to wait for the next reload.
	PageRefresh time.Duration `toml:"-"`
}

// Store backends ([store] backend).
const (
	BackendBolt     = "bbolt"
	BackendPostgres = "postgres"
)

// Store is the [store] section.
type Store struct {
	// Backend is "bbolt" (the embedded default: one node, data in Dir) or
	// "postgres" (several nodes sharing the database at DSN).
	Backend     string   `toml:"backend"`
	Dir         string   `toml:"dir"`
	OpenTimeout Duration `toml:"open_timeout"`
	// DSN is the PostgreSQL connection string (postgres backend). After
	// loading it holds the resolved value (from SYNCRELAY_STORE_DSN,
	// DSNFile or the file): it may carry a password, so it is a secret.
	DSN     string `toml:"dsn"`
	DSNFile string `toml:"dsn_file"`
	// ProbeInterval is how often the daemon asks a shared store's database
	// whether it answers (/readyz); 0 means every second. Not a config
	// key: tests set it short to see an outage without waiting.
	ProbeInterval time.Duration `toml:"-"`
}

// DNS is the [dns] section.
type DNS struct {
	// Resolver is host:port of a DNS server; "" means the system resolver
	// (/etc/resolv.conf).
	Resolver string `toml:"resolver"`
	// ZoneFile is a text file of `name TXT "value"` lines for tests and
	// offline QA; "" means none.
	ZoneFile    string   `toml:"zone_file"`
	Timeout     Duration `toml:"timeout"`
	CacheTTL    Duration `toml:"cache_ttl"`
	NegativeTTL Duration `toml:"negative_ttl"`
}

// Secrets is the [secrets] section.
type Secrets struct {
	// KeyFile is the server secret key file; "" means <store.dir>/secret.key.
	// The daemon creates it on first start. See Config.SecretKeyPath.
	KeyFile string `toml:"key_file"`
	// Key is the key from SYNCRELAY_SECRET_KEY (decoded, SecretKeySize
	// bytes); nil when the variable is unset, in which case the daemon uses
	// SecretKeyPath.
	Key []byte `toml:"-"`
}

// API is the [api] section.
type API struct {
	// TokensFile holds the accepted bearer tokens, one a line (blank lines
	// and lines starting with # are ignored); "" means the dev token at
	// <store.dir>/api-token. See Config.APITokenPath.
	TokensFile string `toml:"tokens_file"`
	// Tokens are the tokens read from SYNCRELAY_API_TOKENS or TokensFile at
	// load time; nil when neither is set (the daemon then uses, and on first
	// start creates, the dev token at APITokenPath).
	Tokens []string `toml:"-"`
}

// Webhooks is the [webhooks] section.
type Webhooks struct {
	// URL receives the events; "" disables webhooks.
	URL string `toml:"url"`
	// Secret is the HMAC-SHA256 key for X-Syncrelay-Signature. After
	// loading it holds the resolved secret (from SYNCRELAY_WEBHOOKS_SECRET,
	// SecretFile or the inline value).
	Secret      string   `toml:"secret"`
	SecretFile  string   `toml:"secret_file"`
	MaxAttempts int      `toml:"max_attempts"`
	Timeout     Duration `toml:"timeout"`
}

// Providers is the [providers] section.
type Providers struct {
	Google    Provider `toml:"google"`
	Microsoft Provider `toml:"microsoft"`
}

// Provider is [providers.google] or [providers.microsoft].
type Provider struct {
	ClientID string `toml:"client_id"`
	// ClientSecret holds the resolved client secret after loading (from the
	// SYNCRELAY_*_CLIENT_SECRET variable, ClientSecretFile or inline).
	ClientSecret     string `toml:"client_secret"`
	ClientSecretFile string `toml:"client_secret_file"`
	// RedirectURL is the OAuth redirect URI registered with the provider.
	// When empty, loading derives http://<http.listen>/oauth/<provider>/callback
	// (host "localhost" when http.listen has no host or a wildcard host).
	RedirectURL string `toml:"redirect_url"`
	AuthURL     string `toml:"auth_url"`
	TokenURL    string `toml:"token_url"`
	// APIBase is the Gmail API or Graph base URL, without a trailing slash
	// (loading strips one).
	APIBase string `toml:"api_base"`
	// Tenant is the Microsoft Entra tenant (only in [providers.microsoft]).
	// When it is not "common" and auth_url / token_url are left at their
	// defaults, loading puts the tenant into those URLs.
	Tenant string `toml:"tenant,omitempty"`
}

// Outbound is the [outbound] section.
type Outbound struct {
	// Category is the Outlook category put on messages for Microsoft
	// tenants; "" means none.
	Category            string   `toml:"category"`
	MaxRetries          int      `toml:"max_retries"`
	RetryBaseDelay      Duration `toml:"retry_base_delay"`
	MaxRetryDelay       Duration `toml:"max_retry_delay"`
	SenderRatePerMinute int      `toml:"sender_rate_per_minute"`
}

// Status is the [status] section.
type Status struct {
	// StaleAfter: a tenant whose last forwarded message is older than this
	// is reported as not forwarding.
	StaleAfter Duration `toml:"stale_after"`
}

// Log is the [log] section.
type Log struct {
	Level  string `toml:"level"`  // debug, info, warn or error
	Format string `toml:"format"` // text or json
}

// SlogLevel returns Level as a slog.Level (info for an unknown level).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Duration is a time.Duration written in TOML as a Go duration string
// ("30s", "5m", "1h30m").
type Duration struct{ time.Duration }

// D returns d as a time.Duration.
func D(d time.Duration) Duration { return Duration{d} }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a Go duration (e.g. \"5m\")", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String formats d like time.Duration.String without trailing zero units:
// "5m" rather than "5m0s", "24h" rather than "24h0m0s".
func (d Duration) String() string {
	s := d.Duration.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Default returns the embedded defaults (SPEC §8): SMTP on 127.0.0.1:2525,
// HTTP on 127.0.0.1:8025, hostname localhost, data in ./data.
func Default() *Config {
	return &Config{
		SMTP: SMTP{
			Listen:              "127.0.0.1:2525",
			Hostname:            "localhost",
			MaxMessageBytes:     25 << 20,
			MaxRecipients:       50,
			MaxHeaderBytes:      1 << 20,
			MaxMIMEDepth:        20,
			MaxLineLength:       1000,
			CommandTimeout:      D(5 * time.Minute),
			DataTimeout:         D(10 * time.Minute),
			MaxConnections:      1000,
			MaxConnectionsPerIP: 20,
			ShutdownTimeout:     D(30 * time.Second),
			MaxDKIMSignatures:   5,
		},
		HTTP: HTTP{
			Listen:            "127.0.0.1:8025",
			ReadHeaderTimeout: D(10 * time.Second),
			MaxBodyBytes:      10 << 20,
			ShutdownTimeout:   D(10 * time.Second),
		},
		Store: Store{
			Backend:     BackendBolt,
			Dir:         "./data",
			OpenTimeout: D(2 * time.Second),
		},
		DNS: DNS{
			Timeout:     D(5 * time.Second),
			CacheTTL:    D(5 * time.Minute),
			NegativeTTL: D(time.Minute),
		},
		Webhooks: Webhooks{
			MaxAttempts: 12,
			Timeout:     D(10 * time.Second),
		},
		Providers: Providers{
			Google: Provider{
				AuthURL:  DefaultGoogleAuthURL,
				TokenURL: DefaultGoogleTokenURL,
				APIBase:  DefaultGoogleAPIBase,
			},
			Microsoft: Provider{
				Tenant:   DefaultMicrosoftTenant,
				AuthURL:  DefaultMicrosoftAuthURL,
				TokenURL: DefaultMicrosoftTokenURL,
				APIBase:  DefaultMicrosoftAPIBase,
			},
		},
		Outbound: Outbound{
			Category:            "Recruiting",
			MaxRetries:          5,
			RetryBaseDelay:      D(time.Second),
			MaxRetryDelay:       D(2 * time.Minute),
			SenderRatePerMinute: 60,
		},
		Status: Status{StaleAfter: D(24 * time.Hour)},
		Log:    Log{Level: "info", Format: "text"},
	}
}

// Load reads the config file at path. An empty path means no file: the
// defaults. Environment overrides are then applied, secrets resolved and the
// result validated; all problems are reported together.
func Load(path string) (*Config, error) {
	if path == "" {
		c := Default()
		return c.finish()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse is Load for a document already in memory. name is the file name used
// in error messages; relative paths in the document are relative to its
// directory.
func Parse(data []byte, name string) (*Config, error) {
	if name == "" {
		name = "config"
	}
	src := newSource(name)
	c := Default()
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // UTF-8 BOM
	if err := decode(data, src, c); err != nil {
		return nil, err
	}
	c.src = src
	c.resolvePaths()
	return c.finish()
}

// finish applies the environment, resolves secrets, derives values and
// validates.
func (c *Config) finish() (*Config, error) {
	var errs []error
	errs = append(errs, c.applyEnv()...)
	errs = append(errs, c.resolveSecrets()...)
	c.derive()
	errs = append(errs, c.problems()...)
	if len(errs) > 0 {
		return nil, errors.Join(sortByLine(errs)...)
	}
	return c, nil
}

// sortByLine orders problems by their line in the file; problems without a
// line keep their order and come last.
func sortByLine(errs []error) []error {
	line := func(err error) int {
		var e *Error
		if errors.As(err, &e) && e.Line > 0 {
			return e.Line
		}
		return math.MaxInt
	}
	slices.SortStableFunc(errs, func(a, b error) int { return cmp.Compare(line(a), line(b)) })
	return errs
}

// File returns the name of the config file c was parsed from ("" for the
// defaults).
func (c *Config) File() string {
	if c.src == nil {
		return ""
	}
	return c.src.name
}

// SecretKeyPath is secrets.key_file, or <store.dir>/secret.key.
func (c *Config) SecretKeyPath() string {
	if c.Secrets.KeyFile != "" {
		return c.Secrets.KeyFile
	}
	return filepath.Join(c.Store.Dir, SecretKeyFileName)
}

// APITokenPath is api.tokens_file, or the dev token <store.dir>/api-token.
func (c *Config) APITokenPath() string {
	if c.API.TokensFile != "" {
		return c.API.TokensFile
	}
	return filepath.Join(c.Store.Dir, APITokenFileName)
}

// DBPath is the bbolt database, <store.dir>/syncrelay.db.
func (c *Config) DBPath() string { return filepath.Join(c.Store.Dir, DBFileName) }

// RawDir is the directory of raw messages, <store.dir>/raw.
func (c *Config) RawDir() string { return filepath.Join(c.Store.Dir, RawDirName) }

// pathFields are the keys holding file system paths; when written in the file
// as relative paths they are relative to the file's directory.
func (c *Config) pathFields() map[string]*string {
	return map[string]*string{
		"smtp.tls_cert_file":                     &c.SMTP.TLSCertFile,
		"smtp.tls_key_file":                      &c.SMTP.TLSKeyFile,
		"store.dir":                              &c.Store.Dir,
		"store.dsn_file":                         &c.Store.DSNFile,
		"dns.zone_file":                          &c.DNS.ZoneFile,
		"secrets.key_file":                       &c.Secrets.KeyFile,
		"api.tokens_file":                        &c.API.TokensFile,
		"webhooks.secret_file":                   &c.Webhooks.SecretFile,
		"providers.google.client_secret_file":    &c.Providers.Google.ClientSecretFile,
		"providers.microsoft.client_secret_file": &c.Providers.Microsoft.ClientSecretFile,
	}
}

// resolvePaths makes the relative paths written in the file absolute,
// relative to the file's directory. Defaults stay as they are (relative to
// the working directory).
func (c *Config) resolvePaths() {
	if c.src == nil {
		return
	}
	for key, p := range c.pathFields() {
		if _, inFile := c.src.lines[key]; inFile && *p != "" {
			*p = c.src.abs(*p)
		}
	}
}

// derive fills values computed from other values.
func (c *Config) derive() {
	// A fully qualified "relay.example.com." is the same host name; Message-IDs
	// and addresses use it without the root dot.
	if h := c.SMTP.Hostname; len(h) > 1 && strings.HasSuffix(h, ".") {
		c.SMTP.Hostname = strings.TrimSuffix(h, ".")
	}
	ms := &c.Providers.Microsoft
	if ms.Tenant != "" && ms.Tenant != DefaultMicrosoftTenant && validTenant(ms.Tenant) {
		if ms.AuthURL == DefaultMicrosoftAuthURL {
			ms.AuthURL = strings.Replace(ms.AuthURL, "/common/", "/"+ms.Tenant+"/", 1)
		}
		if ms.TokenURL == DefaultMicrosoftTokenURL {
			ms.TokenURL = strings.Replace(ms.TokenURL, "/common/", "/"+ms.Tenant+"/", 1)
		}
	}
	for name, p := range map[string]*Provider{"google": &c.Providers.Google, "microsoft": &c.Providers.Microsoft} {
		if len(p.APIBase) > 1 {
			p.APIBase = strings.TrimSuffix(p.APIBase, "/")
		}
		if hp := publicHostPort(c.HTTP.Listen); p.RedirectURL == "" && hp != "" {
			p.RedirectURL = "http://" + hp + "/oauth/" + name + "/callback"
		}
	}
}

// PublicBaseURL is http.public_url without a trailing slash, or
// http://<http.listen> (localhost for a wildcard host) when it is unset.
// Read it after dev mode picked its ports.
func (c *Config) PublicBaseURL() string {
	if c.HTTP.PublicURL != "" {
		return strings.TrimRight(c.HTTP.PublicURL, "/")
	}
	return "http://" + publicHostPort(c.HTTP.Listen)
}

// publicHostPort turns a listen address into one a browser can reach
// locally: a missing or wildcard host becomes localhost. "" if listen is not
// host:port.
func publicHostPort(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
