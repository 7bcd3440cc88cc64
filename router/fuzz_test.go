package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// FuzzRoute runs arbitrary bytes through the whole pipeline (header parse,
// matching, DSN walk, DKIM, commit). It must never panic or error, and every
// outcome must be a decision with a coherent reply code.
func FuzzRoute(f *testing.F) {
	e := newEnv(f, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	ref := "<" + sent.InternetMessageID + ">"
	f.Add([]byte(crlf(reply("carl@cand.test", "z1@cand.test", ref, ""))))
	f.Add([]byte(crlf(e.sign("cand.test", reply("carl@cand.test", "z2@cand.test", ref, "")))))
	f.Add([]byte(crlf("From: x\nReferences: " + ref + "\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: " + ref + "\n--b--\n")))
	f.Add([]byte("Subject: =?iso-8859-1?q?caf=E9?=\r\nFrom: \"a\" <@>\r\n\r\n"))
	f.Add([]byte(strings.Repeat("X: y\r\n", 50)))
	codes := map[string]func(int) bool{
		Stored: is250, Duplicate: is250, Discarded: is250, Quarantined: is250,
		Rejected: func(c int) bool { return c/100 == 5 },
		Tempfail: func(c int) bool { return c/100 == 4 },
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, err := e.routeIn(context.Background(), Input{Tenant: "acme", Body: memBody(raw)})
		if err != nil {
			t.Fatalf("error on input %q: %v", raw, err)
		}
		ok, known := codes[out.Decision]
		if !known || !ok(out.Code) || out.Enhanced[0] != out.Code/100 {
			t.Fatalf("incoherent outcome %+v for %q", out, raw)
		}
	})
}

func is250(c int) bool { return c == 250 }

// BenchmarkRouteDiscard: header parse and matching of unrelated mail.
func BenchmarkRouteDiscard(b *testing.B) {
	e := newEnv(b, "google")
	e.sent("acme", "c-1", "u-rec", 0)
	raw := memBody(crlf(e.sign("cand.test", "From: a@cand.test\nTo: rec@acme.test\nSubject: hi\nMessage-ID: <n@cand.test>\nReferences: <a@b> <c@d>\n\n"+strings.Repeat("body line\n", 400))))
	b.ReportAllocs()
	for b.Loop() {
		if out, _ := e.r.Route(context.Background(), Input{Tenant: "acme", Body: raw}); out.Decision != Discarded {
			b.Fatal(out)
		}
	}
}

// BenchmarkRouteStored: a matching reply, DKIM with a cached key, match,
// raw file and group commit (one fsynced transaction per message here,
// since there is no concurrency).
func BenchmarkRouteStored(b *testing.B) {
	e := newEnv(b, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	ref := "<" + sent.InternetMessageID + ">"
	body := strings.Repeat("body line\n", 400)
	const pool = 64
	msgs := make([]memBody, pool)
	for i := range msgs {
		msgs[i] = memBody(crlf(e.sign("cand.test", fmt.Sprintf("From: carl@cand.test\nTo: rec@acme.test\nSubject: Re\nMessage-ID: <b%d@cand.test>\nReferences: %s\n\n%s", i, ref, body))))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// After the pool is used up the same ids come again as duplicates:
		// still DKIM + match + a commit that adds the mailbox.
		out, _ := e.r.Route(context.Background(), Input{Tenant: "acme", Body: msgs[i%pool]})
		if out.Decision != Stored && out.Decision != Duplicate {
			b.Fatal(out)
		}
		i++
	}
}
