package trust

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"

	"syncrelay/dnsres"
)

// keyFetcher is a per-Verify memo in front of the resolver. It lets the
// policy checks see the exact key record go-msgauth verified with (for the
// RSA key size), gives ARC and DKIM one lookup per name, and guarantees the
// errors handed to go-msgauth are net.Errors whose Temporary() is right.
type keyFetcher struct {
	res  dnsres.Resolver
	mu   sync.Mutex
	memo map[string]*lookup
}

type lookup struct {
	done chan struct{}
	txts []string
	err  error
}

func newKeyFetcher(res dnsres.Resolver) *keyFetcher {
	return &keyFetcher{res: res, memo: make(map[string]*lookup)}
}

func (k *keyFetcher) lookupTXT(ctx context.Context, name string) ([]string, error) {
	key := strings.ToLower(strings.TrimSuffix(name, "."))
	k.mu.Lock()
	l, ok := k.memo[key]
	if !ok {
		l = &lookup{done: make(chan struct{})}
		k.memo[key] = l
	}
	k.mu.Unlock()
	if ok {
		select {
		case <-l.done:
			return l.txts, l.err
		case <-ctx.Done():
			return nil, &net.DNSError{Err: "lookup cancelled", Name: name, IsTemporary: true, IsTimeout: errors.Is(ctx.Err(), context.DeadlineExceeded)}
		}
	}
	txts, err := k.res.LookupTXT(ctx, name)
	l.txts, l.err = txts, normalizeLookupError(name, err)
	close(l.done)
	return l.txts, l.err
}

// normalizeLookupError makes sure a temporary failure reaches go-msgauth as
// a net.Error with Temporary() true (its only test for "temperror"), whatever
// Resolver implementation is plugged in.
func normalizeLookupError(name string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(net.Error); ok {
		return err
	}
	if dnsres.IsTemporary(err) {
		return &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true, UnwrapErr: err,
			IsTimeout: errors.Is(err, context.DeadlineExceeded)}
	}
	return &net.DNSError{Err: err.Error(), Name: name, IsNotFound: dnsres.IsNotFound(err), UnwrapErr: err}
}

// recorded returns what an earlier lookup of name answered.
func (k *keyFetcher) recorded(name string) ([]string, bool) {
	key := strings.ToLower(strings.TrimSuffix(name, "."))
	k.mu.Lock()
	l, ok := k.memo[key]
	k.mu.Unlock()
	if !ok {
		return nil, false
	}
	select {
	case <-l.done:
		return l.txts, l.err == nil
	default:
		return nil, false
	}
}

// key fetches and parses the DKIM key record at name. temp reports a
// temporary DNS failure.
func (k *keyFetcher) key(ctx context.Context, name string) (pk *publicKey, err error, temp bool) {
	txts, err := k.lookupTXT(ctx, name)
	if err != nil {
		return nil, err, dnsres.IsTemporary(err)
	}
	switch len(txts) {
	case 0:
		return nil, errors.New("no key record"), false
	case 1:
	default:
		return nil, errors.New("several key records"), false
	}
	pk, err = cachedKeyRecord(txts[0])
	return pk, err, false
}

// parsedKeys memoises parseKeyRecord by the exact TXT record: base64 and
// x509 parsing of an RSA key costs more than hashing a typical message, and
// the same few sealers' keys come back on every ARC-sealed message. The
// result is a pure function of the record, and a *publicKey is never
// modified after parsing, so entries are shared freely. Bounded: when full,
// an arbitrary entry makes room.
var parsedKeys = struct {
	sync.Mutex
	m map[string]parsedKey
}{m: make(map[string]parsedKey)}

// At most 256 records of at most 4 KiB (a 4096-bit RSA key record is
// under 1 KiB): the cache stays under about 1 MiB.
const (
	parsedKeysMax      = 256
	maxCachedKeyRecord = 4 << 10
)

type parsedKey struct {
	pk  *publicKey
	err error
}

func cachedKeyRecord(txt string) (*publicKey, error) {
	parsedKeys.Lock()
	e, ok := parsedKeys.m[txt]
	parsedKeys.Unlock()
	if ok {
		return e.pk, e.err
	}
	pk, err := parseKeyRecord(txt)
	if len(txt) > maxCachedKeyRecord {
		return pk, err
	}
	parsedKeys.Lock()
	if len(parsedKeys.m) >= parsedKeysMax {
		for k := range parsedKeys.m {
			delete(parsedKeys.m, k)
			break
		}
	}
	// Cloned so the key does not pin a larger buffer the resolver may have
	// sliced it from.
	parsedKeys.m[strings.Clone(txt)] = parsedKey{pk, err}
	parsedKeys.Unlock()
	return pk, err
}

// prefetch looks names up concurrently (at most 8 at a time).
func (k *keyFetcher) prefetch(ctx context.Context, names []string) {
	seen := map[string]bool{}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, n := range names {
		if seen[strings.ToLower(n)] || strings.HasPrefix(n, ".") || strings.HasSuffix(n, "._domainkey.") {
			continue
		}
		seen[strings.ToLower(n)] = true
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			k.lookupTXT(ctx, n)
		}()
	}
	wg.Wait()
}
