package sse

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// records is a slog.Handler that keeps what is logged.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *records) WithGroup(string) slog.Handler            { return h }

func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// take waits for a record and returns it with its attributes.
func (h *records) take(t *testing.T) (slog.Record, map[string]slog.Value) {
	t.Helper()
	var r slog.Record
	waitFor(t, "a log record", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.recs) == 0 {
			return false
		}
		r = h.recs[0]
		h.recs = h.recs[1:]
		return true
	})
	attrs := map[string]slog.Value{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value
		return true
	})
	return r, attrs
}

// endServer serves b's streams on topics through wrap, and reports what each ServeEvents returns
// or, over http1h, where ServeEvents returns once the pollers have the stream, what the
// function WithStreamEnd sets is called with, for every stream.
func endServer(t *testing.T, m mode, b *Broker, wrap func(http.ResponseWriter) http.ResponseWriter, topics ...string) (*server, chan error) {
	ends := make(chan error, 10)
	if m == http1h {
		b.opts.onEnd = func(_ context.Context, err error) { ends <- err }
	}
	s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := b.ServeEvents(wrap(w), r, topics...)
		if m != http1h {
			ends <- err
		}
	}))
	return s, ends
}

func unwrapped(w http.ResponseWriter) http.ResponseWriter { return w }

// Every way a stream ends is returned by ServeEvents and logged, with its level, reason,
// topics, duration and events.
func TestStreamEnds(t *testing.T) {
	check := func(t *testing.T, ends chan error, log *records, want error, level slog.Level, reason string, events int64, topics ...string) {
		t.Helper()
		if err := <-ends; err != want && !errors.Is(err, want) {
			t.Errorf("ServeEvents returned %v, want %v", err, want)
		}
		r, attrs := log.take(t)
		if r.Level != level || r.Message != "sse: stream ended" || attrs["reason"].String() != reason {
			t.Errorf("logged %v %q %v, want %v %q", r.Level, r.Message, attrs["reason"], level, reason)
		}
		if got := attrs["topics"].Any(); !slices.Equal(got.([]string), topics) {
			t.Errorf("topics %v, want %v", got, topics)
		}
		if attrs["events"].Int64() != events || attrs["duration"].Kind() != slog.KindDuration {
			t.Errorf("events %v, duration %v; want %d events", attrs["events"], attrs["duration"], events)
		}
	}

	t.Run("client gone", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)))
			s, ends := endServer(t, m, b, unwrapped, "a", "b")
			ts := s.openN(t, "/", 1)
			publish(t, b, "1", "a")
			publish(t, b, "2", "b")
			ts.expect("1", "2")
			ts.close()
			check(t, ends, log, nil, slog.LevelDebug, "client gone", 2, "a", "b")
		})
	})
	t.Run("shutdown", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)))
			s, ends := endServer(t, m, b, unwrapped)
			s.openN(t, "/", 1)
			b.Shutdown(context.Background())
			check(t, ends, log, ErrClosed, slog.LevelDebug, "shutdown", 0, "")
		})
	})
	t.Run("too many clients", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)), WithMaxClients(1))
			s, ends := endServer(t, m, b, unwrapped, "room")
			s.openN(t, "/", 1)
			s.open(t, "/", "").expectEnd()
			check(t, ends, log, ErrTooManyClients, slog.LevelWarn, "refused: too many clients", 0, "room")
		})
	})
	t.Run("fell behind", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)), WithHistory(8))
			gate, hit := make(chan struct{}), make(chan struct{})
			s, ends := endServer(t, m, b, func(w http.ResponseWriter) http.ResponseWriter {
				return &gatedWriter{ResponseWriter: w, gate: gate, hit: hit}
			})
			ts := s.openN(t, "/", 1)
			publish(t, b, "0")
			<-hit // the client is stuck writing event 0
			for i := 1; i <= 20; i++ {
				publish(t, b, "x")
			}
			close(gate)
			ts.expect("0")
			if r, _ := log.take(t); !strings.Contains(r.Message, "cannot set write deadlines") {
				t.Errorf("logged %q first, want the warning that the gated writer has no deadlines", r.Message)
			}
			check(t, ends, log, ErrSlowClient, slog.LevelWarn, "fell behind the history", 1, "")
		})
	})
	t.Run("events lost", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)))
			s, ends := endServer(t, m, b, unwrapped)
			b.Append("e1", 1, time.Time{}, Event{Data: "1"})
			ts := s.openN(t, "/", 1)
			b.Append("e1", 2, time.Time{}, Event{Data: "2"})
			ts.expect("2")
			b.Append("e1", 5, time.Time{}, Event{Data: "5"}) // 3 and 4 were lost
			// The break is logged once, at Warn, with the streams it ended; the stream's end
			// at Debug. The two come in either order.
			<-ends
			r1, a1 := log.take(t)
			r2, a2 := log.take(t)
			if r1.Level != slog.LevelWarn {
				r1, a1, r2, a2 = r2, a2, r1, a1
			}
			if r1.Level != slog.LevelWarn || !strings.Contains(r1.Message, "the log broke") || a1["streams"].Int64() != 1 {
				t.Errorf("logged %v %q %v, want a warning that the log broke, ending 1 stream", r1.Level, r1.Message, a1)
			}
			if r2.Level != slog.LevelDebug || a2["reason"].String() != "events lost upstream" || a2["events"].Int64() != 1 {
				t.Errorf("logged %v %q %v, want the stream's end at Debug", r2.Level, r2.Message, a2)
			}
		})
	})
	t.Run("write timeout", func(t *testing.T) {
		run(t, func(t *testing.T, m mode) {
			log := &records{}
			b := newBroker(m, WithLogger(slog.New(log)), WithWriteTimeout(100*time.Millisecond), WithHistory(10000))
			s, ends := endServer(t, m, b, unwrapped)
			s.openN(t, "/", 1) // and never read
			data := strings.Repeat("x", 4<<10)
			for range 10000 {
				publish(t, b, data)
			}
			err := <-ends
			if !errors.Is(err, ErrSlowClient) || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("ServeEvents returned %v, want ErrSlowClient and os.ErrDeadlineExceeded", err)
			}
			ends <- err
			r, attrs := log.take(t)
			if r.Level != slog.LevelWarn || attrs["reason"].String() != "write timed out" {
				t.Errorf("logged %v %v, want a warning that the write timed out", r.Level, attrs["reason"])
			}
			<-ends
		})
	})
}

// A logger that does not log Debug costs a stream that ends normally no allocation.
func TestStreamEndLogDisabled(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for _, l := range []*slog.Logger{nil, quiet} {
		b := NewBroker(WithLogger(l))
		r, _ := http.NewRequest("GET", "/", nil)
		e := &ending{ctx: r.Context(), remote: r.RemoteAddr, began: time.Now()}
		allocs := testing.AllocsPerRun(100, func() {
			b.logEnd(e, 3, nil)
		})
		if allocs != 0 {
			t.Errorf("logger %v: logging a disabled level allocates %v times", l, allocs)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkLogEnd measures logging a stream's end with no logger, a logger whose level is
// above Debug, and one that writes it.
func BenchmarkLogEnd(b *testing.B) {
	loggers := map[string]*slog.Logger{
		"none":     nil,
		"disabled": slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		"enabled":  slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, name := range []string{"none", "disabled", "enabled"} {
		b.Run(name, func(b *testing.B) {
			br := NewBroker(WithLogger(loggers[name]))
			r, _ := http.NewRequest("GET", "/", nil)
			e := &ending{ctx: r.Context(), remote: r.RemoteAddr, topics: []string{"room"}, began: time.Now()}
			b.ReportAllocs()
			for b.Loop() {
				br.logEnd(e, 3, nil)
			}
		})
	}
}

type userKey struct{}

// WithStreamEnd is called once for every stream, served or refused, with the request's context
// and the reason ServeEvents returns: enough to keep a list of who is connected.
func TestStreamEndHook(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		type end struct {
			user string
			err  error
		}
		ended := make(chan end, 10)
		b := newBroker(m, WithMaxClients(1), WithStreamEnd(func(ctx context.Context, err error) {
			ended <- end{ctx.Value(userKey{}).(string), err}
		}))
		returned := make(chan error, 10)
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := context.WithValue(r.Context(), userKey{}, r.URL.Query().Get("user"))
			returned <- b.ServeEvents(w, r.WithContext(ctx))
		}))
		ann := s.openN(t, "/?user=ann", 1)
		s.open(t, "/?user=bob", "").expectEnd() // over the limit
		if e := <-ended; e.user != "bob" || !errors.Is(e.err, ErrTooManyClients) {
			t.Errorf("first end: %q, %v; want bob, ErrTooManyClients", e.user, e.err)
		}
		ann.close()
		if e := <-ended; e.user != "ann" || e.err != nil {
			t.Errorf("second end: %q, %v; want ann, nil", e.user, e.err)
		}
		resp, err := s.Client().Post(s.URL+"/?user=eve", "text/plain", nil) // refused: 405
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if e := <-ended; e.user != "eve" || e.err == nil || resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("third end: %q, %v, status %d; want eve, an error, 405", e.user, e.err, resp.StatusCode)
		}
		for range 3 {
			<-returned
		}
		select {
		case e := <-ended:
			t.Errorf("a fourth end: %+v", e)
		default:
		}
	})
}
