package postgres

import (
	"hash/maphash"
	"math/bits"
	"sync/atomic"
)

// keyFilter is a Bloom filter of the (tenant, key) pairs the database
// knows: every Message-ID in msgids and every duplicate key in
// thread_copies. It answers "certainly unknown" without a round trip, so
// mail that references nothing syncrelay knows (the discard path) and a
// new message's duplicate check cost no query. It never forgets a key
// (rows are only ever added; a removed row is a harmless false positive);
// a "maybe" asks the database as before.
//
// It is complete only while the listener is connected: keys reach it from
// these sides, none of which may be missed:
//   - the initial load (SELECT of both tables), started after LISTEN;
//   - NOTIFY from the nodes that insert rows later, sent right after
//     their commit (keys.go), and the listener's catch-up from key_log
//     every keyCatchUp for a notice that was never sent;
//   - this node's own writes, added before their commit is sent, so that a
//     lookup on this node after its own commit never waits for the notice.
type keyFilter struct {
	seed  maphash.Seed
	words []atomic.Uint64
	mask  uint64 // len(words)*64 - 1; the size is a power of two
	cap   int64  // keys it was sized for
	n     atomic.Int64
}

// filterK is the number of probes: with 16 bits per key the false
// positive rate stays near 0.05 % up to cap keys.
const (
	filterK       = 11
	filterBitsPer = 16
	minFilterCap  = 1 << 16
)

func newKeyFilter(capacity int64) *keyFilter {
	capacity = max(capacity, minFilterCap)
	nbits := uint64(1) << bits.Len64(uint64(capacity*filterBitsPer-1))
	return &keyFilter{seed: maphash.MakeSeed(), words: make([]atomic.Uint64, nbits/64), mask: nbits - 1, cap: capacity}
}

// hashes returns the two base hashes of double hashing (Kirsch-Mitzenmacher).
func (f *keyFilter) hashes(tenant, key string) (uint64, uint64) {
	var h maphash.Hash
	h.SetSeed(f.seed)
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(key)
	a := h.Sum64()
	b := a>>33 | a<<31
	b ^= b * 0x9e3779b97f4a7c15
	return a, b | 1
}

func (f *keyFilter) add(tenant, key string) {
	a, b := f.hashes(tenant, key)
	for i := range uint64(filterK) {
		bit := (a + i*b) & f.mask
		f.words[bit>>6].Or(1 << (bit & 63))
	}
	f.n.Add(1)
}

// mayContain is false only for a key never added.
func (f *keyFilter) mayContain(tenant, key string) bool {
	a, b := f.hashes(tenant, key)
	for i := range uint64(filterK) {
		bit := (a + i*b) & f.mask
		if f.words[bit>>6].Load()&(1<<(bit&63)) == 0 {
			return false
		}
	}
	return true
}

// full reports that the filter holds more keys than it was sized for (its
// false positive rate grows; it is rebuilt larger).
func (f *keyFilter) full() bool { return f.n.Load() > f.cap }
