package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"syncrelay/internal/testenv"
	"syncrelay/internal/testutil"
)

// SPEC §12: serve never generates a new secret key next to a store that
// holds data, and refuses a key that is not the one the data was made with;
// check compares key and data, also while the daemon runs.

// serveOnce runs `serve` expecting it to refuse to start: it returns the
// exit code and output, and fails the test if the daemon starts serving.
func serveOnce(t *testing.T, wd string, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Syncrelay, append([]string{"serve"}, args...)...)
	cmd.Dir = wd
	cmd.Env = append(os.Environ(), env...)
	out := &testutil.SyncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	must(t, cmd.Start())
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for {
		select {
		case <-exited:
			return cmd.ProcessState.ExitCode(), out.String()
		case <-time.After(20 * time.Millisecond):
		}
		if _, _, serving := testenv.ServingAddrs(out.String()); serving {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("serve started instead of refusing:\n%s", out.String())
		}
	}
}

// startWithTenant starts a daemon on a fresh data dir (which generates the
// key), creates a tenant and stops it. It returns the config, the data dir
// and the key file's content.
func startWithTenant(t *testing.T, dir, extra string) (cfg, data string, key []byte) {
	t.Helper()
	cfg = writeConfig(t, dir, extra)
	data = filepath.Join(dir, "data")
	d := startDaemon(t, dir, "-config", cfg)
	d.Token = readToken(t, data)
	if code, m := d.API(t, "POST", "/v1/tenants", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"microsoft"}`); code != 201 {
		t.Fatalf("create tenant: %d %v", code, m)
	}
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(t); code != 0 {
		t.Fatalf("daemon exit %d:\n%s", code, d.Logs)
	}
	key, err := os.ReadFile(filepath.Join(data, "secret.key"))
	must(t, err)
	return cfg, data, key
}

func TestServeRefusesAKeyThatIsNotTheData(t *testing.T) {
	t.Parallel()
	otherKey := []byte(strings.Repeat("ab", 32) + "\n")
	tests := []struct {
		name string
		// prepare changes the installation; it returns the serve flags, the
		// extra environment and the key file serve must leave as it is.
		prepare func(t *testing.T, dir, cfg, data string) (args, env []string, keyFile string)
		want    []string // in the output
	}{
		{"key file deleted", func(t *testing.T, dir, cfg, data string) ([]string, []string, string) {
			must(t, os.Rename(filepath.Join(data, "secret.key"), filepath.Join(dir, "secret.key.bak")))
			return []string{"-config", cfg}, nil, filepath.Join(data, "secret.key")
		}, []string{"secret key " + "DATA/secret.key does not exist, but store.dir DATA already holds data",
			"refusing to generate a new key", "restore the key file that was backed up with this store"}},
		{"typo in key_file", func(t *testing.T, dir, cfg, data string) ([]string, []string, string) {
			typo := filepath.Join(dir, "secret.kye")
			b, err := os.ReadFile(cfg)
			must(t, err)
			p := filepath.Join(dir, "typo.toml")
			must(t, os.WriteFile(p, append(b, "\n[secrets]\nkey_file = \""+typo+"\"\n"...), 0o600))
			return []string{"-config", p}, nil, typo
		}, []string{"secret key DIR/secret.kye does not exist, but store.dir DATA already holds data"}},
		{"another key file", func(t *testing.T, dir, cfg, data string) ([]string, []string, string) {
			must(t, os.WriteFile(filepath.Join(data, "secret.key"), otherKey, 0o600))
			return []string{"-config", cfg}, nil, filepath.Join(data, "secret.key")
		}, []string{"secret key DATA/secret.key does not match the data in store.dir DATA",
			"restore the key file that was backed up with this store"}},
		{"another key in the environment", func(t *testing.T, dir, cfg, data string) ([]string, []string, string) {
			return []string{"-config", cfg}, []string{"SYNCRELAY_SECRET_KEY=" + strings.TrimSpace(string(otherKey))}, filepath.Join(data, "secret.key")
		}, []string{"secret key from SYNCRELAY_SECRET_KEY does not match the data in store.dir DATA"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, data, key := startWithTenant(t, dir, "")
			args, env, keyFile := tt.prepare(t, dir, cfg, data)
			before, beforeErr := os.ReadFile(keyFile)

			code, out := serveOnce(t, dir, env, args...)
			if code == 0 {
				t.Errorf("serve exited 0")
			}
			for _, w := range tt.want {
				w = strings.NewReplacer("DATA", data, "DIR", dir).Replace(w)
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			// Nothing was generated or overwritten.
			after, afterErr := os.ReadFile(keyFile)
			if !bytes.Equal(before, after) || (beforeErr == nil) != (afterErr == nil) {
				t.Errorf("key file %s changed: %q (%v) -> %q (%v)", keyFile, before, beforeErr, after, afterErr)
			}

			// With the right key back, it starts, and the data is there.
			must(t, os.WriteFile(filepath.Join(data, "secret.key"), key, 0o600))
			d := startDaemon(t, dir, "-config", cfg)
			d.Token = readToken(t, data)
			if code, m := d.API(t, "GET", "/v1/tenants/acme", ""); code != 200 || m["id"] != "acme" {
				t.Errorf("tenant after the refused starts: %d %v", code, m)
			}
			d.Signal(syscall.SIGTERM)
			if code := d.Wait(t); code != 0 {
				t.Fatalf("daemon with the right key: exit %d:\n%s", code, d.Logs)
			}
		})
	}
}

// TestServeGeneratesKeyForEmptyStore: an empty store (the daemon started
// once, nothing created) still gets a key generated.
func TestServeGeneratesKeyForEmptyStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	must(t, os.MkdirAll(data, 0o700))
	cfg := writeConfig(t, dir, "")
	d := startDaemon(t, dir, "-config", cfg)
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(data, "secret.key")); err != nil {
		t.Fatalf("no key generated: %v", err)
	}
}

// TestCheckComparesKeyAndData: check finds a key that does not match the
// data, with the daemon stopped (the store holds a tenant but no sent
// message, so only the recorded fingerprint can tell) and while it runs
// (the store is locked: the fingerprint comes through the daemon's API).
func TestCheckComparesKeyAndData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	cfg, data, key := startWithTenant(t, dir, "")
	b, _ := os.ReadFile(cfg)
	must(t, os.WriteFile(cfg, bytes.Replace(b, []byte("[http]\nlisten = \"127.0.0.1:0\""), []byte("[http]\nlisten = \""+port+"\""), 1), 0o600))
	keyFile := filepath.Join(data, "secret.key")
	other := []byte(strings.Repeat("cd", 32) + "\n")

	secretKey := func(t *testing.T) checkResult {
		t.Helper()
		_, rep := checkJSON(t, "-config", cfg)
		return rep.get(t, "secret-key")
	}
	wantMatch := func(t *testing.T, daemonRunning bool) {
		t.Helper()
		must(t, os.WriteFile(keyFile, key, 0o600))
		if got := secretKey(t); got.Status != checkOK || !strings.Contains(got.Message, "matches the data") {
			t.Errorf("right key: %+v", got)
		}
		must(t, os.WriteFile(keyFile, other, 0o600))
		got := secretKey(t)
		if got.Status != checkFail || !strings.Contains(got.Message, keyFile+" does not match the data in store.dir "+data) ||
			!strings.Contains(got.Fix, "restore the key file that was backed up with this store") {
			t.Errorf("wrong key: %+v", got)
		}
		if daemonRunning && !strings.Contains(got.Message, "the running daemon") {
			t.Errorf("wrong key while the daemon runs: %+v", got)
		}
		must(t, os.Remove(keyFile))
		if got := secretKey(t); got.Status != checkFail || !strings.Contains(got.Message, "the store has data but there is no secret key at "+keyFile) {
			t.Errorf("no key: %+v", got)
		}
		must(t, os.WriteFile(keyFile, key, 0o600))
	}

	t.Run("daemon stopped", func(t *testing.T) { wantMatch(t, false) })
	t.Run("daemon running", func(t *testing.T) {
		d := startDaemon(t, dir, "-config", cfg)
		// The key file changes under the running daemon (a botched
		// restore of the key): check must notice before the next restart.
		wantMatch(t, true)
		if code, _ := readyz(d.HTTP); code != 200 {
			t.Fatalf("daemon not ready: %d", code)
		}
	})
}
