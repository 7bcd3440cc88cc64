package storetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"syncrelay/store"
)

// readRaw reads all the bytes behind loc, checking that the RawFile's
// Size agrees with what it reads.
func (e *env) readRaw(b Backend, loc string) ([]byte, error) {
	e.t.Helper()
	f, err := b.OpenRaw(e.ctx, loc)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", loc, err)
	}
	if int64(len(data)) != f.Size() {
		e.fatalf("OpenRaw(%s): Size() = %d, but %d bytes read", loc, f.Size(), len(data))
	}
	return data, nil
}

// mustRaw reads the bytes behind loc and checks them against want and
// against the hash the locator records (Factory.RawSum).
func (e *env) mustRaw(b Backend, loc string, want []byte) {
	e.t.Helper()
	got, err := e.readRaw(b, loc)
	if err != nil {
		e.fatalf("OpenRaw(%q): %v", loc, err)
	}
	if !bytes.Equal(got, want) {
		e.fatalf("OpenRaw(%q): got %d bytes %.60q..., want %d bytes %.60q...", loc, len(got), got, len(want), want)
	}
	if e.f.RawSum == nil {
		return
	}
	if sum := sha256.Sum256(got); e.f.RawSum(loc) != hex.EncodeToString(sum[:]) {
		e.fatalf("RawSum(%q) = %q, want the SHA-256 of the bytes %x", loc, e.f.RawSum(loc), sum)
	}
}

// events lists the outbox events of one type, in outbox order.
func (e *env) events(typ string) []*store.Event {
	e.t.Helper()
	all, err := e.b.Events(e.ctx, "")
	e.must(err, "Events")
	var out []*store.Event
	for _, ev := range all {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// eventData decodes an event's payload as JSON, whatever Go type the
// backend hands it back as.
func (e *env) eventData(ev *store.Event) map[string]any {
	e.t.Helper()
	raw, err := json.Marshal(ev.Data)
	e.must(err, "marshal event data")
	var m map[string]any
	e.must(json.Unmarshal(raw, &m), "unmarshal event data")
	return m
}

// parallel runs fn(i) for i in [0, n) at once and waits for all.
func parallel(n int, fn func(i int)) {
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range n {
		done.Add(1)
		go func() {
			defer done.Done()
			start.Wait() // release them together, to collide
			fn(i)
		}()
	}
	start.Done()
	done.Wait()
}

// within runs fn and fails the test if it does not return within d: an
// operation that hangs is a failure, not a stuck test binary.
func (e *env) within(d time.Duration, what string, fn func()) {
	e.t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		e.fatalf("%s did not return within %s", what, d)
	}
}

// pattern is n bytes of a recognisable, position-dependent pattern.
func pattern(n int, seed string) string {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %07d\r\n", seed, i)
	}
	return b.String()[:n]
}
