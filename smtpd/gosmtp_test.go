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
	"path/filepath"
	"testing"

	"syncrelay/internal/patchedmod"
)

// goSMTP is the patched copy of go-smtp the build uses.
var goSMTP = patchedmod.Copy{
	Module:  "github.com/emersion/go-smtp",
	Dir:     "third_party/go-smtp",
	Root:    "..",
	Probe:   "data.go",
	Patched: map[string]bool{"data.go": true, "conn.go": true, "lengthlimit_reader.go": true},
	Added:   map[string]bool{"SYNCRELAY.md": true, "syncrelay_test.go": true, "syncrelay_fuzz_test.go": true},
}

// The build uses the patched copy in third_party/go-smtp, of the version
// go.mod requires: upgrading the require line without re-vendoring (and
// re-checking the patches) fails here.
func TestGoSMTPIsThePatchedCopy(t *testing.T) { goSMTP.CheckVersion(t) }

// third_party/go-smtp is upstream's module but for data.go, conn.go,
// lengthlimit_reader.go and the files SYNCRELAY.md names: nothing else was
// changed by hand.
func TestGoSMTPCopyDiffersOnlyInDataGo(t *testing.T) { goSMTP.CheckDiffers(t) }

// goSMTPPatches is the number of patches in third_party/go-smtp
// (SYNCRELAY.md), each with its reproduction, TestSyncrelayPatchN.
const goSMTPPatches = 8

// The patches to go-smtp (its DATA decoder, BDAT, MAIL and the line
// limit) are still needed: their
// reproductions (third_party/go-smtp/syncrelay_test.go) fail on the
// pristine upstream module of the same version. When one passes there,
// upstream fixed it: drop that patch (SYNCRELAY.md says how).
func TestUpstreamGoSMTPStillNeedsPatches(t *testing.T) {
	if testing.Short() {
		t.Skip("builds upstream go-smtp")
	}
	upstream, version := goSMTP.Upstream(t)
	dir := patchedmod.WorkDir(t, "gosmtp-upstream", version)
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
	// Started before t.Parallel, so the nested go test runs alongside the
	// sequential tests; the test then waits on it in parallel with the rest.
	wait := patchedmod.GoTest(t, dir, ".", dir, dir+".test", []string{"GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off"}, "^TestSyncrelay")
	t.Parallel()
	res, _ := wait()
	passed, failed := patchedmod.Outcomes(res)
	for _, p := range passed {
		t.Errorf("upstream go-smtp %s passes %s: that patch is no longer needed (see third_party/go-smtp/SYNCRELAY.md)", version, p)
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
	if testing.Short() {
		t.Skip("builds the patched go-smtp's tests")
	}
	const dir = "../third_party/go-smtp"
	wait := patchedmod.GoTest(t, dir, ".", dir, patchedmod.Kept(t, dir), []string{"GOWORK=off", "GOPROXY=off"}, "Syncrelay") // before t.Parallel, as above
	t.Parallel()
	if res, err := wait(); err != nil {
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
