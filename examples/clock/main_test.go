package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"sse"
	"sse/internal/spec"
	"sse/internal/ssetest"
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

			d := ssetest.Subscribe(t, ts, "/events", "")
			ev := ssetest.Next(t, d)
			if ev.Type != "connecttime" || !isDateTime(ev.Data) {
				t.Fatalf("first event = %+v, want a connecttime with a date and time", ev)
			}
			if ev.LastEventID != "" {
				t.Errorf("connecttime has last event ID %q, want none", ev.LastEventID)
			}
			ev = ssetest.Next(t, d)
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
	first := ssetest.Subscribe(t, ts, "/events", "")
	if ev := ssetest.Next(t, first); ev.Type != "connecttime" {
		t.Fatalf("first client's first event = %+v, want connecttime", ev)
	}
	second := ssetest.Subscribe(t, ts, "/events", "")
	if ev := ssetest.Next(t, second); ev.Type != "connecttime" {
		t.Fatalf("second client's first event = %+v, want connecttime", ev)
	}
	// The connecttime is sent before ServeEvents joins the client to the Broker, and a
	// client sees only what is published after it joined: publish once both have.
	waitClients(t, b, 2)
	if _, err := b.Publish(sse.Event{Type: "tick", Data: now()}, clockTopic); err != nil {
		t.Fatal(err)
	}
	for i, d := range []*spec.Decoder{first, second} {
		if ev := ssetest.Next(t, d); ev.Type != "tick" {
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
	ssetest.CheckPage(t, ts, `new EventSource("/events")`)
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
	ssetest.CheckGoroutines(t)
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
