package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storedMessage is a message record as the daemon writes one for an
// inbound 4 KiB message (router.commit's fields, a segment locator).
func storedMessage() *Message {
	at := time.Date(2026, 12, 7, 3, 53, 24, 123456789, time.UTC)
	return &Message{Tenant: "acme", ID: 20417, Thread: 63, Candidate: "c-1", Direction: Inbound,
		InternetMessageID: "cafd4c1e-0e53-4bd4-b1f7-3f2d2c1c9a55@mail.cand.test",
		From:              "carl@cand.test", To: []string{"ursula@acme.test"}, Subject: "Re: your application for the backend role",
		Date: at.Add(-2 * time.Second).Truncate(time.Second), Received: at, MatchedBy: "references",
		DKIM: []AuthResult{{Domain: "cand.test", Result: "pass"}}, AuthAligned: true,
		Raw: segLoc(3, 41943040, 5083, strings.Repeat("9f86d081884c7d65", 4)), Size: 5083,
		Mailboxes: []string{"acme-x@relay.test"}}
}

// storedEvent is the message.received event CommitInbound enqueues for it.
func storedEvent() *eventRec {
	at := time.Date(2026, 12, 7, 3, 53, 24, 123456789, time.UTC)
	data, _ := json.Marshal(map[string]any{"direction": Inbound, "auto_reply": false, "notify_users": []string{"u-1"},
		"message_id": MessageRef(20417), "thread_id": ThreadRef(63), "candidate": "c-1"})
	return &eventRec{ID: eventID(20417), Seq: 20417, Type: "message.received", Created: at, Tenant: "acme",
		Data: data, NextAttempt: at, State: EventPending}
}

// TestRecordSizes reports the two records' sizes in each form (go test
// -v -run TestRecordSizes), and checks the binary form is the smaller.
func TestRecordSizes(t *testing.T) {
	t.Parallel()
	m, ev := storedMessage(), storedEvent()
	mj, _ := json.Marshal(m)
	ej, _ := json.Marshal(ev)
	mb, eb := encodeMessage(m), encodeEvent(ev)
	t.Logf("message record: JSON %d bytes, binary %d", len(mj), len(mb))
	t.Logf("outbox event:   JSON %d bytes, binary %d (of which data %d)", len(ej), len(eb), len(ev.Data))
	tj, _ := json.Marshal(storedThread())
	t.Logf("thread record:  JSON %d bytes, binary %d", len(tj), len(encodeThread(storedThread())))
	if len(mb) >= len(mj) || len(eb) >= len(ej) {
		t.Fatalf("binary not smaller: message %d/%d, event %d/%d", len(mb), len(mj), len(eb), len(ej))
	}
}

// sameJSON fails unless a and b marshal alike: what a JSON record kept is
// what the binary one must keep.
func sameJSON(t *testing.T, what string, a, b any) {
	t.Helper()
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil || !bytes.Equal(ja, jb) {
		t.Fatalf("%s:\n got %s %v\nwant %s %v", what, jb, err2, ja, err1)
	}
}

func TestMessageRecordRoundTrip(t *testing.T) {
	t.Parallel()
	full := storedMessage()
	full.Cc = []string{"a@acme.test", ""}
	full.AutoReply, full.Bounced, full.Removed = true, true, true
	full.BounceStatus, full.BounceDiagnostic, full.SentBy, full.SendFor = "5.1.1", "no such user", "u-1", "u-2"
	full.Status, full.Error, full.ARC, full.LearnedIDs = "sent", "x", "pass", []string{"p@x"}
	full.Date = time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	full.RemovedAt = time.Date(2026, 12, 8, 0, 0, 0, 1, time.UTC)
	for _, m := range []*Message{storedMessage(), full, {}, {Raw: "f:" + strings.Repeat("a", 64) + "-01"}, {Raw: "s:bad"}} {
		var got Message
		if err := decodeMessage(encodeMessage(m), &got); err != nil {
			t.Fatal(err)
		}
		sameJSON(t, "message", m, &got)
	}
}

// TestRecordFieldsCovered sets each field of Message and eventRec on its
// own and checks the binary form keeps it: a field added to either type
// fails here until the codec (and its version byte) takes it.
func TestRecordFieldsCovered(t *testing.T) {
	t.Parallel()
	eachField(t, reflect.TypeFor[Message](), func(set func(reflect.Value)) {
		var m, got Message
		set(reflect.ValueOf(&m).Elem())
		if err := decodeMessage(encodeMessage(&m), &got); err != nil {
			t.Fatal(err)
		}
		sameJSON(t, "message", &m, &got)
	})
	eachField(t, reflect.TypeFor[eventRec](), func(set func(reflect.Value)) {
		var r, got eventRec
		set(reflect.ValueOf(&r).Elem())
		if err := decodeEvent(encodeEvent(&r), &got); err != nil {
			t.Fatal(err)
		}
		if r.ID == "" {
			r.ID = eventID(r.Seq) // an id left empty reads as the usual one
		}
		sameJSON(t, "event", &r, &got)
	})
	eachField(t, reflect.TypeFor[Thread](), func(set func(reflect.Value)) {
		var th, got Thread
		set(reflect.ValueOf(&th).Elem())
		if err := decodeThread(encodeThread(&th), &got); err != nil {
			t.Fatal(err)
		}
		sameJSON(t, "thread", &th, &got)
	})
}

// storedThread is a thread record as CreateOutbound writes one.
func storedThread() *Thread {
	at := time.Date(2026, 12, 7, 3, 53, 24, 123456789, time.UTC)
	return &Thread{Tenant: "acme", ID: 63, Candidate: "c-1", Subject: "Your application for the backend role",
		CreatedBy: "u-1", Participants: []string{"u-1", "u-2"}, Created: at, LastActivity: at,
		ConvIndex: "01d9a3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6"}
}

func TestThreadRecordRoundTrip(t *testing.T) {
	t.Parallel()
	secret := storedThread()
	secret.Secret, secret.SecretBy = true, "u-2"
	for _, th := range []*Thread{storedThread(), secret, {}} {
		var got Thread
		if err := decodeThread(encodeThread(th), &got); err != nil {
			t.Fatal(err)
		}
		sameJSON(t, "thread", th, &got)
	}
}

func eachField(t *testing.T, typ reflect.Type, check func(set func(reflect.Value))) {
	for i := range typ.NumField() {
		f := typ.Field(i)
		val := sampleValue(f.Type)
		if !val.IsValid() {
			t.Fatalf("%s.%s: no sample value of type %s; teach the codec and this test the field", typ.Name(), f.Name, f.Type)
		}
		t.Run(typ.Name()+"."+f.Name, func(t *testing.T) {
			check(func(v reflect.Value) { v.Field(i).Set(val) })
		})
	}
}

func sampleValue(typ reflect.Type) reflect.Value {
	switch typ {
	case reflect.TypeFor[time.Time]():
		return reflect.ValueOf(time.Date(2026, 12, 7, 1, 2, 3, 4, time.UTC))
	case reflect.TypeFor[[]string]():
		return reflect.ValueOf([]string{"a", "b"})
	case reflect.TypeFor[[]AuthResult]():
		return reflect.ValueOf([]AuthResult{{Domain: "d.test", Result: "pass"}})
	case reflect.TypeFor[json.RawMessage]():
		return reflect.ValueOf(json.RawMessage(`{"k":1}`))
	}
	v := reflect.New(typ).Elem()
	switch typ.Kind() {
	case reflect.String:
		v.SetString("s:0000000000000001:2:3:" + strings.Repeat("ab", 32))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint64:
		v.SetUint(1 << 40)
	case reflect.Int, reflect.Int64:
		v.SetInt(-(1 << 40))
	default:
		return reflect.Value{}
	}
	return v
}

func TestEventRecordRoundTrip(t *testing.T) {
	t.Parallel()
	for _, r := range []*eventRec{storedEvent(), {Seq: 9, ID: "custom", Attempts: 3, State: EventDead, LastError: "503"}, {}} {
		var got eventRec
		if err := decodeEvent(encodeEvent(r), &got); err != nil {
			t.Fatal(err)
		}
		if r.ID == "" {
			r.ID = eventID(r.Seq)
		}
		sameJSON(t, "event", r, &got)
	}
}

// TestJSONRecordsStillRead: records older binaries wrote (JSON) read
// through every path, and take the binary form when next saved.
func TestJSONRecordsStillRead(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	ctx := context.Background()
	th := Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u"}
	out := Message{SentBy: "u"}
	if err := s.CreateOutbound(ctx, &th, &out, func(t, m uint64) (string, string) { return "sr.1@relay.test", "" }); err != nil {
		t.Fatal(err)
	}
	m := storedMessage()
	m.Thread, m.ID, m.Raw = th.ID, 99, ""
	ev := storedEvent()
	mj, _ := json.Marshal(m)
	ej, _ := json.Marshal(ev)
	th.Subject = "kept"
	tj, _ := json.Marshal(&th)
	// As an older binary left it: every message in thread_msg, the merge
	// mark at the last one.
	if err := s.mergeNow(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bMeta).Put(keyMerged, putU64(m.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bThreads).Put(keyU64("acme", th.ID), tj); err != nil {
			return err
		}
		if err := tx.Bucket(bMessages).Put(keyU64("acme", m.ID), mj); err != nil {
			return err
		}
		if err := tx.Bucket(bThreadMsg).Put(append(keyU64("acme", th.ID), putU64(m.ID)...), nil); err != nil {
			return err
		}
		return tx.Bucket(bOutbox).Put(putU64(ev.Seq), ej)
	}); err != nil {
		t.Fatal(err)
	}
	gotTh, err := s.Thread(ctx, "acme", th.ID)
	if err != nil || gotTh.Subject != "kept" || gotTh.Candidate != "c-1" {
		t.Fatalf("JSON thread = %+v %v", gotTh, err)
	}
	got, err := s.Message(ctx, "acme", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "JSON message", m, got)
	msgs, err := s.ThreadMessages(ctx, "acme", th.ID)
	if err != nil || len(msgs) != 2 || msgs[1].Subject != m.Subject {
		t.Fatalf("thread messages = %v %v", msgs, err)
	}
	evs, err := s.Events(ctx, EventPending)
	if err != nil || len(evs) != 1 || evs[0].ID != ev.ID || evs[0].Data.(map[string]any)["message_id"] != MessageRef(20417) {
		t.Fatalf("events = %+v %v", evs, err)
	}
	claimed, err := s.ClaimEvents(ctx, ev.Created.Add(time.Second), 10, time.Minute)
	if err != nil || len(claimed) != 1 || !bytes.Equal(claimed[0].Data.(json.RawMessage), ev.Data) {
		t.Fatalf("claimed = %+v %v", claimed, err)
	}
	if _, err := s.UpdateMessage(ctx, "acme", m.ID, nil, func(m *Message) error { m.AddMailbox("b@relay.test"); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMessages).Get(keyU64("acme", m.ID)); v[0] != msgRecV1 {
			t.Errorf("message saved again as %q, want the binary form", v)
		}
		if v := tx.Bucket(bThreads).Get(keyU64("acme", th.ID)); v[0] != '{' {
			t.Errorf("thread rewritten by a read: %q", v)
		}
		if v := tx.Bucket(bOutbox).Get(putU64(ev.Seq)); v[0] != eventRecV1 {
			t.Errorf("event saved again as %q, want the binary form", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// FuzzRecordDecode: the decoders never panic on arbitrary bytes, and what
// they accept encodes to a canonical form that decodes to the same record.
func FuzzRecordDecode(f *testing.F) {
	f.Add(encodeMessage(storedMessage()))
	f.Add(encodeEvent(storedEvent()))
	f.Add(encodeMessage(&Message{}))
	f.Add([]byte{msgRecV1})
	mj, _ := json.Marshal(storedMessage())
	f.Add(mj)
	f.Add(encodeThread(storedThread()))
	f.Fuzz(func(t *testing.T, data []byte) {
		var th, th2 Thread
		if decodeThread(data, &th) == nil {
			enc := encodeThread(&th)
			if err := decodeThread(enc, &th2); err != nil {
				t.Fatalf("re-encoded thread does not decode: %v", err)
			}
			if !bytes.Equal(encodeThread(&th2), enc) {
				t.Fatalf("thread encoding not stable: %+v / %+v", th, th2)
			}
		}
		var m, m2 Message
		if decodeMessage(data, &m) == nil {
			enc := encodeMessage(&m)
			if err := decodeMessage(enc, &m2); err != nil {
				t.Fatalf("re-encoded message does not decode: %v", err)
			}
			if !bytes.Equal(encodeMessage(&m2), enc) {
				t.Fatalf("message encoding not stable: %+v / %+v", m, m2)
			}
		}
		var r, r2 eventRec
		if decodeEvent(data, &r) == nil {
			enc := encodeEvent(&r)
			if err := decodeEvent(enc, &r2); err != nil {
				t.Fatalf("re-encoded event does not decode: %v", err)
			}
			if !bytes.Equal(encodeEvent(&r2), enc) {
				t.Fatalf("event encoding not stable: %+v / %+v", r, r2)
			}
		}
	})
}

// BenchmarkRecordCodec: the CPU of writing a stored message's records and
// of reading them back, JSON against the binary form.
func BenchmarkRecordCodec(b *testing.B) {
	m, ev := storedMessage(), storedEvent()
	mj, _ := json.Marshal(m)
	ej, _ := json.Marshal(ev)
	mb, eb := encodeMessage(m), encodeEvent(ev)
	b.Run("message/encode/json", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(m)
		}
	})
	b.Run("message/encode/binary", func(b *testing.B) {
		for b.Loop() {
			_ = encodeMessage(m)
		}
	})
	b.Run("message/decode/json", func(b *testing.B) {
		for b.Loop() {
			var got Message
			_ = decodeMessage(mj, &got)
		}
	})
	b.Run("message/decode/binary", func(b *testing.B) {
		for b.Loop() {
			var got Message
			_ = decodeMessage(mb, &got)
		}
	})
	th := storedThread()
	tj, tb := func() []byte { j, _ := json.Marshal(th); return j }(), encodeThread(th)
	b.Run("thread/decode/json", func(b *testing.B) {
		for b.Loop() {
			var got Thread
			_ = decodeThread(tj, &got)
		}
	})
	b.Run("thread/decode/binary", func(b *testing.B) {
		for b.Loop() {
			var got Thread
			_ = decodeThread(tb, &got)
		}
	})
	b.Run("event/encode/json", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(ev)
		}
	})
	b.Run("event/encode/binary", func(b *testing.B) {
		for b.Loop() {
			_ = encodeEvent(ev)
		}
	})
	b.Run("event/decode/json", func(b *testing.B) {
		for b.Loop() {
			var got eventRec
			_ = decodeEvent(ej, &got)
		}
	})
	b.Run("event/decode/binary", func(b *testing.B) {
		for b.Loop() {
			var got eventRec
			_ = decodeEvent(eb, &got)
		}
	})
}

// TestSchema2StoreRaised: a schema-2 store (JSON records) opens, is raised
// to the current version with its records as they were, and reads; an older binary then
// refuses it (its SchemaVersion is 2) instead of failing on binary records.
func TestSchema2StoreRaised(t *testing.T) {
	t.Parallel()
	s, dir := openTest(t)
	m := storedMessage()
	m.Raw = ""
	mj, _ := json.Marshal(m)
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bMeta).Put(keySchema, putU64(2)); err != nil {
			return err
		}
		return tx.Bucket(bMessages).Put(keyU64(m.Tenant, m.ID), mj)
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := getU64(tx.Bucket(bMeta).Get(keySchema)); v != SchemaVersion {
			t.Errorf("schema version %d after Open, want %d", v, SchemaVersion)
		}
		if v := tx.Bucket(bMessages).Get(keyU64(m.Tenant, m.ID)); !bytes.Equal(v, mj) {
			t.Errorf("record changed by the raise: %q", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Message(context.Background(), m.Tenant, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "message of a schema-2 store", m, got)
}
