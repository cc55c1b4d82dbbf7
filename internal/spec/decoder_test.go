package spec

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestDecoder(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []Event
	}{
		{"simple", "data: a\n\n", []Event{{"message", "a", "", -1}}},
		{"crlf and cr line ends", "data: a\r\ndata: b\rdata: c\n\r\n", []Event{{"message", "a\nb\nc", "", -1}}},
		{"one leading space removed", "data:  x\ndata:y\n\n", []Event{{"message", " x\ny", "", -1}}},
		{"field without colon", "data\ndata\n\n", []Event{{"message", "\n", "", -1}}},
		{"empty data dispatches", "data\n\n", []Event{{"message", "", "", -1}}},
		{"no data, no event", "event: x\nid: 1\n\ndata: y\n\n", []Event{{"message", "y", "1", -1}}},
		{"type", "event: add\ndata: 1\n\n", []Event{{"add", "1", "", -1}}},
		{"id persists", "id: 7\ndata: a\n\ndata: b\n\n", []Event{{"message", "a", "7", -1}, {"message", "b", "7", -1}}},
		{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []Event{{"message", "a", "1", -1}, {"message", "b", "1", -1}}},
		{"empty id resets", "id: 1\ndata: a\n\nid\ndata: b\n\n", []Event{{"message", "a", "1", -1}, {"message", "b", "", -1}}},
		{"retry digits only", "retry: 10\nretry: 1x\nretry: -5\nretry:\ndata: a\n\n", []Event{{"message", "a", "", 10}}},
		{"comments ignored", ": hi\n:\ndata: a\n: there\n\n", []Event{{"message", "a", "", -1}}},
		{"unknown field ignored", "foo: bar\ndata: a\n\n", []Event{{"message", "a", "", -1}}},
		{"leading BOM skipped", "\ufeffdata: a\n\n", []Event{{"message", "a", "", -1}}},
		{"second BOM is data", "\ufeffdata: \ufeff\n\n", []Event{{"message", "\ufeff", "", -1}}},
		{"BOM makes the field unknown", "\ufeff\ufeffdata: a\n\ndata: b\n\n", []Event{{"message", "b", "", -1}}},
		{"unterminated final block", "data: a\n\ndata: b\n", []Event{{"message", "a", "", -1}}},
		{"unterminated final line", "data: a\n\ndata: b", []Event{{"message", "a", "", -1}}},
		{"invalid UTF-8 replaced", "data: \xff\n\n", []Event{{"message", "\ufffd", "", -1}}},
		{"truncated sequence is one U+FFFD", "data: \xe2\x82x\n\n", []Event{{"message", "\ufffdx", "", -1}}},
		{"truncated at line end", "data: a\xf0\x9f\x98\n\n", []Event{{"message", "a\ufffd", "", -1}}},
		{"surrogate is three U+FFFD", "data: \xed\xa0\x80\n\n", []Event{{"message", "\ufffd\ufffd\ufffd", "", -1}}},
		{"overlong is two U+FFFD", "data: \xc0\xaf\n\n", []Event{{"message", "\ufffd\ufffd", "", -1}}},
		{"valid after invalid", "data: \xffé\n\n", []Event{{"message", "\ufffdé", "", -1}}},
		{"field name is case sensitive", "Data: a\ndata: b\n\n", []Event{{"message", "b", "", -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decodeAll(t, tt.stream)
			if len(got) != len(tt.want) {
				t.Fatalf("decode(%q) = %+v, want %+v", tt.stream, got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("decode(%q)[%d] = %+v, want %+v", tt.stream, i, got[i], tt.want[i])
				}
			}
		})
	}
}

// TestDecoderByteAtATime checks that line ends split across reads, CRLF above all, are joined.
func TestDecoderByteAtATime(t *testing.T) {
	d := NewDecoder(io.MultiReader(strings.NewReader("data: a\r"), strings.NewReader("\ndata: b\r"), strings.NewReader("\n\r\n")))
	ev, err := d.Next()
	if err != nil || ev.Data != "a\nb" {
		t.Fatalf("Next() = %+v, %v; want data %q", ev, err, "a\nb")
	}
	if _, err := d.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next() at end = %v, want io.EOF", err)
	}
}

func TestDecoderComments(t *testing.T) {
	var got []string
	d := NewDecoder(strings.NewReader(":\n: hi\n"))
	d.OnComment = func(s string) { got = append(got, s) }
	if _, err := d.Next(); err != io.EOF {
		t.Fatalf("Next() = %v, want io.EOF", err)
	}
	if len(got) != 2 || got[0] != "" || got[1] != " hi" {
		t.Errorf("comments = %q, want [\"\" \" hi\"]", got)
	}
}

func TestDecoderLastEventID(t *testing.T) {
	d := NewDecoder(strings.NewReader("id: 1\ndata: a\n\nid: 2\n"))
	d.Next()
	d.Next()
	if got := d.LastEventID(); got != "1" {
		t.Errorf("LastEventID() = %q, want %q: an id is only taken on dispatch", got, "1")
	}
}

func decodeAll(t *testing.T, stream string) []Event {
	t.Helper()
	d := NewDecoder(strings.NewReader(stream))
	var evs []Event
	for {
		ev, err := d.Next()
		if errors.Is(err, io.EOF) {
			return evs
		}
		if err != nil {
			t.Fatalf("decode(%q): %v", stream, err)
		}
		evs = append(evs, ev)
	}
}
