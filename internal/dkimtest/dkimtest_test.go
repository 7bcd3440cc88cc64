package dkimtest

import (
	"bytes"
	"crypto"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// TestKeysSignAndVerify: every key signs a message that verifies against
// its own record and against no other key's record.
func TestKeysSignAndVerify(t *testing.T) {
	type key struct {
		name   string
		signer crypto.Signer
		record string
	}
	var keys []key
	for i := range N {
		r, rrec := RSA(t, i)
		e, erec := Ed25519(t, i)
		if r.N.BitLen() != 2048 {
			t.Fatalf("rsa %d: %d bits", i, r.N.BitLen())
		}
		keys = append(keys, key{fmt.Sprintf("rsa2048-%d", i), r, rrec}, key{fmt.Sprintf("ed25519-%d", i), e, erec})
	}
	const msg = "From: a@cand.test\r\nSubject: x\r\n\r\nhello\r\n"
	for _, k := range keys {
		var signed bytes.Buffer
		if err := dkim.Sign(&signed, strings.NewReader(msg), &dkim.SignOptions{Domain: "cand.test", Selector: "s1", Signer: k.signer}); err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		for _, other := range keys {
			vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed.Bytes()), &dkim.VerifyOptions{
				LookupTXT: func(string) ([]string, error) { return []string{other.record}, nil },
			})
			if err != nil || len(vs) != 1 {
				t.Fatalf("%s: %v %v", k.name, vs, err)
			}
			if ok := vs[0].Err == nil; ok != (other.name == k.name) {
				t.Errorf("%s signed, verified with %s's record: %v", k.name, other.name, vs[0].Err)
			}
		}
	}
}
