// Package fault injects storage and DNS faults into a running syncrelay and
// checks SPEC §4/§12: every affected message gets a 4xx (never a 5xx, never
// a 250 without a commit), and the daemon serves normally once the fault
// clears.
//
//   - TestDiskFullTmpfs: the real binary on a small tmpfs filled up (root
//     only, skipped otherwise);
//   - TestStoreFaults: the real daemon (daemon.Run, in this process) with
//     bbolt's file descriptor swapped for /dev/full (writes fail ENOSPC) and
//     for /dev/null (writes vanish, fdatasync fails), and with the raw
//     directory made unusable;
//   - TestInjectedWriter: the router over a store whose raw writer fails
//     part-way with ENOSPC or whose fsync fails with EIO, and a commit whose
//     result is lost after it succeeded;
//   - TestDNSFailures: the real binary against a loopback DNS server that
//     answers SERVFAIL, then too slowly.
package fault

import (
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/internal/testenv"
)

var bins *testenv.Bins

func TestMain(m *testing.M) {
	// The four tests run in parallel, all at once: TestDNSFailures mostly
	// waits (a 1 s DNS timeout), and with go's default of GOMAXPROCS (2
	// here) it could start only when another test ended.
	testenv.DefaultParallel(4)
	os.Exit(testenv.Main(m, &bins, "syncrelay", "srload"))
}

// sent is one transaction and its reply.
type sent struct {
	msg   loadgen.Message
	reply loadgen.Reply
	err   error // connection-level failure (no reply to ".")
}

// client sends generated messages, one connection each (a fault may close
// a connection; nothing is shared between transactions).
type client struct {
	t    testing.TB
	addr string
	man  *loadgen.Manifest
	gen  *loadgen.Generator
}

func newClient(t testing.TB, addr string, man *loadgen.Manifest, size int) *client {
	t.Helper()
	gen, err := loadgen.NewGenerator(loadgen.GeneratorOptions{Manifest: man, BodySize: size})
	if err != nil {
		t.Fatal(err)
	}
	return &client{t: t, addr: addr, man: man, gen: gen}
}

// seqs numbers each test's messages, the seeds of their randomness: one
// counter per test (the tests run in parallel), shared by its clients so
// that no two of its messages are the same.
var seqs sync.Map // test name -> *atomic.Uint64

func randFor(s uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(s, 1)) }

func (c *client) next(k loadgen.Kind) loadgen.Message {
	seq, _ := seqs.LoadOrStore(c.t.Name(), new(atomic.Uint64))
	return c.gen.Next(k, randFor(seq.(*atomic.Uint64).Add(1)))
}

func (c *client) send(m loadgen.Message) sent {
	c.t.Helper()
	cl, err := loadgen.Dial(c.addr, "fault.test", 30*time.Second)
	if err != nil {
		return sent{msg: m, err: err}
	}
	defer cl.Quit()
	rep, _, err := cl.Send(c.man.CandidateEmail, c.man.Inbound, &m)
	if re, ok := err.(*loadgen.ReplyError); ok {
		return sent{msg: m, reply: re.Reply}
	}
	if err == nil && rep.Code == 250 {
		c.gen.Accepted(&m)
	}
	return sent{msg: m, reply: rep, err: err}
}

// sendN sends n new messages of kind k.
func (c *client) sendN(n int, k loadgen.Kind) []sent {
	out := make([]sent, n)
	for i := range out {
		out[i] = c.send(c.next(k))
	}
	return out
}

// sendNAtOnce sends n new messages of kind k, each on its own connection
// at the same time (for faults that make each wait: a DNS timeout).
func (c *client) sendNAtOnce(n int, k loadgen.Kind) []sent {
	out := make([]sent, n)
	var wg sync.WaitGroup
	for i := range out {
		m := c.next(k)
		wg.Go(func() { out[i] = c.send(m) })
	}
	wg.Wait()
	return out
}

// resend sends the same messages again, as a forwarding MTA retries after
// a 4xx.
func (c *client) resend(ss []sent) []sent {
	out := make([]sent, len(ss))
	for i, s := range ss {
		out[i] = c.send(s.msg)
	}
	return out
}

// ledger keeps what the server acknowledged, to check against the store.
type ledger map[string]testenv.Reply

func (l ledger) add(ss []sent) {
	for _, s := range ss {
		if s.err == nil && s.reply.Code == 250 && s.msg.Kind != loadgen.Unrelated {
			if prev, ok := l[s.msg.MessageID]; !ok || prev.Kind != "match" {
				l[s.msg.MessageID] = testenv.Reply{Code: 250, MsgID: s.msg.MessageID, Kind: s.msg.Kind.String(),
					Thread: s.msg.Thread, Text: s.reply.Text}
			}
		}
	}
}

func codes(ss []sent) string {
	m := map[string]int{}
	for _, s := range ss {
		k := fmt.Sprint(s.reply.Code)
		if s.err != nil {
			k = "error"
		}
		m[k]++
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s×%d ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// expectTempfail checks that every transaction got a 4xx: no 5xx, no 250,
// no connection dropped without a reply.
func expectTempfail(t testing.TB, what string, ss []sent) {
	t.Helper()
	for _, s := range ss {
		switch {
		case s.err != nil:
			t.Errorf("%s: %s: no reply: %v", what, s.msg.MessageID, s.err)
		case s.reply.Code/100 != 4:
			t.Errorf("%s: %s: got %v, want a 4xx", what, s.msg.MessageID, s.reply)
		}
	}
	t.Logf("%s: %s", what, codes(ss))
}

// expectOK checks that every transaction got a 250 whose text names one of
// the decisions.
func expectOK(t testing.TB, what string, ss []sent, decisions ...string) {
	t.Helper()
	for _, s := range ss {
		if s.err != nil || s.reply.Code != 250 {
			t.Errorf("%s: %s: got %v %v, want 250", what, s.msg.MessageID, s.reply, s.err)
			continue
		}
		ok := false
		for _, d := range decisions {
			ok = ok || strings.HasSuffix(s.reply.Text, "OK: "+d) || strings.Contains(s.reply.Text, "OK: "+d+" (reason=")
		}
		if !ok {
			t.Errorf("%s: %s: got %q, want one of %v", what, s.msg.MessageID, s.reply.Text, decisions)
		}
	}
	t.Logf("%s: %s", what, codes(ss))
}

// notStored checks that none of ss is in the store (a tempfail commits nothing).
func notStored(t testing.TB, lookup func(id string) bool, what string, ss []sent) {
	t.Helper()
	for _, s := range ss {
		if lookup(s.msg.MessageID) {
			t.Errorf("%s: %s was answered %v but is in the store", what, s.msg.MessageID, s.reply)
		}
	}
}
