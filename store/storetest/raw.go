package storetest

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"syncrelay/store"
)

var rawTests = []test{
	{"RoundTrip", testRawRoundTrip},
	{"RandomAccess", testRawRandomAccess},
	{"ExactlySizeBytes", testRawExactlySize},
	{"ShortBodyFails", testRawShortBody},
	{"UnknownLocator", testRawUnknownLocator},
}

// testRawRoundTrip: a message's bytes read back exactly, Head first, for
// every size class (the bbolt backend keeps large messages apart).
func testRawRoundTrip(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	for i, c := range []struct {
		name       string
		head, body string
	}{
		{"head only", "Authentication-Results: relay.test; none\r\n", ""},
		{"body only", "", "Subject: x\r\n\r\nbody\r\n"},
		{"binary", "H: 1\r\n", "\x00\xff\r\n\x80 8bit \xe2\x82\xac\r\n"},
		{"64 KiB", "H: 1\r\n", pattern(64<<10, "medium")},
		{"just over 1 MiB", "H: 1\r\n", pattern(1<<20+1, "large")},
		{"3 MiB", "H: 1\r\n", pattern(3<<20, "larger")},
	} {
		res := e.commit(reply(th.ID, fmt.Sprintf("size%d@cand.test", i), "", rawOf(c.head, c.body)))
		m := e.message(tenantID, res.Ref.Message)
		if m.Size != int64(len(c.head)+len(c.body)) {
			e.fatalf("%s: Size = %d, want %d", c.name, m.Size, len(c.head)+len(c.body))
		}
		e.mustRaw(e.b, m.Raw, []byte(c.head+c.body))
	}
}

// testRawRandomAccess: a RawFile is a ReaderAt and Seeker over exactly the
// message (the API serves ranges of it).
func testRawRandomAccess(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	// Neighbours on both sides: a reader must not run into them.
	e.commit(reply(th.ID, "before@cand.test", "", rawOf("", pattern(500, "before"))))
	head, body := "H: 1\r\n", pattern(10000, "middle")
	res := e.commit(reply(th.ID, "mid@cand.test", "", rawOf(head, body)))
	e.commit(reply(th.ID, "after@cand.test", "", rawOf("", pattern(500, "after"))))
	want := head + body
	f, err := e.b.OpenRaw(e.ctx, e.message(tenantID, res.Ref.Message).Raw)
	e.must(err, "OpenRaw")
	defer f.Close()
	if f.Size() != int64(len(want)) {
		e.fatalf("Size = %d, want %d", f.Size(), len(want))
	}
	buf := make([]byte, 100)
	for _, off := range []int{0, 3, 6, 5000, len(want) - 100} {
		n, err := f.ReadAt(buf, int64(off))
		if n != 100 || (err != nil && err != io.EOF) || string(buf) != want[off:off+100] {
			e.fatalf("ReadAt(%d) = %d %v %q", off, n, err, buf[:n])
		}
	}
	// Reading past the end stops at the message's end.
	n, err := f.ReadAt(buf, int64(len(want)-10))
	if n != 10 || err != io.EOF || string(buf[:n]) != want[len(want)-10:] {
		e.fatalf("ReadAt(end-10) = %d %v %q, want the last 10 bytes and EOF", n, err, buf[:n])
	}
	if pos, err := f.Seek(-20, io.SeekEnd); err != nil || pos != int64(len(want)-20) {
		e.fatalf("Seek(-20, end) = %d %v", pos, err)
	}
	rest, err := io.ReadAll(f)
	if err != nil || string(rest) != want[len(want)-20:] {
		e.fatalf("read after Seek = %q %v", rest, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		e.fatalf("Seek(0): %v", err)
	}
	all, err := io.ReadAll(f)
	if err != nil || string(all) != want {
		e.fatalf("read after rewinding: %d bytes %v", len(all), err)
	}
}

// testRawExactlySize: exactly Size bytes are read from Body; whatever
// follows is not part of the message.
func testRawExactlySize(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	for i, size := range []int{10, 1<<20 + 10} {
		body := pattern(size, "exact") + "TRAILING GARBAGE"
		raw := &store.Raw{Head: []byte("H: 1\r\n"), Body: strings.NewReader(body), Size: int64(size)}
		res := e.commit(reply(th.ID, fmt.Sprintf("exact%d@cand.test", i), "", raw))
		e.mustRaw(e.b, e.message(tenantID, res.Ref.Message).Raw, []byte("H: 1\r\n"+body[:size]))
	}
}

// testRawShortBody: a body that ends before Size bytes (a broken
// connection) fails the commit: nothing is stored or indexed.
func testRawShortBody(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	for i, size := range []int{100, 2 << 20} {
		id := fmt.Sprintf("short%d@cand.test", i)
		raw := &store.Raw{Body: strings.NewReader(pattern(size/2, "short")), Size: int64(size)}
		if _, err := e.b.CommitInbound(e.ctx, reply(th.ID, id, "", raw)); err == nil {
			e.fatalf("commit of a %d-byte message with half its body succeeded", size)
		}
		if _, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, id); ok {
			e.fatalf("a failed commit was indexed")
		}
	}
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != 1 {
		e.fatalf("thread has %d messages, want only the sent one", len(msgs))
	}
	// The store keeps working.
	res := e.commit(reply(th.ID, "ok@cand.test", "", rawOf("", "fine\r\n")))
	e.mustRaw(e.b, e.message(tenantID, res.Ref.Message).Raw, []byte("fine\r\n"))
}

func testRawUnknownLocator(e *env) {
	for _, loc := range []string{"", "nonsense", "../../etc/passwd", strings.Repeat("0", 64)} {
		if f, err := e.b.OpenRaw(e.ctx, loc); !errors.Is(err, store.ErrNotFound) {
			if f != nil {
				f.Close()
			}
			e.fatalf("OpenRaw(%q) = %v, want ErrNotFound", loc, err)
		}
	}
}
