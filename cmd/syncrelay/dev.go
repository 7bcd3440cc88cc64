package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/devmode"
)

// serveDev is `serve -dev`: the daemon with the devmode stand-ins.
func serveDev(ctx context.Context, c *config.Config, log *slog.Logger, stdout io.Writer) int {
	devmode.Banner(stdout)
	env, err := devmode.Setup(c, log)
	if err != nil {
		log.Error("syncrelay serve -dev refused", "err", err)
		return 2
	}
	defer env.Close()
	log.Warn("DEV MODE: NOT FOR PRODUCTION: local provider stand-ins and a generated DKIM zone; loopback only",
		"google_auth_url", c.Providers.Google.AuthURL, "zone_file", c.DNS.ZoneFile)
	actx, cancel := context.WithCancel(ctx)
	announced := make(chan struct{})
	go func() { env.AnnounceWhenReady(actx, stdout, log); close(announced) }()
	err = daemon.Run(ctx, c, log, stdout)
	// env.Close removes the state file only after the announcer is done.
	cancel()
	<-announced
	if err != nil {
		log.Error("syncrelay stopped", "err", err)
		return 1
	}
	return 0
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("demo", "demo [-config FILE]", stderr)
	cfgPath := fs.String("config", "", "the config serve -dev was started with (it finds the daemon through store.dir)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "syncrelay demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	st, err := devmode.ReadState(devmode.StatePath(c))
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay demo: %v\n", err)
		return 1
	}
	tok, hint, err := demoToken(c)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay demo: %v\n", err)
		return 1
	}
	d := &devmode.Demo{State: st, Token: tok, TokenHint: hint, Out: stdout}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "syncrelay demo: %v\n", err)
		return 1
	}
	return 0
}

// demoToken is the first API token (from the config, or the dev token the
// daemon generated) and shell words that give it, for the demo's hints.
func demoToken(c *config.Config) (tok, hint string, err error) {
	switch {
	case len(c.API.Tokens) > 0 && os.Getenv(config.EnvAPITokens) != "":
		return c.API.Tokens[0], "'<a token from $" + config.EnvAPITokens + ">'", nil
	case len(c.API.Tokens) > 0:
		return c.API.Tokens[0], "'<a token from " + c.API.TokensFile + ">'", nil
	}
	b, err := os.ReadFile(c.APITokenPath())
	if err != nil {
		return "", "", fmt.Errorf("API token: %w", err)
	}
	if tok = strings.TrimSpace(string(b)); tok == "" {
		return "", "", fmt.Errorf("API token: %s is empty", c.APITokenPath())
	}
	return tok, "$(cat " + c.APITokenPath() + ")", nil
}
