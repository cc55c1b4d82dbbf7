package sse

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Stream is one response's own event stream, for events that no other client shares: a reply
// streamed word by word as it is generated, say. There is no Broker, history or topic; each
// event is flushed as it is sent. Stream is not safe for concurrent use.
type Stream struct {
	ctx context.Context
	fw  *flushWriter
	enc *Encoder
}

// NewStream starts an event stream in response to r: it sets the headers and flushes them, so
// that the client knows the stream is open before the first event. It returns an error, and
// the handler should return, if w cannot flush. Unlike a Broker, it accepts any method, for
// clients that POST their question and read the answer as a stream.
func NewStream(w http.ResponseWriter, r *http.Request) (*Stream, error) {
	if err := checkFlush(w); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return nil, err
	}
	setHeaders(w.Header())
	fw := newFlushWriter(w, r, defaultWriteTimeout)
	// The handler may return long after its last Send: no deadline may be left for what
	// net/http writes then (over HTTP/1.1, the end of the chunked body).
	fw.clear = true
	w.WriteHeader(http.StatusOK)
	if err := fw.write(); err != nil {
		return nil, err
	}
	// Set once the head is out, the mark never reaches the wire; it tells ServeEvents, under
	// WithHijack, that the body has begun.
	w.Header()[startedKey] = nil
	return &Stream{ctx: r.Context(), fw: fw, enc: NewEncoder(fw)}, nil
}

// SetWriteTimeout sets how long each later Send or Comment may take before it fails, 10s
// by default; zero or less means no limit. The deadline covers one write only and is cleared
// after it, so a stream may stay open for any time between writes, whatever the server's
// WriteTimeout, and the handler may return long after its last Send. What net/http writes once
// the handler has returned (the end of the body) then has no deadline: it is a few bytes,
// which wait only if the client stopped reading while the connection's buffers were full.
func (s *Stream) SetWriteTimeout(d time.Duration) {
	s.fw.timeout = d
}

// Send writes ev and flushes it. Once the client has gone or a write has failed, it returns
// that error and the stream is over; an Event that cannot be represented is refused with an
// error wrapping ErrInvalidEvent, and the stream goes on.
func (s *Stream) Send(ev Event) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	return s.enc.Encode(ev)
}

// Comment writes text as comment lines, which clients ignore, and flushes them.
func (s *Stream) Comment(text string) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	return s.enc.Comment(text)
}

const defaultWriteTimeout = 10 * time.Second

// setHeaders sets the headers of an event stream (DESIGN: guarantee 6).
func setHeaders(h http.Header) {
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx would otherwise buffer the stream
	h.Del("Content-Length")
}

// flushWriter writes to a client and flushes at once, each write within a deadline.
// Only the client's handler goroutine uses it.
type flushWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	// clear says to remove the deadline after each write. Over HTTP/2 a deadline ends the
	// stream when it passes, even with no write under way, so it cannot stay while the
	// stream is idle; over HTTP/1.1 it only fails a write, and the next write sets its own,
	// but it also fails what net/http writes after the handler returns.
	clear bool
}

func newFlushWriter(w http.ResponseWriter, r *http.Request, timeout time.Duration) *flushWriter {
	return &flushWriter{w: w, rc: http.NewResponseController(w), timeout: timeout, clear: r.ProtoMajor >= 2}
}

func (fw *flushWriter) Write(p []byte) (int, error) {
	if err := fw.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write writes frames and flushes them, within the write timeout.
func (fw *flushWriter) write(frames ...[]byte) error {
	// A ResponseWriter that cannot set a deadline (ErrNotSupported) writes without one.
	var deadline time.Time
	if fw.timeout > 0 {
		deadline = time.Now().Add(fw.timeout)
	}
	fw.rc.SetWriteDeadline(deadline)
	if fw.clear {
		defer fw.rc.SetWriteDeadline(time.Time{})
	}
	for _, f := range frames {
		if _, err := fw.w.Write(f); err != nil {
			return err
		}
	}
	return fw.rc.Flush()
}

// errNoFlush is why a stream is refused on a ResponseWriter that cannot flush: its events
// would wait in a buffer, and most middleware that hides Flush ends the response at once,
// which sends an EventSource into a reconnection loop without an event.
var errNoFlush = fmt.Errorf("sse: the ResponseWriter cannot flush, so no event would reach the client "+
	"(a middleware that wraps the ResponseWriter must offer Flush, or Unwrap as http.ResponseController asks): %w",
	http.ErrNotSupported)

// checkFlush returns errNoFlush if w cannot flush, found as http.ResponseController finds it,
// without flushing: nothing is written yet, so the refusal can still be a 500.
func checkFlush(w http.ResponseWriter) error {
	for {
		switch t := w.(type) {
		case interface{ FlushError() error }, http.Flusher:
			return nil
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return errNoFlush
		}
	}
}

// canSetDeadline reports whether http.ResponseController can set w's write deadline.
func canSetDeadline(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case interface{ SetWriteDeadline(time.Time) error }:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}
