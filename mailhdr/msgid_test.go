package mailhdr

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMsgIDs(t *testing.T) {
	long := strings.Repeat("a", MaxMsgIDLen-len("@x.test")) // exactly 998 bytes with the domain
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"one", "<abc@example.com>", []string{"abc@example.com"}},
		{"space separated", "<a@x.test> <b@y.test>", []string{"a@x.test", "b@y.test"}},
		{"no separator", "<a@x.test><b@y.test>", []string{"a@x.test", "b@y.test"}},
		{"comma separated", "<a@x.test>, <b@y.test>,<c@z.test>", []string{"a@x.test", "b@y.test", "c@z.test"}},
		{"folded", "<a@x.test>\r\n\t<b@y.test>\r\n <c@z.test>", []string{"a@x.test", "b@y.test", "c@z.test"}},
		{"domain lowercased, local kept", "<CAF=Abc+Def@Mail.GMAIL.com>", []string{"CAF=Abc+Def@mail.gmail.com"}},
		{"comments", "(first) <a@x.test> (second (nested) <fake@in.comment>) <b@y.test>", []string{"a@x.test", "b@y.test"}},
		{"quoted phrase skipped", `"Your message of <x@phrase.test>" <a@x.test>`, []string{"a@x.test"}},
		{"old in-reply-to style", `Your message of "Mon, 1 Jan 2024 10:00:00 +0000" <a@x.test>`, []string{"a@x.test"}},
		{"malformed skipped", "<a@x.test> <no-at-sign> <@nolocal.test> <nodomain@> <b@y.test>", []string{"a@x.test", "b@y.test"}},
		{"space inside removed", "<abc@ example.com>", []string{"abc@example.com"}},
		{"fws inside removed", "<abc\r\n @example.com>", []string{"abc@example.com"}},
		{"comment inside removed", "<abc(comment)@example.com>", []string{"abc@example.com"}},
		{"quoted local part", `<"a b"@example.com>`, []string{`"a b"@example.com`}},
		{"quoted local with at", `<"a@b"@Example.com>`, []string{`"a@b"@example.com`}},
		{"domain literal", "<abc@[192.0.2.1]>", []string{"abc@[192.0.2.1]"}},
		{"two ats", "<a@b@c.test> <d@e.test>", []string{"d@e.test"}},
		{"nested open bracket", "<a@x.test <b@y.test>", []string{"b@y.test"}},
		{"unterminated", "<a@x.test> <b@y.test", []string{"a@x.test"}},
		{"stray close", "> <a@x.test> >", []string{"a@x.test"}},
		{"unterminated comment", "(oops <a@x.test>", []string{"a@x.test"}},
		{"unterminated quote", `"oops <a@x.test>`, []string{"a@x.test"}},
		{"bare ids without brackets", "a@x.test b@Y.test", []string{"a@x.test", "b@y.test"}},
		{"bare words ignored when brackets present", "a@x.test <b@y.test>", []string{"b@y.test"}},
		{"bare junk", "hello world", nil},
		{"control char", "<a\x01b@x.test> <c@y.test>", []string{"c@y.test"}},
		{"bad domain char", "<a@x_y,z.test> <a@x..test> <a@.x.test> <c@y.test>", []string{"c@y.test"}},
		{"utf8", "<ü@bücher.example>", []string{"ü@bücher.example"}},
		{"invalid utf8", "<\xff@x.test>", nil},
		{"duplicates kept", "<a@x.test> <a@x.test>", []string{"a@x.test", "a@x.test"}},
		{"max length", "<" + long + "@x.test>", []string{long + "@x.test"}},
		{"too long", "<a" + long + "@x.test> <b@y.test>", []string{"b@y.test"}},
		{"token", "<sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@Relay.Example.COM>", []string{"sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@relay.example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := MsgIDs(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("MsgIDs(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
		})
	}
}

// References is read in full: the newest ids are at the end (SPEC §3).
func TestMsgIDsReadInFull(t *testing.T) {
	const n = 30000
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "<id%d@x.test>\r\n ", i)
	}
	got := MsgIDs(b.String())
	if len(got) != n {
		t.Fatalf("got %d ids, want %d", len(got), n)
	}
	if got[0] != "id0@x.test" || got[n-1] != fmt.Sprintf("id%d@x.test", n-1) {
		t.Fatalf("kept the wrong ids: first %q last %q", got[0], got[len(got)-1])
	}
}

// Pathological inputs must stay linear.
func TestMsgIDsLinear(t *testing.T) {
	inputs := []string{
		strings.Repeat("<", 1<<20),
		strings.Repeat(`"<`, 1<<19),
		strings.Repeat("(", 1<<20),
		strings.Repeat("(<a@b>", 1<<17),
		strings.Repeat(`"\`, 1<<19),
		strings.Repeat("<a", 1<<19),
		strings.Repeat("a@b ", 1<<18),
	}
	for _, in := range inputs {
		start := time.Now()
		MsgIDs(in)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("MsgIDs took %v on %q...", d, in[:16])
		}
	}
}

func TestNormalizeMsgID(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"<abc@Example.COM>", "abc@example.com", true},
		{"abc@Example.COM", "abc@example.com", true},
		{"  <ABC@example.com>\r\n", "ABC@example.com", true},
		{"<abc@example.com", "", false},
		{"abc@example.com>", "", false},
		{"<>", "", false},
		{"", "", false},
		{"abc", "", false},
		{"<a@b> <c@d>", "", false},
		{"a b@example.com", "ab@example.com", true}, // obsolete FWS inside is removed
		{"<a@b@c>", "", false},
		{"<a<b@c>", "", false},
		{`<"quoted"@x.test>`, `"quoted"@x.test`, true},
		{`<"unterminated@x.test>`, "", false},
		{"<a@[1.2.3.4]>", "a@[1.2.3.4]", true},
		{"<a@[1.2.3.4>", "", false},
		{"<a@x.test.>", "", false},
	}
	for _, tt := range tests {
		got, ok := NormalizeMsgID(tt.in)
		if ok != tt.ok || got != tt.want {
			t.Errorf("NormalizeMsgID(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// MsgIDs and NormalizeMsgID agree on single ids.
func TestMsgIDsMatchesNormalize(t *testing.T) {
	for _, s := range []string{"<a@B.c>", "<x.y+z@[10.0.0.1]>", `<"q q"@Q.test>`, "<sr.abc@relay.example.com>"} {
		n, ok := NormalizeMsgID(s)
		ids := MsgIDs(s)
		if !ok || len(ids) != 1 || ids[0] != n {
			t.Errorf("%q: NormalizeMsgID %q,%v vs MsgIDs %q", s, n, ok, ids)
		}
	}
}
