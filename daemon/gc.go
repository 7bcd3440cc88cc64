package daemon

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the garbage collector target `syncrelay serve` uses
// unless GOGC is set in its environment.
//
// The daemon's live heap is small (a few MiB plus its connections) and
// nearly all its garbage is per-message and short-lived, so Go's default of
// 100 runs a collection every few hundred messages and GC took about a
// tenth of the CPU under load. At 400 the heap may grow to five times the
// live data before a collection: a few MiB more, for fewer collections
// (bench/RESULTS.md has the A/B).
const DefaultGCPercent = 400

// TuneGC applies DefaultGCPercent unless the operator set GOGC. It changes
// process-wide state, so only commands call it, never Run.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
