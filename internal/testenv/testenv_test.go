package testenv

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"syncrelay/config"
)

func TestServingAddrs(t *testing.T) {
	var text, js strings.Builder
	slog.New(slog.NewTextHandler(&text, nil)).Info("syncrelay serving", "smtp", "127.0.0.1:2525", "http", "127.0.0.1:8025", "hostname", "relay.test")
	slog.New(slog.NewJSONHandler(&js, nil)).Info("syncrelay serving", "smtp", "127.0.0.1:2526", "http", "127.0.0.1:8026", "hostname", "relay.test")
	for _, tc := range []struct {
		name, logs string
		smtp, http string
		ok         bool
	}{
		{"text", "level=INFO msg=starting\n" + text.String(), "127.0.0.1:2525", "127.0.0.1:8025", true},
		{"json", `{"msg":"starting"}` + "\n" + js.String(), "127.0.0.1:2526", "127.0.0.1:8026", true},
		{"not yet", "level=INFO msg=\"opening store\"\n", "", "", false},
		{"another message naming it", `{"msg":"x","note":"syncrelay serving"}` + "\n", "", "", false},
	} {
		s, h, ok := ServingAddrs(tc.logs)
		if s != tc.smtp || h != tc.http || ok != tc.ok {
			t.Errorf("%s: %q %q %v, want %q %q %v", tc.name, s, h, ok, tc.smtp, tc.http, tc.ok)
		}
	}
}

// TestConfigTOML: what the config writer renders is a valid config saying
// what was asked.
func TestConfigTOML(t *testing.T) {
	dir := t.TempDir()
	zone, tokens := filepath.Join(dir, "zone.txt"), filepath.Join(dir, "tokens")
	must(t, os.WriteFile(zone, nil, 0o600))
	must(t, os.WriteFile(tokens, []byte("tok\n"), 0o600))
	for _, tc := range []struct {
		name string
		c    Config
		want func(c *config.Config) bool
	}{
		{"defaults", Config{Data: "/d"}, func(c *config.Config) bool {
			return c.Store.Dir == "/d" && c.SMTP.Listen == "127.0.0.1:0" && c.HTTP.Listen == "127.0.0.1:0" &&
				c.SMTP.Hostname == "relay.test" && c.SMTP.ShutdownTimeout.Duration == 10*time.Second && c.DNS.ZoneFile == ""
		}},
		{"all", Config{Data: "/d", ShutdownTimeout: "30s", CommandTimeout: "5s", SMTP: "max_connections_per_ip = 7",
			HTTPListen: "127.0.0.1:9", Zone: zone, TokensFile: tokens, Extra: "[log]\nformat = \"json\"\n"}, func(c *config.Config) bool {
			return c.SMTP.ShutdownTimeout.Duration == 30*time.Second && c.SMTP.CommandTimeout.Duration == 5*time.Second &&
				c.SMTP.MaxConnectionsPerIP == 7 && c.HTTP.Listen == "127.0.0.1:9" && c.DNS.ZoneFile == zone &&
				c.API.TokensFile == tokens && c.Log.Format == "json"
		}},
	} {
		c, err := config.Parse([]byte(tc.c.TOML()), filepath.Join(dir, "test.toml"))
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, tc.c.TOML())
		}
		if !tc.want(c) {
			t.Errorf("%s: parsed %+v from\n%s", tc.name, c, tc.c.TOML())
		}
	}
}

// TestStartInProcess: the handle reads the addresses from the log line and
// Stop ends the run function through its context.
func TestStartInProcess(t *testing.T) {
	ended := make(chan struct{})
	d := StartInProcess(t, func(ctx context.Context, logs io.Writer) error {
		defer close(ended)
		slog.New(slog.NewJSONHandler(logs, nil)).Info("syncrelay serving", "smtp", "127.0.0.1:1", "http", "127.0.0.1:2")
		<-ctx.Done()
		return nil
	})
	if d.SMTP != "127.0.0.1:1" || d.HTTP != "127.0.0.1:2" {
		t.Fatalf("addresses %q %q", d.SMTP, d.HTTP)
	}
	if code := d.Stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	select {
	case <-ended:
	default:
		t.Fatal("Stop returned before the run function did")
	}
}

// TestBuildSharedLinksOnce: a second build of an unchanged command uses
// the binary the first one left (same file, not linked again), which is
// what saves the packages that run the binaries a link each.
func TestBuildSharedLinksOnce(t *testing.T) {
	// The first as a test binary builds (or finds built in this go test
	// run), the second outside any run (""), so that go build runs.
	a, err := BuildShared("srload")
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(a.Srload)
	if err != nil {
		t.Fatal(err)
	}
	if before.Mode()&0o111 == 0 {
		t.Fatalf("%s is not executable: %v", a.Srload, before.Mode())
	}
	b, err := buildShared("", "srload")
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(b.Srload)
	if err != nil {
		t.Fatal(err)
	}
	// go build touches an up-to-date target (its time changes) but a
	// linked one replaces it (a new file).
	if b.Srload != a.Srload || !os.SameFile(before, after) {
		t.Errorf("second build linked %s again (first: %s)", b.Srload, a.Srload)
	}
}

// TestOncePerRun: within one go test run a build runs once; another run,
// no run, or a missing binary builds again.
func TestOncePerRun(t *testing.T) {
	dir := t.TempDir()
	builds := 0
	build := func() error {
		builds++
		return os.WriteFile(filepath.Join(dir, "x"), nil, 0o755)
	}
	for i, tc := range []struct {
		run    string
		remove bool // the binary, before the call
		want   int  // builds so far
	}{
		{"100 7", false, 1},
		{"100 7", false, 1},
		{"100 8", false, 2}, // same pid, later start: another run
		{"100 8", true, 3},
		{"", false, 4},
		{"", false, 5},
		{"100 8", false, 6}, // the stamp went with the build outside a run
	} {
		if tc.remove {
			must(t, os.Remove(filepath.Join(dir, "x")))
		}
		must(t, oncePerRun(dir, []string{"x"}, tc.run, build))
		if builds != tc.want {
			t.Fatalf("call %d (run %q): %d builds, want %d", i, tc.run, builds, tc.want)
		}
	}
	if procStart(os.Getpid()) == "" || procStart(os.Getpid()) != procStart(os.Getpid()) {
		t.Errorf("procStart(self) = %q", procStart(os.Getpid()))
	}
}
