package mailhdr

import (
	"errors"
	"net/mail"
	"strings"
	"time"
)

// rfc5322Date is the layout of nearly every Date field: net/mail's 25th.
const rfc5322Date = "Mon, 2 Jan 2006 15:04:05 -0700"

var errNoDate = errors.New("mailhdr: empty date")

// ParseDate is net/mail.ParseDate, with the same result for every input on
// success, but cheaper for the usual cases. net/mail tries 48 layouts in
// turn, and each failed time.Parse allocates its error: a missing Date
// cost 48 allocations per stored message, and the usual
// "Mon, 2 Jan 2006 15:04:05 -0700" form 24 (the day-of-week-less layouts
// come first).
//
// The shortcut is exact: a value that starts with a letter has no leading
// space for net/mail to skip and fails every layout without a day of week
// (they start with a digit); when its only '+' or '-' begins its last five
// bytes and it has no CR or LF, net/mail parses the whole value with
// nothing left over, and "Mon, 2 Jan 2006 15:04:05 -0700" is the first
// layout with a day of week. If that layout fails here, net/mail decides.
// Errors may be worded differently.
func ParseDate(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, errNoDate // net/mail: no layout matches ""
	}
	if c := v[0] | 0x20; c >= 'a' && c <= 'z' &&
		strings.IndexAny(v, "+-") == len(v)-5 && !strings.ContainsAny(v, "\r\n") {
		if t, err := time.Parse(rfc5322Date, v); err == nil {
			return t, nil
		}
	}
	return mail.ParseDate(v)
}
