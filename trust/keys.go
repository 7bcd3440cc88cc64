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
	pk, err = parseKeyRecord(txts[0])
	return pk, err, false
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
