// Package browsertest drives Debian's headless Chromium from tests through
// the DevTools protocol (github.com/chromedp/chromedp), for the hosted pages.
//
// A test calls New(t); without /usr/bin/chromium the test is skipped with a
// message saying so, unless SYNCRELAY_REQUIRE_BROWSER=1 (as in .ci/run),
// where it fails. Each Browser has its own fresh profile directory and is
// closed by t.Cleanup. Screenshots go to $SYNCRELAY_TEST_OUTPUT, or to
// os.TempDir()/syncrelay-screens, never into the source tree.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// DefaultPath is where Debian's chromium package installs the browser.
const DefaultPath = "/usr/bin/chromium"

// RequireEnv makes a missing browser a failure rather than a skip.
const RequireEnv = "SYNCRELAY_REQUIRE_BROWSER"

// OutputEnv names the directory screenshots are written to.
const OutputEnv = "SYNCRELAY_TEST_OUTPUT"

// Browser is one headless Chromium process with one tab.
type Browser struct {
	// Ctx is the tab's context: pass it to chromedp.Run.
	Ctx context.Context
	t   testing.TB
}

// Path returns the Chromium binary to use: $SYNCRELAY_CHROMIUM if set (""
// when it does not exist), else DefaultPath, else "chromium" on PATH; ""
// if none exists.
func Path() string {
	if p := os.Getenv("SYNCRELAY_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	if _, err := os.Stat(DefaultPath); err == nil {
		return DefaultPath
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// New starts Chromium for t, or skips t (fails it under RequireEnv=1) when
// there is none. The browser and its profile go away when t ends.
func New(t testing.TB) *Browser {
	t.Helper()
	return Starting(t)()
}

// Starting is New with the start in the background, for a test that has
// other setup to do meanwhile (a daemon, a dev environment): Chromium takes
// about 0.4 s to come up. The returned function waits for it; call it from
// the test's goroutine. Skips and fails (no browser) happen in Starting.
func Starting(t testing.TB) (wait func() *Browser) {
	t.Helper()
	path := Path()
	if path == "" {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("browsertest: no chromium ($SYNCRELAY_CHROMIUM, %s or on PATH) and %s=1: install Debian's chromium package", DefaultPath, RequireEnv)
		}
		t.Skipf("browsertest: no chromium ($SYNCRELAY_CHROMIUM, %s or on PATH; apt-get install chromium); set %s=1 to make this a failure", DefaultPath, RequireEnv)
	}
	dir := t.TempDir()
	type started struct {
		ctx  context.Context
		stop func()
		err  error
	}
	done := make(chan started, 1)
	go func() {
		ctx, stop, err := start(path, dir)
		done <- started{ctx, stop, err}
	}()
	var res started
	var once sync.Once
	get := func() started {
		once.Do(func() { res = <-done })
		return res
	}
	// Registered now, so the browser is stopped (before dir is removed)
	// even when the test fails before it waits.
	t.Cleanup(func() {
		if r := get(); r.stop != nil {
			r.stop()
		}
	})
	return func() *Browser {
		t.Helper()
		r := get()
		if r.err != nil {
			t.Fatal(r.err)
		}
		return &Browser{Ctx: r.ctx, t: t}
	}
}

// start starts Chromium with its profile in dir and returns its tab.
func start(path, dir string) (ctx context.Context, stop func(), err error) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // CI runs as root, where the sandbox cannot start
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1200, 900),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	stop = func() {
		cancel()
		acancel()
	}
	// Start the browser now, on the context without a timeout (a timeout on
	// the first run would end the browser with it), so a broken install
	// fails here with its reason. A watchdog bounds a start that hangs.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("browsertest: starting %s: %w", path, err)
		}
	case <-time.After(60 * time.Second):
		stop()
		return nil, nil, fmt.Errorf("browsertest: %s did not start within 60s", path)
	}
	return ctx, stop, nil
}

// Timeout bounds each Do and Get.
const Timeout = 30 * time.Second

// Do runs actions in order, failing the test with what failed.
func (b *Browser) Do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := b.TryDo(actions...); err != nil {
		b.t.Fatalf("browsertest: %v", err)
	}
}

// TryDo is Do returning the error instead of failing.
func (b *Browser) TryDo(actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(b.Ctx, Timeout)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

// Get runs one action and returns its value, failing the test on error.
// An action that found its node in chromedp's copy of the DOM just before
// the page replaced it (a form's redirect, seen first by a script poll
// such as the pages tests' waitText) fails with a stale node or context
// id; it is run again until it works or Timeout ends.
func Get[T any](b *Browser, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, Timeout)
	defer cancel()
	for {
		v, err := chromedp.Run(ctx, a)
		if err == nil {
			return v
		}
		if !staleNode(err) || ctx.Err() != nil {
			b.t.Fatalf("browsertest: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// staleNode tells the DevTools errors of a node or JavaScript context
// that the page's navigation has just replaced.
func staleNode(err error) bool {
	msg := err.Error()
	for _, s := range []string{"No node with given id found", "Could not find node with given id", "Cannot find context with specified id"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// GrantClipboard lets pages of origin (e.g. "http://127.0.0.1:8025") read
// and write the clipboard without a prompt, so a test can check what a copy
// button put there.
func (b *Browser) GrantClipboard(origin string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, Timeout)
	defer cancel()
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		_, err := chromedp.CallBrowser(ctx, browser.SetPermission, browser.SetPermissionParams{
			Permission: &browser.PermissionDescriptor{Name: name, AllowWithoutSanitization: true},
			Setting:    browser.PermissionSettingGranted,
			Origin:     origin,
		})
		if err != nil {
			b.t.Fatalf("browsertest: granting %s: %v", name, err)
		}
	}
}

// OutputDir is where screenshots go (created if missing).
func OutputDir() (string, error) {
	dir := os.Getenv(OutputEnv)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "syncrelay-screens")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("browsertest: screenshot dir: %w", err)
	}
	return dir, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// Screenshot saves a full-page PNG of the current page as
// <OutputDir>/<TestName>-<name>.png, logs and returns its path.
func (b *Browser) Screenshot(t testing.TB, name string) string {
	t.Helper()
	// chromedp.FullScreenshot, but encoded for speed: the same pixels in a
	// larger PNG, for a fraction of Chromium's CPU (zlib's best compression
	// of a full page took about a fifth of a browser test's time).
	png := Get(b, chromedp.Action[[]byte](func(ctx context.Context, tg *chromedp.Target) ([]byte, error) {
		yes := true
		r, err := cdp.Call(ctx, tg, page.CaptureScreenshot, page.CaptureScreenshotParams{
			CaptureBeyondViewport: &yes,
			FromSurface:           &yes,
			Format:                page.CaptureScreenshotFormatPng,
			OptimizeForSpeed:      &yes,
		})
		if err != nil {
			return nil, err
		}
		return r.Data, nil
	}))
	dir, err := OutputDir()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, unsafeName.ReplaceAllString(t.Name()+"-"+name, "_")+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("browsertest: %v", err)
	}
	t.Logf("screenshot %s", path)
	return path
}
