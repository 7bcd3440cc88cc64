// Command srload is syncrelay's load tool.
//
//	srload prepare -config FILE -manifest FILE [-zone FILE] [-threads N] [-dkim-key FILE]
//	srload run     -addr HOST:PORT [-manifest FILE] [-c 20] [-d 30s] [-n N] [-size 4096]
//	               [-mix match=100] [-rate R] [-replies FILE] [-json FILE]
//	srload idle    -addr HOST:PORT [-n 2000] [-hold 20s]
//	srload fill    -config FILE -manifest FILE [-n 1000000] [-ids FILE]
//	srload delete  -http HOST:PORT -token-file FILE -tenant T -ids FILE [-n 2000] [-c 4]
//
// prepare runs before the daemon starts (the daemon holds the store's lock):
// it opens the store of the daemon's config, creates a tenant, a user, a
// candidate and threads started by outbound messages whose Message-IDs are
// minted with the server secret exactly as the sender mints them, generates
// a DKIM key for the candidate's domain (or takes -dkim-key's), writes it as
// the zone file the config names ([dns] zone_file, or -zone) and writes a
// manifest.
//
// run speaks SMTP to any server with N concurrent sessions that reuse their
// connections. With a manifest it sends DKIM-signed replies to the minted
// threads (match), copies of replies already answered 250 (dup) and replies
// to nothing syncrelay knows (unrelated), in the weights of -mix; without
// one only unrelated mail (for baselines such as Postfix's smtp-sink). It
// reports msgs/s, the latency from the final "." to the reply (p50, p99,
// p99.9) and the reply codes.
//
// idle opens N sessions, says EHLO on each, prints "READY n" and holds them
// open (to measure the server's memory per idle connection).
//
// fill (daemon stopped) stores N messages straight through the store, to
// measure on a large store; delete removes messages through the HTTP API
// and reports the latency.
//
// Every run is bounded in count and time.
package main

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"syncrelay/cmd/srload/loadgen"
	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/token"
)

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "prepare":
		err = prepare(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "idle":
		err = idle(os.Args[2:])
	case "fill":
		err = fill(os.Args[2:])
	case "delete":
		err = deleteRun(os.Args[2:])
	case "-h", "-help", "--help", "help":
		usage(os.Stdout)
		return
	default:
		fmt.Fprintf(os.Stderr, "srload: unknown command %q\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "srload:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  srload prepare -config FILE -manifest FILE [-zone FILE] [-threads N] [-dkim-key FILE]   (daemon stopped)
  srload run -addr HOST:PORT [-manifest FILE] [-c 20] [-d 30s] [-n N] [-size 4096] [-mix match=100] [-rate R] [-json FILE]
  srload idle -addr HOST:PORT [-n 2000] [-hold 20s]
  srload fill -config FILE -manifest FILE [-n 1000000] [-ids FILE]   (daemon stopped)
  srload delete -http HOST:PORT -token-file FILE -tenant T -ids FILE [-n 2000] [-c 4]
Run "srload COMMAND -h" for the flags of a command.
`)
}

func prepare(args []string) error {
	fs := flag.NewFlagSet("prepare", flag.ExitOnError)
	cfgPath := fs.String("config", "", "the daemon's config file (required)")
	manPath := fs.String("manifest", "", "where to write the manifest JSON (required)")
	zone := fs.String("zone", "", "zone file to write (default: the config's dns.zone_file)")
	threads := fs.Int("threads", loadgen.DefaultPrepareOptions.Threads, "threads to mint")
	tenant := fs.String("tenant", loadgen.DefaultPrepareOptions.Tenant, "tenant id to create")
	cand := fs.String("candidate-email", loadgen.DefaultPrepareOptions.CandidateEmail, "the candidate's address (its domain gets the DKIM key)")
	keyPath := fs.String("dkim-key", "", "the candidate domain's DKIM key: an RSA private key, PEM (PKCS#8 or PKCS#1); default: a new RSA-2048 key")
	fs.Parse(args)
	if *cfgPath == "" || *manPath == "" {
		fs.Usage()
		return fmt.Errorf("prepare: -config and -manifest are required")
	}
	if *zone != "" {
		// The config may name this zone file, and config validation wants
		// it to exist: create it empty if it does not yet.
		if f, err := os.OpenFile(*zone, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
		}
	}
	c, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w (if [dns] zone_file does not exist yet, pass it as -zone too)", err)
	}
	zonePath := *zone
	if zonePath == "" {
		zonePath = c.DNS.ZoneFile
	}
	if zonePath == "" {
		return fmt.Errorf("prepare: no zone file: set [dns] zone_file in %s or pass -zone", *cfgPath)
	}
	var dkimKey *rsa.PrivateKey
	if *keyPath != "" {
		if dkimKey, err = loadgen.ReadRSAKey(*keyPath); err != nil {
			return fmt.Errorf("prepare: -dkim-key: %w", err)
		}
	}
	keys, _, err := daemon.LoadKeys(c, true)
	if err != nil {
		return err
	}
	kr, err := token.New(keys.Token, c.SMTP.Hostname)
	if err != nil {
		return err
	}
	st, err := daemon.OpenStore(context.Background(), c, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	m, err := loadgen.Prepare(context.Background(), st, kr, loadgen.PrepareOptions{
		Tenant: *tenant, Threads: *threads, CandidateEmail: *cand, Hostname: c.SMTP.Hostname, DKIMKey: dkimKey,
	})
	if err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	z, err := m.ZoneText()
	if err != nil {
		return err
	}
	if err := os.WriteFile(zonePath, []byte(z), 0o644); err != nil {
		return err
	}
	if err := m.Save(*manPath); err != nil {
		return err
	}
	fmt.Printf("srload: prepared tenant %s (%s), %d threads in %s; zone %s; manifest %s\n",
		m.Tenant, m.Inbound, len(m.Threads), time.Since(start).Round(time.Millisecond), zonePath, *manPath)
	return nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	addr := fs.String("addr", "", "SMTP server host:port (required)")
	manPath := fs.String("manifest", "", "manifest from srload prepare (needed for match and dup)")
	rcpt := fs.String("rcpt", "", "RCPT TO (default: the manifest's inbound address)")
	from := fs.String("from", "", "MAIL FROM (default: the manifest's candidate, else load@srload.test)")
	sessions := fs.Int("c", 20, "concurrent sessions")
	n := fs.Int64("n", 0, fmt.Sprintf("most transactions to start (0: %d)", loadgen.MaxMessages))
	dur := fs.Duration("d", 30*time.Second, fmt.Sprintf("run time (at most %s)", loadgen.MaxDuration))
	warmup := fs.Duration("warmup", 0, "exclude transactions completed in this first period from the results")
	size := fs.Int("size", 4096, "body size in bytes")
	mixS := fs.String("mix", "", `weights of message kinds, e.g. "match=80,dup=10,unrelated=10" (default: match=100 with a manifest, else unrelated=100)`)
	rate := fs.Float64("rate", 0, "target msgs/s over all sessions (0: as fast as possible)")
	replies := fs.String("replies", "", "append one line per reply to \".\" to this file (code, message-id, kind, thread, text)")
	jsonOut := fs.String("json", "", "write the results as JSON to this file")
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each connect, write and reply")
	seed := fs.Uint64("seed", 0, "random seed (0: time)")
	quiet := fs.Bool("q", false, "no summary on stdout")
	fs.Parse(args)
	if *addr == "" {
		fs.Usage()
		return fmt.Errorf("run: -addr is required")
	}
	var man *loadgen.Manifest
	if *manPath != "" {
		var err error
		if man, err = loadgen.LoadManifest(*manPath); err != nil {
			return err
		}
	}
	if *mixS == "" {
		*mixS = "unrelated=100"
		if man != nil {
			*mixS = "match=100"
		}
	}
	mix, err := loadgen.ParseMix(*mixS)
	if err != nil {
		return err
	}
	if *rcpt == "" {
		if man == nil {
			return fmt.Errorf("run: -rcpt is required without -manifest")
		}
		*rcpt = man.Inbound
	}
	if *from == "" {
		*from = "load@srload.test"
		if man != nil {
			*from = man.CandidateEmail
		}
	}
	gen, err := loadgen.NewGenerator(loadgen.GeneratorOptions{Manifest: man, BodySize: *size, To: *rcpt, From: *from})
	if err != nil {
		return err
	}
	o := loadgen.RunOptions{Addr: *addr, From: *from, Rcpt: *rcpt, Sessions: *sessions, MaxMessages: *n,
		Duration: *dur, Warmup: *warmup, Rate: *rate, Mix: mix, Gen: gen, Timeout: *timeout, Seed: *seed}
	if *replies != "" {
		f, err := os.OpenFile(*replies, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		o.Replies = f // unbuffered: a line is on disk before the next transaction
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, o)
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Print(res.Summary())
	}
	if *jsonOut != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "SMTP server host:port (required)")
	n := fs.Int("n", 2000, "sessions to open (at most 20000)")
	hold := fs.Duration("hold", 20*time.Second, "how long to hold them (at most 10m)")
	ehlo := fs.Bool("ehlo", true, "say EHLO on each session")
	fs.Parse(args)
	if *addr == "" {
		fs.Usage()
		return fmt.Errorf("idle: -addr is required")
	}
	*n = min(max(*n, 1), 20000)
	*hold = min(*hold, 10*time.Minute)
	helo := ""
	if *ehlo {
		helo = "srload.test"
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conns := make([]*loadgen.Client, *n)
	errs := make([]error, *n)
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = loadgen.Dial(*addr, helo, 10*time.Second)
		}()
	}
	wg.Wait()
	open := 0
	var firstErr error
	for i, c := range conns {
		if c != nil {
			open++
		} else if firstErr == nil {
			firstErr = errs[i]
		}
	}
	fmt.Printf("READY %d\n", open)
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "srload idle: %d sessions failed, first: %v\n", *n-open, firstErr)
	}
	select {
	case <-ctx.Done():
	case <-time.After(*hold):
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if open == 0 {
		return fmt.Errorf("idle: no session opened: %v", firstErr)
	}
	return nil
}
