package bolt

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Record encoding of the two records every stored message writes, its
// message record and its outbox event, and of the thread record it reads
// (bench/RESULTS.md "Record encoding"):
// a compact binary form whose first byte, a version, is one no JSON text
// starts with ('{' or white space). Records written by older binaries are
// JSON and still read as such, so no migration is needed: a record takes
// the new form the next time it is saved. The other records stay JSON.
//
// A version names one fixed field order. Adding a field to Message,
// eventRec or Thread means a new version byte, with the old one still decoded
// (TestRecordFieldsCovered fails until the codec knows every field).

const (
	msgRecV1    = 0x01 // encodeMessage's layout
	eventRecV1  = 0x01 // encodeEvent's layout
	threadRecV1 = 0x01 // encodeThread's layout
)

// errBadRecord is a binary record that does not decode (damaged, or
// written by a newer binary).
var errBadRecord = errors.New("store: malformed record")

// isJSON reports whether a stored record is JSON (written before the
// binary form, or a record kind that stays JSON).
func isJSON(v []byte) bool {
	return len(v) > 0 && (v[0] == '{' || v[0] == ' ' || v[0] == '\t' || v[0] == '\r' || v[0] == '\n')
}

// --- messages ---

// Message flags.
const (
	mfAutoReply = 1 << iota
	mfBounced
	mfAuthAligned
	mfRemoved
	mfAll = mfAutoReply | mfBounced | mfAuthAligned | mfRemoved
)

func flag(on bool, bit byte) byte {
	if on {
		return bit
	}
	return 0
}

func encodeMessage(m *Message) []byte {
	e := recEnc{b: make([]byte, 0, 384)}
	e.b = append(e.b, msgRecV1)
	e.b = append(e.b, flag(m.AutoReply, mfAutoReply)|flag(m.Bounced, mfBounced)|
		flag(m.AuthAligned, mfAuthAligned)|flag(m.Removed, mfRemoved))
	e.str(m.Tenant)
	e.uint(m.ID)
	e.uint(m.Thread)
	e.str(m.Candidate)
	e.str(m.Direction)
	e.str(m.InternetMessageID)
	e.str(m.From)
	e.strs(m.To)
	e.strs(m.Cc)
	e.str(m.Subject)
	e.time(m.Date)
	e.time(m.Received)
	e.str(m.BounceStatus)
	e.str(m.BounceDiagnostic)
	e.str(m.SentBy)
	e.str(m.SendFor)
	e.str(m.Status)
	e.str(m.Error)
	e.str(m.MatchedBy)
	e.uint(uint64(len(m.DKIM)))
	for _, r := range m.DKIM {
		e.str(r.Domain)
		e.str(r.Result)
	}
	e.str(m.ARC)
	e.loc(m.Raw)
	e.int(m.Size)
	e.strs(m.Mailboxes)
	e.strs(m.LearnedIDs)
	e.time(m.RemovedAt)
	return e.b
}

// decodeMessage reads a message record in either form.
func decodeMessage(v []byte, m *Message) error {
	if isJSON(v) {
		return json.Unmarshal(v, m)
	}
	d := newDec(v)
	if ver := d.byte(); ver != msgRecV1 {
		return fmt.Errorf("%w: message version %#x", errBadRecord, ver)
	}
	flags := d.byte()
	if flags&^mfAll != 0 {
		d.fail()
	}
	*m = Message{
		AutoReply: flags&mfAutoReply != 0, Bounced: flags&mfBounced != 0,
		AuthAligned: flags&mfAuthAligned != 0, Removed: flags&mfRemoved != 0,
	}
	m.Tenant = d.str()
	m.ID = d.uint()
	m.Thread = d.uint()
	m.Candidate = d.str()
	m.Direction = d.str()
	m.InternetMessageID = d.str()
	m.From = d.str()
	m.To = d.strs()
	m.Cc = d.strs()
	m.Subject = d.str()
	m.Date = d.time()
	m.Received = d.time()
	m.BounceStatus = d.str()
	m.BounceDiagnostic = d.str()
	m.SentBy = d.str()
	m.SendFor = d.str()
	m.Status = d.str()
	m.Error = d.str()
	m.MatchedBy = d.str()
	if n := d.count(2); n > 0 {
		m.DKIM = make([]AuthResult, n)
		for i := range m.DKIM {
			m.DKIM[i] = AuthResult{Domain: d.str(), Result: d.str()}
		}
	}
	m.ARC = d.str()
	m.Raw = d.loc()
	m.Size = d.int()
	m.Mailboxes = d.strs()
	m.LearnedIDs = d.strs()
	m.RemovedAt = d.time()
	return d.end()
}

func getMessage(b *bolt.Bucket, k []byte, m *Message) error {
	v := b.Get(k)
	if v == nil {
		return ErrNotFound
	}
	return decodeMessage(v, m)
}

func putMessageRec(b *bolt.Bucket, k []byte, m *Message) error {
	return b.Put(k, encodeMessage(m))
}

// --- outbox events ---

func encodeEvent(r *eventRec) []byte {
	e := recEnc{b: make([]byte, 0, 64+len(r.Data))}
	e.b = append(e.b, eventRecV1)
	e.uint(r.Seq)
	id := r.ID
	if id == eventID(r.Seq) {
		id = "" // the usual id, made again from Seq when read
	}
	e.str(id)
	e.str(r.Type)
	e.time(r.Created)
	e.str(r.Tenant)
	e.bytes(r.Data)
	e.int(int64(r.Attempts))
	e.time(r.NextAttempt)
	e.str(r.State)
	e.str(r.LastError)
	return e.b
}

// decodeEvent reads an outbox event in either form.
func decodeEvent(v []byte, r *eventRec) error {
	if isJSON(v) {
		return json.Unmarshal(v, r)
	}
	d := newDec(v)
	if ver := d.byte(); ver != eventRecV1 {
		return fmt.Errorf("%w: event version %#x", errBadRecord, ver)
	}
	*r = eventRec{Seq: d.uint()}
	r.ID = d.str()
	if r.ID == "" {
		r.ID = eventID(r.Seq)
	}
	r.Type = d.str()
	r.Created = d.time()
	r.Tenant = d.str()
	if data := d.bytes(); len(data) > 0 {
		r.Data = json.RawMessage(data)
	}
	r.Attempts = int(d.int())
	r.NextAttempt = d.time()
	r.State = d.str()
	r.LastError = d.str()
	return d.end()
}

func eventID(seq uint64) string { return fmt.Sprintf("evt-%d", seq) }

func putEvent(ob *bolt.Bucket, seq uint64, r *eventRec) error {
	return ob.Put(putU64(seq), encodeEvent(r))
}

// --- threads ---

func encodeThread(t *Thread) []byte {
	e := recEnc{b: make([]byte, 0, 128)}
	e.b = append(e.b, threadRecV1)
	var secret byte
	if t.Secret {
		secret = 1
	}
	e.b = append(e.b, secret)
	e.str(t.Tenant)
	e.uint(t.ID)
	e.str(t.Candidate)
	e.str(t.Subject)
	e.str(t.SecretBy)
	e.str(t.CreatedBy)
	e.strs(t.Participants)
	e.time(t.Created)
	e.time(t.LastActivity)
	e.str(t.ConvIndex)
	return e.b
}

// decodeThread reads a thread record in either form.
func decodeThread(v []byte, t *Thread) error {
	if isJSON(v) {
		return json.Unmarshal(v, t)
	}
	d := newDec(v)
	if ver := d.byte(); ver != threadRecV1 {
		return fmt.Errorf("%w: thread version %#x", errBadRecord, ver)
	}
	secret := d.byte()
	if secret > 1 {
		d.fail()
	}
	*t = Thread{Secret: secret == 1}
	t.Tenant = d.str()
	t.ID = d.uint()
	t.Candidate = d.str()
	t.Subject = d.str()
	t.SecretBy = d.str()
	t.CreatedBy = d.str()
	t.Participants = d.strs()
	t.Created = d.time()
	t.LastActivity = d.time()
	t.ConvIndex = d.str()
	return d.end()
}

func getThreadRec(b *bolt.Bucket, k []byte, t *Thread) error {
	v := b.Get(k)
	if v == nil {
		return ErrNotFound
	}
	return decodeThread(v, t)
}

func putThreadRec(b *bolt.Bucket, k []byte, t *Thread) error {
	return b.Put(k, encodeThread(t))
}

// --- raw locators of owner records (compaction, the schema-1 migration) ---

// recordRaw returns the raw locator an owner record (message or
// quarantined message) holds.
func recordRaw(v []byte) (string, error) {
	if !isJSON(v) {
		var m Message
		err := decodeMessage(v, &m)
		return m.Raw, err
	}
	var rec struct {
		Raw string `json:"raw"`
	}
	err := json.Unmarshal(v, &rec)
	return rec.Raw, err
}

// withRaw returns an owner record with its raw locator replaced by loc,
// in the form it had; a JSON record keeps every other field verbatim.
func withRaw(v []byte, loc string) ([]byte, error) {
	if !isJSON(v) {
		var m Message
		if err := decodeMessage(v, &m); err != nil {
			return nil, err
		}
		m.Raw = loc
		return encodeMessage(&m), nil
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, err
	}
	rec["raw"], _ = json.Marshal(loc)
	return json.Marshal(rec)
}

// --- primitives ---

type recEnc struct{ b []byte }

func (e *recEnc) uint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *recEnc) int(v int64)   { e.b = binary.AppendVarint(e.b, v) }

func (e *recEnc) str(s string) {
	e.uint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *recEnc) bytes(p []byte) {
	e.uint(uint64(len(p)))
	e.b = append(e.b, p...)
}

func (e *recEnc) strs(ss []string) {
	e.uint(uint64(len(ss)))
	for _, s := range ss {
		e.str(s)
	}
}

// Time kinds: what a JSON round trip keeps (the instant and the offset,
// not the zone's name), in 1 byte for the zero time and about 10 for a
// UTC one (RFC 3339 in JSON: 30 to 37).
const (
	tZero = iota
	tUTC
	tOffset
)

func (e *recEnc) time(t time.Time) {
	if t.IsZero() {
		e.b = append(e.b, tZero)
		return
	}
	// As in JSON, a zero offset reads back as UTC whatever the zone.
	if _, off := t.Zone(); off == 0 {
		e.b = append(e.b, tUTC)
	} else {
		e.b = append(e.b, tOffset)
		e.int(int64(off))
	}
	e.int(t.Unix())
	e.uint(uint64(t.Nanosecond()))
}

// Locator kinds: a segment locator in binary (42 bytes instead of 94),
// anything else as its text.
const (
	locText = iota
	locSeg
)

func (e *recEnc) loc(loc string) {
	if seg, off, n, sum, ok := cutSegLoc(loc); ok {
		e.b = append(e.b, locSeg)
		e.uint(seg)
		e.uint(off)
		e.uint(n)
		e.b = append(e.b, sum[:]...)
		return
	}
	e.b = append(e.b, locText)
	e.str(loc)
}

// cutSegLoc splits a segment locator (segLoc's form) without allocating.
// ok only when appendSegLoc makes the same text again, so that the binary
// form always reads back as the locator it was given.
func cutSegLoc(loc string) (seg, off, n uint64, sum [32]byte, ok bool) {
	rest, ok1 := strings.CutPrefix(loc, "s:")
	segHex, rest, ok2 := strings.Cut(rest, ":")
	offDec, rest, ok3 := strings.Cut(rest, ":")
	nDec, sumHex, ok4 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || !ok3 || !ok4 || len(sumHex) != 64 {
		return 0, 0, 0, sum, false
	}
	var err [4]error
	seg, err[0] = strconv.ParseUint(segHex, 16, 64)
	off, err[1] = strconv.ParseUint(offDec, 10, 63)
	n, err[2] = strconv.ParseUint(nDec, 10, 63)
	_, err[3] = hex.Decode(sum[:], []byte(sumHex))
	if err != [4]error{} {
		return 0, 0, 0, sum, false
	}
	var buf [128]byte
	return seg, off, n, sum, string(appendSegLoc(buf[:0], seg, off, n, sum[:])) == loc
}

// appendSegLoc appends segLoc(seg, off, n, hex(sum)).
func appendSegLoc(b []byte, seg, off, n uint64, sum []byte) []byte {
	b = append(b, "s:"...)
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, "0123456789abcdef"[seg>>shift&0xf])
	}
	b = append(b, ':')
	b = strconv.AppendUint(b, off, 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, n, 10)
	b = append(b, ':')
	return hex.AppendEncode(b, sum)
}

// recDec reads what recEnc wrote, from one string copy of the record
// (its strings share it: one allocation, and nothing aliases bbolt's
// memory, which lives only as long as its transaction). The first error
// sticks; later reads return zero values, and end reports it.
type recDec struct {
	s   string
	err error
}

func newDec(v []byte) recDec { return recDec{s: string(v)} }

func (d *recDec) fail() {
	if d.err == nil {
		d.err = errBadRecord
	}
	d.s = ""
}

func (d *recDec) byte() byte {
	if len(d.s) == 0 {
		d.fail()
		return 0
	}
	c := d.s[0]
	d.s = d.s[1:]
	return c
}

func (d *recDec) uint() uint64 {
	var v uint64
	for i := 0; i < len(d.s) && i < binary.MaxVarintLen64; i++ {
		c := d.s[i]
		if i == binary.MaxVarintLen64-1 && c > 1 {
			break // overflows 64 bits
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.s = d.s[i+1:]
			return v
		}
	}
	d.fail()
	return 0
}

func (d *recDec) int() int64 {
	u := d.uint()
	return int64(u>>1) ^ -int64(u&1) // binary.AppendVarint's zig-zag
}

func (d *recDec) str() string {
	n := d.uint()
	if n > uint64(len(d.s)) {
		d.fail()
		return ""
	}
	p := d.s[:n]
	d.s = d.s[n:]
	return p
}

func (d *recDec) bytes() []byte {
	if p := d.str(); p != "" {
		return []byte(p)
	}
	return nil
}

// count reads a length of items of at least min bytes each, bounded by
// what is left (a damaged count must not allocate gigabytes).
func (d *recDec) count(min int) int {
	n := d.uint()
	if n > uint64(len(d.s)/min) {
		d.fail()
		return 0
	}
	return int(n)
}

func (d *recDec) strs() []string {
	n := d.count(1)
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = d.str()
	}
	return ss
}

func (d *recDec) time() time.Time {
	kind := d.byte()
	if kind == tZero {
		return time.Time{}
	}
	var off int64
	if kind == tOffset {
		off = d.int()
	} else if kind != tUTC {
		d.fail()
	}
	sec, nsec := d.int(), d.uint()
	if d.err != nil || nsec >= 1e9 || off < -24*3600 || off > 24*3600 {
		d.fail()
		return time.Time{}
	}
	t := time.Unix(sec, int64(nsec))
	if kind == tUTC {
		return t.UTC()
	}
	return t.In(time.FixedZone("", int(off)))
}

func (d *recDec) loc() string {
	switch d.byte() {
	case locText:
		return d.str()
	case locSeg:
		seg, off, n := d.uint(), d.uint(), d.uint()
		if len(d.s) < 32 || off >= 1<<63 || n >= 1<<63 {
			d.fail()
			return ""
		}
		sum := d.s[:32]
		d.s = d.s[32:]
		var buf [128]byte
		return string(appendSegLoc(buf[:0], seg, off, n, []byte(sum)))
	}
	d.fail()
	return ""
}

// end reports the first error, or trailing bytes.
func (d *recDec) end() error {
	if d.err == nil && len(d.s) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errBadRecord, len(d.s))
	}
	return d.err
}
