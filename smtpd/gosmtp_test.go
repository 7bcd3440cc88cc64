package smtpd

// What this package assumes about go-smtp, and the test that checks each:
//
//   - the build uses the patched copy of the version go.mod requires, it
//     differs from upstream only in data.go, conn.go and lengthlimit_reader.go, and its patches are still
//     needed: TestGoSMTPIsThePatchedCopy, TestGoSMTPCopyDiffersOnlyInDataGo,
//     TestUpstreamGoSMTPStillNeedsPatches, TestPatchedGoSMTPPassesItsTests;
//   - DATA reaches Session.Data dot-unstuffed, framed on CRLF.CRLF only,
//     every CR kept, as it arrives: TestDataDecoding,
//     TestDataFakeTerminatorRefusedAtOnce, TestSmuggling;
//   - BDAT reaches it as an *io.PipeReader: TestGoSMTPBDATReaderIsAPipe;
//   - go-smtp drains what Data left of a DATA body (its own size limit
//     stops our reading early): TestOversize;
//   - go-smtp calls Reset right after writing the reply to DATA (the
//     connection is poisoned there): TestBareLineEndingsDATA;
//   - a read error that wraps net.ErrClosed ends the connection without a
//     reply of go-smtp's: TestShutdown* and the timeout tests;
//   - NewSession runs at each EHLO, and again after STARTTLS:
//     TestSmugglingInsideTLS and the STARTTLS tests.

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

const goSMTP = "github.com/emersion/go-smtp"

// goSMTPVersion reads go.mod: the go-smtp version required, and that it
// is replaced by the patched copy in third_party/go-smtp.
func goSMTPVersion(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	req := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(goSMTP) + ` (v\S+)$`).FindSubmatch(mod)
	if req == nil {
		t.Fatal("go.mod does not require go-smtp")
	}
	if !regexp.MustCompile(`(?m)^replace ` + regexp.QuoteMeta(goSMTP) + ` => \./third_party/go-smtp$`).Match(mod) {
		t.Fatal("go.mod does not replace go-smtp by ./third_party/go-smtp")
	}
	return string(req[1])
}

// The build uses the patched copy in third_party/go-smtp, of the version
// go.mod requires: upgrading the require line without re-vendoring (and
// re-checking the patches) fails here.
func TestGoSMTPIsThePatchedCopy(t *testing.T) {
	version := goSMTPVersion(t)
	readme, err := os.ReadFile("../third_party/go-smtp/SYNCRELAY.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "upstream version: "+version+"\n") {
		t.Fatalf("go.mod requires go-smtp %s but third_party/go-smtp/SYNCRELAY.md names another upstream version: re-vendor it", version)
	}
}

// upstreamGoSMTP is the pristine upstream module of the version go.mod
// requires, in the module cache; the test is skipped when it is not there.
func upstreamGoSMTP(t *testing.T) (dir, version string) {
	t.Helper()
	version = goSMTPVersion(t)
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	dir = filepath.Join(strings.TrimSpace(string(out)), goSMTP+"@"+version)
	if _, err := os.Stat(filepath.Join(dir, "data.go")); err != nil {
		t.Skipf("upstream go-smtp %s is not in the module cache (go mod download %s@%s)", version, goSMTP, version)
	}
	return dir, version
}

// third_party/go-smtp is upstream's module but for data.go, conn.go,
// lengthlimit_reader.go and the files SYNCRELAY.md names: nothing else was
// changed by hand.
func TestGoSMTPCopyDiffersOnlyInDataGo(t *testing.T) {
	upstream, _ := upstreamGoSMTP(t)
	const copyDir = "../third_party/go-smtp"
	seen := map[string]bool{}
	err := filepath.WalkDir(upstream, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(upstream, p)
		seen[rel] = true
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(copyDir, rel))
		if err != nil {
			t.Errorf("%s missing from the copy", rel)
		} else if rel != "data.go" && rel != "conn.go" && rel != "lengthlimit_reader.go" && string(got) != string(want) {
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
		if !seen[rel] && rel != "SYNCRELAY.md" && rel != "syncrelay_test.go" && rel != "syncrelay_fuzz_test.go" &&
			!strings.HasPrefix(rel, filepath.Join("testdata", "fuzz")+string(filepath.Separator)) {
			t.Errorf("%s is not upstream's and not named in SYNCRELAY.md", rel)
		}
		return nil
	})
}

// goSMTPPatches is the number of patches in third_party/go-smtp
// (SYNCRELAY.md), each with its reproduction, TestSyncrelayPatchN.
const goSMTPPatches = 7

// The patches to go-smtp (its DATA decoder, BDAT, MAIL and the line
// limit) are still needed: their
// reproductions (third_party/go-smtp/syncrelay_test.go) fail on the
// pristine upstream module of the same version. When one passes there,
// upstream fixed it: drop that patch (SYNCRELAY.md says how).
func TestUpstreamGoSMTPStillNeedsPatches(t *testing.T) {
	t.Parallel() // waits on a nested go test; overlaps the other one
	if testing.Short() {
		t.Skip("builds upstream go-smtp")
	}
	upstream, version := upstreamGoSMTP(t)
	// The same directory every run (written afresh): go's build cache is
	// keyed on the package's directory, and a new temporary one had go
	// test compile upstream go-smtp again each time. The lock keeps two
	// test runs from writing it at once.
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("syncrelay-gosmtp-upstream-%d-%s", os.Geteuid(), version))
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
	if err := os.CopyFS(dir, os.DirFS(upstream)); err != nil {
		t.Fatal(err)
	}
	repro, err := os.ReadFile("../third_party/go-smtp/syncrelay_test.go")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "syncrelay_test.go"), repro, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "test", "-count=1", "-v", "-run", "^TestSyncrelay", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off")
	res, _ := cmd.CombinedOutput()
	// Top-level tests only (at the start of a line): a reproduction may
	// have subtests.
	failed := regexp.MustCompile(`(?m)^--- FAIL: (TestSyncrelay\w+) `).FindAllStringSubmatch(string(res), -1)
	passed := regexp.MustCompile(`(?m)^--- PASS: (TestSyncrelay\w+) `).FindAllStringSubmatch(string(res), -1)
	for _, p := range passed {
		t.Errorf("upstream go-smtp %s passes %s: that patch is no longer needed (see third_party/go-smtp/SYNCRELAY.md)", version, p[1])
	}
	if len(failed) != goSMTPPatches {
		t.Fatalf("want the %d patch reproductions to fail on upstream, got %d failures:\n%s", goSMTPPatches, len(failed), res)
	}
}

// The patched copy passes its own reproductions and the differential fuzz
// target's seeds (the bulk decoder of patch 4 against the byte-at-a-time
// one it replaced, syncrelay_fuzz_test.go). The copy is a module of its
// own, which `go test ./...` does not enter.
func TestPatchedGoSMTPPassesItsTests(t *testing.T) {
	t.Parallel() // waits on a nested go test; overlaps the other one
	if testing.Short() {
		t.Skip("builds the patched go-smtp's tests")
	}
	cmd := exec.Command("go", "test", "-count=1", "-run", "Syncrelay", ".")
	cmd.Dir = "../third_party/go-smtp"
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOPROXY=off")
	if res, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -run Syncrelay in third_party/go-smtp: %v\n%s", err, res)
	}
}

// Session.Data tells BDAT from DATA by the reader go-smtp hands it: an
// *io.PipeReader for BDAT (not dot-stuffed, framed by byte counts), its
// DATA decoder otherwise. The "message" log line says which it took.
func TestGoSMTPBDATReaderIsAPipe(t *testing.T) {
	ts := startServer(t, Options{})
	r := ts.inData(t, inboundAddr)
	r.send(simpleBody + ".\r\n")
	r.expect(250)
	r.envelope(inboundAddr)
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(simpleBody), simpleBody))
	r.expect(250)
	var got []any
	waitFor(t, "two message lines", func() bool {
		got = got[:0]
		for _, rec := range ts.logs.records(t) {
			if rec["msg"] == "message" {
				got = append(got, rec["bdat"])
			}
		}
		return len(got) == 2
	})
	if got[0] != false || got[1] != true {
		t.Fatalf("bdat per message %v, want [false true]", got)
	}
	if d := ts.del.all(); len(d) != 2 || string(d[1].body) != simpleBody {
		t.Fatalf("deliveries %+v", d)
	}
}
