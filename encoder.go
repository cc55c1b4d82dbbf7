package sse

import (
	"io"
	"unicode/utf8"
)

// Encoder writes events to an io.Writer in the text/event-stream format.
//
// Each call validates everything it is given before writing any of it, and writes with a
// single Write, so a refused event leaves the stream untouched. After a Write fails, every
// later call returns that first error without writing.
//
// An Encoder does not flush; see [NewStream] for writing to an http.ResponseWriter.
// Encoder is not safe for concurrent use.
type Encoder struct {
	w   io.Writer
	buf []byte
	err error // the first write error, returned by every later call
}

// NewEncoder returns an Encoder that writes to w.
func NewEncoder(w io.Writer) *Encoder {
	return &Encoder{w: w}
}

// Encode writes ev, terminated by a blank line. An Event that cannot be represented is refused
// with an error wrapping ErrInvalidEvent, and nothing is written.
func (e *Encoder) Encode(ev Event) error {
	if e.err != nil {
		return e.err
	}
	b, err := ev.AppendText(e.buf[:0])
	if err != nil {
		return err
	}
	return e.write(b)
}

// Comment writes text as comment lines (": text"), one per line of text. Clients ignore
// comments; they keep a connection from looking idle to proxies. Text must be valid UTF-8.
func (e *Encoder) Comment(text string) error {
	if e.err != nil {
		return e.err
	}
	if !utf8.ValidString(text) {
		return &FieldError{"comment", "not valid UTF-8"}
	}
	return e.write(appendLines(e.buf[:0], commentPrefix, text))
}

func (e *Encoder) write(b []byte) error {
	if cap(b) <= maxKeptBuffer {
		e.buf = b
	}
	if _, err := e.w.Write(b); err != nil {
		e.err = err
		return err
	}
	return nil
}

// maxKeptBuffer bounds the buffer an Encoder keeps between calls, so that one large event
// does not pin its size for the life of the stream.
const maxKeptBuffer = 64 << 10
