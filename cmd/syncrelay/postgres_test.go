package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"syncrelay/internal/pgtest"
	"syncrelay/store"
	"syncrelay/store/postgres"
)

// TestBackupPostgresExplains: with the postgres backend, backup writes
// nothing, says that pg_dump/PITR is the backup and exits non-zero,
// without echoing the DSN (it may hold a password).
func TestBackupPostgresExplains(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	must(t, os.WriteFile(cfg, []byte("[store]\nbackend = \"postgres\"\ndsn = \"postgres://u:hunter2@127.0.0.1:1/x\"\n"), 0o600))
	out := filepath.Join(dir, "x.tar")
	code, stdout, errs := runCmd(t, "backup", "-config", cfg, "-o", out)
	if code == 0 || !strings.Contains(errs, "pg_dump") || strings.Contains(errs+stdout, "hunter2") {
		t.Errorf("backup with postgres: %d %q", code, errs)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("backup wrote %s: %v", out, err)
	}
}

// TestCheckPostgres: check connects to the DSN, reports the schema and
// the durability of commits, and never echoes the password.
func TestCheckPostgres(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	write := func(dsn string) {
		must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("[store]\ndir = %q\nbackend = \"postgres\"\ndsn = %q\n", dir, dsn)), 0o600))
	}
	write(dsn)
	_, rep := checkJSON(t, "-config", cfg)
	if c := rep.get(t, "store"); c.Status != checkOK || !strings.Contains(c.Message, "no syncrelay schema yet") {
		t.Errorf("fresh database: %+v", c)
	}
	if c := rep.get(t, "store-durability"); c.Status != checkWarn || !strings.Contains(c.Message, "synchronous_standby_names is empty") {
		t.Errorf("durability without a standby: %+v", c)
	}

	st, err := postgres.Open(context.Background(), dsn, postgres.Options{})
	must(t, err)
	must(t, st.CreateTenant(context.Background(), &store.Tenant{ID: "acme", InboundAddress: "acme-x@relay.test"}))
	st.Close()
	_, rep = checkJSON(t, "-config", cfg)
	if c := rep.get(t, "store"); c.Status != checkOK || !strings.Contains(c.Message, fmt.Sprintf("schema version %d (1 tenant)", postgres.SchemaVersion())) {
		t.Errorf("migrated database: %+v", c)
	}

	write("postgres://u:hunter2@127.0.0.1:1/none?connect_timeout=2")
	_, rep = checkJSON(t, "-config", cfg)
	if c := rep.get(t, "store"); c.Status != checkFail || strings.Contains(c.Message+c.Fix, "hunter2") {
		t.Errorf("unreachable database: %+v", c)
	}
}

// TestBboltOnlyCommandsPostgres: commands that only make sense on a bbolt
// store say what to do instead with the postgres backend.
func TestBboltOnlyCommandsPostgres(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	must(t, os.WriteFile(cfg, []byte("[store]\nbackend = \"postgres\"\ndsn = \"postgres://u@127.0.0.1:1/x\"\n"), 0o600))
	eml := filepath.Join(dir, "m.eml")
	must(t, os.WriteFile(eml, []byte("From: a@b.test\r\n\r\nhi\r\n"), 0o600))
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"replay", "-config", cfg, eml}, 1, "-smtp ADDR -tenant TENANT"},
		// -smtp needs no store: with the postgres backend too, it goes to
		// the daemon (here: none, exit 3).
		{[]string{"replay", "-config", cfg, "-smtp", "127.0.0.1:1", "-tenant", "acme", eml}, 3, "cannot reach the daemon at 127.0.0.1:1"},
		{[]string{"compact", "-config", cfg}, 0, "nothing to compact"},
		{[]string{"restore", "-config", cfg, eml}, 1, "pg_restore"},
	} {
		code, out, errs := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: %d %q %q", tc.args, code, out, errs)
		}
	}
}
