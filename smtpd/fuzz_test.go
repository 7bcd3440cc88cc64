package smtpd

import (
	"bytes"
	"io"
	"testing"
)

// FuzzBodyCheckerFastPath: feeding whole lines (the fast path), one byte
// at a time (the plain scan), everything at once and in chunks of any size
// (as BDAT reads come, lines and reads unaligned) reach the same verdict.
func FuzzBodyCheckerFastPath(f *testing.F) {
	for _, s := range []string{"ab\r\ncd\r\n", "a\rb\r\n", "a\n\r\n", "\r\n\r\n", "abcdef\r\nx\r\n", "a\nb\r\n", "x\r.\ry\r\n"} {
		f.Add([]byte(s), uint8(4), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, maxLine, chunk uint8) {
		type verdict struct {
			bare, fake, long, mid bool
			n                     int64
		}
		run := func(split func(func([]byte))) verdict {
			b := bodyChecker{dst: io.Discard, maxLine: int(maxLine)}
			split(b.feed)
			return verdict{b.bareEOL, b.fakeEnd, b.longLine, b.midLine, b.n}
		}
		want := run(func(feed func([]byte)) {
			for i := range in {
				feed(in[i : i+1])
			}
		})
		for name, split := range map[string]func(func([]byte)){
			"by lines": func(feed func([]byte)) {
				for _, l := range bytes.SplitAfter(in, []byte("\n")) {
					feed(l)
				}
			},
			"at once": func(feed func([]byte)) { feed(in) },
			"in chunks": func(feed func([]byte)) {
				for p, n := in, int(chunk)+1; len(p) > 0; p = p[min(n, len(p)):] {
					feed(p[:min(n, len(p))])
				}
			},
		} {
			if got := run(split); got != want {
				t.Fatalf("%q maxLine %d chunk %d: %s %+v, byte by byte %+v", in, maxLine, chunk, name, got, want)
			}
		}
	})
}
