// Package patchedmod checks, in tests, a dependency the build uses as a
// patched copy (third_party/<name> with a replace line in go.mod and a
// SYNCRELAY.md) against the pristine upstream module in the module cache:
// that the copy is of the version go.mod requires, that it differs from
// upstream only in the files its patches change, and (with WorkDir and
// Outcomes) that upstream still fails the patches' reproductions.
package patchedmod

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Copy describes one patched copy.
type Copy struct {
	Module  string          // module path, e.g. "github.com/emersion/go-smtp"
	Dir     string          // the copy, relative to syncrelay's root: "third_party/go-smtp"
	Root    string          // syncrelay's root, relative to the test's package: ".."
	Probe   string          // a file upstream has, to tell the module cache holds it
	Patched map[string]bool // files (slash paths) the patches change
	Added   map[string]bool // files the copy adds (SYNCRELAY.md, the reproductions)
}

// Path is the copy's directory, relative to the test's package.
func (c Copy) Path() string { return filepath.Join(c.Root, c.Dir) }

// Version reads go.mod: the version required, and that the module is
// replaced by the copy.
func (c Copy) Version(t testing.TB) string {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join(c.Root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	req := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(c.Module) + ` (v\S+)$`).FindSubmatch(mod)
	if req == nil {
		t.Fatalf("go.mod does not require %s", c.Module)
	}
	if !regexp.MustCompile(`(?m)^replace ` + regexp.QuoteMeta(c.Module) + ` => \./` + regexp.QuoteMeta(c.Dir) + `$`).Match(mod) {
		t.Fatalf("go.mod does not replace %s by ./%s", c.Module, c.Dir)
	}
	return string(req[1])
}

// CheckVersion fails when go.mod requires another version than the one
// the copy was made from: upgrading the require line without re-vendoring
// (and re-checking the patches) must not pass.
func (c Copy) CheckVersion(t testing.TB) {
	t.Helper()
	version := c.Version(t)
	readme, err := os.ReadFile(filepath.Join(c.Path(), "SYNCRELAY.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "upstream version: "+version+"\n") {
		t.Fatalf("go.mod requires %s %s but %s/SYNCRELAY.md names another upstream version: re-vendor it", c.Module, version, c.Dir)
	}
}

// Upstream is the pristine module of the required version in the module
// cache; the test is skipped when it is not there.
func (c Copy) Upstream(t testing.TB) (dir, version string) {
	t.Helper()
	version = c.Version(t)
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	dir = filepath.Join(strings.TrimSpace(string(out)), c.Module+"@"+version)
	if _, err := os.Stat(filepath.Join(dir, c.Probe)); err != nil {
		t.Skipf("upstream %s %s is not in the module cache (go mod download %s@%s)", c.Module, version, c.Module, version)
	}
	return dir, version
}

// CheckDiffers fails for every file of the copy that differs from
// upstream without being patched, is missing, or is neither upstream's
// nor named as added (fuzz corpora under testdata/fuzz/ excepted).
func (c Copy) CheckDiffers(t testing.TB) {
	t.Helper()
	upstream, _ := c.Upstream(t)
	copyDir := c.Path()
	seen := map[string]bool{}
	err := filepath.WalkDir(upstream, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(upstream, p)
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(copyDir, rel))
		if err != nil {
			t.Errorf("%s missing from the copy", rel)
		} else if !c.Patched[rel] && string(got) != string(want) {
			t.Errorf("%s differs from upstream", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(copyDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(copyDir, p)
		rel = filepath.ToSlash(rel)
		if !seen[rel] && !c.Added[rel] && !strings.HasPrefix(rel, "testdata/fuzz/") && !strings.Contains(rel, "/testdata/fuzz/") {
			t.Errorf("%s is not upstream's and not named in SYNCRELAY.md", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// WorkDir is an empty directory for building upstream with the
// reproductions: the same path every run (go's build cache is keyed on a
// package's directory, so a new temporary one would compile upstream
// again each time), held under a lock until the test ends so that two
// test runs do not write it at once. dir+".test" is a path for its test
// binary (GoTest), under the same lock.
func WorkDir(t testing.TB, name, version string) string {
	t.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("syncrelay-%s-%d-%s", name, os.Geteuid(), version))
	lock(t, dir+".lock")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// GoTest runs the tests of pkg as `go test -count=1 -v -run run pkg` would
// in dir (a module root; env is added to the environment: GOWORK,
// GOPROXY...), in two steps: `go test -c` into bin, which go links again
// only when it is out of date (go test links on every run; vet runs, from
// its cache, either way), then bin itself in pkgDir, the package's source
// directory, where go test runs it. bin must be a path no other test
// binary uses at the same time (under WorkDir's lock, or Kept's). It
// starts them and returns a function that waits for both and returns
// their combined output. A test that waits on a nested go command starts
// it before t.Parallel: it then builds and runs while the package's
// sequential tests do, instead of after them (go starts parallel tests
// last). If the test ends without waiting (t.Fatal), they are killed.
func GoTest(t testing.TB, dir, pkg, pkgDir, bin string, env []string, run string) (wait func() ([]byte, error)) {
	t.Helper()
	build := exec.Command("go", "test", "-c", "-o", bin, pkg)
	build.Dir = dir
	build.Env = append(os.Environ(), env...)
	test := exec.Command(bin, "-test.count=1", "-test.v", "-test.timeout=10m", "-test.run", run)
	test.Dir = pkgDir
	test.Env = build.Env
	var out bytes.Buffer
	var mu sync.Mutex // the process being waited for, for the cleanup's kill
	var current *exec.Cmd
	done := make(chan error, 1)
	go func() {
		for _, cmd := range []*exec.Cmd{build, test} {
			cmd.Stdout, cmd.Stderr = &out, &out // one writer: exec writes it from one goroutine
			mu.Lock()
			err := cmd.Start()
			current = cmd
			mu.Unlock()
			if err == nil {
				err = cmd.Wait()
			}
			if err != nil {
				done <- fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
				return
			}
		}
		done <- nil
	}()
	var once sync.Once
	var err error
	wait = func() ([]byte, error) {
		once.Do(func() { err = <-done })
		return out.Bytes(), err
	}
	t.Cleanup(func() {
		mu.Lock()
		if current != nil && current.Process != nil {
			current.Process.Kill() //nolint:errcheck // done already when the test waited
		}
		mu.Unlock()
		wait() //nolint:errcheck
	})
	return wait
}

// Kept is a path for a test binary built from the source in dir, the same
// every run (so that go test -c finds it up to date), held under a lock
// until the test ends so that two test runs do not rebuild it at once.
func Kept(t testing.TB, dir string) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(abs))
	bin := filepath.Join(os.TempDir(), fmt.Sprintf("syncrelay-patched-%d-%x.test", os.Geteuid(), h[:8]))
	lock(t, bin+".lock")
	return bin
}

// lock holds an exclusive lock on path until the test ends.
func lock(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck
		f.Close()
	})
}

// Outcomes lists the top-level TestSyncrelay* tests that passed and
// failed in `go test -v` output (subtests are indented, so not counted).
func Outcomes(out []byte) (passed, failed []string) {
	for _, m := range regexp.MustCompile(`(?m)^--- (PASS|FAIL): (TestSyncrelay\w+) `).FindAllSubmatch(out, -1) {
		if string(m[1]) == "PASS" {
			passed = append(passed, string(m[2]))
		} else {
			failed = append(failed, string(m[2]))
		}
	}
	return passed, failed
}
