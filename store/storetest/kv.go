package storetest

import (
	"errors"
	"time"

	"syncrelay/store"
)

var kvTests = []test{
	{"PutGetDelete", testKVPutGetDelete},
	{"CreateOnce", testKVCreateOnce},
	{"TakeOnce", testKVTakeOnce},
	{"Expiry", testKVExpiry},
	{"ConcurrentCreate", testKVConcurrentCreate},
	{"ConcurrentTake", testKVConcurrentTake},
	{"ReserveSlot", testReserveSlot},
}

type kvRecord struct {
	Provider string    `json:"provider"`
	N        int       `json:"n"`
	At       time.Time `json:"at"`
}

func testKVPutGetDelete(e *env) {
	var v kvRecord
	if err := e.b.GetKV(e.ctx, "ns/a", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("GetKV(absent) = %v, want ErrNotFound", err)
	}
	in := kvRecord{Provider: "google", N: 7, At: e.now()}
	e.must(e.b.PutKV(e.ctx, "ns/a", in, time.Hour), "PutKV")
	e.must(e.b.GetKV(e.ctx, "ns/a", &v), "GetKV")
	if v.Provider != "google" || v.N != 7 || !v.At.Equal(in.At) {
		e.fatalf("GetKV = %+v, want %+v", v, in)
	}
	// PutKV replaces; keys are apart (a prefix is not the key).
	e.must(e.b.PutKV(e.ctx, "ns/a", kvRecord{N: 8}, 0), "PutKV again")
	e.must(e.b.PutKV(e.ctx, "ns/ab", kvRecord{N: 9}, 0), "PutKV other key")
	e.must(e.b.GetKV(e.ctx, "ns/a", &v), "GetKV")
	if v.N != 8 {
		e.fatalf("PutKV did not replace: %+v", v)
	}
	e.must(e.b.DeleteKV(e.ctx, "ns/a"), "DeleteKV")
	if err := e.b.GetKV(e.ctx, "ns/a", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("GetKV after DeleteKV = %v", err)
	}
	e.must(e.b.DeleteKV(e.ctx, "ns/a"), "DeleteKV of an absent key")
	e.must(e.b.GetKV(e.ctx, "ns/ab", &v), "GetKV of the neighbour")
}

// testKVCreateOnce: CreateKV is "first request wins" (idempotency keys,
// OAuth state): a second CreateKV of a live key is ErrExists and leaves
// the first value.
func testKVCreateOnce(e *env) {
	e.must(e.b.CreateKV(e.ctx, "idem/acme/k1", kvRecord{N: 1}, time.Hour), "CreateKV")
	if err := e.b.CreateKV(e.ctx, "idem/acme/k1", kvRecord{N: 2}, time.Hour); !errors.Is(err, store.ErrExists) {
		e.fatalf("second CreateKV = %v, want ErrExists", err)
	}
	var v kvRecord
	e.must(e.b.GetKV(e.ctx, "idem/acme/k1", &v), "GetKV")
	if v.N != 1 {
		e.fatalf("second CreateKV overwrote: %+v", v)
	}
	// The API records the outcome over its claim (PutKV); the key stays
	// claimed, and readers see the outcome.
	e.must(e.b.PutKV(e.ctx, "idem/acme/k1", kvRecord{N: 4}, time.Hour), "PutKV outcome")
	if err := e.b.CreateKV(e.ctx, "idem/acme/k1", kvRecord{N: 5}, time.Hour); !errors.Is(err, store.ErrExists) {
		e.fatalf("CreateKV over a recorded outcome = %v, want ErrExists", err)
	}
	e.must(e.b.GetKV(e.ctx, "idem/acme/k1", &v), "GetKV")
	if v.N != 4 {
		e.fatalf("outcome = %+v", v)
	}
	// Released (the request failed): the key can be claimed again.
	e.must(e.b.DeleteKV(e.ctx, "idem/acme/k1"), "DeleteKV")
	e.must(e.b.CreateKV(e.ctx, "idem/acme/k1", kvRecord{N: 3}, time.Hour), "CreateKV after release")
}

// testKVTakeOnce: TakeKV reads and removes in one durable step: an OAuth
// state is good for one callback only.
func testKVTakeOnce(e *env) {
	e.must(e.b.CreateKV(e.ctx, "oauth_state/n1", kvRecord{Provider: "google"}, 10*time.Minute), "CreateKV")
	var v kvRecord
	e.must(e.b.TakeKV(e.ctx, "oauth_state/n1", &v), "TakeKV")
	if v.Provider != "google" {
		e.fatalf("TakeKV = %+v", v)
	}
	if err := e.b.TakeKV(e.ctx, "oauth_state/n1", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("second TakeKV = %v, want ErrNotFound", err)
	}
	if err := e.b.GetKV(e.ctx, "oauth_state/n1", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("GetKV after TakeKV = %v, want ErrNotFound", err)
	}
	if err := e.b.TakeKV(e.ctx, "oauth_state/never", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("TakeKV(absent) = %v, want ErrNotFound", err)
	}
}

// testKVExpiry: an entry past its TTL is gone for every reader, can be
// created again, and PurgeExpiredKV removes it; TTL 0 never expires.
func testKVExpiry(e *env) {
	ttl := time.Minute
	if e.f.RealClock {
		ttl = 20 * time.Millisecond
	}
	e.must(e.b.CreateKV(e.ctx, "t/short", 1, ttl), "CreateKV short")
	e.must(e.b.CreateKV(e.ctx, "t/take", 1, ttl), "CreateKV take")
	e.must(e.b.PutKV(e.ctx, "t/forever", 1, 0), "PutKV forever")
	e.must(e.b.PutKV(e.ctx, "t/long", 1, 1000*ttl), "PutKV long")
	if n, err := e.b.PurgeExpiredKV(e.ctx); err != nil || n != 0 {
		e.fatalf("early PurgeExpiredKV = %d %v", n, err)
	}
	e.advance(ttl + ttl/2)
	var n int
	for _, k := range []string{"t/short", "t/take"} {
		if err := e.b.GetKV(e.ctx, k, &n); !errors.Is(err, store.ErrNotFound) {
			e.fatalf("GetKV(%s, expired) = %v, want ErrNotFound", k, err)
		}
	}
	if err := e.b.TakeKV(e.ctx, "t/take", &n); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("TakeKV(expired) = %v, want ErrNotFound", err)
	}
	e.must(e.b.CreateKV(e.ctx, "t/short", 2, 1000*ttl), "CreateKV over an expired entry")
	if got, err := e.b.PurgeExpiredKV(e.ctx); err != nil || got != 1 { // t/take
		e.fatalf("PurgeExpiredKV = %d %v, want 1", got, err)
	}
	for _, k := range []string{"t/short", "t/forever", "t/long"} {
		if err := e.b.GetKV(e.ctx, k, &n); err != nil {
			e.fatalf("live entry %s lost: %v", k, err)
		}
	}
}

func testKVConcurrentCreate(e *env) {
	const n = 16
	errs := make([]error, n)
	parallel(n, func(i int) { errs[i] = e.b.CreateKV(e.ctx, "idem/acme/race", kvRecord{N: i}, time.Hour) })
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			e.fatalf("CreateKV %d and %d both won", won, i)
		case err == nil:
			won = i
		case !errors.Is(err, store.ErrExists):
			e.fatalf("CreateKV %d: %v", i, err)
		}
	}
	var v kvRecord
	e.must(e.b.GetKV(e.ctx, "idem/acme/race", &v), "GetKV")
	if won < 0 || v.N != won {
		e.fatalf("winner %d, stored %+v", won, v)
	}
}

func testKVConcurrentTake(e *env) {
	e.must(e.b.CreateKV(e.ctx, "oauth_state/race", "v", time.Hour), "CreateKV")
	const n = 16
	errs := make([]error, n)
	parallel(n, func(i int) {
		var v string
		errs[i] = e.b.TakeKV(e.ctx, "oauth_state/race", &v)
	})
	got := 0
	for i, err := range errs {
		if err == nil {
			got++
		} else if !errors.Is(err, store.ErrNotFound) {
			e.fatalf("TakeKV %d: %v", i, err)
		}
	}
	if got != 1 {
		e.fatalf("%d takers got a single-use value, want 1", got)
	}
}

// testReserveSlot: a shared rate limiter (GCRA): one event per interval on
// average, bursts of burst; a wait beyond maxWait reserves nothing.
func testReserveSlot(e *env) {
	e.needClock()
	res := func(k string) (time.Duration, bool) {
		e.t.Helper()
		w, ok, err := e.b.ReserveSlot(e.ctx, k, 10*time.Second, 3, 15*time.Second)
		e.must(err, "ReserveSlot")
		return w, ok
	}
	for i := range 3 {
		if w, ok := res("rate/u"); !ok || w != 0 {
			e.fatalf("burst slot %d: wait %s ok %v", i, w, ok)
		}
	}
	if w, ok := res("rate/u"); !ok || w != 10*time.Second {
		e.fatalf("4th: wait %s ok %v, want 10s", w, ok)
	}
	if w, ok := res("rate/u"); ok || w != 20*time.Second {
		e.fatalf("5th: wait %s ok %v, want refused at 20s", w, ok)
	}
	if w, ok := res("rate/other"); !ok || w != 0 {
		e.fatalf("another key shares the budget: %s %v", w, ok)
	}
	e.advance(30 * time.Second) // the 4th was used at +10 s: two slots back
	for i := range 2 {
		if w, ok := res("rate/u"); !ok || w != 0 {
			e.fatalf("after idle, slot %d: %s %v", i, w, ok)
		}
	}
	if w, ok := res("rate/u"); !ok || w != 10*time.Second {
		e.fatalf("after idle, paced: %s %v", w, ok)
	}
	if w, ok, err := e.b.ReserveSlot(e.ctx, "rate/off", 0, 1, 0); err != nil || !ok || w != 0 {
		e.fatalf("interval 0 (no limit) = %s %v %v", w, ok, err)
	}
}
