package main

import (
	"context"
	"fmt"
	"io"

	"syncrelay/config"
	"syncrelay/store/bolt"
)

// runCompact frees the bytes of removed and expired messages now, on a
// store no daemon holds (the daemon compacts by itself every hour).
func runCompact(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("compact", "compact [-config FILE]", stderr)
	cfgPath := fs.String("config", "", "config file (TOML): compacts its store.dir")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	if c.Store.Backend == config.BackendPostgres {
		fmt.Fprintln(stdout, `nothing to compact: with store.backend "postgres" removed and expired bytes are deleted in the transaction that removes their record, and autovacuum reclaims the space`)
		return 0
	}
	st, err := bolt.Open(c.Store.Dir, bolt.Options{LockTimeout: c.Store.OpenTimeout.Duration, CompactNow: true})
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay compact: %v\n", explainLocked(err))
		return 1
	}
	defer st.Close()
	n, err := st.ExpireQuarantine(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay compact: quarantine expiry: %v\n", err)
		return 1
	}
	cs, err := st.Compact(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay compact: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "compacted %s: %d segments rewritten, %d messages moved, %d bytes freed, %d expired quarantined messages removed\n",
		c.Store.Dir, cs.Segments, cs.Moved, cs.FreedBytes, n)
	return 0
}
