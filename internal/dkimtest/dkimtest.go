// Package dkimtest gives tests fixed DKIM keys and their key records, so
// that no test spends seconds generating RSA-2048 keys. The keys are test
// keys only (committed, public): never use them to sign real mail.
//
// The PEM files (PKCS#8) in testdata/dkim were made once with
//
//	for i in 0 1 2 3; do  # RSA: also 4 to 9
//		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048-$i.pem
//		openssl genpkey -algorithm ed25519 -out ed25519-$i.pem
//	done
//
// RSA(t, i) and Ed25519(t, i) return the same as dnstest.GenRSA(t, 2048)
// and dnstest.GenEd25519(t): the key and its DNS record. Tests that need
// several distinct keys take different indexes.
package dkimtest

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"embed"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"sync"
	"testing"
)

// N is how many keys of each kind there are.
const N = 4

//go:embed testdata/dkim/*.pem
var pems embed.FS

// parsed holds the keys already loaded (name -> key): parsing an RSA key
// checks and precomputes it, about 10 ms of CPU, and the router's tests
// load the same few keys once per test. Keys are safe to share: signing
// does not change them.
var parsed sync.Map

func load(t testing.TB, name string) any {
	t.Helper()
	if k, ok := parsed.Load(name); ok {
		return k
	}
	b, err := pems.ReadFile("testdata/dkim/" + name)
	if err != nil {
		t.Fatalf("dkimtest: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("dkimtest: %s is not PEM", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("dkimtest: %s: %v", name, err)
	}
	parsed.Store(name, k)
	return k
}

// RSA returns fixed RSA-2048 key i (0 <= i < N) and its DKIM key record
// ("v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>").
// RSAKeys is how many fixed RSA keys there are (RSA's i is 0 to RSAKeys-1).
const RSAKeys = 10

func RSA(t testing.TB, i int) (*rsa.PrivateKey, string) {
	t.Helper()
	k, ok := load(t, fmt.Sprintf("rsa2048-%d.pem", i)).(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("dkimtest: rsa2048-%d.pem is not an RSA key", i)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatalf("dkimtest: %v", err)
	}
	return k, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// Ed25519 returns fixed Ed25519 key i (0 <= i < N) and its DKIM key record
// (RFC 8463: "v=DKIM1; k=ed25519; p=<base64 raw public key>").
func Ed25519(t testing.TB, i int) (ed25519.PrivateKey, string) {
	t.Helper()
	k, ok := load(t, fmt.Sprintf("ed25519-%d.pem", i)).(ed25519.PrivateKey)
	if !ok {
		t.Fatalf("dkimtest: ed25519-%d.pem is not an Ed25519 key", i)
	}
	return k, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
}
