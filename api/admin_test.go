package api

import (
	"context"
	"testing"
)

// TestAdminKeyFingerprint: `syncrelay check` compares its key with the data
// while the daemon holds the store's lock by asking for the fingerprint
// recorded in the store.
func TestAdminKeyFingerprint(t *testing.T) {
	t.Parallel()
	hs, _, st := newTestServer(t)
	const path = "/v1/admin/key-fingerprint"
	if code, _, _ := do(t, hs, "GET", path, "", ""); code != 401 {
		t.Fatalf("without a token: %d", code)
	}
	code, _, p := do(t, hs, "GET", path, testToken, "")
	if code != 404 {
		t.Fatalf("nothing recorded: %d %v", code, p)
	}
	checkSchema(t, "Problem", p)
	if err := st.SetKeyFingerprint(context.Background(), "0123abcd"); err != nil {
		t.Fatal(err)
	}
	code, _, m := do(t, hs, "GET", path, testToken, "")
	if code != 200 || m["key_fingerprint"] != "0123abcd" || len(m) != 1 {
		t.Fatalf("recorded: %d %v", code, m)
	}
	checkSchema(t, "KeyFingerprint", m)
}
