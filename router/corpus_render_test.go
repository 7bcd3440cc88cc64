package router

// -render DIR writes the corpus as TestCorpus replays it, for the CLI
// (README, "Replaying the corpus"):
//
//	DIR/acme/NN-name.eml, DIR/beta/NN-name.eml
//	             the rendered files (tokens minted, DKIM-signed, ARC-sealed),
//	             in a directory per receiving tenant
//	DIR/zone.txt the DKIM keys of every signer and sealer (dns.zone_file)
//	DIR/data/    the seed store: the tenants, users, candidates and the
//	             threads the files reply to, before any file is delivered;
//	             DIR/data/secret.key is the fixed corpus key
//	DIR/syncrelay.toml
//	             a config naming all of these (hostname relay.test)
//
// so that, in DIR/acme, `syncrelay replay -config ../syncrelay.toml
// -tenant acme *.eml` prints acme's lines of golden.jsonl.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"syncrelay/store/bolt"
)

// corpusSecretKey is the rendered corpus's server secret key (the
// daemon's secret.key). Fixed, and public: it is test data.
var corpusSecretKey = bytes.Repeat([]byte{0x5a}, 32)

// daemonTokenKey derives the thread-token key from a secret key as the
// daemon does (daemon.LoadKeys; package daemon imports this one, so it
// cannot be called from here). If the two ever differ, the daemon refuses
// the rendered store (its issued Message-IDs do not verify) and
// cmd/syncrelay's replay tests fail.
func daemonTokenKey(master []byte) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte("syncrelay/token"))
	return m.Sum(nil)
}

const renderedConfig = `# The replay corpus, rendered by: go test ./router -run '^TestCorpus$' -render DIR
# Test data, not for production: a published secret key, test DKIM keys.
[smtp]
hostname = "relay.test"

[store]
dir = "data" # relative to this file; data/secret.key is the corpus key

[dns]
zone_file = "zone.txt"
`

func writeRenderedCorpus(t *testing.T, e *env, dir string, tpls []*corpusTemplate, raws []string) {
	t.Helper()
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		t.Fatalf("-render %s: the directory is not empty", dir)
	}
	write := func(path, data string, mode os.FileMode) {
		must(t, os.MkdirAll(filepath.Dir(path), 0o755))
		must(t, os.WriteFile(path, []byte(data), mode))
	}
	for i, tpl := range tpls {
		write(filepath.Join(dir, tpl.tenant, tpl.file), raws[i], 0o644)
	}

	var zone strings.Builder
	zone.WriteString("# DKIM keys of the corpus's signers and sealers (selector s1)\n")
	names := make([]string, 0, len(e.txt))
	for n := range e.txt {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// One TXT record as character-strings of at most 255 bytes.
		txt := e.txt[n]
		var parts []string
		for len(txt) > 255 {
			parts, txt = append(parts, fmt.Sprintf("%q", txt[:255])), txt[255:]
		}
		parts = append(parts, fmt.Sprintf("%q", txt))
		fmt.Fprintf(&zone, "%s TXT %s\n", n, strings.Join(parts, " "))
	}
	write(filepath.Join(dir, "zone.txt"), zone.String(), 0o644)

	// The store as it is now (every thread created, no file delivered),
	// copied the supported way: a backup restored.
	ctx := context.Background()
	var archive bytes.Buffer
	_, err := e.st.Backup(ctx, &archive)
	must(t, err)
	_, err = bolt.Restore(ctx, &archive, filepath.Join(dir, "data"))
	must(t, err)
	write(filepath.Join(dir, "data", "secret.key"), hex.EncodeToString(corpusSecretKey)+"\n", 0o600)
	write(filepath.Join(dir, "syncrelay.toml"), renderedConfig, 0o644)
	t.Logf("rendered %d files into %s", len(tpls), dir)
}
