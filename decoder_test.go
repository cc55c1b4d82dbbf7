package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"sse/internal/spec"
	"sse/internal/ssetest"
)

// decoderTests are streams and the events a conforming client dispatches for each, one test
// for each rule of WHATWG HTML §9.2.6.
var decoderTests = []struct {
	name   string
	stream string
	want   []Event
	lastID string // LastEventID at the end
	err    error  // the error after the events
}{
	{"empty stream", "", nil, "", io.EOF},
	{"simple", "data: a\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"LF", "data: a\ndata: b\n\n", []Event{{Data: "a\nb"}}, "", io.EOF},
	{"CRLF", "data: a\r\ndata: b\r\n\r\n", []Event{{Data: "a\nb"}}, "", io.EOF},
	{"lone CR", "data: a\rdata: b\r\r", []Event{{Data: "a\nb"}}, "", io.EOF},
	{"mixed line ends", "data: a\r\ndata: b\rdata: c\n\r\n", []Event{{Data: "a\nb\nc"}}, "", io.EOF},
	{"LF CR is two breaks", "data: a\n\rdata: b\n\n", []Event{{Data: "a"}, {Data: "b"}}, "", io.EOF},
	{"CR CR LF", "data: a\r\r\ndata: b\n\n", []Event{{Data: "a"}, {Data: "b"}}, "", io.EOF},
	{"one leading space removed", "data:  x\ndata:y\ndata: \n\n", []Event{{Data: " x\ny\n"}}, "", io.EOF},
	{"tab kept", "data:\tx\n\n", []Event{{Data: "\tx"}}, "", io.EOF},
	{"field without colon", "data\ndata\n\n", []Event{{Data: "\n"}}, "", io.EOF},
	{"empty data dispatches", "data\n\n", []Event{{Data: ""}}, "", io.EOF},
	{"data: dispatches", "data:\n\n", []Event{{Data: ""}}, "", io.EOF},
	{"trailing newlines kept but one", "data: a\ndata\ndata\n\n", []Event{{Data: "a\n\n"}}, "", io.EOF},
	{"colon in value", "data: a: b:c\n\n", []Event{{Data: "a: b:c"}}, "", io.EOF},
	{"type", "event: add\ndata: 1\n\n", []Event{{Type: "add", Data: "1"}}, "", io.EOF},
	{"type resets after dispatch", "event: add\ndata: 1\n\ndata: 2\n\n", []Event{{Type: "add", Data: "1"}, {Data: "2"}}, "", io.EOF},
	{"type resets without data", "event: add\n\ndata: 2\n\n", []Event{{Data: "2"}}, "", io.EOF},
	{"last type wins", "event: a\nevent: b\ndata\n\n", []Event{{Type: "b"}}, "", io.EOF},
	{"empty type", "event:\ndata: x\n\n", []Event{{Data: "x"}}, "", io.EOF},
	{"type message", "event: message\ndata: x\n\n", []Event{{Type: "message", Data: "x"}}, "", io.EOF},
	{"no data, no event", "event: x\nid: 1\n\ndata: y\n\n", []Event{{ID: "1", Data: "y"}}, "1", io.EOF},
	{"id persists", "id: 7\ndata: a\n\ndata: b\n\n", []Event{{ID: "7", Data: "a"}, {ID: "7", Data: "b"}}, "7", io.EOF},
	{"id-only block", "data: a\n\nid: 5\n\ndata: b\n\n", []Event{{Data: "a"}, {ID: "5", Data: "b"}}, "5", io.EOF},
	{"id-only block at end", "data: a\n\nid: 5\n\n", []Event{{Data: "a"}}, "5", io.EOF},
	{"id after data in block", "data: a\nid: 3\n\n", []Event{{ID: "3", Data: "a"}}, "3", io.EOF},
	{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []Event{{ID: "1", Data: "a"}, {ID: "1", Data: "b"}}, "1", io.EOF},
	{"empty id resets", "id: 1\ndata: a\n\nid\ndata: b\n\n", []Event{{ID: "1", Data: "a"}, {Data: "b"}}, "", io.EOF},
	{"id spaces", "id:  a b \ndata\n\n", []Event{{ID: " a b "}}, " a b ", io.EOF},
	{"retry", "retry: 1500\ndata: a\n\n", []Event{{Data: "a", Retry: 1500 * time.Millisecond}}, "", io.EOF},
	{"retry digits only", "retry: 10\nretry: 1x\nretry: -5\nretry:\nretry: 1.5\nretry:  7\ndata: a\n\n", []Event{{Data: "a", Retry: 10 * time.Millisecond}}, "", io.EOF},
	{"retry zero", "retry: 0\ndata: a\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"retry only in its block", "retry: 10\n\ndata: a\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"retry huge", "retry: 99999999999999999999999\ndata: a\n\n", []Event{{Data: "a", Retry: math.MaxInt64}}, "", io.EOF},
	{"retry with leading zeros", "retry: 0042\ndata: a\n\n", []Event{{Data: "a", Retry: 42 * time.Millisecond}}, "", io.EOF},
	{"comments ignored", ": hi\n:\ndata: a\n: there\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"comment only stream", ":\n:\n", nil, "", io.EOF},
	{"unknown field ignored", "foo: bar\ndata: a\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"field names are case sensitive", "Data: a\nDATA: b\ndata: c\nEvent: x\n\n", []Event{{Data: "c"}}, "", io.EOF},
	{"space before colon", "data : a\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"leading space before name", " data: a\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"leading BOM skipped", "\ufeffdata: a\n\n", []Event{{Data: "a"}}, "", io.EOF},
	{"BOM alone", "\ufeff", nil, "", io.EOF},
	{"second BOM is data", "\ufeffdata: \ufeff\n\n", []Event{{Data: "\ufeff"}}, "", io.EOF},
	{"BOM makes the field unknown", "\ufeff\ufeffdata: a\n\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"BOM not first", "\n\ufeffdata: a\n\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"part of a BOM", "\xef\xbbdata: a\n\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"blank lines between events", "\n\n\r\ndata: a\n\n\n\r\r", []Event{{Data: "a"}}, "", io.EOF},
	{"unterminated final block", "data: a\n\ndata: b\n", []Event{{Data: "a"}}, "", io.ErrUnexpectedEOF},
	{"unterminated final line", "data: a\n\ndata: b", []Event{{Data: "a"}}, "", io.ErrUnexpectedEOF},
	{"unterminated id block", "data: a\n\nid: 2\n", []Event{{Data: "a"}}, "", io.ErrUnexpectedEOF},
	{"unterminated comment", "data: a\n\n: x", []Event{{Data: "a"}}, "", io.ErrUnexpectedEOF},
	{"block ended by CR at the end", "data: a\r\r", []Event{{Data: "a"}}, "", io.EOF},
	{"comment after last event", "data: a\n\n:\n", []Event{{Data: "a"}}, "", io.EOF},
	{"invalid UTF-8 replaced", "data: \xff\n\n", []Event{{Data: "\ufffd"}}, "", io.EOF},
	{"truncated sequence is one U+FFFD", "data: \xe2\x82x\n\n", []Event{{Data: "\ufffdx"}}, "", io.EOF},
	{"truncated at line end", "data: a\xf0\x9f\x98\ndata: b\n\n", []Event{{Data: "a\ufffd\nb"}}, "", io.EOF},
	{"surrogate is three U+FFFD", "data: \xed\xa0\x80\n\n", []Event{{Data: "\ufffd\ufffd\ufffd"}}, "", io.EOF},
	{"overlong is two U+FFFD", "data: \xc0\xaf\n\n", []Event{{Data: "\ufffd\ufffd"}}, "", io.EOF},
	{"above U+10FFFF", "data: \xf4\x90\x80\x80\n\n", []Event{{Data: "\ufffd\ufffd\ufffd\ufffd"}}, "", io.EOF},
	{"valid after invalid", "data: \xffé\n\n", []Event{{Data: "\ufffdé"}}, "", io.EOF},
	{"U+FFFD itself", "data: \ufffd\n\n", []Event{{Data: "\ufffd"}}, "", io.EOF},
	{"invalid type and id", "event: \xff\nid: \xfe\ndata\n\n", []Event{{Type: "\ufffd", ID: "\ufffd"}}, "\ufffd", io.EOF},
	{"invalid field name", "data\xff: a\ndata: b\n\n", []Event{{Data: "b"}}, "", io.EOF},
	{"NUL in data", "data: a\x00b\n\n", []Event{{Data: "a\x00b"}}, "", io.EOF},
}

func TestDecoder(t *testing.T) {
	readers := []struct {
		name string
		r    func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"OneByteReader", iotest.OneByteReader},
		{"HalfReader", iotest.HalfReader},
		{"DataErrReader", iotest.DataErrReader},
	}
	for _, tt := range decoderTests {
		t.Run(tt.name, func(t *testing.T) {
			for _, rd := range readers {
				d := NewDecoder(rd.r(strings.NewReader(tt.stream)))
				got, err := decodeAll(d)
				if !equalEvents(got, tt.want) {
					t.Errorf("%s: decode(%q) = %+v, want %+v", rd.name, tt.stream, got, tt.want)
				}
				if err != tt.err {
					t.Errorf("%s: decode(%q) ends with %v, want %v", rd.name, tt.stream, err, tt.err)
				}
				if id := d.LastEventID(); id != tt.lastID {
					t.Errorf("%s: decode(%q): LastEventID() = %q, want %q", rd.name, tt.stream, id, tt.lastID)
				}
				if _, again := d.Next(); again != err {
					t.Errorf("%s: decode(%q): Next() after %v = %v, want the same", rd.name, tt.stream, err, again)
				}
			}
		})
	}
}

// TestDecoderAgreesWithSpec checks the tests' expectations against the oracle, which
// follows the spec step by step: the table is right, not just what Decoder does.
func TestDecoderAgreesWithSpec(t *testing.T) {
	for _, tt := range decoderTests {
		want, _, _, _ := specDecode([]byte(tt.stream))
		if len(want) != len(tt.want) {
			t.Errorf("%s: spec decodes %q to %+v, the test wants %+v", tt.name, tt.stream, want, tt.want)
			continue
		}
		for i := range want {
			if err := compareSpec(tt.want[i], want[i]); err != "" {
				t.Errorf("%s: event %d: %s", tt.name, i, err)
			}
		}
	}
}

// decodeAll returns every event of d's stream and the error that ended it.
func decodeAll(d *Decoder) ([]Event, error) {
	var evs []Event
	for {
		ev, err := d.Next()
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

func equalEvents(a, b []Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDecoderDispatchesAtOnce checks that an event is returned as soon as its blank line is
// read, a lone CR included, without waiting for more of the stream.
func TestDecoderDispatchesAtOnce(t *testing.T) {
	for _, stream := range []string{"data: a\n\n", "data: a\r\r", "data: a\r\n\r"} {
		pr, pw := io.Pipe()
		d := NewDecoder(pr)
		go func() {
			pw.Write([]byte(stream))
			// Nothing more until the test has its event: a Decoder that waited would hang.
		}()
		ev, err := d.Next()
		if err != nil || ev.Data != "a" {
			t.Errorf("Next() on %q = %+v, %v; want data %q", stream, ev, err, "a")
		}
		pw.Close()
		if ev, err := d.Next(); err != io.EOF {
			t.Errorf("Next() on %q at the end = %+v, %v; want io.EOF", stream, ev, err)
		}
	}
}

// TestDecoderCRLFSplit checks that a CRLF split across reads is one line break, however the
// reads fall.
func TestDecoderCRLFSplit(t *testing.T) {
	d := NewDecoder(io.MultiReader(strings.NewReader("data: a\r"), strings.NewReader("\ndata: b\r"), strings.NewReader("\n\r"), strings.NewReader("\n")))
	ev, err := d.Next()
	if err != nil || ev.Data != "a\nb" {
		t.Fatalf("Next() = %+v, %v; want data %q", ev, err, "a\nb")
	}
	if ev, err := d.Next(); err != io.EOF {
		t.Fatalf("Next() at the end = %+v, %v; want io.EOF", ev, err)
	}
}

func TestDecoderReadError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("data: a\n\ndata: b\n"), iotest.ErrReader(boom))
	d := NewDecoder(r)
	if ev, err := d.Next(); err != nil || ev.Data != "a" {
		t.Fatalf("Next() = %+v, %v; want data %q", ev, err, "a")
	}
	for range 2 {
		if ev, err := d.Next(); err != boom {
			t.Fatalf("Next() = %+v, %v; want the reader's error", ev, err)
		}
	}
}

func TestDecoderMaxEventSize(t *testing.T) {
	tests := []struct {
		name   string
		max    int
		stream string
		ok     int // events before the error
	}{
		{"one long line", 100, "data: a\n\ndata: " + strings.Repeat("x", 100) + "\n\n", 1},
		{"long unterminated line", 100, "data: a\n\n" + strings.Repeat("x", 200), 1},
		{"many lines", 100, "data: a\n\n" + strings.Repeat("data: 123456789\n", 20) + "\n", 1},
		{"long comment", 100, ":" + strings.Repeat("x", 100) + "\ndata: a\n\n", 0},
		{"long unknown field", 100, "x: " + strings.Repeat("x", 100) + "\n\n", 0},
		{"long type", 100, "event: " + strings.Repeat("x", 100) + "\ndata\n\n", 0},
		{"long id", 100, "id: " + strings.Repeat("x", 100) + "\n\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecoder(iotest.HalfReader(strings.NewReader(tt.stream)))
			d.MaxEventSize = tt.max
			evs, err := decodeAll(d)
			if len(evs) != tt.ok || !errors.Is(err, ErrEventTooLarge) {
				t.Fatalf("decode = %d events, %v; want %d, then ErrEventTooLarge", len(evs), err, tt.ok)
			}
			if !strings.Contains(err.Error(), "100 bytes") {
				t.Errorf("error %q does not say the limit", err)
			}
			if _, again := d.Next(); again != err {
				t.Errorf("Next() after %v = %v, want the same", err, again)
			}
		})
	}
}

// TestDecoderMaxEventSizeFits checks what just fits: many comments between events (a comment is
// not part of an event), and events just under the limit.
func TestDecoderMaxEventSizeFits(t *testing.T) {
	const max = 100
	stream := strings.Repeat(":"+strings.Repeat("x", 98)+"\n", 10) +
		"data: " + strings.Repeat("x", max-7) + "\n\n" + // 99 bytes and its LF
		"event: " + strings.Repeat("t", 40) + "\ndata: " + strings.Repeat("d", 45) + "\n\n" // 100 bytes with their LFs
	d := NewDecoder(iotest.OneByteReader(strings.NewReader(stream)))
	d.MaxEventSize = max
	evs, err := decodeAll(d)
	if len(evs) != 2 || err != io.EOF {
		t.Fatalf("decode = %d events, %v; want 2, io.EOF", len(evs), err)
	}
}

// TestDecoderLongLine reads a 1 MiB line at the default limit.
func TestDecoderLongLine(t *testing.T) {
	data := strings.Repeat("0123456789abcdef", 1<<16)
	stream := "data: " + data + "\n\ndata: after\n\n"
	for _, r := range []io.Reader{strings.NewReader(stream), iotest.HalfReader(strings.NewReader(stream))} {
		d := NewDecoder(r)
		evs, err := decodeAll(d)
		if err != io.EOF || len(evs) != 2 || evs[0].Data != data || evs[1].Data != "after" {
			t.Fatalf("decode = %d events, %v; want the 1 MiB event, then another", len(evs), err)
		}
	}
}

// TestDecoderRoundTrip sends every edge case of the wire format through Encoder and Decoder.
func TestDecoderRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	enc := NewEncoder(&stream)
	var want []Event
	for _, c := range ssetest.RoundTrip {
		ev := Event{ID: c.ID, Type: c.Type, Data: c.Data, Retry: c.Retry}
		if err := enc.Encode(ev); err != nil {
			t.Fatalf("Encode(%+v) = %v", ev, err)
		}
		want = append(want, decoded(ev, want))
	}
	// One stream of all cases, so that each case also follows the others; and each case alone.
	d := NewDecoder(iotest.HalfReader(&stream))
	got, err := decodeAll(d)
	if err != io.EOF {
		t.Fatalf("decode: %v", err)
	}
	for i, c := range ssetest.RoundTrip {
		if i >= len(got) {
			t.Fatalf("%s: missing", c.Name)
		}
		if got[i] != want[i] {
			t.Errorf("%s: decoded %+v, want %+v", c.Name, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		t.Errorf("decoded %d events, want %d", len(got), len(want))
	}
}

// decoded returns what Decoder reads for ev sent after events prev.
func decoded(ev Event, prev []Event) Event {
	ev.Data = strings.ReplaceAll(ev.Data, "\r\n", "\n")
	ev.Data = strings.ReplaceAll(ev.Data, "\r", "\n")
	ev.Retry = ev.Retry.Truncate(time.Millisecond)
	if ev.ID == "" && len(prev) > 0 {
		ev.ID = prev[len(prev)-1].ID
	}
	return ev
}

func TestRead(t *testing.T) {
	var got []string
	for ev, err := range Read(strings.NewReader("data: a\n\ndata: b\n\n")) {
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		got = append(got, ev.Data)
	}
	if strings.Join(got, ",") != "a,b" {
		t.Errorf("Read = %q, want [a b]", got)
	}

	var errs []error
	for _, err := range Read(strings.NewReader("data: a\n\ndata: b")) {
		errs = append(errs, err)
	}
	if len(errs) != 2 || errs[0] != nil || errs[1] != io.ErrUnexpectedEOF {
		t.Errorf("Read of a cut stream yields errors %v, want [<nil> %v]", errs, io.ErrUnexpectedEOF)
	}

	// Breaking out stops reading.
	r := &countingReader{r: strings.NewReader("data: a\n\n")}
	for range Read(io.MultiReader(r, iotest.ErrReader(errors.New("read too far")))) {
		break
	}
	if r.n != 1 {
		t.Errorf("Read after break: %d reads, want 1", r.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (r *countingReader) Read(p []byte) (int, error) {
	r.n++
	return r.r.Read(p)
}

// splitReader returns its stream in reads of random length, some of them empty, and sometimes
// with the last bytes and io.EOF together.
type splitReader struct {
	b   []byte
	rng *rand.Rand
}

func (r *splitReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.b))
	switch r.rng.IntN(4) {
	case 0:
		n = 0
	case 1:
		n = min(n, 1)
	case 2:
		n = min(n, 1+r.rng.IntN(16))
	}
	copy(p, r.b[:n])
	r.b = r.b[n:]
	if len(r.b) == 0 && r.rng.IntN(2) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// FuzzDecoder checks Decoder against the spec decoder on any stream, fed in random splits.
func FuzzDecoder(f *testing.F) {
	for _, tt := range decoderTests {
		f.Add([]byte(tt.stream), uint64(len(tt.name)))
	}
	var stream bytes.Buffer
	enc := NewEncoder(&stream)
	for _, c := range ssetest.RoundTrip {
		enc.Encode(Event{ID: c.ID, Type: c.Type, Data: c.Data, Retry: c.Retry})
	}
	f.Add(stream.Bytes(), uint64(1))
	f.Add([]byte("\ufeffid: 1\rretry: 5\r\ndata:x\r\r\n\n:c\rid\x00\ndata\r\nevent:e\n\r"), uint64(2))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		f.Add(randomStream(rng), uint64(i))
	}

	f.Fuzz(func(t *testing.T, stream []byte, seed uint64) {
		want, wantID, wantRetry, _ := specDecode(stream)
		d := NewDecoder(&splitReader{stream, rand.New(rand.NewPCG(seed, seed))})
		got, err := decodeAll(d)
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			t.Fatalf("decode(%q): %v", stream, err)
		}
		agreeWithSpec(t, fmt.Sprintf("decode(%q)", stream), got, want)
		if d.LastEventID() != wantID {
			t.Errorf("decode(%q): LastEventID() = %q, spec says %q", stream, d.LastEventID(), wantID)
		}
		if !retryAgrees(d.retry, wantRetry) {
			t.Errorf("decode(%q): reconnection time %v, spec says %d ms", stream, d.retry, wantRetry)
		}
		if clean := cleanEnd(stream); (err == io.EOF) != clean {
			t.Errorf("decode(%q) ends with %v; a clean end: %v", stream, err, clean)
		}
	})
}

// specDecode decodes stream with the spec decoder.
func specDecode(stream []byte) (evs []spec.Event, lastID string, retry int64, err error) {
	d := spec.NewDecoder(bytes.NewReader(stream))
	for {
		ev, err := d.Next()
		if err != nil {
			return evs, d.LastEventID(), d.Retry(), err
		}
		evs = append(evs, ev)
	}
}

// agreeWithSpec fails t, saying what decoded, unless got are the events the spec decoder
// dispatched.
func agreeWithSpec(t *testing.T, what string, got []Event, want []spec.Event) {
	t.Helper()
	if len(got) != len(want) {
		if len(got)+len(want) > 20 {
			t.Fatalf("%s: %d events, spec says %d", what, len(got), len(want))
		}
		t.Fatalf("%s = %+v, spec says %+v", what, got, want)
	}
	for i := range got {
		if msg := compareSpec(got[i], want[i]); msg != "" {
			t.Fatalf("%s: event %d: %s", what, i, msg)
		}
	}
}

// compareSpec describes how ev differs from what the spec decoder dispatched, if it does.
func compareSpec(ev Event, want spec.Event) string {
	typ := ev.Type
	if typ == "" {
		typ = "message"
	}
	// The spec decoder reports the retry set since the previous event; Event.Retry, the one set in
	// the event's own block. They agree whenever the block set one.
	if typ != want.Type || ev.Data != want.Data || ev.ID != want.LastEventID ||
		(ev.Retry != 0 && !retryAgrees(ev.Retry, want.Retry)) || (want.Retry == -1 && ev.Retry != 0) {
		return "got " + strings.TrimSpace(strings.ReplaceAll(
			"type="+ev.Type+" data="+ev.Data+" id="+ev.ID+" retry="+ev.Retry.String(), "\n", `\n`)) +
			", spec says type=" + want.Type + " data=" + strings.ReplaceAll(want.Data, "\n", `\n`) +
			" id=" + want.LastEventID + " retry=" + time.Duration(want.Retry*int64(time.Millisecond)).String()
	}
	return ""
}

// retryAgrees reports whether d is the reconnection time the spec decoder reports as ms
// milliseconds (-1 for none).
func retryAgrees(d time.Duration, ms int64) bool {
	switch {
	case d < 0:
		return ms == -1
	case d == math.MaxInt64:
		// More than a Duration holds: saturated.
		return ms > math.MaxInt64/int64(time.Millisecond)
	}
	return ms >= 0 && d == time.Duration(ms)*time.Millisecond
}

// cleanEnd reports whether stream ends between events: after a blank line or a comment, with
// no unterminated line.
func cleanEnd(stream []byte) bool {
	s := strings.TrimPrefix(string(stream), "\ufeff")
	open := false
	for s != "" {
		i := strings.IndexAny(s, "\r\n")
		if i < 0 {
			return false // an unterminated line
		}
		line := s[:i]
		if s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			i++
		}
		s = s[i+1:]
		switch {
		case line == "":
			open = false
		case line[0] != ':':
			open = true
		}
	}
	return !open
}

// randomStream returns a stream made of the pieces the format is made of.
func randomStream(rng *rand.Rand) []byte {
	pieces := []string{"data", "data:", "data: ", "event: ", "id: ", "id", "retry: ", "retry: 12", ":",
		"\n", "\r", "\r\n", "\n\n", "x", " ", "é", "\xff", "\xe2\x82", "\x00", "\ufeff", "1"}
	var b []byte
	for range rng.IntN(60) {
		b = append(b, pieces[rng.IntN(len(pieces))]...)
	}
	return b
}

// BenchmarkDecoder measures decoding events of 64 B and 4 KiB of data; internal/readbench
// compares it with other decoders.
func BenchmarkDecoder(b *testing.B) {
	for _, c := range []struct {
		name string
		size int
		eol  string
	}{{"64B", 64, "\n"}, {"4096B", 4096, "\n"}, {"64B-CR", 64, "\r"}, {"64B-CRLF", 64, "\r\n"}} {
		b.Run(c.name, func(b *testing.B) {
			var buf bytes.Buffer
			enc := NewEncoder(&buf)
			const n = 1000
			for i := range n {
				enc.Encode(Event{ID: strconv.Itoa(i), Type: "delta", Data: strings.Repeat("x", c.size)})
			}
			stream := bytes.ReplaceAll(buf.Bytes(), []byte("\n"), []byte(c.eol))
			r := bytes.NewReader(stream)
			d := NewDecoder(r)
			b.SetBytes(int64(len(stream) / n))
			b.ReportAllocs()
			for b.Loop() {
				_, err := d.Next()
				if err == io.EOF {
					r.Reset(stream)
					d = NewDecoder(r)
					_, err = d.Next()
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func TestIsASCII(t *testing.T) {
	for n := range 70 {
		b := bytes.Repeat([]byte("a"), n)
		if !isASCII(b) {
			t.Errorf("isASCII(%d × a) = false", n)
		}
		for i := range n {
			b[i] = 0x80
			if isASCII(b) {
				t.Errorf("isASCII with 0x80 at %d of %d = true", i, n)
			}
			b[i] = 'a'
		}
	}
}

// The strings of an event stay as they were returned while later events are decoded: short
// ones share a buffer that is only ever appended to.
func TestDecoderStringsStay(t *testing.T) {
	var stream strings.Builder
	var want []Event
	for i := range 3000 {
		ev := Event{ID: strconv.Itoa(i), Type: "t" + strconv.Itoa(i%7), Data: strings.Repeat(strconv.Itoa(i%10), i%300)}
		want = append(want, ev)
		stream.WriteString("id: " + ev.ID + "\nevent: " + ev.Type + "\ndata: " + ev.Data + "\n\n")
	}
	var got []Event
	for ev, err := range Read(iotest.HalfReader(strings.NewReader(stream.String()))) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev)
	}
	if !slices.Equal(got, want) {
		t.Errorf("kept events changed after later ones were decoded")
	}
}

// TestDecoderLongStreams checks streams long enough to span many buffers, with values of up
// to 40 KiB and reads of random sizes, against the spec decoder, comparing every event only
// once the whole stream is decoded: values that straddle two buffers are copied, values
// still in a buffer are not, and no buffer a returned string came from is written again.
func TestDecoderLongStreams(t *testing.T) {
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var stream []byte
		for len(stream) < 1<<20 {
			stream = append(stream, randomStream(rng)...)
			if rng.IntN(3) == 0 {
				long := strings.Repeat([]string{"x", "é", "\xff", ":"}[rng.IntN(4)], rng.IntN(20<<10))
				field := []string{"data: ", "id: ", "event: ", ": "}[rng.IntN(4)]
				end := []string{"\n", "\n\n", "\r\n\r\n", ""}[rng.IntN(4)]
				stream = append(stream, "\n"+field+long+end...)
			}
		}
		want, wantID, _, _ := specDecode(stream)
		d := NewDecoder(&splitReader{stream, rng})
		got, err := decodeAll(d)
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			t.Fatalf("seed %d: %v", seed, err)
		}
		agreeWithSpec(t, fmt.Sprintf("seed %d", seed), got, want)
		if d.LastEventID() != wantID {
			t.Errorf("seed %d: LastEventID() = %q, spec says %q", seed, d.LastEventID(), wantID)
		}
	}
}

// chunkReader returns its chunks one per Read, cutting one longer than the room.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// A leading BOM is not part of any event: a limit of one byte lets it and a blank line
// through, however the stream is split.
func TestDecoderMaxEventSizeBOM(t *testing.T) {
	for _, stream := range []string{"\ufeff", "\ufeff\n", "\ufeff:\n\n"} {
		d := NewDecoder(iotest.OneByteReader(strings.NewReader(stream)))
		d.MaxEventSize = 1
		if evs, err := decodeAll(d); len(evs) != 0 || err != io.EOF {
			t.Errorf("decode(%q) one byte a read = %d events, %v; want none, EOF", stream, len(evs), err)
		}
	}
}

// TestDecoderLongDataStays keeps every event of a stream of long data, whose strings are
// the bytes the Decoder read, and checks them once the stream is decoded. The stream is
// read one event per Read, so that reads end where events do and the Decoder finds its
// buffer drained, and in cuts of random sizes.
func TestDecoderLongDataStays(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var events []string
	var want []Event
	for i := range 2000 {
		ev := Event{ID: strconv.Itoa(i), Data: strings.Repeat(string(rune('a'+i%26)), maxSharedString+1+rng.IntN(3000))}
		want = append(want, ev)
		events = append(events, "id: "+ev.ID+"\ndata: "+ev.Data+"\n\n")
	}
	var cuts []string
	for s := strings.Join(events, ""); s != ""; {
		n := min(len(s), 1+rng.IntN(5000))
		cuts = append(cuts, s[:n])
		s = s[n:]
	}
	for name, chunks := range map[string][]string{"events": events, "cuts": cuts} {
		got, err := decodeAll(NewDecoder(&chunkReader{slices.Clone(chunks)}))
		if err != io.EOF || len(got) != len(want) {
			t.Fatalf("%s: %d events, %v; want %d, EOF", name, len(got), err, len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: event %d changed after later ones were decoded", name, i)
			}
		}
	}
}

// FuzzDecoderMaxEventSize checks small limits: a stream decodes as the spec says until the
// first line that takes an event (or a comment) over the limit, and then fails with
// ErrEventTooLarge, or io.ErrUnexpectedEOF if that line is the stream's unterminated last.
func FuzzDecoderMaxEventSize(f *testing.F) {
	for _, tt := range decoderTests {
		f.Add([]byte(tt.stream), uint64(len(tt.name)), uint8(len(tt.stream)))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		f.Add(randomStream(rng), uint64(i), uint8(i))
	}
	f.Fuzz(func(t *testing.T, stream []byte, seed uint64, m uint8) {
		limit := 1 + int(m)%48
		prefix, terminated, over := overLimit(stream, limit)
		d := NewDecoder(&splitReader{stream, rand.New(rand.NewPCG(seed, seed))})
		d.MaxEventSize = limit
		got, err := decodeAll(d)
		switch {
		case !over && err != io.EOF && err != io.ErrUnexpectedEOF:
			t.Fatalf("limit %d: decode(%q): %v", limit, stream, err)
		case over && !errors.Is(err, ErrEventTooLarge) && (terminated || err != io.ErrUnexpectedEOF):
			t.Fatalf("limit %d: decode(%q): %v, want too large", limit, stream, err)
		}
		want, wantID, _, _ := specDecode(stream[:prefix])
		agreeWithSpec(t, fmt.Sprintf("limit %d: decode(%q)", limit, stream), got, want)
		if !over && d.LastEventID() != wantID {
			t.Errorf("limit %d: decode(%q): LastEventID() = %q, spec says %q", limit, stream, d.LastEventID(), wantID)
		}
	})
}

// overLimit returns the length of the part of stream before the first line that takes the
// bytes of an event's lines (or of a comment) over limit, whether that line is terminated,
// and whether there is such a line; prefix is len(stream) if there is none.
func overLimit(stream []byte, limit int) (prefix int, terminated, over bool) {
	at := 0
	if bytes.HasPrefix(stream, []byte("\ufeff")) {
		at = 3
	}
	size := 0
	for at < len(stream) {
		n := bytes.IndexAny(stream[at:], "\r\n")
		if n < 0 {
			line := stream[at:]
			if line[0] == ':' {
				return at, false, len(line) > limit
			}
			return at, false, size+len(line) > limit
		}
		line := stream[at : at+n]
		next := at + n + 1
		if stream[at+n] == '\r' && next < len(stream) && stream[next] == '\n' {
			next++
		}
		switch {
		case len(line) == 0:
			size = 0
		case line[0] == ':':
			if len(line) > limit {
				return at, true, true
			}
		default:
			if size += len(line) + 1; size > limit {
				return at, true, true
			}
		}
		at = next
	}
	return len(stream), true, false
}

// No byte of the stream is searched for a line break twice: a line that ends in a lone CR
// leaves what eol learned of the LFs after it. (Else each CR-terminated line would search the
// rest of a buffer that a long line made large, which took 28 s for 200k such lines.) The
// search itself cannot be seen, so this checks what the Decoder records of it.
func TestDecoderSearchesOnce(t *testing.T) {
	var stream strings.Builder
	stream.WriteString("data: " + strings.Repeat("x", 64<<10) + "\n\n") // a large buffer
	for range 100 {
		stream.WriteString("data: a\r\r")
	}
	d := NewDecoder(strings.NewReader(stream.String()))
	d.MaxEventSize = 1 << 20
	for i := 0; ; i++ {
		_, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		// The stream holds no LF after the first event: every byte read is known to hold none.
		if i > 0 && d.noLF != d.end {
			t.Fatalf("after event %d: noLF = %d, want end = %d", i, d.noLF, d.end)
		}
	}
}

// Nor is a line that arrives in pieces searched again for each piece: more keeps what was
// searched of it.
func TestDecoderMoreKeepsSearch(t *testing.T) {
	d := NewDecoder(&chunkReader{chunks: []string{"data: a", "bcd", "efg", "hij\n\n"}})
	if err := d.more(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d.eol(bytes.IndexByte(d.buf[d.noLF:d.end], '\n')) // as Next looks for the line's end
		searched := d.noLF - d.start
		if err := d.more(); err != nil {
			t.Fatal(err)
		}
		if d.noLF-d.start != searched {
			t.Fatalf("after a read, the first %d bytes of the line are known to hold no LF, want %d", d.noLF-d.start, searched)
		}
	}
}
