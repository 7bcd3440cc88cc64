package daemon

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// unusedGrace is how long a draining HTTP server leaves a connection that
// has not sent a byte: long enough for a request already on the wire to
// be read (the connection then counts as active and is served), short
// against the 5 s net/http's Shutdown waits for such a connection itself.
const unusedGrace = 200 * time.Millisecond

// unusedConns tracks the HTTP connections that have not sent a request
// yet (http.StateNew), so that a shutdown can close them. net/http's
// Shutdown waits up to 5 s for each before it treats it as idle, and
// browsers and HTTP clients open such connections ahead of need
// (preconnects, a dial that lost the race to an idle connection): one of
// them held every SIGTERM 5 s longer.
type unusedConns struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

// track is the http.Server's ConnState hook.
func (u *unusedConns) track(c net.Conn, s http.ConnState) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s != http.StateNew {
		delete(u.m, c)
		return
	}
	if u.m == nil {
		u.m = map[net.Conn]struct{}{}
	}
	u.m[c] = struct{}{}
}

// closeAfter closes, after grace, the connections that still have not
// sent anything; called as the server's Shutdown starts (no new
// connections come). It returns a function that cancels it.
func (u *unusedConns) closeAfter(grace time.Duration) (stop func()) {
	t := time.AfterFunc(grace, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		for c := range u.m {
			c.Close()
		}
	})
	return func() { t.Stop() }
}
