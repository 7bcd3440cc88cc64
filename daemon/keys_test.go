package daemon

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"syncrelay/config"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

// legacyStore is a store with a sent message minted with master but no
// recorded key fingerprint, as stores written before fingerprints are.
func legacyStore(t *testing.T, dir string, master []byte) {
	t.Helper()
	st, err := bolt.Open(dir, bolt.Options{})
	mustT(t, err)
	defer st.Close()
	kr, err := token.New(fingerprintTestKeys(master).Token, "relay.test")
	mustT(t, err)
	ctx := context.Background()
	mustT(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Provider: "google", InboundAddress: "acme-x@relay.test"}))
	mustT(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}))
	th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec"}
	m := store.Message{From: "rec@acme.test", SentBy: "u-rec", Status: "sent"}
	mustT(t, st.CreateOutbound(ctx, &th, &m, func(thread, id uint64) (string, string) {
		return strings.Trim(kr.MessageID(token.ID{Tenant: "acme", Thread: thread, Message: id}), "<>"), ""
	}))
}

func fingerprintTestKeys(master []byte) *Keys {
	return &Keys{Token: derive(master, "token"), Fingerprint: fingerprint(master)}
}

func TestOpenKeys(t *testing.T) {
	right := make([]byte, config.SecretKeySize)
	right[0] = 1
	wrong := make([]byte, config.SecretKeySize)
	wrong[0] = 2
	tests := []struct {
		name    string
		seed    func(t *testing.T, dir string)
		key     []byte // written to the key file; nil: no key file
		wantErr string
		created bool
	}{
		{"empty store generates", func(*testing.T, string) {}, nil, "", true},
		{"empty store, key given", func(*testing.T, string) {}, right, "", false},
		{"legacy data, its key", func(t *testing.T, dir string) { legacyStore(t, dir, right) }, right, "", false},
		{"legacy data, another key", func(t *testing.T, dir string) { legacyStore(t, dir, right) }, wrong, "does not match the data in store.dir", false},
		{"legacy data, no key", func(t *testing.T, dir string) { legacyStore(t, dir, right) }, nil, "does not exist, but store.dir", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.seed(t, dir)
			c := &config.Config{Store: config.Store{Dir: dir}}
			if tt.key != nil {
				mustT(t, os.WriteFile(c.SecretKeyPath(), []byte(hex.EncodeToString(tt.key)+"\n"), 0o600))
			}
			st, err := bolt.Open(dir, bolt.Options{})
			mustT(t, err)
			defer st.Close()
			ctx := context.Background()
			keys, created, err := OpenKeys(ctx, c, st)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), c.SecretKeyPath()) {
					t.Fatalf("OpenKeys = %v, want an error naming %s and saying %q", err, c.SecretKeyPath(), tt.wantErr)
				}
				var km *KeyMismatchError
				if strings.Contains(tt.wantErr, "match") && !errors.As(err, &km) {
					t.Errorf("error %v is not a KeyMismatchError", err)
				}
				if _, ok, _ := st.KeyFingerprint(ctx); ok {
					t.Error("a refused key's fingerprint was recorded")
				}
				return
			}
			if err != nil || created != tt.created {
				t.Fatalf("OpenKeys: created %v, %v; want created %v", created, err, tt.created)
			}
			if fp, ok, _ := st.KeyFingerprint(ctx); !ok || fp != keys.Fingerprint {
				t.Fatalf("recorded fingerprint %q %v, want %q", fp, ok, keys.Fingerprint)
			}
			// The next start with the same key passes; with another it is refused.
			if _, _, err := OpenKeys(ctx, c, st); err != nil {
				t.Fatalf("second start: %v", err)
			}
			c.Secrets.Key = wrong
			var km *KeyMismatchError
			if _, _, err := OpenKeys(ctx, c, st); !errors.As(err, &km) || !strings.Contains(err.Error(), "secret key from "+config.EnvSecretKey+" does not match") {
				t.Fatalf("another key from the environment: %v", err)
			}
		})
	}
}

func TestFingerprintRevealsNothing(t *testing.T) {
	master := make([]byte, config.SecretKeySize)
	for i := range master {
		master[i] = byte(i)
	}
	fp := fingerprint(master)
	if len(fp) != 32 || strings.Contains(fp, hex.EncodeToString(master[:4])) {
		t.Fatalf("fingerprint %q", fp)
	}
	k := fingerprintTestKeys(master)
	for _, d := range [][]byte{k.Token, derive(master, "grants"), derive(master, "log-salt")} {
		if strings.Contains(hex.EncodeToString(d), fp) {
			t.Fatal("the fingerprint is part of a derived key")
		}
	}
}
