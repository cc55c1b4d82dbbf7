package middleware

import (
	"context"
	"errors"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"sse"
	"sse/internal/spec"
	"sse/internal/ssetest"
)

// TestChiRouter serves a room's stream through a chi router and its usual middleware — a
// request ID, the status-recording Logger, Recoverer, and Compress given text/event-stream —
// on a server with a WriteTimeout far shorter than the stream: events arrive compressed as
// they are published, the stream outlives the WriteTimeout (chi's wrappers offer Unwrap, so
// each write sets its own deadline), and the Logger records the 200 once it ends.
func TestChiRouter(t *testing.T) {
	ssetest.CheckGoroutines(t)
	b := sse.NewBroker()
	logs := &syncBuilder{}
	r := chi.NewRouter()
	r.Use(middleware.RequestID)
	r.Use(middleware.RequestLogger(&middleware.DefaultLogFormatter{Logger: log.New(logs, "", 0), NoColor: true}))
	r.Use(middleware.Recoverer)
	r.Use(middleware.Compress(5, "text/event-stream"))
	r.Get("/rooms/{room}/events", func(w http.ResponseWriter, r *http.Request) {
		b.ServeEvents(w, r, "room:"+chi.URLParam(r, "room"))
	})
	const writeTimeout = 200 * time.Millisecond
	ts := httptest.NewUnstartedServer(r)
	ts.Config.WriteTimeout = writeTimeout
	ts.Start()
	t.Cleanup(ts.Close)
	t.Cleanup(func() { b.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ts.URL += "/rooms/lobby/events"
	resp, body := open(t, ctx, ts, "gzip")
	if got := resp.Header.Get("Content-Encoding"); got != "gzip" {
		t.Errorf("Content-Encoding %q, want gzip", got)
	}
	waitClients(t, b, 1)
	d := sse.NewDecoder(body)
	for i, data := range []string{"first", "after the write timeout"} {
		if i == 1 {
			time.Sleep(3 * writeTimeout)
		}
		if _, err := b.Publish(sse.Event{Data: data}, "room:lobby"); err != nil {
			t.Fatal(err)
		}
		if ev, err := d.Next(); err != nil || ev.Data != data {
			t.Fatalf("got %+v, %v; want %q", ev, err, data)
		}
	}
	b.Shutdown(context.Background())
	if _, err := d.Next(); err == nil {
		t.Errorf("the stream goes on after Shutdown")
	}
	resp.Body.Close()
	ts.Close() // waits for the handler, and its log line
	if got := logs.String(); !strings.Contains(got, "/rooms/lobby/events HTTP/1.1\" from ") || !strings.Contains(got, " - 200 ") {
		t.Errorf("the Logger wrote %q, want the stream's request with status 200", got)
	}
}

// syncBuilder is a strings.Builder safe for concurrent use.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestChiTimeout mounts a stream behind chi's Timeout middleware, which ends the request's
// context at its deadline: ServeEvents returns an error wrapping context.DeadlineExceeded, not
// nil as for a client that left, and the client is told when to come back.
func TestChiTimeout(t *testing.T) {
	ssetest.CheckGoroutines(t)
	b := sse.NewBroker(sse.WithRetry(time.Second))
	ended := make(chan error, 1)
	r := chi.NewRouter()
	r.Use(middleware.Timeout(300 * time.Millisecond))
	r.Get("/events", func(w http.ResponseWriter, r *http.Request) {
		ended <- b.ServeEvents(w, r)
	})
	ts := httptest.NewServer(r)
	t.Cleanup(ts.Close)
	t.Cleanup(func() { b.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ts.URL += "/events"
	resp, body := open(t, ctx, ts, "")
	defer resp.Body.Close()
	d := spec.NewDecoder(body)
	for {
		if _, err := d.Next(); err != nil {
			break // the stream ended
		}
	}
	if err := <-ended; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ServeEvents returned %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if r := d.Retry(); r < 1000 || r >= 2000 {
		t.Errorf("the stream's last retry hint is %d ms, want one within [1000, 2000)", r)
	}
}
