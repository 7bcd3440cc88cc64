package bolt

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Record encoding of the two records every stored message writes, its
// message record and its outbox event (bench/RESULTS.md "Record encoding"):
// a compact binary form whose first byte, a version, is one no JSON text
// starts with ('{' or white space). Records written by older binaries are
// JSON and still read as such, so no migration is needed: a record takes
// the new form the next time it is saved. The other records stay JSON.
//
// A version names one fixed field order. Adding a field to Message or
// eventRec means a new version byte, with the old one still decoded
// (TestRecordFieldsCovered fails until the codec knows every field).

const (
	msgRecV1   = 0x01 // encodeMessage's layout
	eventRecV1 = 0x01 // encodeEvent's layout
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
)

func encodeMessage(m *Message) []byte {
	e := recEnc{b: make([]byte, 0, 256)}
	e.b = append(e.b, msgRecV1)
	var flags byte
	for bit, on := range []bool{m.AutoReply, m.Bounced, m.AuthAligned, m.Removed} {
		if on {
			flags |= 1 << bit
		}
	}
	e.b = append(e.b, flags)
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
	d := recDec{b: v}
	if ver := d.byte(); ver != msgRecV1 {
		return fmt.Errorf("%w: message version %#x", errBadRecord, ver)
	}
	flags := d.byte()
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
	d := recDec{b: v}
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
	l, ok := parseSegLoc(loc)
	if ok && l.String() == loc {
		if sum, err := hex.DecodeString(l.sum); err == nil && len(sum) == 32 {
			e.b = append(e.b, locSeg)
			e.uint(l.seg)
			e.uint(uint64(l.off))
			e.uint(uint64(l.n))
			e.b = append(e.b, sum...)
			return
		}
	}
	e.b = append(e.b, locText)
	e.str(loc)
}

// recDec reads what recEnc wrote. The first error sticks; later reads
// return zero values, and end reports it.
type recDec struct {
	b   []byte
	err error
}

func (d *recDec) fail() {
	if d.err == nil {
		d.err = errBadRecord
	}
	d.b = nil
}

func (d *recDec) byte() byte {
	if len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *recDec) uint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recDec) int() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// take returns the next n bytes, aliasing the record.
func (d *recDec) take(n uint64) []byte {
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *recDec) str() string { return string(d.take(d.uint())) }

// bytes returns a copy: bbolt's values live only as long as their
// transaction.
func (d *recDec) bytes() []byte {
	p := d.take(d.uint())
	if len(p) == 0 {
		return nil
	}
	return append([]byte(nil), p...)
}

// count reads a length of items of at least min bytes each, bounded by
// what is left (a damaged count must not allocate gigabytes).
func (d *recDec) count(min int) int {
	n := d.uint()
	if n > uint64(len(d.b)/min) {
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
		sum := d.take(32)
		if d.err != nil || off > 1<<62 || n > 1<<62 {
			d.fail()
			return ""
		}
		return segLoc(seg, int64(off), int64(n), hex.EncodeToString(sum))
	}
	d.fail()
	return ""
}

// end reports the first error, or trailing bytes.
func (d *recDec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errBadRecord, len(d.b))
	}
	return d.err
}
