package trust

import (
	"bytes"
	"context"
	"testing"
)

// An ARC-sealed forward (the original DKIM signature broken, the chain
// passing): one DKIM and two ARC signature checks per message, keys cached
// by the resolver.
func BenchmarkVerifyARCCached(b *testing.B) {
	e := newEnv(b)
	keys := map[string]testKey{
		"acme.test":  rsaKey(b, "acme", 2048),
		"google.com": rsaKey(b, "google", 2048),
	}
	e.publish("sel", "acme.test", keys["acme.test"])
	e.publish("arc-20240605", "google.com", keys["google.com"])
	orig := dkimSign(b, message("carl@acme.test", "Re: interview", body), "acme.test", "sel", keys["acme.test"], nil)
	msg := SealForTest(b, forward(orig), googleSeal(keys, origPass))
	ctx := context.Background()
	if v, err := e.v.Verify(ctx, bytes.NewReader(msg)); err != nil || v.ARC.Result != ARCPass {
		b.Fatalf("%v %+v", err, v)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := e.v.Verify(ctx, bytes.NewReader(msg))
		if err != nil || v.ARC.Result != ARCPass {
			b.Fatal(err)
		}
	}
}
