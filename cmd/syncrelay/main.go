// Command syncrelay is the syncrelay daemon and its tools.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"syscall"

	"syncrelay/config"
	"syncrelay/daemon"
)

// command is one subcommand. run returns the process exit status.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"serve":   {"run the SMTP and HTTP servers", runServe},
		"replay":  {"run .eml files through the inbound pipeline and print decisions", runReplay},
		"check":   {"check config, TLS, DNS, store and providers; print a tenant's routing rules", runCheck},
		"backup":  {"write a consistent backup archive, even while the daemon runs", runBackup},
		"restore": {"restore a backup archive into an empty data directory", runRestore},
		"compact": {"free the bytes of removed messages now (the daemon does it hourly)", runCompact},
		"version": {"print the version", runVersion},
		"demo":    {"with `serve -dev` running: send, receive a signed reply, discard a stranger", runDemo},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "syncrelay: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: syncrelay <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'syncrelay <command> -h' for a command's flags.")
}

// newFlags makes a FlagSet that prints usage to stderr and never exits.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: syncrelay %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses; ok=false means exit with code.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	switch err := fs.Parse(args); err {
	case nil:
		return 0, true
	case flag.ErrHelp:
		return 0, false
	default:
		return 2, false
	}
}

func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	c, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay: %v\n", err)
		return nil, false
	}
	return c, true
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", "serve [-config FILE] [-dev]", stderr)
	cfgPath := fs.String("config", "", "config file (TOML); without it the embedded defaults are used")
	dev := fs.Bool("dev", false, "dev mode, NOT FOR PRODUCTION: local Google/Microsoft stand-ins and DKIM zone, loopback only (then run: syncrelay demo)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "syncrelay serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	log := daemon.NewLogger(c, stderr)
	if *dev {
		return serveDev(ctx, c, log, stdout)
	}
	daemon.TuneGC()
	if err := daemon.Run(ctx, c, log, stdout); err != nil {
		log.Error("syncrelay stopped", "err", err)
		return 1
	}
	return 0
}

// version is set with -ldflags "-X main.version=..."; otherwise build info.
var version = ""

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version", stderr)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	fmt.Fprintln(stdout, "syncrelay", versionString())
	return 0
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " " + rev + dirty
	}
	return v + " " + bi.GoVersion
}
