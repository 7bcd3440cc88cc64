package postgres

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"syncrelay/internal/pgtest"
	"syncrelay/store"
)

// BenchmarkCommitInbound: 20 concurrent sessions each reading the thread
// and committing a new 4 KiB reply, on 64 threads (as bench/run.sh's c
// scenario asks of the store), through one node or spread over two nodes
// on the same database. ops/s of nodes=2 against nodes=1 is the store's
// part of "two nodes are not slower than one".
func BenchmarkCommitInbound(b *testing.B) {
	for _, nodes := range []int{1, 2} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) { benchCommit(b, nodes) })
	}
}

func benchCommit(b *testing.B, nodes int) {
	dsn := pgtest.DSN(b)
	ctx := context.Background()
	var ss []*Store
	var stmts atomic.Int64
	for i := range nodes {
		s, err := Open(ctx, dsn, Options{Node: fmt.Sprintf("n%d", i), trace: func(context.Context, string) { stmts.Add(1) }})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		ss = append(ss, s)
	}
	s := ss[0]
	if err := s.CreateTenant(ctx, &store.Tenant{ID: "acme", Domains: []string{"acme.test"}, InboundAddress: "acme-x@relay.test"}); err != nil {
		b.Fatal(err)
	}
	if err := s.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}); err != nil {
		b.Fatal(err)
	}
	var threads []uint64
	for range 64 {
		th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u"}
		m := store.Message{SentBy: "u"}
		if err := s.CreateOutbound(ctx, &th, &m, func(t, msg uint64) (string, string) { return fmt.Sprintf("sr.%d.%d@relay.test", t, msg), "" }); err != nil {
			b.Fatal(err)
		}
		threads = append(threads, th.ID)
	}
	// A real reply from the test corpus (5 KiB; lz4 stores 59 %): a
	// repeated filler would compress to nothing and flatter 0006.
	reply, err := os.ReadFile("../../testdata/corpus/02-outlook-desktop-reply.eml")
	if err != nil {
		b.Fatal(err)
	}
	body := string(reply)
	var n, sess atomic.Int64
	b.SetParallelism(10)
	b.SetBytes(int64(len(body)))
	if os.Getenv("SRB_NOTRIG") != "" { // experiment: the notify triggers' cost
		for _, tb := range []string{"msgids", "thread_copies"} {
			if _, err := s.pool.Exec(ctx, "ALTER TABLE "+tb+" DISABLE TRIGGER USER"); err != nil {
				b.Fatal(err)
			}
		}
	}
	stats0 := make([]store.CommitStats, len(ss))
	for i, s := range ss {
		stats0[i] = s.CommitStats()
	}
	stmts.Store(0)
	pgCPU0, goCPU0 := serverCPU(b, ss[0]), selfCPU()
	var lsn0 string
	if err := s.pool.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		st := ss[int(sess.Add(1))%len(ss)]
		for pb.Next() {
			i := n.Add(1)
			thread := threads[i%int64(len(threads))]
			if _, err := st.Thread(ctx, "acme", thread); err != nil {
				b.Error(err)
				return
			}
			_, err := st.CommitInbound(ctx, &store.Incoming{
				Message: store.Message{Tenant: "acme", Thread: thread, Direction: store.Inbound, InternetMessageID: fmt.Sprintf("bench%d@cand.test", i),
					From: "carl@cand.test", Subject: "Re: hello"},
				Raw:   &store.Raw{Head: []byte("Authentication-Results: relay.test; dkim=pass\r\n"), Body: strings.NewReader(body), Size: int64(len(body))},
				Event: map[string]any{"direction": "inbound", "auto_reply": false, "notify_users": []string{"u"}},
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.StopTimer()
	b.ReportMetric(float64((serverCPU(b, ss[0])-pgCPU0).Microseconds())/float64(b.N), "pg-cpu-us/op")
	b.ReportMetric(float64((selfCPU()-goCPU0).Microseconds())/float64(b.N), "go-cpu-us/op")
	b.ReportMetric(float64(stmts.Load())/float64(b.N), "stmts/op")
	var wal float64
	if err := s.pool.QueryRow(ctx, "SELECT pg_current_wal_lsn() - $1::text::pg_lsn", lsn0).Scan(&wal); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(wal/float64(b.N)/1024, "wal-KiB/op")
	var batches, batched int64
	for i, s := range ss {
		st := s.CommitStats()
		batches += st.Batches - stats0[i].Batches
		batched += st.Requests - stats0[i].Requests
	}
	b.ReportMetric(float64(batched)/float64(max(batches, 1)), "reqs/batch")
}

// serverCPU is the CPU time used so far by the database server's
// processes (its postmaster and every child), from /proc.
func serverCPU(b *testing.B, s *Store) time.Duration {
	var dir string
	if err := s.pool.QueryRow(context.Background(), "SHOW data_directory").Scan(&dir); err != nil {
		b.Fatal(err)
	}
	pidb, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		b.Skip("no postmaster.pid: ", err)
	}
	pm := strings.SplitN(string(pidb), "\n", 2)[0]
	var ticks int64
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces): state ppid ...
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
		if len(f) < 15 || (e.Name() != pm && f[1] != pm) {
			continue
		}
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ = 100
}

// selfCPU is this process's CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
