package router

import (
	"io"

	"github.com/emersion/go-message/charset"
)

// charsetReader decodes RFC 2047 words in any charset go-message knows
// (ISO-8859-x, windows-125x, Shift_JIS, GB18030 ...), not only UTF-8 and
// Latin-1 as the standard library does.
func charsetReader(cs string, input io.Reader) (io.Reader, error) {
	return charset.Reader(cs, input)
}
