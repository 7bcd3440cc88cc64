package daemon

import (
	"net"
	"testing"
	"time"
)

// TestShutdownClosesUnusedHTTPConns: a connection that never sent a
// request (a browser's preconnect) does not hold SIGTERM: net/http's
// Shutdown alone waits 5 s for it.
func TestShutdownClosesUnusedHTTPConns(t *testing.T) {
	t.Parallel()
	f := startFixture(t)
	c, err := net.Dial("tcp", f.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // accepted: the server tracks it
	start := time.Now()
	f.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stopping took %v with an unused HTTP connection open (net/http alone waits 5 s)", d)
	}
	// The server closed it.
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes from the unused connection after the stop, want it closed", n)
	}
}
