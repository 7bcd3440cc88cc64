package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupPostgresExplains: with the postgres backend, backup writes
// nothing, says that pg_dump/PITR is the backup and exits non-zero,
// without echoing the DSN (it may hold a password).
func TestBackupPostgresExplains(t *testing.T) {
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
