// Package crash is the kill -9 test of SPEC §12 ("nothing acknowledged is
// lost"): it runs the real binary, drives it with srload's matching replies
// from several sessions, kills it with SIGKILL at a random moment, restarts
// it, and checks that every message that got a 250 is on its thread (raw
// file present and intact) and that the store opens cleanly.
//
// The short version (3 cycles) always runs; the long one runs with
// SYNCRELAY_CRASH_CYCLES=20. SYNCRELAY_CRASH_SEED replays a run.
package crash

import (
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"syncrelay/internal/testenv"
)

var bins *testenv.Bins

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &bins, "syncrelay", "srload")) }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestKill9LosesNothingAcknowledged(t *testing.T) {
	cycles := envInt("SYNCRELAY_CRASH_CYCLES", 3)
	seed := uint64(envInt("SYNCRELAY_CRASH_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("%d cycles, SYNCRELAY_CRASH_SEED=%d", cycles, seed)
	rng := mrand.New(mrand.NewPCG(seed, 7))

	dir := t.TempDir()
	cfg, data := testenv.LoadConfig(t, dir, "")
	man := bins.Prepare(t, cfg, dir, 16)

	acked := map[string]testenv.Reply{}
	record := func(replies string) (ok, other int) {
		rs, err := testenv.ReadReplies(replies)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Code != 250 {
				// A healthy daemon answers every matching reply 250
				// until it is killed (no reply at all then).
				t.Errorf("unexpected reply %d %q to %s", r.Code, r.Text, r.MsgID)
				other++
				continue
			}
			ok++
			if prev, seen := acked[r.MsgID]; !seen || prev.Kind != "match" {
				acked[r.MsgID] = r
			}
		}
		return ok, other
	}

	for i := range cycles {
		d := bins.Start(t, cfg)
		replies := filepath.Join(dir, fmt.Sprintf("replies-%02d.log", i))
		load := bins.Run(t, d.SMTP, dir, replies, "-c", "6", "-d", "60s", "-n", "200000",
			"-mix", "match=85,dup=15", "-size", "2048", "-timeout", "5s", "-q", "-seed", strconv.FormatUint(seed+uint64(i), 10))

		// Kill at a random moment once some messages were acknowledged,
		// so that every cycle has acks to check and kills land in the
		// middle of commits, raw writes and replies alike.
		minAcks := 1 + rng.IntN(150)
		deadline := time.Now().Add(20 * time.Second)
		for testenv.CountLines(replies) < minAcks && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		d.Kill9(t)
		load.Stop(t)

		ok, other := record(replies)
		if ok == 0 {
			t.Fatalf("cycle %d: no message acknowledged before the kill:\n%s\n%s", i, load.Out, d.Logs)
		}
		testenv.CheckBolt(t, data)
		n := testenv.VerifyAcked(t, data, man.Tenant, acked)
		t.Logf("cycle %d: killed after %d acks (%d other replies); %d acknowledged messages verified", i, ok, other, n)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Logs)
			return
		}
	}

	// After the last crash the daemon starts, collects orphans, serves and
	// stops cleanly, and everything acknowledged is still there.
	d := bins.Start(t, cfg)
	replies := filepath.Join(dir, "replies-final.log")
	load := bins.Run(t, d.SMTP, dir, replies, "-c", "2", "-n", "20", "-d", "20s", "-mix", "match=100", "-q")
	load.Wait(t, 30*time.Second)
	if ok, _ := record(replies); ok != 20 {
		t.Errorf("after the crashes: %d of 20 messages answered 250:\n%s", ok, load.Out)
	}
	if code := d.Stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM:\n%s", code, d.Logs)
	}
	testenv.CheckBolt(t, data)
	t.Logf("%d acknowledged messages verified after %d kills", testenv.VerifyAcked(t, data, man.Tenant, acked), cycles)
}
