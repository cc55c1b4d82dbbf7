package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"sse"
	"sse/internal/spec"
)

func TestChatRooms(t *testing.T) {
	ts := start(t)
	lobby := subscribe(t, ts, "/rooms/lobby/events", "")
	other := subscribe(t, ts, "/rooms/other/events", "")

	text := "hello, <world> \"quoted\" é\nsecond line"
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {text}})
	post(t, ts, "/rooms/other/messages", url.Values{"text": {"elsewhere"}})

	checkMessage(t, next(t, lobby), "ann", text)
	// Each stream delivers in publish order: had the lobby's message reached the other room,
	// it would come before this one.
	checkMessage(t, next(t, other), "anonymous", "elsewhere")
}

func TestChatReplay(t *testing.T) {
	ts := start(t)
	d := subscribe(t, ts, "/rooms/lobby/events", "")
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {"one"}})
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"bob"}, "text": {"two"}})
	first := next(t, d)
	checkMessage(t, first, "ann", "one")
	checkMessage(t, next(t, d), "bob", "two")

	// What an EventSource does when its connection drops after the first message.
	again := subscribe(t, ts, "/rooms/lobby/events", first.LastEventID)
	checkMessage(t, next(t, again), "bob", "two")

	// An ID the server never gave (from before a restart, say): the page is told it may have
	// missed messages, then gets what the room still holds.
	unknown := subscribe(t, ts, "/rooms/lobby/events", "from-an-earlier-run-1")
	if ev := next(t, unknown); ev.Type != sse.MissedType {
		t.Fatalf("first event after an unknown Last-Event-ID = %+v, want type %q", ev, sse.MissedType)
	}
	checkMessage(t, next(t, unknown), "ann", "one")
	checkMessage(t, next(t, unknown), "bob", "two")
}

func TestChatBadRequests(t *testing.T) {
	ts := start(t)
	long := strings.Repeat("a", maxRoomLen+1)
	tests := []struct {
		name, method, path string
		form               url.Values
		want               int
	}{
		{"space in room", "GET", "/rooms/bad%20room/events", nil, 400},
		{"slash in room", "GET", "/rooms/a%2Fb/events", nil, 400},
		{"dot room", "GET", "/rooms/..%2E/events", nil, 400},
		{"non-ASCII room", "GET", "/rooms/caf%C3%A9/events", nil, 400},
		{"long room", "GET", "/rooms/" + long + "/events", nil, 400},
		{"post to bad room", "POST", "/rooms/bad%20room/messages", url.Values{"text": {"x"}}, 400},
		{"post to long room", "POST", "/rooms/" + long + "/messages", url.Values{"text": {"x"}}, 400},
		{"empty text", "POST", "/rooms/lobby/messages", url.Values{"name": {"ann"}}, 400},
		{"long text", "POST", "/rooms/lobby/messages", url.Values{"text": {strings.Repeat("x", maxTextLen+1)}}, 400},
		{"long name", "POST", "/rooms/lobby/messages", url.Values{"name": {strings.Repeat("x", maxNameLen+1)}, "text": {"x"}}, 400},
		{"huge form", "POST", "/rooms/lobby/messages", url.Values{"text": {strings.Repeat("x", maxForm)}}, 400},
		{"post to stream", "POST", "/rooms/lobby/events", url.Values{"text": {"x"}}, 405},
		{"get messages", "GET", "/rooms/lobby/messages", nil, 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.form != nil {
				body = strings.NewReader(tt.form.Encode())
			}
			req, _ := http.NewRequestWithContext(t.Context(), tt.method, ts.URL+tt.path, body)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
			}
		})
	}
	if n := ts.b.Stats().Published; n != 0 {
		t.Errorf("%d events published, want none", n)
	}
}

func TestChatPage(t *testing.T) {
	ts := start(t)
	// The page listens for the missed event by name, which must be the library's.
	checkPage(t, ts.Server, `addEventListener("`+sse.MissedType+`"`)
}

type server struct {
	*httptest.Server
	b *sse.Broker
}

// start serves the chat on a test server, and checks at the end of the test that every
// goroutine it started has ended.
func start(t *testing.T) server {
	t.Helper()
	checkGoroutines(t)
	b := sse.NewBroker()
	ts := httptest.NewServer(newServer(b))
	t.Cleanup(ts.Close)
	// Cleanups run last first: the Broker ends its streams before ts.Close waits for them.
	t.Cleanup(func() {
		if err := b.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return server{ts, b}
}

// subscribe opens the event stream at path, with a Last-Event-ID header unless lastID is
// empty, and returns a decoder reading it; the stream is closed at the end of the test. The
// client has joined the room when subscribe returns: the Broker flushes the headers only then.
func subscribe(t *testing.T, ts server, path, lastID string) *spec.Decoder {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+path, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200", path, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("GET %s: Content-Type %q, want text/event-stream", path, ct)
	}
	return spec.NewDecoder(resp.Body)
}

// post sends form to path as the page does, and checks that it was accepted.
func post(t *testing.T, ts server, path string, form url.Values) {
	t.Helper()
	resp, err := ts.Client().PostForm(ts.URL+path, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST %s: status %d, want 204", path, resp.StatusCode)
	}
}

func next(t *testing.T, d *spec.Decoder) spec.Event {
	t.Helper()
	ev, err := d.Next()
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

// checkMessage checks that ev is a chat message from name saying text.
func checkMessage(t *testing.T, ev spec.Event, name, text string) {
	t.Helper()
	if ev.Type != "message" || ev.LastEventID == "" {
		t.Fatalf("event = %+v, want a message with an ID", ev)
	}
	var m message
	if err := json.Unmarshal([]byte(ev.Data), &m); err != nil {
		t.Fatalf("message data %q: %v", ev.Data, err)
	}
	if m.Name != name || m.Text != text || time.Since(m.Time) > time.Minute {
		t.Fatalf("message = %+v, want name %q, text %q and the time now", m, name, text)
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
