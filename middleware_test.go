package sse

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// statusRecorder is the classic logging middleware's writer: it records the status and hides
// everything else of the ResponseWriter, Flush and Unwrap included.
type statusRecorder struct {
	w      http.ResponseWriter
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.w.Header() }
func (s *statusRecorder) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code; s.w.WriteHeader(code) }

// flushOnly flushes, but hides the rest of the ResponseWriter (no Unwrap): no write deadline
// can be set through it.
type flushOnly struct{ http.ResponseWriter }

func (f flushOnly) Flush() { http.NewResponseController(f.ResponseWriter).Flush() }

// A ResponseWriter that cannot flush is refused before anything is sent: a 500 whose body
// names the cause, an error that is http.ErrNotSupported, and an Error in the log. Serving
// such a writer would answer 200 and end, and an EventSource would reconnect forever.
func TestRefuseCannotFlush(t *testing.T) {
	wrappers := []struct {
		name string
		h    func(http.Handler) http.Handler
	}{
		{"status recorder", func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(&statusRecorder{w: w}, r)
			})
		}},
		{"http.TimeoutHandler", func(h http.Handler) http.Handler { return http.TimeoutHandler(h, time.Minute, "timeout") }},
	}
	for _, tt := range wrappers {
		t.Run(tt.name, func(t *testing.T) {
			run(t, func(t *testing.T, m mode) {
				log := &records{}
				b := newBroker(m, WithLogger(slog.New(log)))
				ends := make(chan error, 2)
				s := newServer(t, m, b, tt.h(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/stream" {
						_, err := NewStream(w, r)
						ends <- err
						return
					}
					ends <- b.ServeEvents(w, r)
				})))
				for _, path := range []string{"/", "/stream"} {
					resp, err := s.Client().Get(s.URL + path)
					if err != nil {
						t.Fatal(err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "cannot flush") || !strings.Contains(string(body), "Unwrap") {
						t.Errorf("GET %s: %d %q, want 500 and a body naming the cause", path, resp.StatusCode, body)
					}
					if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "text/event-stream") {
						t.Errorf("GET %s: Content-Type %q, want no event stream", path, ct)
					}
					if err := <-ends; !errors.Is(err, http.ErrNotSupported) {
						t.Errorf("GET %s: returned %v, want an error that is http.ErrNotSupported", path, err)
					}
				}
				r, attrs := log.take(t)
				if r.Level != slog.LevelError || !strings.Contains(attrs["reason"].String(), "cannot flush") {
					t.Errorf("logged %v %v, want an Error that the ResponseWriter cannot flush", r.Level, attrs["reason"])
				}
				if st := b.Stats(); st.Clients != 0 {
					t.Errorf("Clients = %d after the refusals, want 0", st.Clients)
				}
			})
		})
	}
}

// A writer that flushes but cannot set deadlines is served, and the broker warns once that
// write deadlines are lost and why.
func TestWarnNoDeadlines(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		log := &records{}
		b := newBroker(m, WithLogger(slog.New(log)))
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(flushOnly{w}, r)
		}))
		ts1 := s.openN(t, "/", 1)
		ts2 := s.openN(t, "/", 2)
		publish(t, b, "served")
		ts1.expect("served")
		ts2.expect("served")
		r, _ := log.take(t)
		if r.Level != slog.LevelWarn || !strings.Contains(r.Message, "Unwrap") || !strings.Contains(r.Message, "WriteTimeout") {
			t.Errorf("logged %v %q, want a warning naming Unwrap and what is lost", r.Level, r.Message)
		}
		log.mu.Lock()
		more := len(log.recs)
		log.mu.Unlock()
		if more != 0 {
			t.Errorf("%d more records for the second stream, want the warning once per broker", more)
		}
	})
}

// A stream whose request context ends for another cause than the client leaving (a timeout
// middleware's deadline) ends with an error wrapping that cause, logged at Warn, and carries a
// retry hint, as every stream the server ends does.
func TestContextDeadline(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		log := &records{}
		b := newBroker(m, WithLogger(slog.New(log)), WithRetry(time.Second))
		ends := make(chan error, 1)
		sent := make(chan string, 1)
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 300*time.Millisecond) // as chi's middleware.Timeout
			defer cancel()
			tw := &tapWriter{ResponseWriter: w}
			ends <- b.ServeEvents(tw, r.WithContext(ctx))
			sent <- tw.buf.String()
		}))
		ts := s.openN(t, "/", 1)
		publish(t, b, "before")
		ts.expect("before")
		if m == http1h {
			// The pollers serve the stream once ServeEvents has returned, which it has:
			// the handler's context no longer bears on it (see WithHijack).
			if err := <-ends; err != nil {
				t.Errorf("ServeEvents returned %v, want nil once the stream is handed over", err)
			}
			time.Sleep(400 * time.Millisecond)
			publish(t, b, "after")
			ts.expect("after")
			return
		}
		ts.expectEnd()
		if r := ts.dec.Retry(); r < 1000 || r >= 2000 {
			t.Errorf("retry hint = %d ms, want within [1000, 2000)", r)
		}
		// The preamble's hint is within the range too: the hint must come after the event.
		if _, after, _ := strings.Cut(<-sent, "data: before\n"); !strings.Contains(after, "\n\nretry: ") {
			t.Errorf("after the last event came %q, want a retry hint", after)
		}
		if err := <-ends; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("ServeEvents returned %v, want an error wrapping context.DeadlineExceeded", err)
		}
		r, attrs := log.take(t)
		if r.Level != slog.LevelWarn || !strings.Contains(attrs["reason"].String(), "deadline") {
			t.Errorf("logged %v %v, want a warning naming the deadline", r.Level, attrs["reason"])
		}
	})
}

// tapWriter keeps a copy of what is written through it, and unwraps to the ResponseWriter it
// wraps, as good middleware does. Its buffer may be read once the handler has returned.
type tapWriter struct {
	http.ResponseWriter
	buf strings.Builder
}

func (w *tapWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	return w.ResponseWriter.Write(p)
}

func (w *tapWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
