package smtp

// syncrelay: patch 4 (the bulk DATA decoder) against the byte-at-a-time
// decoder it replaced (upstream's, with patches 1 to 3), on the same input
// split into reads of random sizes: the decoded bytes, the error, and
// where each leaves the connection's reader must be the same.

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
