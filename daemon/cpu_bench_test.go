package daemon

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

// BenchmarkPipelineCPU drives the full pipeline (DKIM-signed 4 KiB replies
// to a known thread, every one stored) from 20 concurrent sessions, as
// bench/run.sh's scenario c does, and reports the process's CPU time (user
// + system, from getrusage) per stored message. Unlike msgs/s, CPU per
// message hardly moves with the load of a shared machine, so it is the
// number to compare a change by. It includes the in-process go-smtp
// client's CPU, which no server change touches. Every message is unique
// (a repeated Message-ID would take the duplicate path).
//
//	go test -run '^$' -bench PipelineCPU -benchtime 3000x ./daemon
func BenchmarkPipelineCPU(b *testing.B) { pipelineCPU(b, true) }

// BenchmarkDiscardCPU is BenchmarkPipelineCPU's workload as scenario b
// sends it: the same signed 4 KiB messages, referencing nothing known, all
// discarded.
func BenchmarkDiscardCPU(b *testing.B) { pipelineCPU(b, false) }

// pipelineCPU sends b.N replies to a known thread (matching) or unrelated
// mail (not) from 20 sessions and reports the CPU per message.
func pipelineCPU(b *testing.B, matching bool) {
	const sessions = 20
	body := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 64)
	f := startFixture(b)
	defer f.stop()
	refs, want := f.refs, "stored"
	if !matching {
		refs, want = "<lunch.friday@cand.test>", "discarded"
	}
	// One signature for all: Message-ID is left out of the signed header
	// fields and prepended to each copy, so every message is unique and
	// verifies, and the setup does not sign b.N times (that would swamp
	// an instruction count of the run, valgrind --tool=callgrind).
	signer := *f.signer
	signer.HeaderKeys = []string{"From", "To", "Subject", "References"}
	var signed bytes.Buffer
	raw := fmt.Sprintf("From: carl@cand.test\r\nTo: rec@acme.test\r\nSubject: Re: hello\r\nReferences: %s\r\n\r\n%s", refs, body)
	mustT(b, dkim.Sign(&signed, strings.NewReader(raw), &signer))
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i] = append([]byte(fmt.Sprintf("Message-ID: <cpu%d.%d@cand.test>\r\n", time.Now().UnixNano(), i)), signed.Bytes()...)
	}
	conns := make([]*smtp.Client, sessions)
	for i := range conns {
		c, err := smtp.Dial(f.smtpAddr)
		mustT(b, err)
		defer c.Close()
		mustT(b, c.Hello("bench.test"))
		conns[i] = c
	}
	var next atomic.Int64
	lat := make([][]time.Duration, sessions)
	errs := make(chan error, sessions)
	var wg sync.WaitGroup
	cpu0 := cpuTime(b)
	b.ResetTimer()
	start := time.Now()
	for s := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[s]
			for {
				i := next.Add(1) - 1
				if i >= int64(len(msgs)) {
					return
				}
				if err := c.Mail("fwd@acme.test", nil); err != nil {
					errs <- err
					return
				}
				if err := c.Rcpt(f.inbound, nil); err != nil {
					errs <- err
					return
				}
				w, err := c.Data()
				if err != nil {
					errs <- err
					return
				}
				w.Write(msgs[i])
				t0 := time.Now()
				resp, err := w.CloseWithResponse()
				if err != nil {
					errs <- err
					return
				}
				if !strings.Contains(resp.StatusText, want) {
					errs <- fmt.Errorf("message %d not %s: %q", i, want, resp.StatusText)
					return
				}
				lat[s] = append(lat[s], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
}

// cpuTime is the process's user + system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
