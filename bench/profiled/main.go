// Command profiled is `syncrelay serve` with net/http/pprof on a side
// address, for profiling under load (bench/run.sh with PROFILE=1):
//
//	go run ./bench/profiled -config FILE -pprof 127.0.0.1:6060
//	go tool pprof -seconds 20 http://127.0.0.1:6060/debug/pprof/profile
//
// It runs exactly daemon.Run, as the real binary does.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"syncrelay/config"
	"syncrelay/daemon"
)

func main() {
	cfg := flag.String("config", "", "config file")
	addr := flag.String("pprof", "127.0.0.1:6060", "pprof listen address (loopback)")
	block := flag.Int("block", 0, "runtime.SetBlockProfileRate (0: off)")
	mutex := flag.Int("mutex", 0, "runtime.SetMutexProfileFraction (0: off)")
	flag.Parse()
	c, err := config.Load(*cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profiled:", err)
		os.Exit(1)
	}
	daemon.TuneGC()
	runtime.SetBlockProfileRate(*block)
	runtime.SetMutexProfileFraction(*mutex)
	go func() {
		if err := http.ListenAndServe(*addr, nil); err != nil {
			fmt.Fprintln(os.Stderr, "profiled: pprof:", err)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, c, daemon.NewLogger(c, os.Stderr), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "profiled:", err)
		os.Exit(1)
	}
}
