package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The page accounting of a commit batch: which bbolt pages an inbound
// batch dirties, by bucket. bbolt is copy-on-write, so a page a commit
// dirtied has an id that was not in the tree before it: the difference of
// the tree's page sets before and after a batch is exactly what it wrote
// (plus one meta page per commit).

// treePages reads a bbolt file and returns, for each bucket path
// ("" for the root bucket's own pages), the ids of its pages (branch,
// leaf and their overflow pages).
func treePages(t testing.TB, path string) map[string]map[uint64]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const hdr = 16
	psz := int(binary.LittleEndian.Uint32(data[hdr+8:]))
	// The meta page with the higher txid is current.
	var root uint64
	var best uint64
	for i := range 2 {
		m := data[i*psz+hdr:]
		if txid := binary.LittleEndian.Uint64(m[48:]); i == 0 || txid > best {
			best, root = txid, binary.LittleEndian.Uint64(m[16:])
		}
	}
	out := map[string]map[uint64]bool{}
	var walk func(name string, id uint64)
	var leaf func(name string, p []byte)
	leaf = func(name string, p []byte) {
		count := int(binary.LittleEndian.Uint16(p[10:]))
		for i := range count {
			e := p[hdr+i*16:]
			flags, pos := binary.LittleEndian.Uint32(e), int(binary.LittleEndian.Uint32(e[4:]))
			ks, vs := int(binary.LittleEndian.Uint32(e[8:])), int(binary.LittleEndian.Uint32(e[12:]))
			if flags&1 == 0 {
				continue
			}
			k := string(e[pos : pos+ks])
			v := e[pos+ks : pos+ks+vs]
			child := k
			if name != "" {
				child = name + "/" + k
			}
			if sub := binary.LittleEndian.Uint64(v); sub != 0 {
				walk(child, sub)
			} else {
				leaf(child, v[16:]) // inline bucket: lives in its parent's page
			}
		}
	}
	walk = func(name string, id uint64) {
		p := data[int(id)*psz:]
		if out[name] == nil {
			out[name] = map[uint64]bool{}
		}
		over := binary.LittleEndian.Uint32(p[12:])
		for i := range uint64(over) + 1 {
			out[name][id+i] = true
		}
		flags := binary.LittleEndian.Uint16(p[8:])
		count := int(binary.LittleEndian.Uint16(p[10:]))
		switch {
		case flags&0x01 != 0: // branch
			for i := range count {
				walk(name, binary.LittleEndian.Uint64(p[hdr+i*16+8:]))
			}
		case flags&0x02 != 0:
			leaf(name, p)
		}
	}
	walk("", root)
	return out
}

// TestPageAccounting prints the pages an inbound batch of B messages on
// 64 threads dirties, by bucket. A diagnostic: SYNCRELAY_PAGES=1 runs it.
func TestPageAccounting(t *testing.T) {
	t.Parallel()
	if os.Getenv("SYNCRELAY_PAGES") == "" {
		t.Skip("diagnostic; SYNCRELAY_PAGES=1 runs it")
	}
	s, threads := benchStore(t)
	defer s.Close()
	commit := benchCommit(s, threads)
	path := filepath.Join(s.Dir(), "syncrelay.db")
	var next int64
	// startCommits commits the next n messages, each from its own goroutine.
	startCommits := func(n int) *sync.WaitGroup {
		var wg sync.WaitGroup
		for range n {
			next++
			wg.Add(1)
			go func(i int64) {
				defer wg.Done()
				if err := commit(i); err != nil {
					t.Error(err)
				}
			}(next)
		}
		return &wg
	}
	for _, pre := range []int{0, 20000} {
		for next < int64(pre) {
			startCommits(200).Wait()
		}
		for _, B := range []int{1, 4, 8, 16, 32} {
			sum := map[string]int{}
			const rounds = 20
			for range rounds {
				before := treePages(t, path)
				release := make(chan struct{})
				held := make(chan struct{})
				go func() {
					_ = s.group(context.Background(), func(*bolt.Tx) error { close(held); <-release; return nil })
				}()
				<-held
				wg := startCommits(B)
				time.Sleep(20 * time.Millisecond) // all B queued behind the held batch
				close(release)
				wg.Wait()
				after := treePages(t, path)
				for name, ids := range after {
					for id := range ids {
						if !before[name][id] {
							sum[name]++
						}
					}
				}
			}
			var names []string
			total := 0
			for n, c := range sum {
				names = append(names, n)
				total += c
			}
			slices.Sort(names)
			var b strings.Builder
			for _, n := range names {
				fmt.Fprintf(&b, " %s=%.1f", n, float64(sum[n])/rounds)
			}
			t.Logf("stored %d, batch %d: %.1f pages + 1 meta per batch = %.2f KiB/msg of bbolt;%s",
				pre, B, float64(total)/rounds, (float64(total)/rounds+1)*4/float64(B), b.String())
		}
	}
}

// TestOpenMergesSplitRoot: a store whose root bucket split while its
// buckets grew (64 threads started) has a one-page root after it is
// reopened, so that a commit rewrites one root page, not three.
func TestOpenMergesSplitRoot(t *testing.T) {
	t.Parallel()
	s, threads := benchSetup(t)
	commit := benchCommit(s, threads)
	for i := range int64(50) {
		if err := commit(i); err != nil {
			t.Fatal(err)
		}
	}
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "syncrelay.db")
	if n := len(treePages(t, path)[""]); n < 2 {
		t.Fatalf("the setup no longer splits the root (%d page): the test checks nothing", n)
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(treePages(t, path)[""]); n != 1 {
		t.Errorf("root bucket has %d pages after Open, want 1", n)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Thread(context.Background(), "acme", 1); err != nil {
		t.Errorf("after the merge: %v", err)
	}
}
