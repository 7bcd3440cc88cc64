package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

var allEnv = []string{EnvSecretKey, EnvAPITokens, EnvWebhooksSecret, EnvGoogleClientSecret, EnvMicrosoftClientSecret, EnvStoreDSN}

// clearEnv isolates a test from SYNCRELAY_* variables of the environment
// (an empty variable counts as unset).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, e := range allEnv {
		t.Setenv(e, "")
	}
}

func abs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// errList splits a joined error into its *Error parts.
func errList(t *testing.T, err error) []*Error {
	t.Helper()
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Fatalf("error %v (%T) is not a *config.Error", err, err)
		}
		out = append(out, ce)
	}
	walk(err)
	return out
}

func TestDefaults(t *testing.T) {
	c := Default()
	want := map[string]any{
		"smtp.listen":                            "127.0.0.1:2525",
		"smtp.hostname":                          "localhost",
		"smtp.tls_cert_file":                     "",
		"smtp.tls_key_file":                      "",
		"smtp.max_message_bytes":                 int64(26214400),
		"smtp.max_recipients":                    50,
		"smtp.max_header_bytes":                  int64(1048576),
		"smtp.max_mime_depth":                    20,
		"smtp.max_line_length":                   1000,
		"smtp.command_timeout":                   D(5 * time.Minute),
		"smtp.data_timeout":                      D(10 * time.Minute),
		"smtp.max_connections":                   1000,
		"smtp.max_connections_per_ip":            20,
		"smtp.shutdown_timeout":                  D(30 * time.Second),
		"smtp.max_dkim_signatures":               5,
		"http.listen":                            "127.0.0.1:8025",
		"http.read_header_timeout":               D(10 * time.Second),
		"http.max_body_bytes":                    int64(10485760),
		"http.shutdown_timeout":                  D(10 * time.Second),
		"http.public_url":                        "",
		"store.backend":                          "bbolt",
		"store.dir":                              "./data",
		"store.open_timeout":                     D(2 * time.Second),
		"store.dsn":                              "",
		"store.dsn_file":                         "",
		"dns.resolver":                           "",
		"dns.zone_file":                          "",
		"dns.timeout":                            D(5 * time.Second),
		"dns.cache_ttl":                          D(5 * time.Minute),
		"dns.negative_ttl":                       D(time.Minute),
		"secrets.key_file":                       "",
		"api.tokens_file":                        "",
		"webhooks.url":                           "",
		"webhooks.secret":                        "",
		"webhooks.secret_file":                   "",
		"webhooks.max_attempts":                  12,
		"webhooks.timeout":                       D(10 * time.Second),
		"providers.google.client_id":             "",
		"providers.google.client_secret":         "",
		"providers.google.client_secret_file":    "",
		"providers.google.redirect_url":          "",
		"providers.google.auth_url":              "https://accounts.google.com/o/oauth2/auth",
		"providers.google.token_url":             "https://oauth2.googleapis.com/token",
		"providers.google.api_base":              "https://gmail.googleapis.com",
		"providers.microsoft.client_id":          "",
		"providers.microsoft.client_secret":      "",
		"providers.microsoft.client_secret_file": "",
		"providers.microsoft.redirect_url":       "",
		"providers.microsoft.tenant":             "common",
		"providers.microsoft.auth_url":           "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
		"providers.microsoft.token_url":          "https://login.microsoftonline.com/common/oauth2/v2.0/token",
		"providers.microsoft.api_base":           "https://graph.microsoft.com/v1.0",
		"outbound.category":                      "Recruiting",
		"outbound.max_retries":                   5,
		"outbound.retry_base_delay":              D(time.Second),
		"outbound.max_retry_delay":               D(2 * time.Minute),
		"outbound.sender_rate_per_minute":        60,
		"status.stale_after":                     D(24 * time.Hour),
		"log.level":                              "info",
		"log.format":                             "text",
	}
	keys := Keys()
	if len(keys) != len(want) {
		t.Errorf("schema has %d keys, test lists %d", len(keys), len(want))
	}
	for _, k := range keys {
		w, ok := want[k]
		if !ok {
			t.Errorf("key %s has no expected default in this test", k)
			continue
		}
		if got := valueAt(c, k); !reflect.DeepEqual(got, w) {
			t.Errorf("default %s = %#v, want %#v", k, got, w)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if c.Secrets.Key != nil || c.API.Tokens != nil {
		t.Errorf("defaults carry secrets")
	}
}

// valueAt returns the field of c at a dotted key.
func valueAt(c *Config, key string) any {
	v := reflect.ValueOf(c).Elem()
	for _, part := range strings.Split(key, ".") {
		t := v.Type()
		found := false
		for i := 0; i < t.NumField(); i++ {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
			if tag == part {
				v = v.Field(i)
				found = true
				break
			}
		}
		if !found {
			panic("no field " + key)
		}
	}
	return v.Interface()
}

func TestLoadNoFile(t *testing.T) {
	clearEnv(t)
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Providers.Google.RedirectURL = "http://127.0.0.1:8025/oauth/google/callback"
	want.Providers.Microsoft.RedirectURL = "http://127.0.0.1:8025/oauth/microsoft/callback"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load(\"\") = %+v\nwant %+v", c, want)
	}
	if c.File() != "" {
		t.Errorf("File() = %q", c.File())
	}
	// An empty file is the defaults too.
	c2, err := Parse(nil, "empty.toml")
	if err != nil {
		t.Fatal(err)
	}
	c2.src = nil
	if !reflect.DeepEqual(c2, want) {
		t.Errorf("Parse(empty) = %+v\nwant %+v", c2, want)
	}
}

func fullWant(t *testing.T) *Config {
	dir := abs(t, "testdata")
	w := Default()
	w.SMTP = SMTP{
		Listen:              ":25",
		Hostname:            "relay.example.com",
		TLSCertFile:         filepath.Join(dir, "relay.crt"),
		TLSKeyFile:          filepath.Join(dir, "relay.key"),
		MaxMessageBytes:     36700160,
		MaxRecipients:       100,
		MaxHeaderBytes:      2097152,
		MaxMIMEDepth:        30,
		MaxLineLength:       2000,
		CommandTimeout:      D(4 * time.Minute),
		DataTimeout:         D(15 * time.Minute),
		MaxConnections:      2000,
		MaxConnectionsPerIP: 50,
		ShutdownTimeout:     D(20 * time.Second),
		MaxDKIMSignatures:   8,
	}
	w.HTTP = HTTP{Listen: "127.0.0.1:8080", ReadHeaderTimeout: D(5 * time.Second), MaxBodyBytes: 20971520, ShutdownTimeout: D(15 * time.Second), PublicURL: "https://relay.example.com"}
	w.Store = Store{Backend: BackendPostgres, Dir: "/var/lib/syncrelay", OpenTimeout: D(5 * time.Second),
		DSN: "postgres://syncrelay@db.example.com:5432/syncrelay?sslmode=verify-full", DSNFile: filepath.Join(dir, "store.dsn")}
	w.DNS = DNS{Resolver: "127.0.0.53:53", ZoneFile: filepath.Join(dir, "zone.txt"), Timeout: D(3 * time.Second), CacheTTL: D(10 * time.Minute), NegativeTTL: D(30 * time.Second)}
	w.Secrets = Secrets{KeyFile: "/var/lib/syncrelay/secret.key"}
	w.API = API{TokensFile: filepath.Join(dir, "api-tokens"), Tokens: []string{"example-token-one-0123456789abcdef", "example-token-two-fedcba9876543210"}}
	w.Webhooks = Webhooks{URL: "https://ats.example.com/hooks/syncrelay", Secret: "webhook-signing-secret-example",
		SecretFile: filepath.Join(dir, "webhook.secret"), MaxAttempts: 10, Timeout: D(20 * time.Second)}
	w.Providers.Google = Provider{
		ClientID:         "1234567890-example.apps.googleusercontent.com",
		ClientSecret:     "google-client-secret-example",
		ClientSecretFile: filepath.Join(dir, "google.secret"),
		RedirectURL:      "https://relay.example.com/oauth/google/callback",
		AuthURL:          DefaultGoogleAuthURL, TokenURL: DefaultGoogleTokenURL, APIBase: DefaultGoogleAPIBase,
	}
	w.Providers.Microsoft = Provider{
		ClientID:         "00000000-0000-0000-0000-000000000000",
		ClientSecret:     "microsoft-client-secret-example", // CRLF stripped
		ClientSecretFile: filepath.Join(dir, "microsoft.secret"),
		RedirectURL:      "https://relay.example.com/oauth/microsoft/callback",
		Tenant:           "contoso.onmicrosoft.com",
		AuthURL:          "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
		TokenURL:         "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
		APIBase:          DefaultMicrosoftAPIBase,
	}
	w.Outbound = Outbound{Category: "Hiring", MaxRetries: 3, RetryBaseDelay: D(2 * time.Second), MaxRetryDelay: D(5 * time.Minute), SenderRatePerMinute: 30}
	w.Status = Status{StaleAfter: D(48 * time.Hour)}
	w.Log = Log{Level: "warn", Format: "json"}
	return w
}

func TestFullFile(t *testing.T) {
	clearEnv(t)
	c, err := Load("testdata/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.File() != "testdata/full.toml" {
		t.Errorf("File() = %q", c.File())
	}
	got := *c
	got.src = nil
	want := fullWant(t)
	if !reflect.DeepEqual(&got, want) {
		gb, _ := toml.Marshal(&got)
		wb, _ := toml.Marshal(want)
		t.Errorf("full.toml decoded to\n%s\nwant\n%s\ntokens %q", gb, wb, got.API.Tokens)
	}

	// Every key appears in the example, except the inline alternatives of
	// the *_file secrets (present there as comments).
	commented := map[string]bool{
		"store.dsn":                         true,
		"webhooks.secret":                   true,
		"providers.google.client_secret":    true,
		"providers.microsoft.client_secret": true,
	}
	raw, err := os.ReadFile("testdata/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		_, set := c.src.lines[k]
		leaf := k[strings.LastIndex(k, ".")+1:]
		switch {
		case commented[k]:
			if set || !bytes.Contains(raw, []byte("# "+leaf+" = ")) {
				t.Errorf("full.toml: %s should be present as a comment only", k)
			}
		case !set:
			t.Errorf("full.toml does not set %s", k)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	clearEnv(t)
	c1, err := Load("testdata/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	// Secrets are resolved into the plain fields; drop the file references
	// so the marshalled document has one form of each.
	c1.Webhooks.SecretFile = ""
	c1.Providers.Google.ClientSecretFile = ""
	c1.Providers.Microsoft.ClientSecretFile = ""
	c1.Store.DSNFile = ""
	out, err := toml.Marshal(c1)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("tenant")) && bytes.Count(out, []byte("tenant =")) != 1 {
		t.Errorf("google tenant marshalled:\n%s", out)
	}
	c2, err := Parse(out, filepath.Join("testdata", "roundtrip.toml"))
	if err != nil {
		t.Fatalf("re-parse: %v\n%s", err, out)
	}
	c1.src, c2.src = nil, nil
	if !reflect.DeepEqual(c1, c2) {
		t.Errorf("round trip differs:\n%+v\n%+v\n%s", c1, c2, out)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // full messages, in order
	}{
		{
			name: "unknown key with suggestion",
			doc:  "[smtp]\nlisten = \":2525\"\nmax_recipent = 10\n",
			want: []string{`syncrelay.toml:3: unknown key "smtp.max_recipent" (did you mean "smtp.max_recipients"?)`},
		},
		{
			name: "unknown key without suggestion, every one reported",
			doc:  "[smtp]\nfoo = 1\n\n[log]\nbar = \"x\"\nlevel = \"info\"\n",
			want: []string{
				`syncrelay.toml:2: unknown key "smtp.foo"`,
				`syncrelay.toml:5: unknown key "log.bar"`,
			},
		},
		{
			name: "key in the wrong section",
			doc:  "[smtp]\nread_header_timeout = \"5s\"\n",
			want: []string{`syncrelay.toml:2: unknown key "smtp.read_header_timeout" (did you mean "http.read_header_timeout"?)`},
		},
		{
			name: "unknown section",
			doc:  "# comment\n[smpt]\nlisten = \":25\"\n",
			want: []string{`syncrelay.toml:2: unknown section "[smpt]" (did you mean "[smtp]"?)`},
		},
		{
			name: "unknown provider",
			doc:  "[providers.yahoo]\nclient_id = \"x\"\n",
			want: []string{`syncrelay.toml:1: unknown section "[providers.yahoo]"`},
		},
		{
			name: "tenant only for microsoft",
			doc:  "[providers.google]\ntenant = \"x\"\n",
			want: []string{`syncrelay.toml:2: unknown key "providers.google.tenant" (did you mean "providers.microsoft.tenant"?)`},
		},
		{
			name: "top-level key",
			doc:  "listen = \":25\"\n",
			want: []string{`syncrelay.toml:1: unknown key "listen"`},
		},
		{
			name: "keys are case sensitive",
			doc:  "[smtp]\nListen = \":25\"\n",
			want: []string{`syncrelay.toml:2: unknown key "smtp.Listen" (did you mean "smtp.listen"?)`},
		},
		{
			name: "bad duration",
			doc:  "[smtp]\n\n\n\n\n\ncommand_timeout = \"5 minutes\"\n",
			want: []string{`syncrelay.toml:7: smtp.command_timeout: "5 minutes" is not a Go duration (e.g. "5m")`},
		},
		{
			name: "duration as integer",
			doc:  "[dns]\ntimeout = 5\n",
			want: []string{`syncrelay.toml:2: dns.timeout: expected a Go duration string in quotes (e.g. "5m", "30s", "1h30m"), got an integer`},
		},
		{
			name: "duration as boolean",
			doc:  "[status]\nstale_after = true\n",
			want: []string{`syncrelay.toml:2: status.stale_after: expected a Go duration string in quotes (e.g. "5m", "30s", "1h30m"), got a boolean`},
		},
		{
			name: "integer as string",
			doc:  "[smtp]\nmax_recipients = \"fifty\"\n",
			want: []string{`syncrelay.toml:2: smtp.max_recipients: expected an integer, got a string; write it without quotes`},
		},
		{
			name: "byte size as string",
			doc:  "[smtp]\nmax_message_bytes = \"25MB\"\n",
			want: []string{`syncrelay.toml:2: smtp.max_message_bytes: expected a plain integer number of bytes (e.g. 26214400 for 25 MiB), got a string; write it without quotes`},
		},
		{
			name: "integer as float",
			doc:  "[http]\nmax_body_bytes = 1e6\n",
			want: []string{`syncrelay.toml:2: http.max_body_bytes: expected a plain integer number of bytes (e.g. 26214400 for 25 MiB), got a float`},
		},
		{
			name: "string as integer",
			doc:  "[smtp]\nlisten = 2525\n",
			want: []string{`syncrelay.toml:2: smtp.listen: expected a string in quotes, got an integer`},
		},
		{
			name: "secret of the wrong type is not echoed",
			doc:  "[webhooks]\nsecret = 123456789\n",
			want: []string{`syncrelay.toml:2: webhooks.secret: expected a string in quotes, got an integer`},
		},
		{
			name: "section given a value",
			doc:  "smtp = 1\n",
			want: []string{`syncrelay.toml:1: smtp: expected a table (a [smtp] section), got an integer`},
		},
		{
			name: "value used as section",
			doc:  "[smtp.listen]\nx = 1\n",
			want: []string{`syncrelay.toml:1: smtp.listen: is a value, not a section: write listen = ... inside [smtp]`},
		},
		{
			name: "array of tables",
			doc:  "[[smtp]]\nlisten = \":25\"\n",
			want: []string{`syncrelay.toml:1: smtp: is a section, not an array of tables: write [smtp], not [[smtp]]`},
		},
		{
			name: "dotted and inline keys are checked",
			doc:  "smtp.listen = \":25\"\nhttp = { listen = \":80\", lisen = \"x\" }\n[providers]\ngoogle.client_idd = \"x\"\n",
			want: []string{
				`syncrelay.toml:2: unknown key "http.lisen" (did you mean "http.listen"?)`,
				`syncrelay.toml:4: unknown key "providers.google.client_idd" (did you mean "providers.google.client_id"?)`,
			},
		},
		{
			name: "duplicate key",
			doc:  "[smtp]\nlisten = \":25\"\nlisten = \":26\"\n",
			want: []string{`syncrelay.toml:3: listen: key listen is already defined`},
		},
		{
			name: "syntax error",
			doc:  "[smtp]\nlisten = \":25\n",
			want: []string{`syncrelay.toml:2: basic strings cannot have new lines`},
		},
		{
			name: "integer overflow",
			doc:  "[smtp]\nmax_message_bytes = 99999999999999999999\n",
			want: []string{`syncrelay.toml:2: smtp.max_message_bytes: decimal number is too large to fit in a 64-bit signed integer`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			c, err := Parse([]byte(tt.doc), "syncrelay.toml")
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			if c != nil {
				t.Errorf("config returned with an error")
			}
			var got []string
			for _, e := range errList(t, err) {
				got = append(got, e.Error())
				if e.File != "syncrelay.toml" || e.Line == 0 {
					t.Errorf("error %q lacks file or line", e)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

func TestDecodeErrorFields(t *testing.T) {
	clearEnv(t)
	_, err := Parse([]byte("[smtp]\nmax_recipent = 3\n"), "x.toml")
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("%v is not a *Error", err)
	}
	if ce.File != "x.toml" || ce.Line != 2 || ce.Key != "smtp.max_recipent" {
		t.Errorf("got %+v", ce)
	}
}

func TestBOMAndCRLF(t *testing.T) {
	clearEnv(t)
	c, err := Parse([]byte("\xef\xbb\xbf[smtp]\r\nhostname = \"relay.example.com\"\r\n"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.SMTP.Hostname != "relay.example.com" {
		t.Errorf("hostname %q", c.SMTP.Hostname)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "hook.secret", "from-file\n")
	writeFile(t, dir, "crlf.secret", "from-crlf\r\n")
	writeFile(t, dir, "two.secret", "two-newlines\n\n")
	writeFile(t, dir, "empty.secret", "\n")
	cfgName := filepath.Join(dir, "syncrelay.toml")

	const hook = "[webhooks]\nurl = \"https://ats.test/hook\"\n"
	tests := []struct {
		name    string
		doc     string
		env     map[string]string
		want    string   // resolved webhooks.secret
		wantErr []string // substrings of the single error
	}{
		{name: "inline", doc: hook + "secret = \"inline-s3cret\"\n", want: "inline-s3cret"},
		{name: "file relative to config", doc: hook + "secret_file = \"hook.secret\"\n", want: "from-file"},
		{name: "file absolute", doc: hook + fmt.Sprintf("secret_file = %q\n", filepath.Join(dir, "hook.secret")), want: "from-file"},
		{name: "crlf stripped", doc: hook + "secret_file = \"crlf.secret\"\n", want: "from-crlf"},
		{name: "only one newline stripped", doc: hook + "secret_file = \"two.secret\"\n", want: "two-newlines\n"},
		{name: "env", doc: hook, env: map[string]string{EnvWebhooksSecret: "from-env"}, want: "from-env"},
		{name: "env over file", doc: hook + "secret_file = \"hook.secret\"\n", env: map[string]string{EnvWebhooksSecret: "from-env"}, want: "from-env"},
		{name: "env over inline", doc: hook + "secret = \"inline-s3cret\"\n", env: map[string]string{EnvWebhooksSecret: "from-env"}, want: "from-env"},
		{
			name:    "both inline and file",
			doc:     hook + "secret = \"inline-s3cret\"\nsecret_file = \"hook.secret\"\n",
			wantErr: []string{cfgName + ":4: webhooks.secret_file: webhooks.secret is set too; give the secret either inline or as a file, not both"},
		},
		{
			name:    "missing file",
			doc:     hook + "secret_file = \"nope.secret\"\n",
			wantErr: []string{cfgName + ":3: webhooks.secret_file: cannot read secret file: open " + filepath.Join(dir, "nope.secret") + ": no such file or directory; fix the path, or set SYNCRELAY_WEBHOOKS_SECRET"},
		},
		{
			name:    "empty file",
			doc:     hook + "secret_file = \"empty.secret\"\n",
			wantErr: []string{"webhooks.secret_file: secret file", "is empty"},
		},
		{
			name:    "url without secret",
			doc:     hook,
			wantErr: []string{cfgName + ":2: webhooks.url: is set but there is no signing secret; set webhooks.secret, webhooks.secret_file or SYNCRELAY_WEBHOOKS_SECRET"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			path := writeFile(t, dir, "syncrelay.toml", tt.doc)
			c, err := Load(path)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("no error")
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				for _, secret := range []string{"inline-s3cret", "from-file", "from-env"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q reveals a secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Webhooks.Secret != tt.want {
				t.Errorf("secret %q, want %q", c.Webhooks.Secret, tt.want)
			}
		})
	}
}

func TestProviderSecrets(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "g.secret", "google-file\n")
	path := writeFile(t, dir, "c.toml",
		"[providers.google]\nclient_id = \"g\"\nclient_secret_file = \"g.secret\"\n"+
			"[providers.microsoft]\nclient_id = \"m\"\n")
	clearEnv(t)
	_, err := Load(path)
	want := path + ":5: providers.microsoft.client_id: is set but there is no client secret; set providers.microsoft.client_secret, providers.microsoft.client_secret_file or SYNCRELAY_MICROSOFT_CLIENT_SECRET"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	t.Setenv(EnvMicrosoftClientSecret, "ms-env")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Providers.Google.ClientSecret != "google-file" || c.Providers.Microsoft.ClientSecret != "ms-env" {
		t.Errorf("secrets %q %q", c.Providers.Google.ClientSecret, c.Providers.Microsoft.ClientSecret)
	}
	t.Setenv(EnvGoogleClientSecret, "g-env")
	c, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Providers.Google.ClientSecret != "g-env" {
		t.Errorf("google secret %q, want env", c.Providers.Google.ClientSecret)
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "s", "v\n")
	clearEnv(t)
	var c *Config // works without a config: paths relative to the working directory
	if v, err := c.ReadSecret("", p, ""); err != nil || v != "v" {
		t.Errorf("file: %q %v", v, err)
	}
	if _, err := c.ReadSecret("inline-value", p, ""); err == nil || !strings.Contains(err.Error(), "both") || strings.Contains(err.Error(), "inline-value") {
		t.Errorf("both: %v", err)
	}
	t.Setenv("SYNCRELAY_TEST_SECRET", "e")
	if v, err := c.ReadSecret("i", "", "SYNCRELAY_TEST_SECRET"); err != nil || v != "e" {
		t.Errorf("env: %q %v", v, err)
	}
	if v, err := c.ReadSecret("i", "", "SYNCRELAY_TEST_UNSET"); err != nil || v != "i" {
		t.Errorf("inline: %q %v", v, err)
	}
	if v, err := c.ReadSecret("", "", ""); err != nil || v != "" {
		t.Errorf("none: %q %v", v, err)
	}
}

func TestEnvSecretKeyAndTokens(t *testing.T) {
	key := strings.Repeat("ab", SecretKeySize)
	tests := []struct {
		name     string
		env      map[string]string
		doc      string
		wantKey  bool
		wantToks []string
		wantErr  string
	}{
		{name: "key", env: map[string]string{EnvSecretKey: key}, wantKey: true},
		{name: "key with newline", env: map[string]string{EnvSecretKey: key + "\n"}, wantKey: true},
		{name: "key not hex", env: map[string]string{EnvSecretKey: "zz" + key[2:]},
			wantErr: "SYNCRELAY_SECRET_KEY: not valid hex; give 32 random bytes as 64 hex characters (e.g. from `openssl rand -hex 32`)"},
		{name: "key short", env: map[string]string{EnvSecretKey: "abcd"},
			wantErr: "SYNCRELAY_SECRET_KEY: decodes to 2 bytes, want 32 (64 hex characters, e.g. from `openssl rand -hex 32`)"},
		{name: "tokens env", env: map[string]string{EnvAPITokens: " t1, t2 ,,"}, wantToks: []string{"t1", "t2"}},
		{name: "tokens env over file", env: map[string]string{EnvAPITokens: "t1"}, doc: "[api]\ntokens_file = \"missing\"\n", wantToks: []string{"t1"}},
		{name: "tokens env empty list", env: map[string]string{EnvAPITokens: " , "},
			wantErr: "SYNCRELAY_API_TOKENS: contains no tokens; give one or more tokens separated by commas, or unset it"},
		{name: "tokens file", doc: "[api]\ntokens_file = \"tokens\"\n", wantToks: []string{"a", "b"}},
		{name: "tokens file missing", doc: "[api]\ntokens_file = \"missing\"\n",
			wantErr: ":2: api.tokens_file: cannot read: open "},
		{name: "tokens file empty", doc: "[api]\ntokens_file = \"empty\"\n",
			wantErr: "contains no tokens; put one token a line"},
	}
	dir := t.TempDir()
	writeFile(t, dir, "tokens", "# comment\na\n\n  b  \n")
	writeFile(t, dir, "empty", "# nothing\n")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			path := writeFile(t, dir, "c.toml", tt.doc)
			c, err := Load(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), key[4:]) {
					t.Errorf("error reveals the key")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantKey != (len(c.Secrets.Key) == SecretKeySize) {
				t.Errorf("key %x", c.Secrets.Key)
			}
			if !reflect.DeepEqual(c.API.Tokens, tt.wantToks) {
				t.Errorf("tokens %q, want %q", c.API.Tokens, tt.wantToks)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "cert.pem", "x")
	name := filepath.Join(dir, "v.toml")
	tests := []struct {
		name string
		doc  string
		want []string // full messages without the "<file>:" prefix
	}{
		{"valid minimal", "[smtp]\nhostname = \"relay.example.com\"\n", nil},
		{"listen", "[smtp]\nlisten = \"localhost\"\n[http]\nlisten = \":99999\"\n", []string{
			`2: smtp.listen: "localhost" is not host:port (e.g. "127.0.0.1:2525" or ":25")`,
			`4: http.listen: ":99999": port "99999" is not a number from 0 to 65535 (e.g. "127.0.0.1:2525" or ":25")`,
		}},
		{"listen clash", "[smtp]\nlisten = \":8025\"\n[http]\nlisten = \"127.0.0.1:8025\"\n", []string{
			`4: http.listen: "127.0.0.1:8025" is also smtp.listen; give each server its own port`,
		}},
		{"hostname", "[smtp]\nhostname = \"relay_1.example.com\"\n", []string{
			`2: smtp.hostname: "relay_1.example.com" is not a valid DNS name: label "relay_1" contains '_' (only letters, digits and '-'); use the relay's public host name, e.g. "relay.example.com"`,
		}},
		{"hostname ip", "[smtp]\nhostname = \"192.0.2.1\"\n", []string{
			`2: smtp.hostname: "192.0.2.1" is an IP address, not a DNS name; use the relay's public host name, e.g. "relay.example.com"`,
		}},
		{"tls cert without key", "[smtp]\ntls_cert_file = \"cert.pem\"\n", []string{
			`2: smtp.tls_cert_file: is set but smtp.tls_key_file is empty; set both (to offer STARTTLS) or neither`,
		}},
		{"tls file missing", "[smtp]\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n", []string{
			`3: smtp.tls_key_file: stat ` + filepath.Join(dir, "key.pem") + `: no such file or directory; fix the path (relative paths are relative to the config file)`,
		}},
		{"limits", "[smtp]\nmax_recipients = 0\nmax_message_bytes = -1\nmax_line_length = 998\n[webhooks]\nmax_attempts = 0\n[outbound]\nmax_retries = -1\n", []string{
			`2: smtp.max_recipients: must be greater than 0, got 0`,
			`3: smtp.max_message_bytes: must be greater than 0, got -1`,
			`4: smtp.max_line_length: must be at least 1000 (the RFC 5321 minimum line length), got 998`,
			`6: webhooks.max_attempts: must be greater than 0, got 0`,
			`8: outbound.max_retries: must be 0 (no retries) or more, got -1`,
		}},
		{"per ip above total", "[smtp]\nmax_connections = 10\nmax_connections_per_ip = 20\n", []string{
			`3: smtp.max_connections_per_ip: (20) is greater than smtp.max_connections (10); lower it or raise max_connections`,
		}},
		{"durations", "[smtp]\ncommand_timeout = \"0s\"\n[dns]\ntimeout = \"-5s\"\n", []string{
			`2: smtp.command_timeout: must be a positive duration (e.g. "30s"), got "0s"`,
			`4: dns.timeout: must be a positive duration (e.g. "30s"), got "-5s"`,
		}},
		{"retry delays", "[outbound]\nretry_base_delay = \"10m\"\n", []string{
			`2: outbound.retry_base_delay: (10m) is longer than outbound.max_retry_delay (2m); lower it or raise max_retry_delay`,
		}},
		{"log", "[log]\nlevel = \"INFO\"\nformat = \"logfmt\"\n", []string{
			`2: log.level: "INFO" is not a level; use one of "debug", "info", "warn", "error"`,
			`3: log.format: "logfmt" is not a format; use "text" or "json"`,
		}},
		{"webhook url", "[webhooks]\nurl = \"ftp://user:pw@ats.test/\"\nsecret = \"s\"\n", []string{
			`2: webhooks.url: must start with http:// or https://; or leave it empty to disable webhooks`,
		}},
		{"webhook url no host", "[webhooks]\nurl = \"https:///x\"\nsecret = \"s\"\n", []string{
			`2: webhooks.url: has no host; give an absolute URL such as https://example.com/path; or leave it empty to disable webhooks`,
		}},
		{"provider urls", "[providers.google]\ntoken_url = \"not a url\"\n[providers.microsoft]\napi_base = \"\"\nredirect_url = \"/cb\"\n", []string{
			`2: providers.google.token_url: must start with http:// or https://`,
			`4: providers.microsoft.api_base: is empty; give an absolute http:// or https:// URL`,
			`5: providers.microsoft.redirect_url: must start with http:// or https://`,
		}},
		{"microsoft tenant", "[providers.microsoft]\ntenant = \"a/b\"\n", []string{
			`2: providers.microsoft.tenant: "a/b" is not a tenant; use "common", "organizations", a tenant domain or a tenant ID`,
		}},
		{"store backend", "[store]\nbackend = \"mysql\"\n", []string{
			`2: store.backend: must be "bbolt" or "postgres", got "mysql"`,
		}},
		{"postgres without dsn", "[store]\nbackend = \"postgres\"\n", []string{
			`2: store.backend: is "postgres" but there is no DSN; set store.dsn, store.dsn_file or SYNCRELAY_STORE_DSN (e.g. "postgres://syncrelay@db.internal/syncrelay")`,
		}},
		{"dsn with bbolt", "[store]\nbackend = \"bbolt\"\ndsn = \"postgres://u:pw@db/x\"\n", []string{
			`2: store.backend: is "bbolt" but a PostgreSQL DSN is set (store.dsn, store.dsn_file or SYNCRELAY_STORE_DSN); set backend = "postgres" or remove the DSN`,
		}},
		{"resolver", "[dns]\nresolver = \"192.0.2.53\"\n", []string{
			`2: dns.resolver: "192.0.2.53" has no port; write "192.0.2.53:53"`,
		}},
		{"resolver port", "[dns]\nresolver = \"dns.example:0\"\n", []string{
			`2: dns.resolver: "dns.example:0": port "0" is not a number from 1 to 65535 (e.g. "192.0.2.53:53"); or leave it empty for the system resolver`,
		}},
		{"zone file missing", "[dns]\nzone_file = \"zone.txt\"\n", []string{
			`2: dns.zone_file: stat ` + filepath.Join(dir, "zone.txt") + `: no such file or directory; fix the path (relative paths are relative to the config file)`,
		}},
		{"store dir", "[store]\ndir = \"\"\n", []string{
			`2: store.dir: is empty; give the data directory, e.g. "/var/lib/syncrelay"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			writeFile(t, dir, "v.toml", tt.doc)
			_, err := Load(name)
			var got []string
			if err != nil {
				for _, e := range errList(t, err) {
					got = append(got, strings.TrimPrefix(e.Error(), name+":"))
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

// TestStoreDSNFromEnv: SYNCRELAY_STORE_DSN overrides store.dsn and
// store.dsn_file, and a DSN never appears in an error.
func TestStoreDSNFromEnv(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	name := filepath.Join(dir, "c.toml")
	writeFile(t, dir, "dsn", "postgres://file@db/x\n")
	writeFile(t, dir, "c.toml", "[store]\nbackend = \"postgres\"\ndsn_file = \"dsn\"\n")
	c, err := Load(name)
	if err != nil || c.Store.DSN != "postgres://file@db/x" {
		t.Fatalf("from dsn_file: %q, %v", c.Store.DSN, err)
	}
	t.Setenv(EnvStoreDSN, "postgres://env:secretpw@db/x")
	c, err = Load(name)
	if err != nil || c.Store.DSN != "postgres://env:secretpw@db/x" {
		t.Fatalf("from %s: %q, %v", EnvStoreDSN, c.Store.DSN, err)
	}
	writeFile(t, dir, "c.toml", "[store]\nbackend = \"bbolt\"\n")
	_, err = Load(name)
	if err == nil || strings.Contains(err.Error(), "secretpw") {
		t.Errorf("bbolt with a DSN in the environment: %v", err)
	}
}

func TestValidateWithoutFile(t *testing.T) {
	c := Default()
	c.SMTP.Listen = "nope"
	c.Log.Level = "loud"
	c.Providers.Google.Tenant = "x"
	err := c.Validate()
	want := `smtp.listen: "nope" is not host:port (e.g. "127.0.0.1:2525" or ":25")` + "\n" +
		`providers.google.tenant: only [providers.microsoft] has a tenant; remove it` + "\n" +
		`log.level: "loud" is not a level; use one of "debug", "info", "warn", "error"`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

func TestPathsAndDerived(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	path := writeFile(t, dir, "c.toml", "[store]\ndir = \"state\"\n[http]\nlisten = \":9000\"\n[providers.microsoft]\ntenant = \"contoso.com\"\napi_base = \"http://127.0.0.1:1/graph/\"\n")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	for _, p := range []struct{ got, want string }{
		{c.Store.Dir, state},
		{c.DBPath(), filepath.Join(state, "syncrelay.db")},
		{c.RawDir(), filepath.Join(state, "raw")},
		{c.SecretKeyPath(), filepath.Join(state, "secret.key")},
		{c.APITokenPath(), filepath.Join(state, "api-token")},
		{c.Providers.Google.RedirectURL, "http://localhost:9000/oauth/google/callback"},
		{c.Providers.Microsoft.AuthURL, "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/authorize"},
		{c.Providers.Microsoft.TokenURL, "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"},
		{c.Providers.Microsoft.APIBase, "http://127.0.0.1:1/graph"},
	} {
		if p.got != p.want {
			t.Errorf("got %q, want %q", p.got, p.want)
		}
	}
	c.Secrets.KeyFile = "/k"
	c.API.TokensFile = "/t"
	if c.SecretKeyPath() != "/k" || c.APITokenPath() != "/t" {
		t.Errorf("explicit paths ignored")
	}
	d := Default()
	if d.DBPath() != "data/syncrelay.db" || d.RawDir() != "data/raw" || d.SecretKeyPath() != "data/secret.key" || d.APITokenPath() != "data/api-token" {
		t.Errorf("default paths %s %s %s %s", d.DBPath(), d.RawDir(), d.SecretKeyPath(), d.APITokenPath())
	}
}

func TestDuration(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{5 * time.Minute, "5m"}, {24 * time.Hour, "24h"}, {90 * time.Second, "1m30s"},
		{time.Hour + time.Second, "1h0m1s"}, {1500 * time.Millisecond, "1.5s"}, {0, "0s"}, {2 * time.Hour, "2h"},
	} {
		if got := D(tt.d).String(); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.d, got, tt.want)
		}
		var back Duration
		if err := back.UnmarshalText([]byte(D(tt.d).String())); err != nil || back.Duration != tt.d {
			t.Errorf("%v does not round-trip: %v %v", tt.d, back, err)
		}
	}
	var d Duration
	if err := d.UnmarshalText([]byte("5 minutes")); err == nil || err.Error() != `"5 minutes" is not a Go duration (e.g. "5m")` {
		t.Errorf("err %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err == nil || !strings.Contains(err.Error(), "read config: open ") {
		t.Errorf("err %v", err)
	}
}

// TestDocs keeps docs/config.md in step with the code: every key has a row
// whose default is the code's default.
func TestDocs(t *testing.T) {
	raw, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Skipf("docs/config.md: %v", err)
	}
	row := regexp.MustCompile("(?m)^\\| `\\[([a-z.]+)\\]` \\| `([a-z_]+)` \\| ([a-z ]+) \\| `([^`]*)` \\|")
	docs := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(raw), -1) {
		docs[m[1]+"."+m[2]] = m[4]
	}
	d := Default()
	for _, k := range Keys() {
		got, ok := docs[k]
		if !ok {
			t.Errorf("docs/config.md has no row for %s", k)
			continue
		}
		var want string
		switch v := valueAt(d, k).(type) {
		case string:
			want = fmt.Sprintf("%q", v)
		case Duration:
			want = fmt.Sprintf("%q", v.String())
		default:
			want = fmt.Sprint(v)
		}
		if got != want {
			t.Errorf("docs/config.md: %s default %s, code %s", k, got, want)
		}
		delete(docs, k)
	}
	for k := range docs {
		t.Errorf("docs/config.md documents unknown key %s", k)
	}
	for _, e := range allEnv {
		if !bytes.Contains(raw, []byte("`"+e+"`")) {
			t.Errorf("docs/config.md does not mention %s", e)
		}
	}
}

func TestInlineTablesKeepDefaults(t *testing.T) {
	clearEnv(t)
	c, err := Parse([]byte("http = { listen = \":8080\" }\nsmtp.hostname = \"Relay.Example.com.\"\n[providers]\ngoogle = { client_id = \"x\", client_secret = \"y\" }\n"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Listen != ":8080" || c.HTTP.MaxBodyBytes != 10485760 || c.Providers.Google.AuthURL != DefaultGoogleAuthURL ||
		c.Providers.Google.ClientSecret != "y" || c.SMTP.Hostname != "Relay.Example.com" || c.SMTP.Listen != "127.0.0.1:2525" {
		t.Errorf("got %+v %+v %+v", c.HTTP, c.SMTP, c.Providers.Google)
	}
}

func TestCheckHostname(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // "" = valid
	}{
		{"localhost", ""},
		{"relay.example.com", ""},
		{"relay.example.com.", ""},
		{"xn--bcher-kva.example", ""},
		{"", "is empty"},
		{"a..b", `"a..b" is not a valid DNS name: it has an empty label`},
		{"-a.example", `"-a.example" is not a valid DNS name: label "-a" starts or ends with '-'`},
		{strings.Repeat("a", 64) + ".example", "longer than 63 characters"},
		{strings.Repeat("a.", 127) + "com", "longer than 253 characters"},
		{"host.123", "the last label is all digits"},
		{"::1", `"::1" is an IP address, not a DNS name`},
		{"réseau.example", `contains 'é'`},
	} {
		err := checkHostname(tt.in)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v", tt.in, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: got %v, want %q", tt.in, err, tt.want)
		}
	}
}

func TestHelpers(t *testing.T) {
	for lvl, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR"} {
		if got := (Log{Level: lvl}).SlogLevel().String(); got != want {
			t.Errorf("%s: %s", lvl, got)
		}
	}
	if (SMTP{TLSCertFile: "c"}).TLSEnabled() || !(SMTP{TLSCertFile: "c", TLSKeyFile: "k"}).TLSEnabled() {
		t.Errorf("TLSEnabled")
	}
}
