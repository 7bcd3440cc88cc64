package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Config is what a test config says beyond the fixed part (SMTP and HTTP
// on 127.0.0.1 port 0, hostname relay.test).
type Config struct {
	Data            string // [store] dir (required)
	ShutdownTimeout string // smtp.shutdown_timeout; "" = "10s"
	CommandTimeout  string // smtp.command_timeout; "" = "10s"
	SMTP            string // more [smtp] keys (TOML lines)
	HTTPListen      string // http.listen; "" = "127.0.0.1:0"
	Zone            string // [dns] zone_file; "" = no [dns] section
	TokensFile      string // [api] tokens_file; "" = no [api] section
	Extra           string // more sections, appended as is
}

// TOML renders c.
func (c Config) TOML() string {
	s := fmt.Sprintf(`[smtp]
listen = "127.0.0.1:0"
hostname = "relay.test"
shutdown_timeout = %q
command_timeout = %q
%s
[http]
listen = %q
[store]
dir = %q
`, or(c.ShutdownTimeout, "10s"), or(c.CommandTimeout, "10s"), c.SMTP, or(c.HTTPListen, "127.0.0.1:0"), c.Data)
	if c.Zone != "" {
		s += fmt.Sprintf("[dns]\nzone_file = %q\n", c.Zone)
	}
	if c.TokensFile != "" {
		s += fmt.Sprintf("[api]\ntokens_file = %q\n", c.TokensFile)
	}
	return s + c.Extra
}

// WriteConfig writes c to path (mode 0600) and returns path.
func WriteConfig(t testing.TB, path string, c Config) string {
	t.Helper()
	if c.Data == "" {
		t.Fatal("testenv: Config.Data is required")
	}
	if err := os.WriteFile(path, []byte(c.TOML()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// DirConfig writes dir/syncrelay.toml with data in dir/data and DNS from
// dir/zone.txt (created empty when missing) unless extra has its own [dns]
// section; extra is appended. It returns the config path and the data dir.
func DirConfig(t testing.TB, dir string, c Config) (cfg, data string) {
	t.Helper()
	c.Data = filepath.Join(dir, "data")
	if c.Zone == "" && !hasSection(c.Extra, "dns") {
		c.Zone = filepath.Join(dir, "zone.txt")
		if f, err := os.OpenFile(c.Zone, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	return WriteConfig(t, filepath.Join(dir, "syncrelay.toml"), c), c.Data
}

func hasSection(toml, name string) bool { return strings.Contains(toml, "["+name+"]") }

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
