package trust

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// poolCase is one Verify call of TestVerifyReusesBuffersSafely.
type poolCase struct {
	name string
	v    *Verifier
	msg  []byte
	rd   func() io.Reader // overrides msg
}

func (c poolCase) run() (Verdict, error) {
	var r io.Reader = bytes.NewReader(c.msg)
	if c.rd != nil {
		r = c.rd()
	}
	return c.v.Verify(context.Background(), r)
}

// Verify reuses its buffers across calls (verifyPool). Messages of very
// different sizes and shapes, failed calls in between, and concurrent calls
// must all give the verdict each message gets on its own: a stale byte of
// an earlier message in a reused buffer would break a body hash or a field.
func TestVerifyReusesBuffersSafely(t *testing.T) {
	t.Parallel()
	e, keys := arcEnv(t)
	e.publish("rsa", "acme.test", keys["acme.test"])

	// Longer than Verify's 64 KiB buffer, with whitespace the relaxed body
	// canonicalisation must fold.
	var big strings.Builder
	for i := 0; big.Len() < 200<<10; i++ {
		fmt.Fprintf(&big, "line %d of a long body \t  with  spaces \r\n", i)
	}
	bigSigned := dkimSign(t, message("carl@acme.test", "big", big.String()), "acme.test", "sel", keys["acme.test"], nil)
	bigARC := SealForTest(t, bigSigned, googleSeal(keys, origPass)) // DKIM and ARC both hash the body
	small := dkimSign(t, message("dana@acme.test", "small", body), "acme.test", "rsa", keys["acme.test"], nil)
	tampered := bytes.Replace(small, []byte("interview"), []byte("interveiw"), 1)
	twoSigs := dkimSign(t, small, "microsoft.com", "arcselector9901", keys["microsoft.com"], nil)
	// A header line longer than the read buffer and the pooled scratch.
	longHeader := append([]byte("X-Long: "+strings.Repeat("y", 100<<10)+"\r\n"), small...)
	headerOnly := []byte("From: erin@acme.test\r\nSubject: no body separator")

	strict := &Verifier{Resolver: e.res, MaxHeaderBytes: 4096}
	cases := []poolCase{
		{name: "bigARC", v: e.v, msg: bigARC},
		{name: "small", v: e.v, msg: small},
		{name: "tampered", v: e.v, msg: tampered},
		{name: "twoSigs", v: e.v, msg: twoSigs},
		{name: "longHeader", v: e.v, msg: longHeader},
		{name: "headerOnly", v: e.v, msg: headerOnly},
	}
	failing := []poolCase{
		{name: "headerTooLarge", v: strict, msg: longHeader},
		{name: "readErrorInBody", v: e.v, rd: func() io.Reader {
			return io.MultiReader(bytes.NewReader(bigARC[:len(bigARC)/2]), errReader{})
		}},
		{name: "readErrorInHeader", v: e.v, rd: func() io.Reader {
			return io.MultiReader(bytes.NewReader(small[:40]), errReader{})
		}},
	}

	want := map[string]Verdict{}
	for _, c := range cases {
		v, err := c.run()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want[c.name] = v
	}
	// What each message must give, so the reference itself is right.
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Fatalf("%s: unexpected verdict %+v", name, want[name])
		}
	}
	v := want["bigARC"]
	check("bigARC", v.Pass && len(v.DKIM) == 1 && v.DKIM[0].Result == ResultPass && v.ARC.Result == ARCPass)
	v = want["small"]
	check("small", v.Pass && v.FromDomain == "acme.test" && len(v.DKIM) == 1 && v.ARC.Result == ARCNone)
	v = want["tampered"]
	check("tampered", !v.Pass && len(v.DKIM) == 1 && v.DKIM[0].Result == ResultFail && strings.Contains(v.DKIM[0].Reason, "body hash"))
	v = want["twoSigs"]
	check("twoSigs", v.Pass && len(v.DKIM) == 2 && v.DKIM[0].Result == ResultPass && v.DKIM[1].Result == ResultPass)
	v = want["longHeader"]
	check("longHeader", v.Pass && len(v.DKIM) == 1)
	v = want["headerOnly"]
	check("headerOnly", !v.Pass && len(v.DKIM) == 0 && v.ARC.Result == ARCNone && v.FromDomain == "acme.test")

	verifyOne := func(c poolCase) error {
		v, err := c.run()
		if w, ok := want[c.name]; ok {
			if err != nil {
				return fmt.Errorf("%s: %v", c.name, err)
			}
			if !reflect.DeepEqual(v, w) {
				return fmt.Errorf("%s: verdict changed\ngot  %+v\nwant %+v", c.name, v, w)
			}
			return nil
		}
		if err == nil {
			return fmt.Errorf("%s: want an error", c.name)
		}
		if c.name == "headerTooLarge" && !errors.Is(err, ErrHeaderTooLarge) {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		return nil
	}

	// Sequentially, every message after every other one (and after every
	// failed call), so each follows a larger and a smaller one.
	all := append(append([]poolCase{}, cases...), failing...)
	for _, a := range all {
		for _, b := range all {
			if err := verifyOne(a); err != nil {
				t.Fatal(err)
			}
			if err := verifyOne(b); err != nil {
				t.Fatalf("after %s: %v", a.name, err)
			}
		}
	}

	// Concurrently (run with -race).
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3*len(all); i++ {
				if err := verifyOne(all[(g+i)%len(all)]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// msgReader must read like the io.MultiReader it replaces, whatever the
// read sizes, and WriteTo must give the same bytes.
func TestMsgReader(t *testing.T) {
	t.Parallel()
	fields := []string{"A: 1\r\n", "B: 2\r\n\tcont\r\n", "C:3\r\n"}
	bodyText := strings.Repeat("body line\r\n", 1000)
	want := strings.Join(fields, "") + crlf + bodyText
	newMsg := func() *msgReader {
		return &msgReader{fields: fields, body: bufio.NewReader(strings.NewReader(bodyText))}
	}
	if err := iotest.TestReader(newMsg(), []byte(want)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(iotest.OneByteReader(newMsg()))
	if err != nil || string(got) != want {
		t.Fatalf("one byte at a time: %v", err)
	}
	// WriteTo after a partial Read, header included.
	for _, n := range []int{0, 3, 6, 25, len(want) - len(bodyText), len(want) - 5} {
		m := newMsg()
		head := make([]byte, n)
		if _, err := io.ReadFull(m, head); err != nil {
			t.Fatal(err)
		}
		var rest bytes.Buffer
		w, err := m.WriteTo(&rest)
		if err != nil || int(w) != len(want)-n || string(head)+rest.String() != want {
			t.Fatalf("read %d then WriteTo: %d %v", n, w, err)
		}
	}
	// No header fields at all: just the separator.
	m := &msgReader{body: bufio.NewReader(strings.NewReader("x"))}
	if got, _ := io.ReadAll(m); string(got) != "\r\nx" {
		t.Fatalf("%q", got)
	}
}

// teeBody is io.TeeReader with a WriteTo: both ways, the tee sees every byte.
func TestTeeBody(t *testing.T) {
	t.Parallel()
	text := strings.Repeat("0123456789", 10000)
	for _, viaWriteTo := range []bool{false, true} {
		var side, out bytes.Buffer
		tb := &teeBody{r: bufio.NewReaderSize(strings.NewReader(text), 16), w: &side}
		head := make([]byte, 7)
		io.ReadFull(tb, head)
		out.Write(head)
		if viaWriteTo {
			tb.WriteTo(&out)
		} else {
			io.Copy(&out, iotest.OneByteReader(tb))
		}
		if out.String() != text || side.String() != text || tb.dst != nil {
			t.Fatalf("WriteTo=%v: out %d, tee %d bytes", viaWriteTo, out.Len(), side.Len())
		}
	}
}

// readHeaderInto with reused fields and scratch must not alias them.
func TestReadHeaderIntoReuse(t *testing.T) {
	t.Parallel()
	first, scratch, err := readHeaderInto(bufio.NewReader(strings.NewReader("A: 1\r\n b\r\nB: 2\r\n\r\n")), 1<<10, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	keep := append([]string(nil), first...)
	second, _, err := readHeaderInto(bufio.NewReader(strings.NewReader("X: zzzz\r\nY: w\r\n\r\n")), 1<<10, first[:0], scratch)
	if err != nil || strings.Join(second, "") != "X: zzzz\r\nY: w\r\n" {
		t.Fatalf("%q %v", second, err)
	}
	if strings.Join(keep, "") != "A: 1\r\n b\r\nB: 2\r\n" {
		t.Fatalf("earlier fields changed: %q", keep)
	}
}

// aarInstance replaced this regular expression; it must match the same.
func TestAARInstanceMatchesRegexp(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^\s*i\s*=\s*([0-9]+)\s*;`)
	for _, s := range []string{
		" i=1; mx.google.com; dkim=pass", "i=12;x", "\r\n\ti = 3 ;", "\fi\t=\n7\r;",
		"i=;", "i=1", "i=1 x;", " I=1;", "j=1;", "i=a1;", "", " ", "i", "i=", "x i=1;",
		"i=0001;rest", "i=99999999999999999999;", "i=1;;", "\vi=1;", "i=\u00a01;",
	} {
		m := re.FindStringSubmatch(s)
		digits, rest, ok := aarInstance(s)
		if ok != (m != nil) || ok && (digits != m[1] || rest != s[len(m[0]):]) {
			t.Errorf("%q: got %q %q %v, regexp %q", s, digits, rest, ok, m)
		}
		if got, wantRepl := s, re.ReplaceAllString(s, ""); ok && rest != wantRepl || !ok && got != wantRepl {
			t.Errorf("%q: replace differs", s)
		}
	}
}

func TestEqualLower(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"ARC-Seal", "arc-seal", "ARC-SEAL", "arc-seal ", "arc-sea", "ARC-ſEAL",
		"ARC-AUTHENTİCATİON-RESULTS", "Arc-Authentication-Results", "arc_seal", ""} {
		for _, lower := range []string{"arc-seal", "arc-authentication-results"} {
			if got, want := equalLower(s, lower), strings.ToLower(s) == lower; got != want {
				t.Errorf("equalLower(%q, %q) = %v, want %v", s, lower, got, want)
			}
		}
	}
}

// The parsed-key cache gives what parseKeyRecord gives, errors included.
func TestCachedKeyRecord(t *testing.T) {
	t.Parallel()
	k := rsaKey(t, "acme", 2048)
	for _, txt := range []string{k.record, k.record, "v=DKIM1; p=", "v=DKIM1; k=rsa; p=!!!", "v=DKIM1; p=", k.record} {
		pk, err := cachedKeyRecord(txt)
		wantPK, wantErr := parseKeyRecord(txt)
		if fmt.Sprint(err) != fmt.Sprint(wantErr) || (pk == nil) != (wantPK == nil) ||
			pk != nil && (pk.algo != wantPK.algo || pk.bits != wantPK.bits || !pk.rsa.Equal(wantPK.rsa)) {
			t.Fatalf("%q: %+v %v, want %+v %v", txt, pk, err, wantPK, wantErr)
		}
	}
	for i := 0; i < 2*parsedKeysMax; i++ {
		cachedKeyRecord(fmt.Sprintf("v=DKIM1; p=; n=%d", i))
	}
	parsedKeys.Lock()
	n := len(parsedKeys.m)
	parsedKeys.Unlock()
	if n > parsedKeysMax {
		t.Fatalf("cache holds %d entries, bound %d", n, parsedKeysMax)
	}
}

// canonHeaderReference is the string-building canonHeader that
// appendCanonHeader replaced.
func canonHeaderReference(f string, relaxed bool) string {
	if !relaxed {
		return f
	}
	k, v, ok := strings.Cut(f, ":")
	if !ok {
		return strings.ToLower(strings.TrimSpace(f)) + ":" + crlf
	}
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\r' || r == '\n'
	}), " ")
	return strings.ToLower(strings.TrimSpace(k)) + ":" + v + crlf
}

func TestAppendCanonHeaderMatchesReference(t *testing.T) {
	t.Parallel()
	inputs := []string{
		"From: Carl <carl@acme.test>\r\n", "SUBJECT :  a \t b\r\n  c  \r\n", "X:\r\n", "X:", ":v",
		"no colon at all\r\n", " \tNo-Colon \r\n", "ARC-Seal: i=1; a=rsa-sha256;\r\n\tb=abc\r\n def",
		"Ünïcode-Name: välue  \u00a0 x\r\n", "\u00a0Key\u0085: v", "K\u212aelvin: x", "X: \xff\xfe  bad\tutf8\r\n",
		"X: a\x00b", "X: \v\f y \r\n", "x:a::b: c", "", "\r\n", ":",
	}
	var buf []byte
	for _, f := range inputs {
		for _, relaxed := range []bool{false, true} {
			want := canonHeaderReference(f, relaxed)
			if got := canonHeader(f, relaxed); got != want {
				t.Errorf("canonHeader(%q, %v) = %q, want %q", f, relaxed, got, want)
			}
			buf = appendCanonHeader(append(buf[:0], "prefix"...), f, relaxed)
			if string(buf) != "prefix"+want {
				t.Errorf("appendCanonHeader(%q, %v) = %q", f, relaxed, buf)
			}
		}
	}
}
