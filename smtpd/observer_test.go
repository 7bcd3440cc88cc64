package smtpd

import (
	"bufio"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
)

// countingObserver records Observer events as strings.
type countingObserver struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *countingObserver) add(k string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[k]++
}

func (o *countingObserver) ConnOpened()               { o.add("opened") }
func (o *countingObserver) ConnClosed()               { o.add("closed") }
func (o *countingObserver) ConnRefused(reason string) { o.add("refused " + reason) }
func (o *countingObserver) SessionEnded(tls bool)     { o.add(fmt.Sprintf("session tls=%v", tls)) }
func (o *countingObserver) Reply(stage string, code int) {
	o.add(fmt.Sprintf("%s %d", stage, code))
}

func (o *countingObserver) Decision(decision, reason string) {
	o.add("decision " + decision + "/" + reason)
}

func (o *countingObserver) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var s []string
	for k, v := range o.n {
		s = append(s, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func TestObserverSeesWhatClientsSee(t *testing.T) {
	obs := &countingObserver{}
	ts := startServer(t, Options{Observer: obs, MaxConnectionsPerIP: 1})

	c := ts.client(t)
	// A second connection from the same IP is over the cap.
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(nc).ReadString('\n')
	nc.Close()
	if !strings.HasPrefix(line, "421 ") {
		t.Fatalf("second connection got %q", line)
	}
	if err := c.Mail(senderAddr, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("nobody@relay.test", nil); err == nil {
		t.Fatal("unknown recipient accepted")
	}
	if err := c.Rcpt(inboundAddr, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: x\r\n\r\nhello\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()

	waitFor(t, "the connection closed", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.n["closed"] == 1
	})
	got := obs.String()
	for _, want := range []string{"opened=1", "closed=1", "refused max_connections_per_ip=1", "session tls=false=1", "mail 250=1", "rcpt 550=1", "rcpt 250=1", "data 250=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %q", got, want)
		}
	}
	// A message the Deliverer decided is counted by the Deliverer (per
	// tenant), not here: only smtpd's own decisions are.
	if strings.Contains(got, "decision ") {
		t.Errorf("events %s count a Deliverer's decision", got)
	}
}
