package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"sse"
	"sse/internal/spec"
	"sse/internal/ssetest"
)

func TestChatRooms(t *testing.T) {
	ts := start(t)
	lobby := ssetest.Subscribe(t, ts.Server, "/rooms/lobby/events", "")
	other := ssetest.Subscribe(t, ts.Server, "/rooms/other/events", "")

	text := "hello, <world> \"quoted\" é\nsecond line"
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {text}})
	post(t, ts, "/rooms/other/messages", url.Values{"text": {"elsewhere"}})

	checkMessage(t, ssetest.Next(t, lobby), "ann", text)
	// Each stream delivers in publish order: had the lobby's message reached the other room,
	// it would come before this one.
	checkMessage(t, ssetest.Next(t, other), "anonymous", "elsewhere")
}

func TestChatReplay(t *testing.T) {
	ts := start(t)
	d := ssetest.Subscribe(t, ts.Server, "/rooms/lobby/events", "")
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {"one"}})
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"bob"}, "text": {"two"}})
	first := ssetest.Next(t, d)
	checkMessage(t, first, "ann", "one")
	checkMessage(t, ssetest.Next(t, d), "bob", "two")

	// What an EventSource does when its connection drops after the first message.
	again := ssetest.Subscribe(t, ts.Server, "/rooms/lobby/events", first.LastEventID)
	checkMessage(t, ssetest.Next(t, again), "bob", "two")

	// An ID the server never gave (from before a restart, say): the page is told it may have
	// missed messages, then gets what the room still holds.
	unknown := ssetest.Subscribe(t, ts.Server, "/rooms/lobby/events", "from-an-earlier-run-1")
	if ev := ssetest.Next(t, unknown); ev.Type != sse.MissedType {
		t.Fatalf("first event after an unknown Last-Event-ID = %+v, want type %q", ev, sse.MissedType)
	}
	checkMessage(t, ssetest.Next(t, unknown), "ann", "one")
	checkMessage(t, ssetest.Next(t, unknown), "bob", "two")
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
		{"bad page", "GET", "/rooms/lobby/events?page=a-b", nil, 400},
		{"long page", "GET", "/rooms/lobby/events?page=" + strings.Repeat("a", 33), nil, 400},
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

// A page that says which page it is is listed in its room, under the name it last said
// something with: it is greeted with the list, told of every change, and leaves the list when
// its stream ends.
func TestChatPresence(t *testing.T) {
	ts := start(t)
	ann := ssetest.Subscribe(t, ts.Server, "/rooms/lobby/events?page=ann1", "")
	checkPresence(t, ssetest.Next(t, ann), "anonymous") // the greeting
	// The page is subscribed a moment after its greeting: what is said before then misses it.
	waitClients(t, ts, 1)
	post(t, ts, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {"hi"}, "page": {"ann1"}})
	checkMessage(t, ssetest.Next(t, ann), "ann", "hi")
	checkPresence(t, ssetest.Next(t, ann), "ann")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/rooms/lobby/events?page=bob1", nil)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	bob := spec.NewDecoder(resp.Body)
	checkPresence(t, ssetest.Next(t, bob), "ann", "anonymous")
	checkPresence(t, ssetest.Next(t, ann), "ann", "anonymous")
	waitClients(t, ts, 2)
	// Another room's list is its own.
	other := ssetest.Subscribe(t, ts.Server, "/rooms/other/events?page=cy1", "")
	checkPresence(t, ssetest.Next(t, other), "anonymous")

	cancel() // bob's page goes
	checkPresence(t, ssetest.Next(t, ann), "ann")
}

// waitClients waits until ts's broker serves n streams.
func waitClients(t *testing.T, ts server, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for ts.b.Stats().Clients != n {
		if time.Now().After(deadline) {
			t.Fatalf("the broker serves %d streams, want %d", ts.b.Stats().Clients, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkPresence checks that ev is a room's list of names.
func checkPresence(t *testing.T, ev spec.Event, names ...string) {
	t.Helper()
	var p struct {
		Node  string   `json:"node"`
		Names []string `json:"names"`
	}
	if ev.Type != "presence" {
		t.Fatalf("event = %+v, want a presence list", ev)
	}
	if err := json.Unmarshal([]byte(ev.Data), &p); err != nil || p.Node == "" || !slices.Equal(p.Names, names) {
		t.Fatalf("presence %q (%v), want the names %q", ev.Data, err, names)
	}
}

func TestChatPage(t *testing.T) {
	ts := start(t)
	// The page listens for the missed event by name, which must be the library's.
	ssetest.CheckPage(t, ts.Server, `addEventListener("`+sse.MissedType+`"`)
}

type server struct {
	*httptest.Server
	b interface{ Stats() sse.Stats } // an sse.Broker, or a redisbroker.Broker
}

// start serves the chat on a test server, with a Broker made with opts, and checks at the end
// of the test that every goroutine it started has ended.
func start(t *testing.T, opts ...sse.Option) server {
	t.Helper()
	ssetest.CheckGoroutines(t)
	if os.Getenv("SSE_HIJACK") != "" {
		// CI runs these tests a second time with the streams taken over (sse.WithHijack).
		opts = append(opts, sse.WithHijack())
	}
	p := newPresence()
	b := sse.NewBroker(append(opts, p.option())...)
	p.b = b
	ts := httptest.NewServer(newServer(b, p))
	t.Cleanup(ts.Close)
	// Cleanups run last first: the Broker ends its streams before ts.Close waits for them.
	t.Cleanup(func() {
		if err := b.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return server{ts, b}
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
