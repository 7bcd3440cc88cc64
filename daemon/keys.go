package daemon

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"syncrelay/config"
	"syncrelay/token"
)

// Keys are the server secrets, all derived from one master key so an
// operator backs up one file.
type Keys struct {
	Token   []byte // HMAC key of thread tokens
	LogSalt []byte // salt of the Message-ID hash logged for discarded mail
	Grants  []byte // AES-256-GCM key of stored OAuth grants
	State   []byte // HMAC key of OAuth state parameters
	Links   []byte // HMAC key of hosted-page links (package signedlink)
	// Fingerprint names the master key without revealing it (an HMAC of a
	// fixed label under a derived key): recorded with the data, compared at
	// start and by check.
	Fingerprint string
}

func derive(master []byte, label string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte("syncrelay/" + label))
	return m.Sum(nil)
}

// LoadKeys reads the master key (SYNCRELAY_SECRET_KEY or secrets.key_file),
// generating the key file on first start when create is set.
func LoadKeys(c *config.Config, create bool) (*Keys, bool, error) {
	master := c.Secrets.Key
	created := false
	if master == nil {
		path := c.SecretKeyPath()
		data, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist) && create:
			master = make([]byte, config.SecretKeySize)
			if _, err := rand.Read(master); err != nil {
				return nil, false, err
			}
			if err := writeSecretFile(path, hex.EncodeToString(master)+"\n"); err != nil {
				return nil, false, fmt.Errorf("secret key: %w", err)
			}
			created = true
		case err != nil:
			return nil, false, fmt.Errorf("secret key %s: %w", path, err)
		default:
			master, err = hex.DecodeString(strings.TrimSpace(string(data)))
			if err != nil || len(master) != config.SecretKeySize {
				return nil, false, fmt.Errorf("secret key %s: want %d bytes as hex on one line", path, config.SecretKeySize)
			}
		}
	}
	return &Keys{
		Token:   derive(master, "token"),
		LogSalt: derive(master, "log-salt"),
		Grants:  derive(master, "grants"),
		State:   derive(master, "oauth-state"),
		Links:   derive(master, "links"),

		Fingerprint: fingerprint(master),
	}, created, nil
}

func fingerprint(master []byte) string {
	m := hmac.New(sha256.New, derive(master, "key-fingerprint"))
	m.Write([]byte("syncrelay secret key fingerprint v1"))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// Minted reports whether msgid ("sr.TOKEN@host", brackets optional)
// carries a thread token made with these keys, whatever the hostname.
func (k *Keys) Minted(msgid string) bool {
	local, _, ok := strings.Cut(strings.Trim(strings.TrimSpace(msgid), "<>"), "@")
	if !ok || !strings.HasPrefix(strings.ToLower(local), token.Prefix) {
		return false
	}
	kr, err := token.New(k.Token, "localhost")
	if err != nil {
		return false
	}
	_, ok = kr.Parse(local[len(token.Prefix):])
	return ok
}

// KeyMismatchError means the secret key is not the one the data was made with.
type KeyMismatchError struct {
	Source string // the key file, or the environment variable
	Dir    string // store.dir
}

func (e *KeyMismatchError) Error() string {
	return fmt.Sprintf("secret key %s does not match the data in store.dir %s: it is not the key this data was created with; "+
		"restore the key file that was backed up with this store", e.Source, e.Dir)
}

// KeyStore is what the key check needs from the store.
type KeyStore interface {
	HasData(ctx context.Context) (bool, error)
	KeyFingerprint(ctx context.Context) (string, bool, error)
	SetKeyFingerprint(ctx context.Context, fp string) error
	LatestIssuedMessageID(ctx context.Context) (string, bool, error)
}

// OpenKeys loads the master key for the data in st (SPEC §12): it
// generates one only when st holds no data, refuses a key that is not the
// one the data was made with, and records the key's fingerprint with the
// data on first use. A new key next to existing data would make every
// stored grant undecryptable and every reply to earlier mail unmatched,
// while users still show "active".
func OpenKeys(ctx context.Context, c *config.Config, st KeyStore) (keys *Keys, created bool, err error) {
	hasData, err := st.HasData(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("secret key: read the store: %w", err)
	}
	keys, created, err = LoadKeys(c, !hasData)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("secret key %s does not exist, but store.dir %s already holds data: refusing to generate a new key, "+
			"which would make every stored grant undecryptable and every reply to earlier mail unmatched; "+
			"restore the key file that was backed up with this store (or set %s)", c.SecretKeyPath(), c.Store.Dir, config.EnvSecretKey)
	}
	if err != nil {
		return nil, false, err
	}
	match, known, err := KeyMatches(ctx, keys, st)
	if err != nil {
		return nil, false, fmt.Errorf("secret key: read the store: %w", err)
	}
	if known && !match {
		return nil, false, &KeyMismatchError{Source: KeySource(c), Dir: c.Store.Dir}
	}
	if err := st.SetKeyFingerprint(ctx, keys.Fingerprint); err != nil {
		return nil, false, fmt.Errorf("secret key: record its fingerprint: %w", err)
	}
	return keys, created, nil
}

// KeyMatches compares keys with the data in st: by the recorded
// fingerprint, or, for data from before fingerprints were recorded, by the
// latest token syncrelay issued. known is false when the data offers
// neither (a store without sent mail).
func KeyMatches(ctx context.Context, keys *Keys, st KeyStore) (match, known bool, err error) {
	fp, ok, err := st.KeyFingerprint(ctx)
	if err != nil || ok {
		return ok && fp == keys.Fingerprint, ok, err
	}
	id, ok, err := st.LatestIssuedMessageID(ctx)
	if err != nil || !ok {
		return false, false, err
	}
	return keys.Minted(id), true, nil
}

// KeySource names where the master key comes from, for messages.
func KeySource(c *config.Config) string {
	if c.Secrets.Key != nil {
		return "from " + config.EnvSecretKey
	}
	return c.SecretKeyPath()
}

// LoadTokens returns the API bearer tokens: from config, or the dev token
// file, generated on first start. fresh is the token when it was just made
// (the caller prints it once).
func LoadTokens(c *config.Config) (tokens []string, fresh string, err error) {
	if len(c.API.Tokens) > 0 {
		return c.API.Tokens, "", nil
	}
	path := c.APITokenPath()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return nil, "", err
		}
		tok := base64.RawURLEncoding.EncodeToString(b)
		if err := writeSecretFile(path, tok+"\n"); err != nil {
			return nil, "", fmt.Errorf("api token: %w", err)
		}
		return []string{tok}, tok, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("api token %s: %w", path, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			tokens = append(tokens, l)
		}
	}
	if len(tokens) == 0 {
		return nil, "", fmt.Errorf("api token %s: no token in file", path)
	}
	return tokens, "", nil
}

// writeSecretFile creates path with mode 0600, failing if it exists.
func writeSecretFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
