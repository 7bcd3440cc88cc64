package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/store"
)

// fill commits n stored messages straight through the store (the daemon
// stopped), so that the benchmark can measure the pipeline and removals on
// a store of realistic size. Messages go to new threads of 100 messages
// each; concurrent writers share group commits as sessions do. It adds an
// admin user (allowed to remove messages) and writes a sample of message
// ids for `srload delete`.
func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	cfgPath := fs.String("config", "", "the daemon's config file (required)")
	manPath := fs.String("manifest", "", "manifest from srload prepare (required)")
	n := fs.Int("n", 1_000_000, "messages to store")
	size := fs.Int("size", 4096, "body bytes per message")
	writers := fs.Int("c", 64, "concurrent writers")
	idsOut := fs.String("ids", "", "write a sample of message ids (m-N), one a line, for srload delete")
	sample := fs.Int("sample", 20000, "how many ids to sample")
	fs.Parse(args)
	if *cfgPath == "" || *manPath == "" {
		fs.Usage()
		return fmt.Errorf("fill: -config and -manifest are required")
	}
	c, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	man, err := loadgen.LoadManifest(*manPath)
	if err != nil {
		return err
	}
	st, err := daemon.OpenStore(context.Background(), c, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := context.Background()
	admin := &store.User{Tenant: man.Tenant, ID: "u-bench-admin", Email: "bench-admin@" + man.TenantDomain, Role: store.RoleAdmin}
	if err := st.CreateUser(ctx, admin); err != nil && !strings.Contains(err.Error(), store.ErrExists.Error()) {
		return err
	}
	body := strings.Repeat("All work and no play makes Jack a dull boy. 0123456789\r\n", *size/56+1)[:*size]
	const perThread = 100
	var next atomic.Int64
	var mu sync.Mutex
	var ids []uint64
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for range *writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var th store.Thread
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				if i%perThread == 0 || th.ID == 0 {
					th = store.Thread{Tenant: man.Tenant, Candidate: man.Candidate, Subject: "Filled", CreatedBy: man.User}
					m := store.Message{From: man.UserEmail, To: []string{man.CandidateEmail}, Subject: "Filled", SentBy: man.User, Status: "sent"}
					if err := st.CreateOutbound(ctx, &th, &m, func(t, msg uint64) (string, string) {
						return fmt.Sprintf("fill.%d.%d@%s", t, msg, man.Hostname), ""
					}); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
				}
				msgid := fmt.Sprintf("fill-%d@%s", i, man.SenderDomain)
				head := "Message-ID: <" + msgid + ">\r\nFrom: " + man.CandidateEmail + "\r\nSubject: Re: Filled\r\n\r\n"
				res, err := st.CommitInbound(ctx, &store.Incoming{
					Message: store.Message{Tenant: man.Tenant, Thread: th.ID, Direction: store.Inbound, InternetMessageID: msgid,
						From: man.CandidateEmail, Subject: "Re: Filled"},
					Raw: &store.Raw{Head: []byte(head), Body: strings.NewReader(body), Size: int64(len(body))},
				})
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil && len(ids) < *sample*4 {
					ids = append(ids, res.Ref.Message)
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if i > 0 && i%100_000 == 0 {
					fmt.Fprintf(os.Stderr, "srload fill: %d messages in %s\n", i, time.Since(start).Round(time.Second))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := st.Close(); err != nil {
		return err
	}
	if *idsOut != "" {
		r := mrand.New(mrand.NewPCG(1, 2))
		r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
		ids = ids[:min(len(ids), *sample)]
		slices.Sort(ids)
		f, err := os.Create(*idsOut)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(f)
		for _, id := range ids {
			fmt.Fprintln(w, store.MessageRef(id))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	el := time.Since(start)
	fmt.Printf("srload: filled %d messages in %s (%.0f msgs/s); admin user %s\n", *n, el.Round(time.Millisecond),
		float64(*n)/el.Seconds(), admin.ID)
	return nil
}

// deleteRun removes messages through the HTTP API (DELETE
// /v1/tenants/{t}/messages/{m}) with c concurrent clients and reports the
// latency percentiles.
func deleteRun(args []string) error {
	fs := flag.NewFlagSet("delete", flag.ExitOnError)
	base := fs.String("http", "", "the daemon's HTTP address host:port (required)")
	tokenFile := fs.String("token-file", "", "file holding an API token (required)")
	tenant := fs.String("tenant", "", "tenant id (required)")
	user := fs.String("user", "u-bench-admin", "acting user (X-Acting-User), an admin")
	idsPath := fs.String("ids", "", "file of message ids, one a line (required)")
	n := fs.Int("n", 2000, "removals to make")
	conc := fs.Int("c", 4, "concurrent clients")
	jsonOut := fs.String("json", "", "write the results as JSON to this file")
	fs.Parse(args)
	if *base == "" || *tokenFile == "" || *tenant == "" || *idsPath == "" {
		fs.Usage()
		return fmt.Errorf("delete: -http, -token-file, -tenant and -ids are required")
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(*idsPath)
	if err != nil {
		return err
	}
	ids := strings.Fields(string(data))
	if len(ids) > *n {
		ids = ids[:*n]
	}
	token := strings.TrimSpace(strings.SplitN(string(tok), "\n", 2)[0])
	var next atomic.Int64
	lat := make([]time.Duration, len(ids))
	codes := map[string]int64{}
	var mu sync.Mutex
	client := &http.Client{Timeout: 30 * time.Second}
	start := time.Now()
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				req, _ := http.NewRequest("DELETE", "http://"+*base+"/v1/tenants/"+*tenant+"/messages/"+ids[i], nil)
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("X-Acting-User", *user)
				t := time.Now()
				resp, err := client.Do(req)
				lat[i] = time.Since(t)
				code := "error"
				if err == nil {
					code = fmt.Sprint(resp.StatusCode)
					resp.Body.Close()
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	res := map[string]any{"removals": len(ids), "seconds": el.Seconds(), "per_sec": float64(len(ids)) / el.Seconds(),
		"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1), "codes": codes}
	fmt.Printf("srload delete: %d removals in %s, p50 %.2f ms, p99 %.2f ms, max %.2f ms, codes %v\n",
		len(ids), el.Round(time.Millisecond), pct(0.50), pct(0.99), pct(1), codes)
	if *jsonOut != "" {
		out, _ := json.MarshalIndent(res, "", "  ")
		return os.WriteFile(*jsonOut, append(out, '\n'), 0o644)
	}
	return nil
}
