package sse

import (
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is one server-sent event. The zero value is a valid event: a "message" with empty data.
//
// Every line break in Data (LF, CRLF or a lone CR) reaches the client as LF, because the
// format has no way to tell them apart (WHATWG HTML §9.2.6 ends a line at any of the three).
// Everything else in an Event reaches a conforming client exactly as it was sent, or the Event
// is refused with an error wrapping [ErrInvalidEvent].
type Event struct {
	// ID is the "id:" field, which the client echoes back in the Last-Event-ID header when it
	// reconnects. It must survive that round trip: valid UTF-8, no control characters
	// (CR, LF and NUL included), no leading or trailing space, at most MaxIDLen bytes.
	// (Node's fetch-based clients can send back only characters up to U+00FF.)
	// Leave it empty when publishing through a Broker, which assigns one.
	// An empty ID writes no "id:" field, so a client keeps the last ID it saw.
	ID string

	// Type is the "event:" field, the name a client's addEventListener listens for.
	// It must be valid UTF-8 without CR or LF. Empty means "message".
	Type string

	// Data is the payload, written as one "data:" line per line of text. It must be valid UTF-8.
	// Empty Data still reaches the client, as an event whose data is "".
	Data string

	// Retry is the "retry:" field, the client's reconnection delay, written in whole
	// milliseconds (truncated). Zero omits the field; it must not be negative nor exceed
	// 2147483647 ms, the most clients accept.
	Retry time.Duration
}

// MaxIDLen is the length in bytes of the longest Event.ID that is accepted. The ID travels back
// in a request header on reconnect, so it is kept well inside what servers and proxies allow.
const MaxIDLen = 1024

// maxRetry is the largest reconnection time clients accept: they keep it in a signed 32-bit
// count of milliseconds.
const maxRetry = 2147483647 * time.Millisecond

// ErrInvalidEvent is wrapped by the error that Encode, AppendText, MarshalText and Publish
// return for an Event that cannot be represented on the wire, and by the error Comment returns
// for text that cannot. errors.As with a *FieldError tells which field and why.
var ErrInvalidEvent = errors.New("sse: invalid event")

// FieldError reports a field that cannot be written to the wire. It wraps ErrInvalidEvent.
type FieldError struct {
	Field  string // "ID", "Type", "Data", "Retry", or "comment"
	Reason string // why, in a few words
}

func (e *FieldError) Error() string { return "sse: invalid " + e.Field + ": " + e.Reason }

// Unwrap returns ErrInvalidEvent.
func (e *FieldError) Unwrap() error { return ErrInvalidEvent }

// validate reports the first field of ev that cannot be written to the wire.
func (ev *Event) validate() error {
	if err := validateID(ev.ID); err != nil {
		return err
	}
	if !utf8.ValidString(ev.Type) {
		return &FieldError{"Type", "not valid UTF-8"}
	}
	if strings.ContainsAny(ev.Type, "\r\n") {
		return &FieldError{"Type", "contains a line break"}
	}
	if !utf8.ValidString(ev.Data) {
		return &FieldError{"Data", "not valid UTF-8"}
	}
	if ev.Retry < 0 {
		return &FieldError{"Retry", "negative"}
	}
	if ev.Retry > maxRetry {
		return &FieldError{"Retry", "over 2147483647ms"}
	}
	return nil
}

// validateID reports whether id would come back unchanged in a Last-Event-ID request header.
func validateID(id string) error {
	if len(id) > MaxIDLen {
		return &FieldError{"ID", "longer than " + strconv.Itoa(MaxIDLen) + " bytes"}
	}
	if !utf8.ValidString(id) {
		return &FieldError{"ID", "not valid UTF-8"}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c == 0:
			// WHATWG HTML §9.2.6: a client ignores an id field containing NUL.
			return &FieldError{"ID", "contains NUL"}
		case c == '\r' || c == '\n':
			return &FieldError{"ID", "contains a line break"}
		case c < 0x20 || c == 0x7f, c == 0xc2 && i+1 < len(id) && id[i+1] < 0xa0:
			// C0 and DEL are not allowed in header values; C1 (U+0080–U+009F, 0xC2 0x80–0x9F)
			// is refused too, so that no control character is ever an ID.
			return &FieldError{"ID", "contains a control character"}
		}
	}
	if id != "" && (id[0] == ' ' || id[len(id)-1] == ' ') {
		// HTTP strips white space around a header value, so the ID would come back changed.
		return &FieldError{"ID", "has leading or trailing space"}
	}
	return nil
}

// AppendText appends ev in the text/event-stream format, terminated by a blank line, to b.
// It implements [encoding.TextAppender]. If ev cannot be represented, it returns b unchanged
// and an error wrapping ErrInvalidEvent.
func (ev Event) AppendText(b []byte) ([]byte, error) {
	if err := ev.validate(); err != nil {
		return b, err
	}
	return ev.appendTo(b), nil
}

// MarshalText returns ev in the text/event-stream format, terminated by a blank line.
// It implements [encoding.TextMarshaler].
func (ev Event) MarshalText() ([]byte, error) {
	if err := ev.validate(); err != nil {
		return nil, err
	}
	return ev.appendTo(make([]byte, 0, ev.size())), nil
}

// Field prefixes. Each has a space after the colon so that a value starting with a space
// keeps it: a client removes exactly one (WHATWG HTML §9.2.6).
const (
	idPrefix      = "id: "
	typePrefix    = "event: "
	retryPrefix   = "retry: "
	dataPrefix    = "data: "
	commentPrefix = ": "
)

// size returns the exact length of ev.appendTo's output.
func (ev *Event) size() int {
	n := ev.fieldsSize() + 1 // and the blank line
	if ev.ID != "" {
		n += len(idPrefix) + len(ev.ID) + 1
	}
	return n
}

// fieldsSize returns the exact length of ev.appendFields's output.
func (ev *Event) fieldsSize() int {
	n := 0
	if ev.Type != "" {
		n += len(typePrefix) + len(ev.Type) + 1
	}
	if ev.Retry > 0 {
		n += len(retryPrefix) + digits(ev.Retry.Milliseconds()) + 1
	}
	lf, cr := strings.Count(ev.Data, "\n"), strings.Count(ev.Data, "\r")
	lines := 1 + lf + cr
	if cr > 0 {
		lines -= strings.Count(ev.Data, "\r\n")
	}
	return n + lines*(len(dataPrefix)+1) + len(ev.Data) - lf - cr
}

func digits(n int64) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d
}

// appendTo appends the wire form of ev, which must be valid, to b.
func (ev *Event) appendTo(b []byte) []byte {
	b = ev.appendFields(b)
	if ev.ID != "" {
		b = append(b, idPrefix...)
		b = append(b, ev.ID...)
		b = append(b, '\n')
	}
	return append(b, '\n')
}

// appendFields appends every field of ev but its ID, which comes last on the wire so that a
// Broker can encode the rest before it assigns the ID. The order of fields within an event
// does not matter to a client (WHATWG HTML §9.2.6 applies them all at the blank line).
func (ev *Event) appendFields(b []byte) []byte {
	if ev.Type != "" {
		b = append(b, typePrefix...)
		b = append(b, ev.Type...)
		b = append(b, '\n')
	}
	if ev.Retry > 0 {
		b = append(b, retryPrefix...)
		b = strconv.AppendInt(b, ev.Retry.Milliseconds(), 10)
		b = append(b, '\n')
	}
	return appendLines(b, dataPrefix, ev.Data)
}

// appendLines appends one prefixed line for each line of s; LF, CRLF and a lone CR all end a line.
func appendLines(b []byte, prefix, s string) []byte {
	if strings.IndexByte(s, '\r') < 0 {
		// The common case: only LF, which IndexByte finds fastest.
		for {
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				break
			}
			b = append(b, prefix...)
			b = append(b, s[:i]...)
			b = append(b, '\n')
			s = s[i+1:]
		}
	} else {
		for {
			i := strings.IndexAny(s, "\r\n")
			if i < 0 {
				break
			}
			b = append(b, prefix...)
			b = append(b, s[:i]...)
			b = append(b, '\n')
			if s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n' {
				i++ // CRLF is one line break, not two.
			}
			s = s[i+1:]
		}
	}
	b = append(b, prefix...)
	b = append(b, s...)
	return append(b, '\n')
}
