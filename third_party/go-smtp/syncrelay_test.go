package smtp

// syncrelay: the reproductions of the three patches to data.go (see
// SYNCRELAY.md). syncrelay's smtpd tests run them against the pristine
// upstream module too (TestUpstreamGoSMTPStillNeedsPatches): a patch whose
// test passes there is no longer needed.

import (
	"bufio"
	"io"
	"strings"
	"testing"
	"time"
)

// decode reads all of in through the DATA decoder.
func decode(in string) (string, error) {
	r := &dataReader{r: bufio.NewReader(strings.NewReader(in))}
	b, err := io.ReadAll(r)
	return string(b), err
}

// Patch 1: a line starting ".\r" not followed by "\n" keeps its CR (the
// dot is dot-stuffing). Upstream drops the CR: "a\r\n.\rb" reads "a\r\nb",
// hiding a bare CR (an SMTP smuggling pattern) from the backend.
func TestSyncrelayPatch1DotCRKept(t *testing.T) {
	got, err := decode("a\r\n.\rb\r\n.\r\n")
	if err != nil || got != "a\r\n\rb\r\n" {
		t.Fatalf("got %q, %v; want %q", got, err, "a\r\n\rb\r\n")
	}
}

// Patch 2: Read returns what it has decoded once nothing more is buffered,
// instead of blocking until b is full. Upstream blocks, so a backend cannot
// answer a message whose sender stops after a fake terminator until the
// read times out.
func TestSyncrelayPatch2ReadReturnsWhatArrived(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	r := &dataReader{r: bufio.NewReader(pr)}
	go io.WriteString(pw, "partial line")
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 4096)
		n, _ := r.Read(b)
		got <- string(b[:n])
	}()
	select {
	case s := <-got:
		if s != "partial line" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(2 * time.Second):
		pw.CloseWithError(io.ErrClosedPipe)
		t.Fatal("Read blocked with data available")
	}
}

// Patch 3: "\r\r\n" ends a line (after a bare CR), so "\r\r\n.\r\n" holds
// the CRLF.CRLF terminator as RFC 5321 §4.1.1.4 frames it. Upstream reads
// on past it.
func TestSyncrelayPatch3CRCRLFEndsLine(t *testing.T) {
	got, err := decode("a\r\r\n.\r\nMAIL FROM:<x>\r\n")
	if err != nil || got != "a\r\r\n" {
		t.Fatalf("got %q, %v; want %q", got, err, "a\r\r\n")
	}
}
