package trust

// go-msgauth is a patched copy (third_party/go-msgauth, SYNCRELAY.md there):
// these tests check that the build uses it, that it differs from upstream
// only where SYNCRELAY.md says, that its patches are still needed, and that
// it passes upstream's tests and its own.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

const goMsgauth = "github.com/emersion/go-msgauth"

// goMsgauthVersion reads go.mod: the go-msgauth version required, and that
// it is replaced by the patched copy.
func goMsgauthVersion(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	req := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(goMsgauth) + ` (v\S+)$`).FindSubmatch(mod)
	if req == nil {
		t.Fatal("go.mod does not require go-msgauth")
	}
	if !regexp.MustCompile(`(?m)^replace ` + regexp.QuoteMeta(goMsgauth) + ` => \./third_party/go-msgauth$`).Match(mod) {
		t.Fatal("go.mod does not replace go-msgauth by ./third_party/go-msgauth")
	}
	return string(req[1])
}

// Upgrading the require line without re-vendoring (and re-checking the
// patches) fails here.
func TestGoMsgauthIsThePatchedCopy(t *testing.T) {
	version := goMsgauthVersion(t)
	readme, err := os.ReadFile("../third_party/go-msgauth/SYNCRELAY.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "upstream version: "+version+"\n") {
		t.Fatalf("go.mod requires go-msgauth %s but third_party/go-msgauth/SYNCRELAY.md names another upstream version: re-vendor it", version)
	}
}

// upstreamGoMsgauth is the pristine upstream module in the module cache;
// the test is skipped when it is not there.
func upstreamGoMsgauth(t *testing.T) (dir, version string) {
	t.Helper()
	version = goMsgauthVersion(t)
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	dir = filepath.Join(strings.TrimSpace(string(out)), goMsgauth+"@"+version)
	if _, err := os.Stat(filepath.Join(dir, "dkim", "canonical.go")); err != nil {
		t.Skipf("upstream go-msgauth %s is not in the module cache (go mod download %s@%s)", version, goMsgauth, version)
	}
	return dir, version
}

// The files SYNCRELAY.md says the patches change, and the files it adds.
var (
	goMsgauthPatched = map[string]bool{"dkim/canonical.go": true, "dkim/header.go": true, "dkim/query.go": true}
	goMsgauthAdded   = map[string]bool{"SYNCRELAY.md": true, "dkim/syncrelay_test.go": true}
)

func TestGoMsgauthCopyDiffersOnlyInPatchedFiles(t *testing.T) {
	upstream, _ := upstreamGoMsgauth(t)
	const copyDir = "../third_party/go-msgauth"
	seen := map[string]bool{}
	err := filepath.WalkDir(upstream, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(upstream, p)
		seen[filepath.ToSlash(rel)] = true
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(copyDir, rel))
		if err != nil {
			t.Errorf("%s missing from the copy", rel)
		} else if !goMsgauthPatched[filepath.ToSlash(rel)] && string(got) != string(want) {
			t.Errorf("%s differs from upstream", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(copyDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(copyDir, p)
		rel = filepath.ToSlash(rel)
		if !seen[rel] && !goMsgauthAdded[rel] && !strings.HasPrefix(rel, "dkim/testdata/fuzz/") {
			t.Errorf("%s is not upstream's and not named in SYNCRELAY.md", rel)
		}
		return nil
	})
}

// The patches are still needed: their reproductions (TestSyncrelayPatch*
// in third_party/go-msgauth/dkim/syncrelay_test.go) fail on the pristine
// upstream module. When one passes there, upstream fixed it: drop that
// patch (SYNCRELAY.md says how). The reference tests in that file must
// pass on upstream too.
func TestUpstreamGoMsgauthStillNeedsPatches(t *testing.T) {
	if testing.Short() {
		t.Skip("builds upstream go-msgauth")
	}
	upstream, version := upstreamGoMsgauth(t)
	// A module of its own that uses upstream through a replace (upstream's
	// go.mod names an x/crypto the module cache may not hold; this one
	// takes syncrelay's go.sum and x/crypto). The same directory every
	// run, for the build cache; the lock keeps two runs apart.
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("syncrelay-gomsgauth-upstream-%d-%s", os.Geteuid(), version))
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(dir, "upstream"), os.DirFS(upstream)); err != nil {
		t.Fatal(err)
	}
	repro, err := os.ReadFile("../third_party/go-msgauth/dkim/syncrelay_test.go")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile("../go.sum")
	if err != nil {
		t.Fatal(err)
	}
	mod, _ := os.ReadFile("../go.mod")
	crypto := regexp.MustCompile(`(?m)^\s+golang.org/x/crypto (v\S+)`).FindSubmatch(mod)
	if crypto == nil {
		t.Fatal("go.mod names no golang.org/x/crypto")
	}
	gomod := fmt.Sprintf("module syncrelay/msgauthcheck\n\ngo 1.26.0\n\nrequire (\n\t%s %s\n\tgolang.org/x/crypto %s\n)\n\nreplace %s => ./upstream\n",
		goMsgauth, version, crypto[1], goMsgauth)
	for name, data := range map[string][]byte{
		"upstream/dkim/syncrelay_test.go": repro, "go.sum": sum, "go.mod": []byte(gomod),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "-v", "-run", "^TestSyncrelay", goMsgauth+"/dkim")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off")
	res, _ := cmd.CombinedOutput()
	failed := regexp.MustCompile(`--- FAIL: (TestSyncrelay\w+)`).FindAllStringSubmatch(string(res), -1)
	passed := regexp.MustCompile(`--- PASS: (TestSyncrelay\w+)`).FindAllStringSubmatch(string(res), -1)
	for _, p := range passed {
		if strings.HasPrefix(p[1], "TestSyncrelayPatch") {
			t.Errorf("upstream go-msgauth %s passes %s: that patch is no longer needed (see third_party/go-msgauth/SYNCRELAY.md)", version, p[1])
		}
	}
	for _, f := range failed {
		if !strings.HasPrefix(f[1], "TestSyncrelayPatch") {
			t.Errorf("upstream go-msgauth %s fails %s: the reference in syncrelay_test.go is not upstream's behaviour", version, f[1])
		}
	}
	if len(failed) != 3 {
		t.Fatalf("want the 3 patch reproductions to fail on upstream, got %d failures:\n%s", len(failed), res)
	}
}

// The patched copy passes upstream's dkim tests, its reproductions and the
// fuzz target's seeds (the fused canonicaliser against upstream's,
// syncrelay_test.go). It is a module of its own, which `go test ./...` does
// not enter: it is tested here as a dependency of syncrelay.
func TestPatchedGoMsgauthPassesItsTests(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the patched go-msgauth's tests")
	}
	cmd := exec.Command("go", "test", "-count=1", goMsgauth+"/dkim")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOPROXY=off")
	if res, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test %s/dkim: %v\n%s", goMsgauth, err, res)
	}
}
