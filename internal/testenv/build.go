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
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	if err := goBuild(root, dir, names); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Bins{Dir: dir, Syncrelay: filepath.Join(dir, "syncrelay"), Srload: filepath.Join(dir, "srload")}, nil
}

// Main is TestMain for packages that run the binaries: it builds names
// once (see BuildShared), sets *bins and runs the tests. Use as
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &bins, "syncrelay")) }
func Main(m *testing.M, bins **Bins, names ...string) int {
	b, err := BuildShared(names...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*bins = b
	return m.Run()
}

// DefaultParallel sets -test.parallel to n unless the command line set it.
// go test's default is GOMAXPROCS (2 on CI), right for tests that compute
// but not for tests that mostly wait on the binaries they start (a daemon
// coming up, a signal's shutdown, a lease running out). Call it from
// TestMain before m.Run.
func DefaultParallel(n int) {
	if !flag.Parsed() {
		flag.Parse()
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", fmt.Sprint(n)) //nolint:errcheck // the flag exists once testing is linked
	}
}

// BuildShared builds cmd/<name> for each name into a directory that all
// test binaries of this module checkout share and that outlives them (in
// the temporary directory, named after the module's path). go build
// rewrites a binary only when its build ID says it is out of date, so the
// three packages that run the binaries link them once per change, not
// once each (linking is seconds per binary); and go build, not this
// package, decides what is stale. A lock file keeps concurrent test
// binaries from building at once; the tests only read the binaries.
func BuildShared(names ...string) (*Bins, error) { return buildShared(goTestRun(), names...) }

func buildShared(run string, names ...string) (*Bins, error) {
	var b *Bins
	err := inSharedDir(func(root, dir string) error {
		b = &Bins{Dir: dir, Syncrelay: filepath.Join(dir, "syncrelay"), Srload: filepath.Join(dir, "srload")}
		return oncePerRun(dir, names, run, func() error { return goBuild(root, dir, names) })
	})
	return b, err
}

// BuildTestShared compiles the tests of the module's package pkg (a path
// inside the module, e.g. "router") into BuildShared's directory and
// returns the test binary's path, for tests that run another package's
// tests as a tool (rendering the router's corpus). As with BuildShared,
// go test -c links it again only when it is out of date: running it costs
// a fraction of a nested go test, which links and vets every time.
func BuildTestShared(pkg string) (string, error) {
	var bin string
	err := inSharedDir(func(root, dir string) error {
		name := strings.ReplaceAll(pkg, "/", "_") + ".test"
		bin = filepath.Join(dir, name)
		return oncePerRun(dir, []string{name}, goTestRun(), func() error {
			cmd := exec.Command("go", "test", "-c", "-o", bin, "./"+pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go test -c ./%s: %w\n%s", pkg, err, out)
			}
			return nil
		})
	})
	return bin, err
}

// oncePerRun runs build (which writes the binaries names into dir) unless
// it ran for the same `go test` run (run, from goTestRun) already: within one run the
// sources are the ones go test compiled, so a second go build of them,
// in another package's test binary, could only find them up to date,
// and finding that costs a go command's start (0.25 s of CPU, in
// test/crash and test/fault near the end of the run). Outside a go test
// run (run "": a test binary started by hand or through -exec) it always
// builds. dir's lock must be held.
func oncePerRun(dir string, names []string, run string, build func() error) error {
	if run != "" {
		done := true
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(dir, ".run-"+n))
			_, serr := os.Stat(filepath.Join(dir, n))
			done = done && err == nil && string(b) == run && serr == nil
		}
		if done {
			return nil
		}
	}
	if err := build(); err != nil {
		return err
	}
	for _, n := range names {
		if run == "" {
			_ = os.Remove(filepath.Join(dir, ".run-"+n))
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, ".run-"+n), []byte(run), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// goTestRun names the `go test` run this test binary belongs to: its
// parent process when that is the go command, with the parent's start
// time (a pid alone can come back), or "" when the parent is something
// else.
func goTestRun() string {
	ppid := os.Getppid()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err != nil || filepath.Base(exe) != "go" {
		return ""
	}
	start := procStart(ppid)
	if start == "" {
		return ""
	}
	return fmt.Sprintf("%d %s", ppid, start)
}

// procStart is process pid's start time (in clock ticks since boot), or "".
func procStart(pid int) string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// After "pid (comm) ", starttime is the 20th field (proc(5): 22nd).
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// inSharedDir runs build with the module's root and the directory that the
// test binaries of this checkout share, holding the directory's lock.
func inSharedDir(build func(root, dir string) error) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("syncrelay-testbin-%d-%x", os.Geteuid(), h[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", dir, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	return build(root, dir)
}

func goBuild(root, dir string, names []string) error {
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
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
