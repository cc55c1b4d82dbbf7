package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"sse"
	"sse/internal/spec"
)

// TestClock runs over HTTP/1.1 and HTTP/2, since the connecttime and the Broker's events share
// one response.
func TestClock(t *testing.T) {
	for _, proto := range []string{"HTTP1", "HTTP2"} {
		t.Run(proto, func(t *testing.T) {
			ts, b := startProto(t, proto == "HTTP2")
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			wg.Go(func() { tick(ctx, b, 10*time.Millisecond) })
			t.Cleanup(func() { cancel(); wg.Wait() }) // cleanups run last first: before Shutdown

			d := subscribe(t, ts, "/events")
			ev := next(t, d)
			if ev.Type != "connecttime" || !isDateTime(ev.Data) {
				t.Fatalf("first event = %+v, want a connecttime with a date and time", ev)
			}
			if ev.LastEventID != "" {
				t.Errorf("connecttime has last event ID %q, want none", ev.LastEventID)
			}
			ev = next(t, d)
			if ev.Type != "tick" || !isDateTime(ev.Data) || ev.LastEventID == "" {
				t.Fatalf("second event = %+v, want a tick with a date, a time and an ID", ev)
			}
		})
	}
}

// TestClockConnectTimePerClient checks that each connection gets a connecttime of its own,
// and that it does not reach the clients already connected.
func TestClockConnectTimePerClient(t *testing.T) {
	ts, b := start(t)
	first := subscribe(t, ts, "/events")
	if ev := next(t, first); ev.Type != "connecttime" {
		t.Fatalf("first client's first event = %+v, want connecttime", ev)
	}
	second := subscribe(t, ts, "/events")
	if ev := next(t, second); ev.Type != "connecttime" {
		t.Fatalf("second client's first event = %+v, want connecttime", ev)
	}
	// The connecttime is sent before ServeEvents joins the client to the Broker, and a
	// client sees only what is published after it joined: publish once both have.
	waitClients(t, b, 2)
	if _, err := b.Publish(sse.Event{Type: "tick", Data: now()}, clockTopic); err != nil {
		t.Fatal(err)
	}
	for i, d := range []*spec.Decoder{first, second} {
		if ev := next(t, d); ev.Type != "tick" {
			t.Errorf("client %d: event after connecttime = %+v, want the tick", i+1, ev)
		}
	}
}

func TestClockRefusesOtherMethods(t *testing.T) {
	ts, _ := start(t)
	for _, method := range []string{http.MethodHead, http.MethodPost} {
		req, _ := http.NewRequestWithContext(t.Context(), method, ts.URL+"/events", nil)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /events: status %d, want 405", method, resp.StatusCode)
		}
	}
}

func TestClockPage(t *testing.T) {
	ts, _ := start(t)
	checkPage(t, ts, `new EventSource("/events")`)
}

// start serves the clock on a test server, without the ticker, and checks at the end of the
// test that every goroutine it started has ended.
func start(t *testing.T) (*httptest.Server, *sse.Broker) {
	t.Helper()
	return startProto(t, false)
}

// startProto is start, over HTTP/2 (and TLS) if h2 is set.
func startProto(t *testing.T, h2 bool) (*httptest.Server, *sse.Broker) {
	t.Helper()
	checkGoroutines(t)
	b := sse.NewBroker()
	ts := httptest.NewUnstartedServer(newServer(b))
	if h2 {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	// Cleanups run last first: the Broker ends its streams before ts.Close waits for them.
	t.Cleanup(func() {
		if err := b.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return ts, b
}

// subscribe opens the event stream at path and returns a decoder reading it; the stream is
// closed at the end of the test.
func subscribe(t *testing.T, ts *httptest.Server, path string) *spec.Decoder {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+path, nil)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200", path, resp.StatusCode)
	}
	if want := ts.EnableHTTP2; (resp.ProtoMajor == 2) != want {
		t.Fatalf("GET %s: served over %s", path, resp.Proto)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("GET %s: Content-Type %q, want text/event-stream", path, ct)
	}
	return spec.NewDecoder(resp.Body)
}

func next(t *testing.T, d *spec.Decoder) spec.Event {
	t.Helper()
	ev, err := d.Next()
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

func isDateTime(s string) bool {
	_, err := time.Parse(time.DateTime, s)
	return err == nil
}

// waitClients waits until the Broker has n streams open.
func waitClients(t *testing.T, b *sse.Broker, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); b.Stats().Clients != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients connected, want %d", b.Stats().Clients, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkPage checks that / serves the HTML page, and that it contains want.
func checkPage(t *testing.T, ts *httptest.Server, want string) {
	t.Helper()
	resp, err := ts.Client().Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /: status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET /: Content-Type %q, want text/html", ct)
	}
	if !strings.Contains(string(body), want) {
		t.Errorf("GET /: page does not contain %q", want)
	}
}

// checkGoroutines makes t fail if, once it and its cleanups are done, more goroutines are
// running than when it started.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines running, want %d:\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}
