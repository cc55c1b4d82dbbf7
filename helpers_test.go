package sse

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"sse/internal/spec"
)

// mode is the HTTP version a stream test runs over.
type mode string

const (
	http1  mode = "h1"
	http2  mode = "h2"
	http1h mode = "h1hijack" // HTTP/1.1, with the broker's pollers serving the streams (WithHijack)
)

// run runs f over HTTP/1.1, over HTTP/2, and over HTTP/1.1 with the streams taken over by the
// broker's pollers, checking each for leaked goroutines.
func run(t *testing.T, f func(t *testing.T, m mode)) {
	t.Helper()
	for _, m := range []mode{http1, http2, http1h} {
		t.Run(string(m), func(t *testing.T) {
			checkGoroutines(t)
			f(t, m)
		})
	}
}

// newBroker returns a broker with opts for a test over m: WithHijack too for http1h.
func newBroker(m mode, opts ...Option) *Broker {
	if m == http1h {
		opts = append(opts, WithHijack())
	}
	return NewBroker(opts...)
}

// server is an httptest.Server serving a Broker, with a client for it.
type server struct {
	*httptest.Server
	b *Broker
}

// newServer serves h over m. Its cleanup shuts b down before closing the server, which waits
// for open streams.
func newServer(t *testing.T, m mode, b *Broker, h http.Handler, configure ...func(*http.Server)) *server {
	t.Helper()
	ts := httptest.NewUnstartedServer(h)
	for _, f := range configure {
		f(ts.Config)
	}
	if m == http2 {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &server{ts, b}
}

// cut closes every client's connection from the server's side, as a server that goes away
// does, whether net/http or the broker holds it.
func (s *server) cut() {
	s.CloseClientConnections()
	cutTaken(s.Listener.Addr())
}

// testStream is one client's open event stream.
type testStream struct {
	t      *testing.T
	resp   *http.Response
	dec    *spec.Decoder
	cancel context.CancelFunc
}

// open opens a stream at path, sending lastID as Last-Event-ID unless it is empty.
func (s *server) open(t *testing.T, path, lastID string) *testStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+path, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	ts := &testStream{t: t, resp: resp, dec: spec.NewDecoder(resp.Body), cancel: cancel}
	t.Cleanup(ts.close)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200", path, resp.StatusCode)
	}
	return ts
}

// openN opens a stream at path and waits until the broker counts n clients.
func (s *server) openN(t *testing.T, path string, n int) *testStream {
	t.Helper()
	ts := s.open(t, path, "")
	waitFor(t, "clients to connect", func() bool { return s.b.Stats().Clients == int64(n) })
	return ts
}

func (ts *testStream) close() {
	ts.cancel()
	ts.resp.Body.Close()
}

// next returns the stream's next event.
func (ts *testStream) next() spec.Event {
	ts.t.Helper()
	ev, err := ts.dec.Next()
	if err != nil {
		ts.t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

// expect reads len(want) events and checks their data.
func (ts *testStream) expect(want ...string) []spec.Event {
	ts.t.Helper()
	var evs []spec.Event
	for i, w := range want {
		ev := ts.next()
		if ev.Data != w {
			ts.t.Fatalf("event %d: data %q, want %q", i, ev.Data, w)
		}
		evs = append(evs, ev)
	}
	return evs
}

// startID reads the block a stream starts with and returns the last event ID it sets, and
// closes the stream.
func (ts *testStream) startID() string {
	ts.t.Helper()
	r := bufio.NewReader(ts.resp.Body)
	var block string
	for !strings.HasSuffix(block, "\n\n") {
		line, err := r.ReadString('\n')
		if err != nil {
			ts.t.Fatalf("reading the preamble: %q, %v", block, err)
		}
		block += line
	}
	ts.close()
	// What a client makes of the preamble: a data line after it shows the last event ID.
	ev, err := spec.NewDecoder(strings.NewReader(block + "data\n\n")).Next()
	if err != nil || ev.LastEventID == "" {
		ts.t.Fatalf("preamble %q gives %+v, %v; want a last event ID", block, ev, err)
	}
	return ev.LastEventID
}

// expectEnd checks that the stream ends without another event.
func (ts *testStream) expectEnd() {
	ts.t.Helper()
	if ev, err := ts.dec.Next(); !errors.Is(err, io.EOF) {
		ts.t.Fatalf("got %+v, %v; want the stream to end", ev, err)
	}
}

// waitFor waits up to 10s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 10*time.Second, what, cond)
}

// waitWithin waits up to d for cond.
func waitWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// publish publishes ev and fails the test on error.
func publish(t *testing.T, b *Broker, data string, topics ...string) string {
	t.Helper()
	id, err := b.Publish(Event{Data: data}, topics...)
	if err != nil {
		t.Fatalf("Publish(%q, %q): %v", data, topics, err)
	}
	return id
}

// seqData returns "prefix0" … "prefix(n-1)".
func seqData(prefix string, from, to int) []string {
	var s []string
	for i := from; i < to; i++ {
		s = append(s, prefix+strconv.Itoa(i))
	}
	return s
}
