package trust

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// refMsgauthTags is msgauthTags as it was before it avoided maps and
// strings.Map (2026-12-07): the reference FuzzMsgauthTags compares with.
func refMsgauthTags(sig string) (keys []string, c string, ok bool) {
	_, v, _ := strings.Cut(sig, ":")
	seen := map[string]bool{}
	var h string
	for _, spec := range strings.Split(strings.TrimSpace(v), ";") {
		k, val, ok := strings.Cut(spec, "=")
		if !ok {
			if strings.TrimSpace(spec) == "" {
				continue
			}
			return nil, "", false
		}
		k = strings.TrimSpace(k)
		if seen[k] {
			return nil, "", false
		}
		seen[k] = true
		switch k {
		case "h":
			h = strings.TrimSpace(val)
		case "c":
			c = strings.TrimSpace(val)
		}
	}
	for _, name := range strings.Split(h, ":") {
		keys = append(keys, strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) {
				return -1
			}
			return r
		}, name))
	}
	return keys, c, true
}

var msgauthTagSeeds = []string{
	"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=cand.test; s=sel;\r\n h=From : To:Subject:\r\n\tDate; bh=AAAA; b=BBBB\r\n",
	"DKIM-Signature: v=1; h=from; h=to\r\n",
	"DKIM-Signature:;;; c = simple ;h=\r\n",
	"DKIM-Signature: v=1; x\r\n",
	"DKIM-Signature: h=a\u00a0b:\u0085c:\xff d\v:\fe",
	"DKIM-Signature: h=a\vb:c\fd:e\r\nf",
	"no colon at all",
	"DKIM-Signature: " + strings.Repeat("t=1; ", 3) + "h=from",
	"DKIM-Signature: " + func() string {
		var b strings.Builder
		for i := range 40 {
			fmt.Fprintf(&b, "x%d=%d; ", i, i)
		}
		return b.String() + "x7=dup; h=from"
	}(),
	"DKIM-Signature: " + func() string {
		var b strings.Builder
		for i := range 40 {
			fmt.Fprintf(&b, "x%d=%d; ", i, i)
		}
		return b.String() + "x39=dup"
	}(),
}

func checkMsgauthTags(t *testing.T, sig string) {
	t.Helper()
	keys, c, ok := msgauthTags(sig)
	wk, wc, wok := refMsgauthTags(sig)
	if ok != wok || c != wc || !slices.Equal(keys, wk) || (keys == nil) != (wk == nil) {
		t.Fatalf("msgauthTags(%q) = %q, %q, %v; before: %q, %q, %v", sig, keys, c, ok, wk, wc, wok)
	}
}

func TestMsgauthTagsMatchesReference(t *testing.T) {
	t.Parallel()
	for _, s := range msgauthTagSeeds {
		checkMsgauthTags(t, s)
	}
}

func FuzzMsgauthTags(f *testing.F) {
	for _, s := range msgauthTagSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sig string) { checkMsgauthTags(t, sig) })
}
