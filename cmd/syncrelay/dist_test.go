package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"syncrelay/config"
)

// Packaging checks (issue 16, item 3): what dist/ and the install docs
// promise ops must be what actually happens.

// unitStopTimeout reads TimeoutStopSec from dist/syncrelay.service.
func unitStopTimeout(t *testing.T) time.Duration {
	t.Helper()
	unit, err := os.ReadFile("../../dist/syncrelay.service")
	must(t, err)
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("dist/syncrelay.service has no TimeoutStopSec")
	}
	d, err := time.ParseDuration(string(m[1]))
	must(t, err)
	return d
}

// loadDistConfig parses dist/syncrelay.toml with its /etc/syncrelay files
// present in a temp dir.
func loadDistConfig(t *testing.T) *config.Config {
	t.Helper()
	raw, err := os.ReadFile("../../dist/syncrelay.toml")
	must(t, err)
	etc := t.TempDir()
	for _, f := range []string{"secret.key", "api-tokens", "webhook.secret", "google.secret", "microsoft.secret", "tls/fullchain.pem", "tls/privkey.pem"} {
		p := filepath.Join(etc, f)
		must(t, os.MkdirAll(filepath.Dir(p), 0o700))
		must(t, os.WriteFile(p, []byte(strings.Repeat("0a", 32)+"\n"), 0o600))
	}
	c, err := config.Parse(bytes.ReplaceAll(raw, []byte("/etc/syncrelay/"), []byte(etc+"/")), "syncrelay.toml")
	if err != nil {
		t.Fatalf("dist/syncrelay.toml: %v", err)
	}
	return c
}

// stopBound is the longest a SIGTERM can take with c: SMTP sessions drain
// (smtp.shutdown_timeout), then HTTP requests (http.shutdown_timeout), then
// the webhook deliveries in flight finish (webhooks.timeout) before the
// store closes.
func stopBound(c *config.Config) time.Duration {
	d := c.SMTP.ShutdownTimeout.Duration + c.HTTP.ShutdownTimeout.Duration
	if c.Webhooks.URL != "" {
		d += c.Webhooks.Timeout.Duration
	}
	return d
}

// The example configs' shutdown timeouts fit the unit's TimeoutStopSec:
// otherwise systemd kills sessions that were finishing (SIGKILL after
// TimeoutStopSec), which the drain exists to avoid.
func TestShutdownTimeoutsFitTheUnit(t *testing.T) {
	t.Parallel()
	stop := unitStopTimeout(t)
	full, err := config.Load("../../config/testdata/full.toml")
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*config.Config{
		"dist/syncrelay.toml":       loadDistConfig(t),
		"config/testdata/full.toml": full,
	} {
		if b := stopBound(c); b >= stop {
			t.Errorf("%s: smtp.shutdown_timeout %v + http.shutdown_timeout %v + webhooks.timeout %v = %v, not below the unit's TimeoutStopSec %v",
				name, c.SMTP.ShutdownTimeout.Duration, c.HTTP.ShutdownTimeout.Duration, c.Webhooks.Timeout.Duration, b, stop)
		}
	}
}

// installSteps returns the "install ..." command lines of a text (the
// unit's header comment, the admin guide's code blocks).
func installSteps(text string) [][]string {
	var out [][]string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "#"))
		if !strings.HasPrefix(l, "install ") {
			continue
		}
		if i := strings.Index(l, "&&"); i >= 0 {
			l = l[:i]
		}
		out = append(out, strings.Fields(l))
	}
	return out
}

// installs reports whether steps install the repository file src... to
// dst: an "install" without -d whose last two operands are an existing
// file of the repository and dst.
func installs(steps [][]string, dst string) (src string, ok bool) {
	for _, s := range steps {
		if len(s) < 3 || s[len(s)-1] != dst || contains(s, "-d") {
			continue
		}
		src = s[len(s)-2]
		if _, err := os.Stat(filepath.Join("../..", src)); err == nil {
			return src, true
		}
	}
	return "", false
}

// createsDir reports whether steps create dir ("install -d ... dir").
func createsDir(steps [][]string, dir string) bool {
	for _, s := range steps {
		if contains(s, "-d") && s[len(s)-1] == dir {
			return true
		}
	}
	return false
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// The unit's Documentation= names a file an install step puts there, in
// the unit's own install comment and in the admin guide.
func TestUnitDocumentationIsInstalled(t *testing.T) {
	t.Parallel()
	unit, err := os.ReadFile("../../dist/syncrelay.service")
	must(t, err)
	guide, err := os.ReadFile("../../docs/admin-setup.md")
	must(t, err)
	docs := regexp.MustCompile(`(?m)^Documentation=(.+)$`).FindStringSubmatch(string(unit))
	if docs == nil {
		t.Fatal("no Documentation=")
	}
	for _, u := range strings.Fields(docs[1]) {
		path, ok := strings.CutPrefix(u, "file://")
		if !ok {
			continue
		}
		for name, text := range map[string]string{"dist/syncrelay.service": string(unit), "docs/admin-setup.md": string(guide)} {
			if _, ok := installs(installSteps(text), path); !ok {
				t.Errorf("%s: no install step puts a repository file at %s (Documentation=%s)", name, path, u)
			}
		}
	}
}

// Every backup example writes into a directory an install step creates.
func TestBackupExampleDirectoryIsCreated(t *testing.T) {
	t.Parallel()
	unit, err := os.ReadFile("../../dist/syncrelay.service")
	must(t, err)
	guide, err := os.ReadFile("../../docs/admin-setup.md")
	must(t, err)
	out := regexp.MustCompile(`syncrelay backup [^\n]*-o (/\S+)`)
	for name, text := range map[string]string{"dist/syncrelay.service": string(unit), "docs/admin-setup.md": string(guide)} {
		ms := out.FindAllStringSubmatch(text, -1)
		if len(ms) == 0 {
			t.Errorf("%s: no backup example", name)
		}
		for _, m := range ms {
			dir := filepath.Dir(m[1])
			if !createsDir(installSteps(text), dir) {
				t.Errorf("%s: the backup example writes to %s, but no install step creates %s", name, m[1], dir)
			}
		}
	}
}

// hookEnv is a sandbox for dist/certbot-deploy-hook.sh: a config naming
// smtp.hostname, two certbot lineages, the TLS directory the daemon reads
// and a systemctl that records its calls.
type hookEnv struct {
	dir, config, tls, calls string
	lineages                map[string]string // name -> dir
	path                    string            // PATH with the fake systemctl first
}

func newHookEnv(t *testing.T, hostname string) *hookEnv {
	t.Helper()
	e := &hookEnv{dir: t.TempDir(), lineages: map[string]string{}}
	e.config = filepath.Join(e.dir, "syncrelay.toml")
	hostLine := ""
	if hostname != "" {
		hostLine = fmt.Sprintf("hostname = %q   # the relay's name\n", hostname)
	}
	must(t, os.WriteFile(e.config, []byte("# example\n[http]\nhostname = \"not-this.example.com\"\n[smtp]\nlisten = \":25\"\n"+hostLine+
		"tls_cert_file = \"/etc/syncrelay/tls/fullchain.pem\"\n[store]\ndir = \"/var/lib/syncrelay\"\n"), 0o600))
	e.tls = filepath.Join(e.dir, "etc-syncrelay", "tls")
	must(t, os.MkdirAll(e.tls, 0o750))
	// What the daemon reads now: must survive a renewal of another name.
	for _, f := range []string{"fullchain.pem", "privkey.pem"} {
		must(t, os.WriteFile(filepath.Join(e.tls, f), []byte("current "+f+"\n"), 0o640))
	}
	for _, name := range []string{"relay.example.com", "www.example.org"} {
		d := filepath.Join(e.dir, "live", name)
		must(t, os.MkdirAll(d, 0o700))
		for _, f := range []string{"fullchain.pem", "privkey.pem"} {
			must(t, os.WriteFile(filepath.Join(d, f), []byte(name+" "+f+"\n"), 0o600))
		}
		e.lineages[name] = d
	}
	bin := filepath.Join(e.dir, "bin")
	must(t, os.MkdirAll(bin, 0o755))
	e.calls = filepath.Join(e.dir, "systemctl.calls")
	must(t, os.WriteFile(filepath.Join(bin, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >> "+e.calls+"\n"), 0o755))
	e.path = bin + ":" + os.Getenv("PATH")
	return e
}

// run runs the hook under shell with certbot's variables.
func (e *hookEnv) run(t *testing.T, shell, lineage, domains string, setDomains bool) (int, string) {
	t.Helper()
	cmd := exec.Command(shell, "../../dist/certbot-deploy-hook.sh")
	g, err := user.LookupGroupId(fmt.Sprint(os.Getgid()))
	must(t, err)
	cmd.Env = []string{"PATH=" + e.path, "RENEWED_LINEAGE=" + lineage,
		"SYNCRELAY_CONFIG=" + e.config, "SYNCRELAY_TLS_DIR=" + e.tls, "SYNCRELAY_GROUP=" + g.Name}
	if setDomains {
		cmd.Env = append(cmd.Env, "RENEWED_DOMAINS="+domains)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

func (e *hookEnv) state(t *testing.T) (chain, calls string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.tls, "fullchain.pem"))
	must(t, err)
	c, _ := os.ReadFile(e.calls)
	return string(b), string(c)
}

// certbot runs every deploy hook for every certificate it renews on the
// host: the hook copies and reloads only for the lineage of
// smtp.hostname, and leaves syncrelay's certificate alone for any other.
func TestCertbotHookOnlyForSMTPHostname(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"sh", "bash"} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Logf("no %s", shell)
			continue
		}
		t.Run(shell, func(t *testing.T) {
			for _, tc := range []struct {
				name       string
				lineage    string
				domains    string
				setDomains bool
				copies     bool
			}{
				{"another certificate", "www.example.org", "www.example.org example.org", true, false},
				{"another certificate naming a longer host", "www.example.org", "relay.example.com.evil.test www.example.org", true, false},
				{"syncrelay's certificate", "relay.example.com", "relay.example.com", true, true},
				{"syncrelay's among other names", "relay.example.com", "mx.example.com relay.example.com", true, true},
				{"a wildcard covering it", "relay.example.com", "*.example.com", true, true},
				{"run by hand, another lineage", "www.example.org", "", false, false},
				{"run by hand, syncrelay's lineage", "relay.example.com", "", false, true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					e := newHookEnv(t, "Relay.Example.com")
					code, out := e.run(t, shell, e.lineages[tc.lineage], tc.domains, tc.setDomains)
					if code != 0 {
						t.Fatalf("exit %d: %s", code, out)
					}
					chain, calls := e.state(t)
					if !tc.copies {
						if chain != "current fullchain.pem\n" || calls != "" {
							t.Fatalf("acted on another certificate: chain %q, systemctl %q (output %s)", chain, calls, out)
						}
						if !strings.Contains(out, "relay.example.com") {
							t.Errorf("the skip does not say which name it wants: %q", out)
						}
						return
					}
					if chain != "relay.example.com fullchain.pem\n" || calls != "reload syncrelay\n" {
						t.Fatalf("chain %q, systemctl %q (output %s)", chain, calls, out)
					}
					for _, f := range []string{"fullchain.pem", "privkey.pem"} {
						st, err := os.Stat(filepath.Join(e.tls, f))
						must(t, err)
						if st.Mode().Perm() != 0o640 {
							t.Errorf("%s mode %v", f, st.Mode().Perm())
						}
					}
					if m, _ := filepath.Glob(filepath.Join(e.tls, "*.new")); len(m) > 0 {
						t.Errorf("left behind %v", m)
					}
				})
			}
			// Without smtp.hostname it cannot tell: it refuses, names the
			// config, and changes nothing.
			e := newHookEnv(t, "")
			code, out := e.run(t, shell, e.lineages["relay.example.com"], "relay.example.com", true)
			chain, calls := e.state(t)
			if code == 0 || !strings.Contains(out, e.config) || chain != "current fullchain.pem\n" || calls != "" {
				t.Fatalf("no hostname: exit %d, output %q, chain %q, systemctl %q", code, out, chain, calls)
			}
		})
	}
}
