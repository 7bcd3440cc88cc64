// Package testenv is the one way tests start syncrelay: it builds the
// binaries once per test binary, writes configs, starts the daemon either
// as the real binary or in this process (daemon.Run) behind the same
// handle, waits for its "syncrelay serving" line, and gives SMTP and HTTP
// clients for it. load.go drives srload and checks a store against the
// replies it recorded (the crash and fault tests).
//
// It must not import syncrelay/daemon: daemon's own tests use it, so the
// in-process start takes the run function from the caller.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Bins are the built binaries.
type Bins struct {
	Dir       string
	Syncrelay string // cmd/syncrelay, if built
	Srload    string // cmd/srload, if built
}

// Build builds cmd/<name> for each name (one go build, shared
// dependencies) into a new temporary directory.
func Build(names ...string) (*Bins, error) {
	dir, err := os.MkdirTemp("", "syncrelay-bin-")
	if err != nil {
		return nil, err
	}
	root, err := moduleRoot()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return &Bins{Dir: dir, Syncrelay: filepath.Join(dir, "syncrelay"), Srload: filepath.Join(dir, "srload")}, nil
}

// Main is TestMain for packages that run the binaries: it builds names
// once, sets *bins, runs the tests and removes the binaries. Use as
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &bins, "syncrelay")) }
func Main(m *testing.M, bins **Bins, names ...string) int {
	b, err := Build(names...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(b.Dir)
	*bins = b
	return m.Run()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the syncrelay module")
	}
	return filepath.Dir(mod), nil
}
