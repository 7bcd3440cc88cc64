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
// 100 runs a collection every few hundred messages. 200 was +14 to +40%
// msgs/s on the discard path (3 alternating pairs, bench harness). Higher
// costs memory on big messages: go-msgauth's DKIM canonicaliser makes
// about twice the body size in garbage, and a 25 MB message added 3 MiB of
// RSS at 100, 8 MiB at 200 and 15 MiB at 400 (bench/RESULTS.md).
const DefaultGCPercent = 200

// TuneGC applies DefaultGCPercent unless the operator set GOGC. It changes
// process-wide state, so only commands call it, never Run.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
