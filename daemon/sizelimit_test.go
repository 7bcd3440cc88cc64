package daemon

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"syncrelay/internal/testenv"
	"syncrelay/internal/testutil"
	"syncrelay/metrics"
	"syncrelay/router"
	"syncrelay/smtpd"
)

// Every refusal for size, however the message comes (MAIL SIZE=, BDAT over
// the limit on a later chunk, DATA), is one 552 with its reason, one
// syncrelay_messages_total{rejected,message_too_large} and one reply in
// syncrelay_smtp_replies_total, as the daemon wires smtpd to its metrics;
// no 451 is counted for a BDAT transfer go-smtp cut. Real SMTP over TCP,
// the daemon's Deliverer and router over a real bbolt store.
func TestSizeRefusalsCountedOnce(t *testing.T) {
	st, kr := acmeStore(t)
	var logs testutil.SyncBuf
	log := withContextAttrs(slog.New(slog.NewJSONHandler(&logs, nil)))
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.KnownDecisions(Outcomes())
	m.KnownReplies(smtpd.ReplyCodes())
	rt := &router.Router{Store: st, Keys: kr, Hostname: "relay.test", Salt: []byte("s"), Log: log}
	srv, err := smtpd.New(smtpd.Options{Hostname: "relay.test", MaxMessageBytes: 2000,
		SpoolDir: t.TempDir(), Logger: log, Observer: m}, st, &Deliverer{Router: rt, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.ServeSMTP(t, srv)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	expect := func(code int) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("want %d: %v", code, err)
			}
			if len(l) > 3 && l[3] == '-' {
				continue
			}
			if !strings.HasPrefix(l, strconv.Itoa(code)+" ") {
				t.Fatalf("want %d, got %q", code, l)
			}
			if code == 552 && smtpd.ReasonOf(strings.TrimSpace(l)) != "message_too_large" {
				t.Errorf("552 without its reason: %q", l)
			}
			return
		}
	}
	pad := strings.Repeat("0123456789\r\n", 125) // 1500 bytes
	io.WriteString(c, "EHLO fwd.test\r\n")
	expect(220)
	expect(250)
	io.WriteString(c, "MAIL FROM:<a@cand.test> SIZE=2001\r\n")
	expect(552)
	io.WriteString(c, "MAIL FROM:<a@cand.test>\r\nRCPT TO:<acme-x@relay.test>\r\n")
	expect(250)
	expect(250)
	io.WriteString(c, fmt.Sprintf("BDAT %d\r\n%sBDAT %d LAST\r\n%s", len(pad), pad, len(pad), pad))
	expect(250)
	expect(552)
	io.WriteString(c, "MAIL FROM:<a@cand.test>\r\nRCPT TO:<acme-x@relay.test>\r\nDATA\r\n")
	expect(250)
	expect(250)
	expect(354)
	io.WriteString(c, "Subject: x\r\n\r\n"+pad+pad+".\r\n")
	expect(552)
	io.WriteString(c, "QUIT\r\n")
	expect(221)

	time.Sleep(50 * time.Millisecond) // a late count of a cut transfer would show
	for _, tc := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"syncrelay_messages_total", map[string]string{"decision": "rejected", "reason": "message_too_large"}, 3},
		{"syncrelay_smtp_replies_total", map[string]string{"stage": "mail", "code": "552"}, 1},
		{"syncrelay_smtp_replies_total", map[string]string{"stage": "data", "code": "552"}, 2},
		{"syncrelay_smtp_replies_total", map[string]string{"stage": "data", "code": "451"}, 0},
	} {
		if got := counterValue(t, reg, tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
		}
	}
}

// counterValue is the value of the counter series with exactly labels, or
// -1 when the series does not exist.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			if len(s.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range s.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return s.GetCounter().GetValue()
		}
	}
	return -1
}
