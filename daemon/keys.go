package daemon

import (
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
)

// Keys are the server secrets, all derived from one master key so an
// operator backs up one file.
type Keys struct {
	Token   []byte // HMAC key of thread tokens
	LogSalt []byte // salt of the Message-ID hash logged for discarded mail
	Grants  []byte // AES-256-GCM key of stored OAuth grants
	State   []byte // HMAC key of OAuth state parameters
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
	}, created, nil
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
