package bolt

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkCommitInbound: concurrent sessions committing new 4 KiB
// messages (segment append, group commit with one fdatasync per batch).
func BenchmarkCommitInbound(b *testing.B) {
	s, commit := commitBench(b)
	defer s.Close()
	var n atomic.Int64
	b.SetParallelism(10) // 20 committers on 2 CPUs, as bench/run.sh's 20 sessions
	b.SetBytes(4002)
	wb0 := writeBytes(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := commit(n.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(writeBytes(b)-wb0)/float64(b.N)/1024, "KiB-written/op")
}

// BenchmarkCommitInboundPaced: 20 sessions each committing a 4 KiB message
// every 20 ms (about half of what this disk commits when saturated), as
// bench/run.sh's c½ scenario: the latency of a commit when the loop is
// not saturated, p50 and p99.
func BenchmarkCommitInboundPaced(b *testing.B) {
	s, commit := commitBench(b)
	defer s.Close()
	const sessions, gap = 20, 20 * time.Millisecond
	var n atomic.Int64
	lat := make([][]time.Duration, sessions)
	var wg sync.WaitGroup
	wb0 := writeBytes(b)
	b.ResetTimer()
	for g := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(gap * time.Duration(g) / sessions)
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := commit(i); err != nil {
					b.Error(err)
					return
				}
				d := time.Since(t0)
				lat[g] = append(lat[g], d)
				time.Sleep(gap - d%gap)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(writeBytes(b)-wb0)/float64(b.N)/1024, "KiB-written/op")
}

// commitBench opens a store with a tenant and 64 threads, and returns a
// function committing the i-th new 4 KiB message.
func commitBench(b testing.TB) (*Store, func(i int64) error) {
	s, threads := benchStore(b)
	return s, benchCommit(s, threads)
}

// benchStore opens a store with a tenant and 64 threads, made by
// benchSetup and opened again, as the daemon opens the store srload
// prepared.
func benchStore(b testing.TB) (*Store, []uint64) {
	s, threads := benchSetup(b)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	s, err := Open(s.Dir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	return s, threads
}

// benchSetup creates a store with a tenant and 64 threads.
func benchSetup(b testing.TB) (*Store, []uint64) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := s.CreateTenant(ctx, &Tenant{ID: "acme", Domains: []string{"acme.test"}, InboundAddress: "acme-x@relay.test"}); err != nil {
		b.Fatal(err)
	}
	if err := s.CreateCandidate(ctx, &Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}); err != nil {
		b.Fatal(err)
	}
	var threads []uint64
	for range 64 {
		th := Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u"}
		m := Message{SentBy: "u"}
		if err := s.CreateOutbound(ctx, &th, &m, func(t, msg uint64) (string, string) { return fmt.Sprintf("sr.%d.%d@relay.test", t, msg), "" }); err != nil {
			b.Fatal(err)
		}
		threads = append(threads, th.ID)
	}
	return s, threads
}

// benchCommit returns a function committing the i-th new 4 KiB message
// to s on one of threads.
func benchCommit(s *Store, threads []uint64) func(i int64) error {
	ctx := context.Background()
	body := strings.Repeat("x", 4000) + "\r\n"
	return func(i int64) error {
		id := fmt.Sprintf("bench%d@cand.test", i)
		_, err := s.CommitInbound(ctx, &Incoming{
			Message: Message{Tenant: "acme", Thread: threads[i%int64(len(threads))], Direction: Inbound, InternetMessageID: id,
				From: "carl@cand.test", Subject: "Re: hello"},
			Raw:   &Raw{Head: []byte("Authentication-Results: relay.test; dkim=pass\r\n"), Body: strings.NewReader(body), Size: int64(len(body))},
			Event: map[string]any{"direction": "inbound", "auto_reply": false, "notify_users": []string{"u"}},
		})
		return err
	}
}

// writeBytes is what this process caused to be written to storage so far
// (/proc/self/io write_bytes).
func writeBytes(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io")
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkRawPlacement compares the two layouts SPEC §11 allows for small
// messages, on the same group commit and the same record: the raw bytes as
// a bbolt value in the transaction ("inline"), or appended to the segment
// log and flushed once per batch before it ("segment", what the store
// does). The record and index puts are the same in both.
func BenchmarkRawPlacement(b *testing.B) {
	body := []byte(strings.Repeat("x", 4094) + "\r\n")
	rec := []byte(strings.Repeat(`{"field":"value"},`, 30))
	for _, layout := range []string{"inline", "segment"} {
		b.Run(layout, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			inline := []byte("bench_inline")
			if err := s.db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(inline); return err }); err != nil {
				b.Fatal(err)
			}
			var n atomic.Uint64
			b.SetParallelism(10)
			b.SetBytes(int64(len(body)))
			wb0 := writeBytes(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := n.Add(1)
					var loc string
					if layout == "segment" {
						var err error
						if loc, err = s.segs.append(nil, bytes.NewReader(body), int64(len(body))); err != nil {
							b.Error(err)
							return
						}
					}
					err := s.group(ctx, func(tx *bolt.Tx) error {
						k := keyU64("bench", id)
						if layout == "inline" {
							if err := tx.Bucket(inline).Put(k, body); err != nil {
								return err
							}
						} else if err := linkRaw(tx, loc, ownerKey(ownerMessage, "bench", id)); err != nil {
							return err
						}
						return tx.Bucket(bMessages).Put(k, rec)
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(writeBytes(b)-wb0)/float64(b.N)/1024, "KiB-written/op")
		})
	}
}
