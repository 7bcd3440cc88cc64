package trust

// go-msgauth is a patched copy (third_party/go-msgauth, SYNCRELAY.md there):
// these tests check that the build uses it, that it differs from upstream
// only where SYNCRELAY.md says, that its patches are still needed, and that
// it passes upstream's tests and its own.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"syncrelay/internal/patchedmod"
)

// goMsgauth is the patched copy of go-msgauth the build uses.
var goMsgauth = patchedmod.Copy{
	Module:  "github.com/emersion/go-msgauth",
	Dir:     "third_party/go-msgauth",
	Root:    "..",
	Probe:   "dkim/canonical.go",
	Patched: map[string]bool{"dkim/canonical.go": true, "dkim/header.go": true, "dkim/query.go": true, "dkim/verify.go": true},
	Added:   map[string]bool{"SYNCRELAY.md": true, "dkim/syncrelay_test.go": true},
}

// Upgrading the require line without re-vendoring (and re-checking the
// patches) fails here.
func TestGoMsgauthIsThePatchedCopy(t *testing.T) { goMsgauth.CheckVersion(t) }

func TestGoMsgauthCopyDiffersOnlyInPatchedFiles(t *testing.T) { goMsgauth.CheckDiffers(t) }

// The patches are still needed: their reproductions (TestSyncrelayPatch*
// in third_party/go-msgauth/dkim/syncrelay_test.go) fail on the pristine
// upstream module. When one passes there, upstream fixed it: drop that
// patch (SYNCRELAY.md says how). The reference tests in that file must
// pass on upstream too.
func TestUpstreamGoMsgauthStillNeedsPatches(t *testing.T) {
	if testing.Short() {
		t.Skip("builds upstream go-msgauth")
	}
	upstream, version := goMsgauth.Upstream(t)
	// A module of its own that uses upstream through a replace (upstream's
	// go.mod names an x/crypto the module cache may not hold; this one
	// takes syncrelay's go.sum and x/crypto).
	dir := patchedmod.WorkDir(t, "gomsgauth-upstream", version)
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
		goMsgauth.Module, version, crypto[1], goMsgauth.Module)
	for name, data := range map[string][]byte{
		"upstream/dkim/syncrelay_test.go": repro, "go.sum": sum, "go.mod": []byte(gomod),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Started before t.Parallel, so the nested go test runs alongside the
	// sequential tests that follow this file's (fold_test.go's timing
	// tests have ended by then); the test waits on it in parallel.
	wait := patchedmod.GoTest(t, dir, goMsgauth.Module+"/dkim", filepath.Join(dir, "upstream", "dkim"), dir+".test",
		[]string{"GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off"}, "^TestSyncrelay")
	t.Parallel()
	res, _ := wait()
	passed, failed := patchedmod.Outcomes(res)
	for _, p := range passed {
		if strings.HasPrefix(p, "TestSyncrelayPatch") {
			t.Errorf("upstream go-msgauth %s passes %s: that patch is no longer needed (see third_party/go-msgauth/SYNCRELAY.md)", version, p)
		}
	}
	for _, f := range failed {
		if !strings.HasPrefix(f, "TestSyncrelayPatch") {
			t.Errorf("upstream go-msgauth %s fails %s: the reference in syncrelay_test.go is not upstream's behaviour", version, f)
		}
	}
	if len(failed) != 4 {
		t.Fatalf("want the 4 patch reproductions to fail on upstream, got %d failures:\n%s", len(failed), res)
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
	const dkimDir = "../third_party/go-msgauth/dkim"
	wait := patchedmod.GoTest(t, "..", goMsgauth.Module+"/dkim", dkimDir, patchedmod.Kept(t, dkimDir), []string{"GOPROXY=off"}, "") // before t.Parallel, as above
	t.Parallel()
	if res, err := wait(); err != nil {
		t.Fatalf("go test %s/dkim: %v\n%s", goMsgauth.Module, err, res)
	}
}
