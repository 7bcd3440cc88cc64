package smtp

// syncrelay: patch 4 (the bulk DATA decoder) against the byte-at-a-time
// decoder it replaced (upstream's, with patches 1 to 3), on the same input
// split into reads of random sizes: the decoded bytes, the error, and
// where each leaves the connection's reader must be the same. And patch 7's
// line limit reader, which must lose no byte, and patch 8's count of its
// line lengths against upstream's byte loop.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// byteDataReader is data.go's Read before patch 4, kept as the reference.
type byteDataReader struct {
	r     *bufio.Reader
	state int
}

func (r *byteDataReader) Read(b []byte) (n int, err error) {
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
		stateEOF
	)
	for n < len(b) && r.state != stateEOF {
		if n > 0 && r.r.Buffered() == 0 {
			break
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.r.UnreadByte()
			c = '\r'
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			if c == '\r' {
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	return
}

// chunkReader returns the input in pieces of the sizes in cuts (cycled),
// as a TCP connection may.
type chunkReader struct {
	data []byte
	cuts []byte
	i    int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.cuts) > 0 {
		n = int(c.cuts[c.i%len(c.cuts)]) + 1
		c.i++
	}
	if n > len(p) {
		n = len(p)
	}
	if n > len(c.data) {
		n = len(c.data)
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// drain reads r to its end with reads of the sizes in sizes (cycled) and
// returns the bytes, the final error, and what is left in the connection
// after the end marker.
// Every Read returns at least one byte or an error.
func drain(r io.Reader, br *bufio.Reader, sizes []byte, inLen int) (out []byte, err error, rest []byte) {
	for i := 0; ; i++ {
		size := 4096
		if len(sizes) > 0 {
			size = int(sizes[i%len(sizes)]) + 1
		}
		buf := make([]byte, size)
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			rest, _ = io.ReadAll(br)
			return out, err, rest
		}
		if i > inLen {
			panic("a Read returned neither bytes nor an error")
		}
	}
}

func FuzzSyncrelayBulkDecoder(f *testing.F) {
	for _, s := range []string{
		"a\r\n.\r\n",
		"a\r\n..b\r\n.\r\nMAIL FROM:<x>\r\n",
		"a\r\n.\rb\r\n.\r\n",
		"a\r\r\n.\r\nrest",
		"\r\n.\r\n",
		".\r\n",
		"x\n.\r\n.\r\n",
		"no end",
		"a\r\n.\r",
		"a\r\n.",
		"..\r\n.\r\r\n.\r\n",
		"line\r\r\r\n.x\r\n.\r\n",
	} {
		f.Add([]byte(s), []byte{3, 0, 200}, []byte{0, 7, 255}, uint8(16))
	}
	f.Fuzz(func(t *testing.T, in, cuts, sizes []byte, bufSize uint8) {
		size := 16 + int(bufSize) // bufio's smallest buffer is 16 bytes
		oldBr := bufio.NewReaderSize(&chunkReader{data: in, cuts: cuts}, size)
		newBr := bufio.NewReaderSize(&chunkReader{data: in, cuts: cuts}, size)
		wantOut, wantErr, wantRest := drain(&byteDataReader{r: oldBr}, oldBr, sizes, len(in))
		gotOut, gotErr, gotRest := drain(&dataReader{r: newBr}, newBr, sizes, len(in))
		if !bytes.Equal(gotOut, wantOut) || !errors.Is(gotErr, wantErr) || !bytes.Equal(gotRest, wantRest) {
			t.Fatalf("input %q\nbulk decoder:  %q, %v, rest %q\nbyte decoder:  %q, %v, rest %q",
				in, gotOut, gotErr, gotRest, wantOut, wantErr, wantRest)
		}
	})
}

// A 4 KiB message of 78-byte lines, as bench/run.sh sends, through each
// decoder.
func BenchmarkSyncrelayDataReader(b *testing.B) {
	msg := bytes.Repeat([]byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n"), 4096/76)
	msg = append(msg, ".\r\n"...)
	for _, tc := range []struct {
		name string
		new  func(*bufio.Reader) io.Reader
	}{
		{"bytewise", func(br *bufio.Reader) io.Reader { return &byteDataReader{r: br} }},
		{"bulk", func(br *bufio.Reader) io.Reader { return &dataReader{r: br} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			src := bytes.NewReader(msg)
			br := bufio.NewReader(src)
			buf := make([]byte, 8<<10)
			b.SetBytes(int64(len(msg)))
			for i := 0; i < b.N; i++ {
				src.Reset(msg)
				br.Reset(src)
				r := tc.new(br)
				for {
					if _, err := r.Read(buf); err != nil {
						if err != io.EOF {
							b.Fatal(err)
						}
						break
					}
				}
			}
		})
	}
}

// Patch 7: whatever the reads and the line limit, lineLimitReader loses,
// repeats or reorders no byte: what it returns while the limit holds is a
// prefix of the input made of lines within the limit, ErrTooLongLine comes
// only for the line being read and stays, and once the limit is turned off
// (a BDAT chunk follows its command) the rest comes out exactly.
// Reads are of sizes from sizes, through a bufio.Reader as go-smtp has it.
func FuzzSyncrelayLineLimitReader(f *testing.F) {
	for _, s := range []string{
		"BDAT 72 LAST\r\n" + string(bytes.Repeat([]byte("x"), 70)) + "\r\nNOOP\r\n",
		"MAIL FROM:<" + string(bytes.Repeat([]byte("a"), 60)) + ">\r\n",
		"a\r\nb\r\n" + string(bytes.Repeat([]byte("y"), 100)),
		"\n\n\n",
	} {
		f.Add([]byte(s), []byte{3, 0, 200}, uint8(50), uint8(1))
		f.Add([]byte(s), []byte{255}, uint8(20), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in, cuts []byte, limit, limitedReads uint8) {
		lr := &lineLimitReader{R: &chunkReader{data: in, cuts: cuts}, LineLimit: 1 + int(limit)}
		buf := make([]byte, 64)
		var out []byte
		var err error
		for i := 0; i < int(limitedReads); i++ {
			var n int
			n, err = lr.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("input %q: read %q under the limit, not a prefix", in, out)
		}
		for _, l := range bytes.SplitAfter(out, []byte("\n")) {
			if len(bytes.TrimSuffix(l, []byte("\n"))) > lr.LineLimit {
				t.Fatalf("input %q: line %q over the limit %d returned", in, l, lr.LineLimit)
			}
		}
		if err == ErrTooLongLine {
			// Only for a line over the limit: the one being read (upstream
			// failed a read that held a command and a long line after it).
			start := bytes.LastIndexByte(out, '\n') + 1
			end := bytes.IndexByte(in[start:], '\n')
			if end < 0 {
				end = len(in) - start
			}
			if end < lr.LineLimit {
				t.Fatalf("input %q: ErrTooLongLine after %q, reading a line of %d bytes (limit %d)", in, out, end, lr.LineLimit)
			}
			if n, err2 := lr.Read(buf); n != 0 || err2 != ErrTooLongLine {
				t.Fatalf("input %q: after ErrTooLongLine, Read = %d, %v", in, n, err2)
			}
			return
		}
		if err != nil && err != io.EOF {
			t.Fatalf("input %q: %v", in, err)
		}
		lr.LineLimit = 0
		rest, err := io.ReadAll(lr)
		if err != nil || !bytes.Equal(append(out, rest...), in) {
			t.Fatalf("input %q: read %q under the limit and %q, %v after it", in, out, rest, err)
		}
	})
}

// byteScan is upstream's loop over every byte read, which patch 8's scan
// replaced, kept as the reference: the same counts, the same index of the
// byte over the limit.
func byteScan(r *lineLimitReader, p []byte) (int, bool) {
	for i, chr := range p {
		if chr == '\n' {
			r.curLineLength = 0
		}
		r.curLineLength++
		if r.curLineLength > r.LineLimit {
			return i, true
		}
	}
	return 0, false
}

// Patch 8: scan and byteScan agree on every input, line length carried
// over from the previous read (0 to the limit, as Read allows) and limit.
func FuzzSyncrelayLineLimitScan(f *testing.F) {
	for _, s := range []string{
		"", "\n", "\n\n\n", "abc", "abc\r\ndef\r\n", "x\n" + string(bytes.Repeat([]byte("y"), 70)) + "\r\nz",
		string(bytes.Repeat([]byte("a"), 50)) + "\n",
	} {
		f.Add([]byte(s), uint8(0), uint8(49))
		f.Add([]byte(s), uint8(3), uint8(2))
		f.Add([]byte(s), uint8(50), uint8(49))
	}
	f.Fuzz(func(t *testing.T, p []byte, cur, limit uint8) {
		lim := 1 + int(limit)
		c := int(cur) % (lim + 1)
		want := &lineLimitReader{LineLimit: lim, curLineLength: c}
		got := &lineLimitReader{LineLimit: lim, curLineLength: c}
		wi, wover := byteScan(want, p)
		gi, gover := got.scan(p)
		if gi != wi || gover != wover || got.curLineLength != want.curLineLength {
			t.Fatalf("%q from %d, limit %d: scan = %d, %v, length %d; byte loop = %d, %v, length %d",
				p, c, lim, gi, gover, got.curLineLength, wi, wover, want.curLineLength)
		}
	})
}
