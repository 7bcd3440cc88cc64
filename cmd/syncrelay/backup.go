package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"syncrelay/config"
	"syncrelay/daemon"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// `syncrelay backup -o FILE` writes a consistent backup archive (see
// store/backup.go) while the daemon runs. The daemon holds the database's
// exclusive lock, so the CLI first tries to open the store itself
// (read-only, which only works when no daemon runs) and otherwise asks
// the running daemon for the archive (GET /v1/admin/backup, with an API
// token from the config). The archive is checked end to end before the
// command reports success; a file is written under a temporary name and
// renamed into place only then.
//
// `syncrelay restore FILE` unpacks an archive into an empty store.dir.

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("backup", "backup [-config FILE] -o FILE|- [-url URL]", stderr)
	cfgPath := fs.String("config", "", "config file (TOML)")
	out := fs.String("o", "", "write the archive to this file (\"-\": standard output); it must not exist")
	base := fs.String("url", "", "base URL of the running daemon's API (default: from http.listen)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "syncrelay backup: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *out == "" {
		fmt.Fprintln(stderr, "syncrelay backup: -o FILE is required")
		fs.Usage()
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	if c.Store.Backend == config.BackendPostgres {
		fmt.Fprint(stderr, postgresBackupHelp)
		return 1
	}
	if *out != "-" {
		if _, err := os.Lstat(*out); err == nil {
			fmt.Fprintf(stderr, "syncrelay backup: %s already exists; remove it or choose another name\n", *out)
			return 1
		}
	}
	src, err := openBackupSource(c, *base)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay backup: %v\n", err)
		return 1
	}
	defer src.close()

	var m *store.BackupManifest
	if *out == "-" {
		m, err = backupToStream(ctx, src, stdout)
	} else {
		m, err = backupToFile(ctx, src, *out)
	}
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay backup: %v\n", err)
		return 1
	}
	where := *out
	if where == "-" {
		where = "standard output"
	}
	fmt.Fprintf(stderr, "syncrelay backup: wrote %s (%s): %d tenants, %d messages, %d raw files, %s in all\n"+
		"  the secret key (%s) is not in the archive: keep a copy of it apart, restore needs it\n",
		where, src.how, m.Tenants, m.Messages, m.RawFiles, humanBytes(m.DBBytes+m.RawBytes), c.SecretKeyPath())
	return 0
}

// postgresBackupHelp is what `syncrelay backup` says with the postgres
// backend: the database is the whole state, and PostgreSQL's tools back
// it up consistently while every node keeps running.
const postgresBackupHelp = `syncrelay backup: store.backend is "postgres": syncrelay does not write this backup.
  The PostgreSQL database at store.dsn holds all of syncrelay's state (records and raw messages);
  back it up with PostgreSQL's tools, for example:
    pg_dump --format=custom --file=syncrelay.dump "$SYNCRELAY_STORE_DSN"
  or base backups with WAL archiving (point-in-time recovery) from your database provider.
  Keep the secret key (secrets.key_file or SYNCRELAY_SECRET_KEY) apart: restore needs it.
`

// backupSource is either the store opened read-only or the daemon's API.
type backupSource struct {
	how    string
	st     *bolt.Store
	client *adminClient
}

func (b *backupSource) close() {
	if b.st != nil {
		b.st.Close()
	}
}

func (b *backupSource) write(ctx context.Context, w io.Writer) error {
	if b.st != nil {
		_, err := b.st.Backup(ctx, w)
		return err
	}
	return b.client.backup(ctx, w)
}

func openBackupSource(c *config.Config, base string) (*backupSource, error) {
	if _, err := os.Stat(c.DBPath()); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no store at %s (check store.dir, or -config)", c.Store.Dir)
	}
	st, err := bolt.Open(c.Store.Dir, bolt.Options{ReadOnly: true, LockTimeout: 300 * time.Millisecond})
	if err == nil {
		return &backupSource{how: "no daemon running: read the store directly", st: st}, nil
	}
	if !errors.Is(err, store.ErrLocked) {
		return nil, err
	}
	cl, err := newAdminClient(c)
	if err != nil {
		return nil, fmt.Errorf("the daemon holds the store, and %w", err)
	}
	if base != "" {
		cl.base = strings.TrimSuffix(base, "/")
	}
	return &backupSource{how: "through the running daemon at " + cl.base, client: cl}, nil
}

func backupToFile(ctx context.Context, src *backupSource, path string) (*store.BackupManifest, error) {
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := src.write(ctx, f); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	m, err := bolt.VerifyBackup(ctx, bufferedReader(f))
	if err != nil {
		return nil, fmt.Errorf("the archive failed its check, not keeping it: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return m, nil
}

// backupToStream writes the archive to w while checking it on the way.
func backupToStream(ctx context.Context, src *backupSource, w io.Writer) (*store.BackupManifest, error) {
	pr, pw := io.Pipe()
	type result struct {
		m   *store.BackupManifest
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := bolt.VerifyBackup(ctx, pr)
		io.Copy(io.Discard, pr) // keep the writer going whatever happened
		done <- result{m, err}
	}()
	err := src.write(ctx, io.MultiWriter(w, pw))
	pw.CloseWithError(err)
	res := <-done
	if err != nil {
		return nil, err
	}
	if res.err != nil {
		return nil, fmt.Errorf("the archive written failed its check: %w", res.err)
	}
	return res.m, nil
}

func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("restore", "restore [-config FILE] FILE|-", stderr)
	cfgPath := fs.String("config", "", "config file (TOML): the backup is restored into its store.dir")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "syncrelay restore: give one backup archive (\"-\": standard input)")
		fs.Usage()
		return 2
	}
	c, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	if c.Store.Backend == config.BackendPostgres {
		fmt.Fprintln(stderr, `syncrelay restore: store.backend is "postgres": archives of syncrelay backup are bbolt stores; restore the database with PostgreSQL's tools (pg_restore, or point-in-time recovery)`)
		return 1
	}
	dir := c.Store.Dir
	if err := restorableDir(dir); err != nil {
		fmt.Fprintf(stderr, "syncrelay restore: %v\n", err)
		return 1
	}
	var in io.Reader = os.Stdin
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(stderr, "syncrelay restore: %v\n", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	res, err := bolt.Restore(ctx, bufferedReader(in), dir)
	if err != nil {
		fmt.Fprintf(stderr, "syncrelay restore: %v\n  %s was left as it was\n", err, dir)
		return 1
	}
	m := res.Manifest
	fmt.Fprintf(stdout, "restored the backup of %s into %s: %d tenants, %d messages, %d raw files\n",
		m.CreatedAt.Format(time.RFC3339), dir, m.Tenants, m.Messages, m.RawFiles)

	keys, _, err := daemon.LoadKeys(c, false)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "WARNING: no usable secret key (%v).\n"+
			"  Copy secret.key from the old server to %s (or set %s) BEFORE starting the daemon:\n"+
			"  a new key would make every reply to earlier mail unmatchable.\n", err, c.SecretKeyPath(), config.EnvSecretKey)
	default:
		if st, err := bolt.Open(dir, bolt.Options{ReadOnly: true}); err == nil {
			if match, known, err := daemon.KeyMatches(ctx, keys, st); err == nil && known && !match {
				fmt.Fprintf(stderr, "WARNING: the secret key at %s does not match the data in this backup (the daemon will refuse to start with it); use the key of the server the backup came from.\n", c.SecretKeyPath())
			}
			st.Close()
		}
	}
	fmt.Fprintf(stdout, "next: syncrelay check -config %s, then start the daemon\n", orDefault(*cfgPath, "FILE"))
	return 0
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// restorableDir accepts a missing or empty store.dir; the only files it
// may already hold are the secret key and the API token file, which
// backups deliberately do not contain and an operator copies in first.
func restorableDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var other []string
	for _, e := range ents {
		switch e.Name() {
		case config.SecretKeyFileName, config.APITokenFileName, "lost+found":
		default:
			other = append(other, e.Name())
		}
	}
	if len(other) > 0 {
		return fmt.Errorf("store.dir %s is not empty (it holds %s); restore only into an empty data directory (secret.key and api-token may be there)",
			dir, strings.Join(other, ", "))
	}
	return nil
}

// --- the running daemon's API ---

// adminClient talks to the running daemon's API with a token from the
// config (SYNCRELAY_API_TOKENS, api.tokens_file, or the dev token file).
type adminClient struct {
	base  string
	token string
	hc    *http.Client
}

func newAdminClient(c *config.Config) (*adminClient, error) {
	tok := ""
	if len(c.API.Tokens) > 0 {
		tok = c.API.Tokens[0]
	} else {
		data, err := os.ReadFile(c.APITokenPath())
		if err != nil {
			return nil, fmt.Errorf("no API token to ask the daemon with: %w (set api.tokens_file or %s)", err, config.EnvAPITokens)
		}
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				tok = l
				break
			}
		}
		if tok == "" {
			return nil, fmt.Errorf("no API token in %s", c.APITokenPath())
		}
	}
	host, port, err := net.SplitHostPort(c.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http.listen %q: %w", c.HTTP.Listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return &adminClient{base: "http://" + net.JoinHostPort(host, port), token: tok, hc: &http.Client{}}, nil
}

func (a *adminClient) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", a.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &p) == nil && p.Title != "" {
			return nil, fmt.Errorf("GET %s: %s: %s: %s", path, resp.Status, p.Title, p.Detail)
		}
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return resp, nil
}

func (a *adminClient) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := a.get(ctx, "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func (a *adminClient) tenants(ctx context.Context) ([]*store.Tenant, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := a.get(ctx, "/v1/tenants")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Tenants []*store.Tenant `json:"tenants"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("GET /v1/tenants: %w", err)
	}
	return out.Tenants, nil
}

// keyFingerprint asks the daemon for the secret key fingerprint recorded
// with the data ("" when none is).
func (a *adminClient) keyFingerprint(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := a.get(ctx, "/v1/admin/key-fingerprint")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Fingerprint string `json:"key_fingerprint"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("GET /v1/admin/key-fingerprint: %w", err)
	}
	return out.Fingerprint, nil
}

func (a *adminClient) backup(ctx context.Context, w io.Writer) error {
	resp, err := a.get(ctx, "/v1/admin/backup")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-tar" {
		return fmt.Errorf("GET /v1/admin/backup: unexpected Content-Type %q", ct)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET /v1/admin/backup: the transfer broke off: %w", err)
	}
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func bufferedReader(r io.Reader) io.Reader { return bufio.NewReaderSize(r, 1<<20) }
