package mailhdr

import (
	"net/mail"
	"testing"
	"time"
)

var dateCases = []string{
	"",
	" ",
	"Mon, 2 Jan 2006 15:04:05 -0700",
	"Mon, 02 Jan 2006 15:04:05 +0000",
	"Tue, 1 Dec 2026 23:59:60 +0100",
	"Fri, 21 Nov 1997 09:55:06 -0600",
	"Fri, 21 Nov 1997 09:55:06 -0600 (MDT)",
	"Fri, 21 Nov 1997 09:55 -0600",
	"Fri, 21 Nov 97 09:55:06 -0600",
	"Fri, 31 Feb 1997 09:55:06 -0600",
	"Xyz, 21 Nov 1997 09:55:06 -0600",
	"fri, 21 nov 1997 09:55:06 -0600",
	"Fri, 21 Nov 1997 09:55:06 -0099",
	"Fri, 21 Nov 1997 09:55:06 -2460",
	"Fri, 21 Nov 1997 09:55:06 -0007",
	"Fri, 21 Nov 1997 09:55:06 +06",
	"Fri, 21 Nov 1997 09:55:06 MDT",
	"Fri, 21 Nov 1997 09:55:06 GMT",
	"Fri, 21 Nov 1997 09:55:06 UT",
	"Thu, 20 Nov 1997 09:55:06 MDT (This comment)",
	"21 Nov 1997 09:55:06 -0600",
	"  Fri, 21 Nov 1997 09:55:06 -0600",
	"Fri, 21 Nov 1997 09:55:06\r\n -0600",
	"Fri,\r\n 21 Nov 1997 09:55:06 -0600",
	"Fri, 21 Nov 1997 09:55:06 -0600\r",
	"Fri, 21 Nov 1997 09:55:06 -0600 ",
	"Fri, 21 Nov 1997 09:55:06 -0600x",
	"Fri, 21-Nov 1997 09:55:06 -0600",
	"Fri, 21 Nov 1997 09:55:06 --0600",
	"F, 1 Nov 1997 09:55:06 -0600",
	"Friday, 21 Nov 1997 09:55:06 -0600",
}

// TestParseDateMatchesNetMail: the shortcut gives net/mail's answer.
func TestParseDateMatchesNetMail(t *testing.T) {
	for _, v := range dateCases {
		checkDate(t, v)
	}
}

func checkDate(t *testing.T, v string) {
	t.Helper()
	got, gerr := ParseDate(v)
	want, werr := mail.ParseDate(v)
	if (gerr == nil) != (werr == nil) || !got.Equal(want) || got.Location().String() != want.Location().String() ||
		got.Format(time.RFC3339Nano) != want.Format(time.RFC3339Nano) {
		t.Errorf("ParseDate(%q) = %v, %v; net/mail: %v, %v", v, got, gerr, want, werr)
	}
}

// TestParseDateAllocs: the usual form and a missing Date allocate nothing
// beyond time.Parse's zone (net/mail: 24 and 48 failed parses).
func TestParseDateAllocs(t *testing.T) {
	for _, v := range []string{"", "Mon, 2 Jan 2006 15:04:05 -0700"} {
		if n := testing.AllocsPerRun(100, func() { ParseDate(v) }); n > 2 {
			t.Errorf("ParseDate(%q): %v allocations", v, n)
		}
	}
}

func FuzzParseDate(f *testing.F) {
	for _, v := range dateCases {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) { checkDate(t, v) })
}
