package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"time"
)

// Thread-Index / PidTagConversationIndex layout (MS-OXOMSG 2.2.1.3):
//
//	header (22 bytes): reserved 0x01, 5 bytes of FILETIME>>24 (big-endian), 16-byte GUID
//	child  (5 bytes each): 1 bit delta code, 31 bits time delta, 8 bits random
//
// syncrelay fixes the first 6 bytes (convPrefix) and derives the GUID from
// the thread: HMAC-SHA256(secret, "syncrelay-thread-index-v1" ||
// uvarint(len(tenant)) || tenant || uvarint(thread))[:16]. So every message
// of a thread carries the same 22 bytes and an Outlook reply that keeps only
// Thread-Index still names the thread, and every syncrelay Thread-Index
// starts with the same 8 base64 characters (ThreadIndexPrefix, 6 bytes = 8
// characters exactly), which the admins' routing rules match on (SPEC §3,
// §9).
//
// The prefix's FILETIME is 1994-08-14, before Outlook and Exchange existed:
// no client with a working clock starts a conversation there, so a rule on
// the prefix never forwards an Outlook conversation syncrelay did not start.
// It is recent enough that child blocks (delta code 1 reaches about 57
// years) still encode reply times until 2051. Threads issued before the
// prefix was fixed (header time 2020-01-01) keep matching: the store indexes
// every conversation header it issued.

const (
	// ConvHeaderLen is the length of the conversation index header.
	ConvHeaderLen = 22
	// ChildBlockLen is the length of one response-level block.
	ChildBlockLen = 5
	// MaxReplyLevels caps the number of child blocks ThreadIndex emits, so
	// the header line stays well under 998 bytes.
	MaxReplyLevels = 64
)

// ThreadIndexPrefix is the base64 text every syncrelay Thread-Index value
// starts with: convPrefix encoded ("\x01" + FILETIME>>24 of 1994-08-14,
// chosen to read "Sync").
const ThreadIndexPrefix = "AQG5Sync"

// convPrefix is the fixed start of every conversation index header syncrelay
// issues: the reserved byte 0x01 and the 5 FILETIME bytes.
const convPrefix = "\x01\x01\xb9\x4b\x29\xdc"

// filetime converts t to a Windows FILETIME (100 ns intervals since
// 1601-01-01 UTC); times before 1601 become 0.
func filetime(t time.Time) uint64 {
	const unixToFiletime = 11644473600 // seconds from 1601 to 1970
	s := t.Unix() + unixToFiletime
	if s < 0 {
		return 0
	}
	return uint64(s)*1e7 + uint64(t.Nanosecond())/100
}

func (k *Keyring) convMAC(tenant string, thread uint64) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(convInfo))
	var buf [2 * binary.MaxVarintLen64]byte
	m.Write(binary.AppendUvarint(buf[:0], uint64(len(tenant))))
	m.Write([]byte(tenant))
	m.Write(binary.AppendUvarint(buf[:0], thread))
	return m.Sum(nil)
}

// ConversationIndex returns the 22-byte conversation index header syncrelay
// issues for a thread. It is deterministic and depends on the secret, so it
// cannot be guessed from the outside; equal headers mean the same
// (tenant, thread).
func (k *Keyring) ConversationIndex(tenant string, thread uint64) [ConvHeaderLen]byte {
	return convHeader(k.convMAC(tenant, thread))
}

func convHeader(mac []byte) [ConvHeaderLen]byte {
	var c [ConvHeaderLen]byte
	copy(c[:], convPrefix)
	copy(c[len(convPrefix):], mac[:16])
	return c
}

// ThreadIndex returns the base64 value of the Thread-Index header for a
// message of the thread at reply depth reply: the 22-byte header alone for
// reply <= 0, plus one 5-byte child block per reply level (at most
// MaxReplyLevels). Child blocks encode date relative to the header time;
// their "random" byte is derived from the secret so the result is
// deterministic.
func (k *Keyring) ThreadIndex(tenant string, thread uint64, date time.Time, reply int) string {
	if reply < 0 {
		reply = 0
	}
	if reply > MaxReplyLevels {
		reply = MaxReplyLevels
	}
	mac := k.convMAC(tenant, thread)
	c := convHeader(mac)
	out := make([]byte, ConvHeaderLen, ConvHeaderLen+reply*ChildBlockLen)
	copy(out, c[:])

	var hdrTime uint64
	for i := 0; i < 5; i++ {
		hdrTime = hdrTime<<8 | uint64(c[1+i])
	}
	hdrTime <<= 24
	var diff uint64
	if ft := filetime(date); ft > hdrTime {
		diff = ft - hdrTime
	}
	var v uint32
	if diff>>49 == 0 { // under ~1.7 years: delta code 0, 2^18 * 100 ns units
		v = uint32(diff>>18) & 0x7fffffff
	} else { // delta code 1, 2^23 * 100 ns units (about 57 years)
		d := diff >> 23
		if d > 0x7fffffff {
			d = 0x7fffffff
		}
		v = 1<<31 | uint32(d)
	}
	for i := 0; i < reply; i++ {
		out = binary.BigEndian.AppendUint32(out, v)
		out = append(out, mac[16+i%16])
	}
	return base64.StdEncoding.EncodeToString(out)
}

// ParseThreadIndex decodes a Thread-Index header value leniently (white space
// anywhere, with or without padding, standard or URL-safe alphabet) and
// returns its first 22 bytes, the conversation index header. ok is false if
// the value is not base64 or decodes to fewer than 22 bytes. Only the first
// 32 base64 characters are examined, so the cost is bounded by a scan for
// white space.
func ParseThreadIndex(v string) (conv [ConvHeaderLen]byte, ok bool) {
	const want = 32 // 32 base64 chars = 24 bytes >= 22
	var b [want]byte
	n := 0
scan:
	for i := 0; i < len(v) && n < want; i++ {
		c := v[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			continue
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
		case c == '-':
			c = '+'
		case c == '_':
			c = '/'
		case c == '=': // padding: end of data
			break scan
		default:
			return conv, false
		}
		b[n] = c
		n++
	}
	if n%4 == 1 {
		n--
	}
	var raw [24]byte
	m, err := base64.RawStdEncoding.Decode(raw[:], b[:n])
	if err != nil || m < ConvHeaderLen {
		return conv, false
	}
	copy(conv[:], raw[:ConvHeaderLen])
	return conv, true
}
