package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ReadSecret resolves one secret. In order:
//
//   - inline and file both set is an error (keep only one);
//   - the environment variable named env, when set and non-empty, wins;
//   - else the file's content, with one trailing newline ("\n" or "\r\n")
//     stripped; a relative path is relative to the config file's directory;
//     an empty file is an error;
//   - else inline ("" when nothing is set).
//
// Error messages never contain the secret.
func (c *Config) ReadSecret(inline, file, env string) (string, error) {
	if inline != "" && file != "" {
		return "", errors.New("secret given both inline and as a file; keep only one")
	}
	if env != "" {
		if v, ok := os.LookupEnv(env); ok && v != "" {
			return v, nil
		}
	}
	if file == "" {
		return inline, nil
	}
	var src *source
	if c != nil {
		src = c.src
	}
	path := src.abs(file)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read secret file: %w", err)
	}
	s := string(b)
	if strings.HasSuffix(s, "\r\n") {
		s = s[:len(s)-2]
	} else if strings.HasSuffix(s, "\n") {
		s = s[:len(s)-1]
	}
	if s == "" {
		return "", fmt.Errorf("secret file %q is empty", path)
	}
	return s, nil
}

// lookupEnv returns the value of an environment variable; empty counts as
// unset.
func lookupEnv(name string) (string, bool) {
	v, ok := os.LookupEnv(name)
	return v, ok && v != ""
}

// applyEnv applies the non-string-secret environment overrides.
func (c *Config) applyEnv() []error {
	var errs []error
	if v, ok := lookupEnv(EnvSecretKey); ok {
		key, err := hex.DecodeString(strings.TrimSpace(v))
		switch {
		case err != nil:
			errs = append(errs, &Error{Key: EnvSecretKey, Msg: fmt.Sprintf(
				"not valid hex; give %d random bytes as %d hex characters (e.g. from `openssl rand -hex %d`)",
				SecretKeySize, 2*SecretKeySize, SecretKeySize)})
		case len(key) != SecretKeySize:
			errs = append(errs, &Error{Key: EnvSecretKey, Msg: fmt.Sprintf(
				"decodes to %d bytes, want %d (%d hex characters, e.g. from `openssl rand -hex %d`)",
				len(key), SecretKeySize, 2*SecretKeySize, SecretKeySize)})
		default:
			c.Secrets.Key = key
		}
	}
	if v, ok := lookupEnv(EnvAPITokens); ok {
		c.API.Tokens = splitTokens(v, ",")
		if len(c.API.Tokens) == 0 {
			errs = append(errs, &Error{Key: EnvAPITokens,
				Msg: "contains no tokens; give one or more tokens separated by commas, or unset it"})
		}
	}
	return errs
}

// resolveSecrets reads the *_file secrets into their plain fields, applying
// the environment overrides, and reads the API tokens file.
func (c *Config) resolveSecrets() []error {
	var errs []error
	refs := []struct {
		key, fileKey, env string
		inline, file      *string
	}{
		{"webhooks.secret", "webhooks.secret_file", EnvWebhooksSecret,
			&c.Webhooks.Secret, &c.Webhooks.SecretFile},
		{"providers.google.client_secret", "providers.google.client_secret_file", EnvGoogleClientSecret,
			&c.Providers.Google.ClientSecret, &c.Providers.Google.ClientSecretFile},
		{"providers.microsoft.client_secret", "providers.microsoft.client_secret_file", EnvMicrosoftClientSecret,
			&c.Providers.Microsoft.ClientSecret, &c.Providers.Microsoft.ClientSecretFile},
		{"store.dsn", "store.dsn_file", EnvStoreDSN, &c.Store.DSN, &c.Store.DSNFile},
	}
	for _, r := range refs {
		if *r.inline != "" && *r.file != "" {
			errs = append(errs, c.errAt(r.fileKey, "%s is set too; give the secret either inline or as a file, not both (or only in %s)",
				r.key, r.env))
			continue
		}
		v, err := c.ReadSecret(*r.inline, *r.file, r.env)
		if err != nil {
			errs = append(errs, c.errAt(r.fileKey, "%v; fix the path, or set %s", err, r.env))
			continue
		}
		*r.inline = v
	}

	if c.API.Tokens == nil && c.API.TokensFile != "" {
		b, err := os.ReadFile(c.API.TokensFile)
		switch {
		case err != nil:
			errs = append(errs, c.errAt("api.tokens_file", "cannot read: %v; create it with one token a line, or set %s", err, EnvAPITokens))
		default:
			c.API.Tokens = splitTokens(string(b), "\n")
			if len(c.API.Tokens) == 0 {
				errs = append(errs, c.errAt("api.tokens_file", "%q contains no tokens; put one token a line (lines starting with # are comments)", c.API.TokensFile))
			}
		}
	}
	return errs
}

// splitTokens splits s on sep, trims spaces and drops empty entries and
// # comments.
func splitTokens(s, sep string) []string {
	var out []string
	for _, t := range strings.Split(s, sep) {
		t = strings.TrimSpace(t)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, t)
	}
	return out
}
