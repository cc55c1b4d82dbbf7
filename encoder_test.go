package sse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"sse/internal/spec"
	"sse/internal/ssetest"
)

// roundTripCases returns the shared edge cases as Events.
func roundTripCases() []Event {
	var evs []Event
	for _, c := range ssetest.RoundTrip {
		evs = append(evs, Event{ID: c.ID, Type: c.Type, Data: c.Data, Retry: c.Retry})
	}
	return evs
}

func TestRoundTrip(t *testing.T) {
	for i, ev := range roundTripCases() {
		t.Run(ssetest.RoundTrip[i].Name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := NewEncoder(&buf).Encode(ev); err != nil {
				t.Fatalf("Encode(%+v) = %v", ev, err)
			}
			checkRoundTrip(t, ev, buf.String())
		})
	}
}

// checkRoundTrip checks that stream decodes to exactly ev, as a client must see it.
func checkRoundTrip(t *testing.T, ev Event, stream string) {
	t.Helper()
	d := spec.NewDecoder(strings.NewReader(stream))
	got, err := d.Next()
	if err != nil {
		t.Fatalf("decode(Encode(%+v) = %q): %v", ev, stream, err)
	}
	if want := received(ev); got != want {
		t.Errorf("decode(Encode(%+v) = %q) = %+v, want %+v", ev, stream, got, want)
	}
	if extra, err := d.Next(); err != io.EOF {
		t.Errorf("decode(Encode(%+v) = %q) has more: %+v, %v", ev, stream, extra, err)
	}
}

// received returns what a conforming client sees for ev, decoded from a fresh stream.
func received(ev Event) spec.Event {
	typ := ev.Type
	if typ == "" {
		typ = "message"
	}
	data := strings.ReplaceAll(ev.Data, "\r\n", "\n")
	data = strings.ReplaceAll(data, "\r", "\n")
	retry := int64(-1)
	if ev.Retry > 0 {
		retry = ev.Retry.Milliseconds()
	}
	return spec.Event{Type: typ, Data: data, LastEventID: ev.ID, Retry: retry}
}

func TestEncodeRefuses(t *testing.T) {
	tests := []struct {
		name  string
		ev    Event
		field string
	}{
		{"type LF", Event{Type: "a\nb"}, "Type"},
		{"type CR", Event{Type: "a\rb"}, "Type"},
		{"type invalid UTF-8", Event{Type: "\xff"}, "Type"},
		{"data invalid UTF-8", Event{Data: "ok\xc3("}, "Data"},
		{"data surrogate", Event{Data: "\xed\xa0\x80"}, "Data"},
		{"id LF", Event{ID: "a\nb"}, "ID"},
		{"id CR", Event{ID: "a\rb"}, "ID"},
		{"id NUL", Event{ID: "a\x00b"}, "ID"},
		{"id tab", Event{ID: "a\tb"}, "ID"},
		{"id escape", Event{ID: "a\x1bb"}, "ID"},
		{"id DEL", Event{ID: "a\x7f"}, "ID"},
		{"id C1 control", Event{ID: "a\u0085b"}, "ID"},
		{"id leading space", Event{ID: " a"}, "ID"},
		{"id trailing space", Event{ID: "a "}, "ID"},
		{"id only space", Event{ID: " "}, "ID"},
		{"id invalid UTF-8", Event{ID: "\xff"}, "ID"},
		{"id too long", Event{ID: strings.Repeat("x", MaxIDLen+1)}, "ID"},
		{"retry negative", Event{Retry: -time.Millisecond}, "Retry"},
		{"retry too large", Event{Retry: maxRetry + time.Millisecond}, "Retry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := NewEncoder(&buf).Encode(tt.ev)
			if !errors.Is(err, ErrInvalidEvent) {
				t.Fatalf("Encode(%+v) = %v, want an error wrapping ErrInvalidEvent", tt.ev, err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("Encode(%+v) = %v, want a *FieldError for %s", tt.ev, err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Encode(%+v) error %q does not name %s", tt.ev, err, tt.field)
			}
			if buf.Len() != 0 {
				t.Errorf("Encode(%+v) wrote %q, want nothing", tt.ev, buf.String())
			}
			if b, err := tt.ev.AppendText([]byte("keep")); err == nil || string(b) != "keep" {
				t.Errorf("AppendText(%+v) = %q, %v; want the input unchanged and an error", tt.ev, b, err)
			}
		})
	}
}

func TestEncodeWire(t *testing.T) {
	tests := []struct {
		ev   Event
		want string
	}{
		{Event{}, "data: \n\n"},
		{Event{Data: "a\r\nb"}, "data: a\ndata: b\n\n"},
		{Event{ID: "1", Type: "t", Data: "d", Retry: time.Second}, "event: t\nretry: 1000\ndata: d\nid: 1\n\n"},
	}
	for _, tt := range tests {
		b, err := tt.ev.MarshalText()
		if err != nil || string(b) != tt.want {
			t.Errorf("MarshalText(%+v) = %q, %v; want %q", tt.ev, b, err, tt.want)
		}
	}
}

func TestEncodeSize(t *testing.T) {
	for _, ev := range roundTripCases() {
		b, _ := ev.MarshalText()
		if got := ev.size(); got != len(b) || cap(b) != len(b) {
			t.Errorf("size(%+v) = %d, want %d", ev, got, len(b))
		}
	}
}

func TestComment(t *testing.T) {
	var buf bytes.Buffer
	e := NewEncoder(&buf)
	if err := e.Comment("a\r\nb"); err != nil {
		t.Fatal(err)
	}
	if err := e.Comment(""); err != nil {
		t.Fatal(err)
	}
	if err := e.Comment("\xff"); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("Comment(%q) = %v, want ErrInvalidEvent", "\xff", err)
	}
	if err := e.Encode(Event{Data: "x"}); err != nil {
		t.Fatal(err)
	}
	if want := ": a\n: b\n: \ndata: x\n\n"; buf.String() != want {
		t.Errorf("stream = %q, want %q", buf.String(), want)
	}
	d := spec.NewDecoder(&buf)
	ev, err := d.Next()
	if err != nil || ev.Data != "x" {
		t.Errorf("decode = %+v, %v; comments must be invisible", ev, err)
	}
}

// failWriter fails every write after the first n bytes.
type failWriter struct {
	writes int
	err    error
}

func (w *failWriter) Write(p []byte) (int, error) {
	w.writes++
	return 0, w.err
}

func TestEncodeStickyError(t *testing.T) {
	errBroken := errors.New("broken pipe")
	w := &failWriter{err: errBroken}
	e := NewEncoder(w)
	if err := e.Encode(Event{Data: "a"}); err != errBroken {
		t.Fatalf("Encode = %v, want %v", err, errBroken)
	}
	if err := e.Encode(Event{Data: "b"}); err != errBroken {
		t.Errorf("second Encode = %v, want the first error %v", err, errBroken)
	}
	if err := e.Comment("c"); err != errBroken {
		t.Errorf("Comment = %v, want the first error %v", err, errBroken)
	}
	if w.writes != 1 {
		t.Errorf("writes = %d, want 1: nothing is written after an error", w.writes)
	}
}

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

func TestEncodeOneWrite(t *testing.T) {
	var w countingWriter
	if err := NewEncoder(&w).Encode(Event{ID: "1", Type: "t", Data: strings.Repeat("a\nb\r\n", 100), Retry: time.Second}); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Errorf("Encode made %d writes, want 1", w.writes)
	}
}

func FuzzRoundTrip(f *testing.F) {
	for _, c := range ssetest.RoundTrip {
		f.Add(c.ID, c.Type, c.Data, int64(c.Retry))
	}
	for _, s := range []string{"\r", "\r\n", "\n", " ", "\t", "\x00", "\ufeff", "", "\xff", "\r\r\n\n"} {
		f.Add(s, s, s, int64(-1))
	}
	f.Fuzz(func(t *testing.T, id, typ, data string, retry int64) {
		ev := Event{ID: id, Type: typ, Data: data, Retry: time.Duration(retry)}
		var buf bytes.Buffer
		err := NewEncoder(&buf).Encode(ev)
		if err != nil {
			if !errors.Is(err, ErrInvalidEvent) {
				t.Fatalf("Encode(%+v) = %v, want nil or ErrInvalidEvent", ev, err)
			}
			if buf.Len() != 0 {
				t.Fatalf("Encode(%+v) refused but wrote %q", ev, buf.String())
			}
			return
		}
		checkRoundTrip(t, ev, buf.String())
		if got := ev.size(); got != buf.Len() {
			t.Fatalf("size(%+v) = %d, want %d", ev, got, buf.Len())
		}
	})
}

var benchEvents = []struct {
	name string
	ev   Event
}{
	{"64B", Event{ID: "1731234567-123456", Type: "tick", Data: strings.Repeat("x", 64-len("1731234567-123456")-len("tick"))}},
	{"4KiB", Event{ID: "1731234567-123456", Type: "log", Data: strings.Repeat(strings.Repeat("y", 63)+"\n", 64)}},
}

func BenchmarkEncode(b *testing.B) {
	for _, bb := range benchEvents {
		b.Run("AppendText/"+bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.ev.Data)))
			buf := make([]byte, 0, 8192)
			for b.Loop() {
				buf, _ = bb.ev.AppendText(buf[:0])
			}
		})
		b.Run("Encoder/"+bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.ev.Data)))
			e := NewEncoder(io.Discard)
			for b.Loop() {
				e.Encode(bb.ev)
			}
		})
		b.Run("Fprintf/"+bb.name, func(b *testing.B) {
			// The baseline: how weaker libraries write events, field by field with fmt,
			// splitting data on LF only (and so mangling CR, which the encoder above does not).
			b.ReportAllocs()
			b.SetBytes(int64(len(bb.ev.Data)))
			for b.Loop() {
				naiveEncode(io.Discard, bb.ev)
			}
		})
	}
}

func naiveEncode(w io.Writer, ev Event) {
	fmt.Fprintf(w, "id: %s\n", ev.ID)
	fmt.Fprintf(w, "event: %s\n", ev.Type)
	for _, line := range strings.Split(ev.Data, "\n") {
		fmt.Fprintf(w, "data: %s\n", line)
	}
	fmt.Fprint(w, "\n")
}
