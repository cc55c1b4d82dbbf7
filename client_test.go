package sse

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"sse/internal/ssetest"
)

// testClient returns a Client for s that reconnects at once, so that tests do not wait.
func testClient(s *httptest.Server) *Client {
	return &Client{HTTPClient: s.Client(), Retry: time.Millisecond}
}

// get returns a GET request for url, which ends with the test.
func get(t *testing.T, url string) *http.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// goWhen runs f in a goroutine of its own once cond holds, as a server's publisher would run.
// The goroutine ends with the test.
func goWhen(t *testing.T, cond func() bool, f func()) {
	ctx := t.Context()
	var wg sync.WaitGroup
	wg.Go(func() {
		for !cond() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		f()
	})
	t.Cleanup(wg.Wait)
}

// publishAll publishes each data with the ID "id-" + data.
func publishAll(t *testing.T, b *Broker, data ...string) {
	for _, d := range data {
		if _, err := b.Publish(Event{ID: "ü-" + d, Data: d}); err != nil {
			t.Errorf("Publish(%q): %v", d, err)
		}
	}
}

// requests is a handler's record of the requests it answered.
type requests struct {
	mu   sync.Mutex
	reqs []*http.Request
	body []string
}

func (rs *requests) add(r *http.Request) int {
	body, _ := io.ReadAll(r.Body)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.reqs = append(rs.reqs, r)
	rs.body = append(rs.body, string(body))
	return len(rs.reqs)
}

func (rs *requests) get(i int) (*http.Request, string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if i >= len(rs.reqs) {
		return nil, ""
	}
	return rs.reqs[i], rs.body[i]
}

func (rs *requests) len() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.reqs)
}

// scripted returns a server that answers its nth request (from 1) with the stream script
// returns, or with 204 if it returns "".
func scripted(t *testing.T, m mode, script func(n int) string) (*httptest.Server, *requests) {
	t.Helper()
	rs := &requests{}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream := script(rs.add(r))
		if stream == "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, stream)
	}))
	if m == http2 {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	return ts, rs
}

// collect ranges over c.Events(req) and returns the data of each event and the error the
// iteration ended with.
func collect(c *Client, req *http.Request) (data []string, ids []string, err error) {
	for ev, e := range c.Events(req) {
		if e != nil {
			return data, ids, e
		}
		data = append(data, ev.Data)
		ids = append(ids, ev.ID)
	}
	return data, ids, nil
}

func TestEventsHeaders(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		ts, rs := scripted(t, m, func(n int) string {
			switch n {
			case 1:
				return "id: 日本 a  b\ndata: 1\n\n"
			case 2:
				return "data: 2\n\n"
			}
			return ""
		})
		data, ids, err := collect(testClient(ts), get(t, ts.URL))
		if err != nil || strings.Join(data, ",") != "1,2" || strings.Join(ids, ",") != "日本 a  b,日本 a  b" {
			t.Fatalf("events %q, IDs %q, %v; want 1 and 2 with the ID, then the end", data, ids, err)
		}
		for i, wantID := range []string{"", "日本 a  b", "日本 a  b"} {
			r, _ := rs.get(i)
			if got := r.Header.Get("Accept"); got != "text/event-stream" {
				t.Errorf("request %d: Accept %q, want text/event-stream", i, got)
			}
			if got := r.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("request %d: Cache-Control %q, want no-cache", i, got)
			}
			if got := r.Header.Values("Last-Event-Id"); wantID == "" && len(got) != 0 || wantID != "" && (len(got) != 1 || got[0] != wantID) {
				t.Errorf("request %d: Last-Event-ID %q, want %q", i, got, wantID)
			}
		}
	})
}

// TestEventsLastEventIDFromRequest checks that a Last-Event-ID set on the request is sent as
// is, byte for byte, until the stream sets another, and that an event without an ID of its own
// reports it, as EventSource's lastEventId would.
func TestEventsLastEventIDFromRequest(t *testing.T) {
	ts, rs := scripted(t, http1, func(n int) string {
		switch n {
		case 1:
			return "data: a\n\n"
		case 2:
			return "id: new\n\n"
		case 3:
			return "id\n\n" // an empty ID: no header at all
		}
		return ""
	})
	req := get(t, ts.URL)
	req.Header.Set("Last-Event-ID", "caf\xe9 1") // ISO-8859-1, as Node's fetch sends it
	req.Header.Set("Accept", "text/event-stream, application/json")
	data, ids, err := collect(testClient(ts), req)
	if err != nil || len(data) != 1 || ids[0] != "caf\xe9 1" {
		t.Fatalf("events %q, IDs %q, %v; want one event with the request's ID", data, ids, err)
	}
	for i, want := range []string{"caf\xe9 1", "caf\xe9 1", "new", ""} {
		r, _ := rs.get(i)
		if got := r.Header.Get("Last-Event-ID"); got != want {
			t.Errorf("request %d: Last-Event-ID %q, want %q", i, got, want)
		}
		if got := r.Header.Get("Accept"); got != "text/event-stream, application/json" {
			t.Errorf("request %d: Accept %q, want the request's own", i, got)
		}
	}
	if got := req.Header.Get("Last-Event-ID"); got != "caf\xe9 1" {
		t.Errorf("the caller's request was changed: Last-Event-ID %q", got)
	}
}

// TestEventsResume cuts the connection under a Client reading a Broker's stream; the Client
// reconnects and receives exactly the events published while it was away.
func TestEventsResume(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithRetry(time.Millisecond)) // the Client honours the server's retry
		s := newServer(t, m, b, b.Handler())
		p := ssetest.NewProxy(t, s.Listener.Addr().String())
		// The same scheme (https over HTTP/2), through the proxy.
		url := strings.Replace(s.URL, s.Listener.Addr().String(), strings.TrimPrefix(p.URL(), "http://"), 1)

		var reasons []error
		c := testClient(s.Server)
		c.OnReconnect = func(err error, wait time.Duration) { reasons = append(reasons, err) }
		goWhen(t, func() bool { return b.Stats().Clients == 1 }, func() { publishAll(t, b, "1", "2", "3") })
		var got []string
		for ev, err := range c.Events(get(t, url)) {
			if err != nil {
				t.Fatal(err)
			}
			if ev.ID != "ü-"+ev.Data {
				t.Errorf("event %q has ID %q", ev.Data, ev.ID)
			}
			got = append(got, ev.Data)
			switch len(got) {
			case 3:
				// The Client runs in this goroutine: it cannot reconnect before the loop body
				// returns, so these are published while it is away.
				p.Cut()
				publishAll(t, b, "4", "5", "6", "7")
			case 7:
				p.Cut()
				publishAll(t, b, "8")
			}
			if len(got) == 8 {
				break
			}
		}
		if want := "1,2,3,4,5,6,7,8"; strings.Join(got, ",") != want {
			t.Errorf("received %q, want %s", got, want)
		}
		if len(reasons) != 2 {
			t.Errorf("reconnected %d times (%v), want 2", len(reasons), reasons)
		}
		if st := b.Stats(); st.Replays != 2 || st.UnknownReplays != 0 {
			t.Errorf("broker counts %d replays, %d unknown; want 2, 0", st.Replays, st.UnknownReplays)
		}
	})
}

// TestEventsServerRestart replaces the Broker behind the server, as a restarted process
// would: the Client, resuming with an ID the new Broker never gave, receives MissedType.
func TestEventsServerRestart(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		old, next := newBroker(m, WithRetry(time.Millisecond)), newBroker(m)
		var cur atomic.Pointer[Broker]
		cur.Store(old)
		s := newServer(t, m, next, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cur.Load().ServeEvents(w, r)
		}))
		t.Cleanup(func() { old.Shutdown(context.Background()) })

		c := testClient(s.Server)
		var waits []time.Duration
		c.OnReconnect = func(err error, wait time.Duration) { waits = append(waits, wait) }
		req := get(t, s.URL)
		goWhen(t, func() bool { return old.Stats().Clients == 1 }, func() { publishAll(t, old, "before") })
		var got []Event
		for ev, err := range c.Events(req) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, ev)
			switch len(got) {
			case 1:
				cur.Store(next)
				// Shutdown ends the stream with the old broker's retry hint.
				old.Shutdown(context.Background())
			case 2:
				if ev.Type != MissedType {
					t.Fatalf("after the restart: %+v, want a %q event", ev, MissedType)
				}
				publishAll(t, next, "after")
			}
			if len(got) == 3 {
				break
			}
		}
		if len(got) != 3 || got[0].Data != "before" || got[1].Type != MissedType || got[2].Data != "after" {
			t.Errorf("events %+v, want before, missed, after", got)
		}
		if got[1].ID == got[0].ID || got[1].ID == "" {
			t.Errorf("missed event ID %q, want the new broker's start, not %q", got[1].ID, got[0].ID)
		}
		// The old broker's Shutdown set a retry of 1 to 2 ms, which the Client waited.
		if len(waits) != 1 || waits[0] < time.Millisecond || waits[0] > 2*time.Millisecond {
			t.Errorf("waits %v, want one of the old broker's retry hint", waits)
		}
	})
}

func TestEventsNoContent(t *testing.T) {
	ts, rs := scripted(t, http1, func(int) string { return "" })
	for ev, err := range testClient(ts).Events(get(t, ts.URL)) {
		t.Errorf("got %+v, %v; want nothing", ev, err)
	}
	if n := rs.len(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestEventsResponseError(t *testing.T) {
	long := strings.Repeat("é", 3000)
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
		ok     bool
	}{
		{"500 JSON", 500, "application/json", `{"error":{"type":"overloaded"}}`, false},
		{"404", 404, "text/plain; charset=utf-8", "not found\n", false},
		{"200 HTML", 200, "text/html", "<html></html>", false},
		{"200 no type", 200, "", "data: x\n\n", false},
		{"201 event stream", 201, "text/event-stream", "data: x\n\n", false},
		{"long body", 400, "text/plain", long, false},
		{"type with parameters", 200, "text/event-stream; charset=utf-8", "data: x\n\n", true},
		{"type in capitals", 200, "Text/Event-Stream", "data: x\n\n", true},
		{"type with a bad parameter", 200, "text/event-stream; charset", "data: x\n\n", true},
		{"type with a repeated parameter", 200, "text/event-stream; charset=utf-8; charset=UTF-8", "data: x\n\n", true},
		{"type with white space", 200, " text/event-stream ;charset=utf-8", "data: x\n\n", true},
		{"type with a space inside", 200, "text/ event-stream", "data: x\n\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) > 1 {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				w.Header()["Content-Type"] = []string{tt.ctype}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer ts.Close()
			data, _, err := collect(testClient(ts), get(t, ts.URL))
			if tt.ok {
				if err != nil || len(data) != 1 {
					t.Fatalf("events %q, %v; want the event", data, err)
				}
				return
			}
			var re *ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("events %q, %v; want a *ResponseError", data, err)
			}
			wantBody := tt.body[:min(len(tt.body), maxErrorBody)]
			if re.StatusCode != tt.status || re.ContentType != tt.ctype || string(re.Body) != wantBody {
				t.Errorf("ResponseError{%d, %q, %q}, want {%d, %q, %q}", re.StatusCode, re.ContentType, re.Body, tt.status, tt.ctype, wantBody)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "sse: ") || !strings.Contains(msg, http.StatusText(tt.status)) || len(msg) > 300 {
				t.Errorf("Error() = %q", msg)
			}
			if n := n.Load(); n != 1 {
				t.Errorf("%d requests, want 1: no reconnection", n)
			}
		})
	}
}

// TestEventsResponseErrorOpenBody checks that a response that is not an event stream ends the
// iteration even when its body never ends, as a stream served with the wrong Content-Type
// does, with what came of the body.
func TestEventsResponseErrorOpenBody(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "data: x\n\n") // sniffed as text/plain
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}))
		_, _, err := collect(testClient(s.Server), get(t, s.URL))
		var re *ResponseError
		if !errors.As(err, &re) || string(re.Body) != "data: x\n\n" {
			t.Fatalf("ended with %v; want a *ResponseError with the body sent", err)
		}
	})
}

func TestResponseErrorMessage(t *testing.T) {
	err := &ResponseError{StatusCode: 500, ContentType: "application/json", Body: []byte(`{"error":"overloaded"}` + "\n")}
	if got, want := err.Error(), `sse: not an event stream: 500 Internal Server Error, application/json: {"error":"overloaded"}`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestEventsRetry checks the waits between attempts: the server's retry, else the Client's;
// doubling over attempts that bring no event, up to MaxBackoff; back to the retry once an
// event comes.
func TestEventsRetry(t *testing.T) {
	ts, _ := scripted(t, http1, func(n int) string {
		switch n {
		case 1:
			return "data: a\n\n" // ends: wait the Client's Retry
		case 2:
			return "retry: 3\n\n" // no event, and a retry: wait 3 ms
		case 3, 4, 5, 6:
			return ":\n" // no event: back off
		case 7:
			return "retry: 2\ndata: b\n\n" // an event: wait the retry again
		}
		return ""
	})
	c := testClient(ts)
	c.Retry = 5 * time.Millisecond
	c.MaxBackoff = 10 * time.Millisecond
	var waits []time.Duration
	var reasons []error
	c.OnReconnect = func(err error, wait time.Duration) {
		reasons = append(reasons, err)
		waits = append(waits, wait)
	}
	data, _, err := collect(c, get(t, ts.URL))
	if err != nil || strings.Join(data, ",") != "a,b" {
		t.Fatalf("events %q, %v; want a, b", data, err)
	}
	ms := time.Millisecond
	want := []struct{ lo, hi time.Duration }{
		{5 * ms, 5 * ms},  // after a: the Client's Retry, as the first failure waits
		{3 * ms, 6 * ms},  // retry: 3, and the second failure in a row: 2 × 3, less up to a half
		{5 * ms, 10 * ms}, // third: 4 × 3, capped at MaxBackoff
		{5 * ms, 10 * ms},
		{5 * ms, 10 * ms},
		{5 * ms, 10 * ms},
		{2 * ms, 2 * ms}, // after b, which reset the failures: its block's retry
	}
	if len(waits) != 7 {
		t.Fatalf("waits %v, want 7", waits)
	}
	for i, w := range want {
		if waits[i] < w.lo || waits[i] > w.hi {
			t.Errorf("wait %d = %v, want %v to %v (all: %v)", i, waits[i], w.lo, w.hi, waits)
		}
		if reasons[i] != io.EOF {
			t.Errorf("reason %d = %v, want io.EOF", i, reasons[i])
		}
	}
}

// TestEventsRetryOverMaxBackoff checks that the Client never waits less than the reconnection
// time, even once it backs off with jitter, when that time is over MaxBackoff.
func TestEventsRetryOverMaxBackoff(t *testing.T) {
	ts, _ := scripted(t, http1, func(n int) string {
		if n <= 6 {
			return "retry: 4\n\n" // no event: back off
		}
		return ""
	})
	c := testClient(ts)
	c.MaxBackoff = time.Millisecond
	var waits []time.Duration
	c.OnReconnect = func(err error, wait time.Duration) { waits = append(waits, wait) }
	if _, _, err := collect(c, get(t, ts.URL)); err != nil {
		t.Fatal(err)
	}
	if len(waits) != 6 {
		t.Fatalf("waits %v, want 6", waits)
	}
	for i, w := range waits {
		if w != 4*time.Millisecond {
			t.Errorf("wait %d = %v, want the retry, 4ms (all: %v)", i, w, waits)
		}
	}
}

// TestEventsContext checks that the request's context ends the iteration for good, with its
// error, wherever the Client is: reading, waiting, or connecting.
func TestEventsContext(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		for _, where := range []string{"reading", "waiting", "before"} {
			b := newBroker(m)
			s := newServer(t, m, b, b.Handler())
			ctx, cancel := context.WithCancel(t.Context())
			c := testClient(s.Server)
			c.Retry = time.Hour
			c.OnReconnect = func(error, time.Duration) {
				if where == "waiting" {
					cancel()
				}
			}
			if where == "before" {
				cancel()
			}
			goWhen(t, func() bool { return b.Stats().Clients == 1 || ctx.Err() != nil }, func() { publishAll(t, b, "x") })
			var errs []error
			for ev, err := range c.Events(get(t, s.URL).WithContext(ctx)) {
				errs = append(errs, err)
				if err != nil {
					continue
				}
				if ev.Data != "x" {
					t.Errorf("%s: event %+v", where, ev)
				}
				switch where {
				case "reading":
					cancel()
				case "waiting":
					// End the stream from the server's side: the Client waits to reconnect.
					s.cut()
				}
			}
			if len(errs) == 0 || errs[len(errs)-1] != context.Canceled {
				t.Errorf("%s: yields errors %v, want context.Canceled last", where, errs)
			}
			waitFor(t, "the stream to close", func() bool { return b.Stats().Clients == 0 })
			cancel()
		}
	})
}

// TestEventsBreak checks that breaking out of the loop closes the stream.
func TestEventsBreak(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		goWhen(t, func() bool { return b.Stats().Clients == 1 }, func() { publishAll(t, b, "x") })
		for range testClient(s.Server).Events(get(t, s.URL)) {
			break
		}
		waitFor(t, "the stream to close", func() bool { return b.Stats().Clients == 0 })
	})
}

// TestEventsRequestBody checks that a body is sent again through GetBody, and that a body that
// cannot be ends the iteration rather than reconnect without it.
func TestEventsRequestBody(t *testing.T) {
	ts, rs := scripted(t, http1, func(n int) string {
		if n <= 2 {
			return "data: x\n\n"
		}
		return ""
	})
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.URL, strings.NewReader("question"))
	if _, _, err := collect(testClient(ts), req); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if r, body := rs.get(i); r.Method != http.MethodPost || body != "question" {
			t.Errorf("request %d: %s with body %q, want POST with the body", i, r.Method, body)
		}
	}

	ts, rs = scripted(t, http1, func(int) string { return "data: x\n\n" })
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodPost, ts.URL, io.NopCloser(strings.NewReader("once")))
	data, _, err := collect(testClient(ts), req)
	if len(data) != 1 || err == nil || !strings.Contains(err.Error(), "GetBody") {
		t.Errorf("events %q, %v; want one, then an error about GetBody", data, err)
	}
	if n := rs.len(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestEventsTooLarge(t *testing.T) {
	ts, rs := scripted(t, http1, func(int) string { return "data: " + strings.Repeat("x", 100) + "\n\n" })
	c := testClient(ts)
	c.MaxEventSize = 50
	data, _, err := collect(c, get(t, ts.URL))
	if len(data) != 0 || !errors.Is(err, ErrEventTooLarge) {
		t.Errorf("events %q, %v; want ErrEventTooLarge", data, err)
	}
	if n := rs.len(); n != 1 {
		t.Errorf("%d requests, want 1: no reconnection", n)
	}
}

// TestEventsUnsendableID checks that an ID net/http cannot send back ends the iteration, rather
// than fail every attempt for ever.
func TestEventsUnsendableID(t *testing.T) {
	ts, _ := scripted(t, http1, func(int) string { return "id: a\x01b\ndata: x\n\n" })
	data, _, err := collect(testClient(ts), get(t, ts.URL))
	if len(data) != 1 || err == nil || !strings.Contains(err.Error(), "last event ID") {
		t.Errorf("events %q, %v; want one, then an error about the ID", data, err)
	}
}

func TestEventsRedirect(t *testing.T) {
	b := NewBroker()
	mux := http.NewServeMux()
	mux.Handle("/events", b.Handler())
	mux.Handle("/old", http.RedirectHandler("/events", http.StatusTemporaryRedirect))
	s := newServer(t, http1, b, mux)
	goWhen(t, func() bool { return b.Stats().Clients == 1 }, func() { publishAll(t, b, "x") })
	for ev, err := range testClient(s.Server).Events(get(t, s.URL+"/old")) {
		if err != nil || ev.Data != "x" {
			t.Errorf("got %+v, %v; want the event", ev, err)
		}
		break
	}
}

// TestEventsServerDown checks that attempts that fail to connect, the first included, are
// retried, with the error passed to OnReconnect, until the context ends.
func TestEventsServerDown(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	url := ts.URL
	ts.Close() // nothing listens there now

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var reasons []error
	c := &Client{Retry: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	c.OnReconnect = func(err error, wait time.Duration) {
		if reasons = append(reasons, err); len(reasons) == 3 {
			cancel()
		}
	}
	_, _, err := collect(c, get(t, url).WithContext(ctx))
	if err != context.Canceled || len(reasons) != 3 {
		t.Fatalf("ended with %v after %d attempts, want context.Canceled after 3", err, len(reasons))
	}
	for i, r := range reasons {
		if r == nil || errors.Is(r, io.EOF) {
			t.Errorf("attempt %d failed with %v, want a connection error", i, r)
		}
	}
}

// Requests the Client must take as they come: one with a nil Header (valid for
// http.Client.Do), one whose Last-Event-ID key is not in canonical form, and one with a body
// it must close on the first attempt and make again with GetBody on the next.
func TestClientRequestForms(t *testing.T) {
	t.Run("nil header", func(t *testing.T) {
		ts, _ := scripted(t, http1, func(n int) string { return "data: 1\n\n" })
		u, _ := url.Parse(ts.URL)
		req := (&http.Request{Method: "GET", URL: u}).WithContext(t.Context())
		for ev, err := range testClient(ts).Events(req) {
			if err != nil || ev.Data != "1" {
				t.Errorf("got %+v, %v; want the event", ev, err)
			}
			break
		}
	})
	t.Run("non-canonical Last-Event-ID", func(t *testing.T) {
		ts, rs := scripted(t, http1, func(n int) string {
			if n == 1 {
				return "id: new\ndata: 1\n\n"
			}
			return ""
		})
		req := get(t, ts.URL)
		req.Header["Last-Event-ID"] = []string{"old"}
		_, ids, _ := collect(testClient(ts), req)
		if len(ids) == 0 || ids[0] != "new" {
			t.Errorf("IDs %q, want new first", ids)
		}
		first, _ := rs.get(0)
		second, _ := rs.get(1)
		if first == nil || second == nil {
			t.Fatalf("want two requests")
		}
		if got := first.Header.Values("Last-Event-Id"); len(got) != 1 || got[0] != "old" {
			t.Errorf("first request sends Last-Event-ID %q, want [old]", got)
		}
		if got := second.Header.Values("Last-Event-Id"); len(got) != 1 || got[0] != "new" {
			t.Errorf("second request sends Last-Event-ID %q, want [new]", got)
		}
	})
	t.Run("body", func(t *testing.T) {
		ts, rs := scripted(t, http1, func(n int) string {
			if n == 1 {
				return "data: 1\n\n"
			}
			return ""
		})
		body := &closeBody{Reader: strings.NewReader("q")}
		req, _ := http.NewRequestWithContext(t.Context(), "POST", ts.URL, body)
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("q")), nil }
		collect(testClient(ts), req)
		if !body.closed.Load() {
			t.Errorf("the request's own body was never closed")
		}
		if r, _ := rs.get(1); r == nil {
			t.Errorf("no second attempt with a body from GetBody")
		}
	})
}

type closeBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *closeBody) Close() error { b.closed.Store(true); return nil }

// A request that no attempt can send ends the iteration at once.
func TestClientBadURL(t *testing.T) {
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "ftp://example.com/", nil)
	n := 0
	c := &Client{Retry: time.Millisecond, OnReconnect: func(error, time.Duration) { n++ }}
	var errs []error
	for _, err := range c.Events(req) {
		errs = append(errs, err)
	}
	if n != 0 || len(errs) != 1 || errs[0] == nil {
		t.Errorf("%d reconnections, errors %v; want none and one error", n, errs)
	}
}

// Once the request's context is done, no event is yielded, even one already read.
func TestClientNoEventAfterCancel(t *testing.T) {
	ts, _ := scripted(t, http1, func(n int) string { return "data: 1\n\ndata: 2\n\ndata: 3\n\n" })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var got []string
	var last error
	for ev, err := range testClient(ts).Events(get(t, ts.URL).WithContext(ctx)) {
		if err != nil {
			last = err
			break
		}
		got = append(got, ev.Data)
		cancel()
	}
	if len(got) != 1 || !errors.Is(last, context.Canceled) {
		t.Errorf("got %q, then %v; want one event, then context.Canceled", got, last)
	}
}

// TestEventsTransientStatus cuts a Client's stream and has the server answer 429, 502, 503 or
// 504 twice, as a proxy does while the backend restarts: the Client rides it out, reports each
// answer to OnReconnect as a *ResponseError with its status, and resumes by Last-Event-ID with
// every event published meanwhile.
func TestEventsTransientStatus(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			run(t, func(t *testing.T, m mode) {
				b := newBroker(m, WithRetry(time.Millisecond))
				var down atomic.Int32 // how many more requests get the status
				s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if down.Add(-1) >= 0 {
						w.Header().Set("Content-Type", "text/html")
						w.WriteHeader(status)
						io.WriteString(w, "<html>the backend is away</html>")
						return
					}
					b.ServeEvents(w, r)
				}))
				c := testClient(s.Server)
				var reasons []error
				var waits []time.Duration
				c.OnReconnect = func(err error, wait time.Duration) {
					reasons = append(reasons, err)
					waits = append(waits, wait)
				}
				goWhen(t, func() bool { return b.Stats().Clients == 1 }, func() { publishAll(t, b, "1") })
				var got []string
				for ev, err := range c.Events(get(t, s.URL)) {
					if err != nil {
						t.Fatalf("after %q: %v", got, err)
					}
					got = append(got, ev.Data)
					if len(got) == 1 {
						down.Store(2)
						s.cut()
						// The Client runs in this goroutine: these are published while it is away.
						publishAll(t, b, "2", "3")
					}
					if len(got) == 3 {
						break
					}
				}
				if want := "1,2,3"; strings.Join(got, ",") != want {
					t.Errorf("received %q, want %s", got, want)
				}
				if len(reasons) != 3 {
					t.Fatalf("OnReconnect saw %v, want the cut, then the status twice", reasons)
				}
				for i, err := range reasons[1:] {
					var re *ResponseError
					if !errors.As(err, &re) || re.StatusCode != status || string(re.Body) != "<html>the backend is away</html>" {
						t.Errorf("reconnection %d: %v, want a *ResponseError with status %d and the body", i+1, err, status)
					}
				}
				// Each answer is one more failed attempt after the cut, and the waits back off
				// from the retry (1 ms): twice it, then four times, each less up to a half.
				ms := time.Millisecond
				if waits[0] != ms || waits[1] < ms || waits[1] > 2*ms || waits[2] < 2*ms || waits[2] > 4*ms {
					t.Errorf("waits %v, want 1ms, then 1 to 2ms, then 2 to 4ms", waits)
				}
				if st := b.Stats(); st.Replays != 1 || st.UnknownReplays != 0 {
					t.Errorf("broker counts %d replays, %d unknown; want 1, 0", st.Replays, st.UnknownReplays)
				}
			})
		})
	}
}

// TestEventsRetryAfter has the server answer 429 with Retry-After: 1 once: the Client sends
// its next request no sooner than a second later.
func TestEventsRetryAfter(t *testing.T) {
	var mu sync.Mutex
	var times []time.Time
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		switch n {
		case 1:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case 2:
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: x\n\n")
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer ts.Close()
	c := testClient(ts)
	var waits []time.Duration
	var reasons []error
	c.OnReconnect = func(err error, wait time.Duration) {
		reasons = append(reasons, err)
		waits = append(waits, wait)
	}
	data, _, err := collect(c, get(t, ts.URL))
	if err != nil || strings.Join(data, ",") != "x" {
		t.Fatalf("events %q, %v; want x, then the end", data, err)
	}
	var re *ResponseError
	if len(reasons) != 2 || !errors.As(reasons[0], &re) || re.StatusCode != http.StatusTooManyRequests || re.Header.Get("Retry-After") != "1" {
		t.Fatalf("OnReconnect saw %v, want the 429 first", reasons)
	}
	// Retry-After's second, plus a random part of up to the reconnection time (1 ms).
	if waits[0] < time.Second || waits[0] > time.Second+time.Millisecond {
		t.Errorf("waited %v after the 429, want 1s to 1.001s", waits[0])
	}
	mu.Lock()
	defer mu.Unlock()
	if gap := times[1].Sub(times[0]); gap < time.Second {
		t.Errorf("the next request came %v after the 429, want at least 1s", gap)
	}
}

// TestEventsRetryAfterTiming checks the wait a Retry-After imposes, on a fake clock: a real
// net/http server and client, in a synctest bubble, over in-memory connections (a socket
// would keep the bubble from ever being idle, and its clock from advancing).
func TestEventsRetryAfterTiming(t *testing.T) {
	const retry = time.Second // the Client's reconnection time, and the spread over Retry-After
	tests := []struct {
		name       string
		status     int
		retryAfter string        // the header; "+90s" is a date 90 s after the response's Date
		noDate     bool          // the response has no Date header
		maxBackoff time.Duration // the Client's MaxBackoff
		lo, hi     time.Duration // the wait before the next attempt
	}{
		{"seconds", 429, "120", false, 0, 120 * time.Second, 121 * time.Second},
		{"seconds on 503", 503, "7", false, 0, 7 * time.Second, 8 * time.Second},
		{"seconds on 502", 502, "7", false, 0, 7 * time.Second, 8 * time.Second},
		{"date", 429, "+90s", false, 0, 90 * time.Second, 91 * time.Second},
		{"date, no Date header", 503, "+90s", true, 0, 90 * time.Second, 91 * time.Second},
		{"date past", 429, "-90s", false, 0, retry, retry},
		{"zero", 429, "0", false, 0, retry, retry},
		{"invalid", 429, "soon", false, 0, retry, retry},
		{"negative", 429, "-5", false, 0, retry, retry},
		{"none", 503, "", false, 0, retry, retry},
		{"a day, bounded", 503, "86400", false, 0, maxRetryAfter, maxRetryAfter + retry},
		{"too many digits, bounded", 429, "99999999999999999999999", false, 0, maxRetryAfter, maxRetryAfter + retry},
		{"bounded by a longer MaxBackoff", 429, "86400", false, time.Hour, time.Hour, time.Hour + retry},
		{"a year ahead, bounded", 429, "+8760h", false, 0, maxRetryAfter, maxRetryAfter + retry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var times []time.Time // guarded by the Client's waiting for each response
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					times = append(times, time.Now())
					switch len(times) {
					case 1:
						if tt.noDate {
							w.Header()["Date"] = nil // net/http sends none
						}
						if d, ok := strings.CutPrefix(tt.retryAfter, "+"); ok {
							d, _ := time.ParseDuration(d)
							w.Header().Set("Retry-After", time.Now().Add(d).UTC().Format(http.TimeFormat))
						} else if d, ok := strings.CutPrefix(tt.retryAfter, "-"); ok && strings.HasSuffix(d, "s") {
							d, _ := time.ParseDuration(d)
							w.Header().Set("Retry-After", time.Now().Add(-d).UTC().Format(http.TimeFormat))
						} else if tt.retryAfter != "" {
							w.Header().Set("Retry-After", tt.retryAfter)
						}
						http.Error(w, "come back later", tt.status)
					case 2:
						w.Header().Set("Content-Type", "text/event-stream")
						io.WriteString(w, "data: x\n\n")
					default:
						w.WriteHeader(http.StatusNoContent)
					}
				})}
				c := &Client{HTTPClient: pipeServer(t, srv), Retry: retry, MaxBackoff: tt.maxBackoff}
				var waits []time.Duration
				c.OnReconnect = func(err error, wait time.Duration) { waits = append(waits, wait) }
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://pipe/events", nil)
				data, _, err := collect(c, req)
				if err != nil || strings.Join(data, ",") != "x" {
					t.Fatalf("events %q, %v; want x, then the end", data, err)
				}
				if len(waits) != 2 || len(times) != 3 {
					t.Fatalf("waits %v over %d requests, want 2 over 3", waits, len(times))
				}
				if waits[0] < tt.lo || waits[0] > tt.hi {
					t.Errorf("waits %v after the %d, want %v to %v", waits[0], tt.status, tt.lo, tt.hi)
				}
				if gap := times[1].Sub(times[0]); gap != waits[0] {
					t.Errorf("the next request came %v after the %d; the Client said it would wait %v", gap, tt.status, waits[0])
				}
			})
		})
	}
}

// TestEventsTransientOpenBody has the server answer 503 with a body that never ends: the
// Client stops reading it after errorBodyWait, and reconnects.
func TestEventsTransientOpenBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var times []time.Time // guarded by the Client's waiting for each response
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			times = append(times, time.Now())
			switch len(times) {
			case 1:
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "starting")
				http.NewResponseController(w).Flush()
				<-r.Context().Done()
			case 2:
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "data: x\n\n")
			default:
				w.WriteHeader(http.StatusNoContent)
			}
		})}
		c := &Client{HTTPClient: pipeServer(t, srv), Retry: time.Second}
		var reasons []error
		c.OnReconnect = func(err error, wait time.Duration) { reasons = append(reasons, err) }
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://pipe/events", nil)
		data, _, err := collect(c, req)
		if err != nil || strings.Join(data, ",") != "x" {
			t.Fatalf("events %q, %v; want x, then the end", data, err)
		}
		var re *ResponseError
		if len(reasons) == 0 || !errors.As(reasons[0], &re) || re.StatusCode != http.StatusServiceUnavailable || string(re.Body) != "starting" {
			t.Fatalf("OnReconnect saw %v, want the 503 with what came of its body", reasons)
		}
		if gap, want := times[1].Sub(times[0]), errorBodyWait+time.Second; gap != want {
			t.Errorf("the next request came %v after the 503, want %v: the body's wait, then the retry", gap, want)
		}
	})
}

// pipeServer serves srv, in the calling synctest bubble, over in-memory connections, and
// returns a client for it. The server is closed with the test.
func pipeServer(t *testing.T, srv *http.Server) *http.Client {
	ln := newPipeListener()
	go srv.Serve(ln)
	// Without keep-alives no connection idles, reading, between the attempts.
	tr := &http.Transport{DialContext: ln.dial, DisableKeepAlives: true}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
	})
	return &http.Client{Transport: tr}
}

// A pipeListener is a net.Listener whose connections are in-memory pipes, which a synctest
// bubble can wait on, made by its dial.
type pipeListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "pipe"} }

// dial connects to the listener, for http.Transport.DialContext.
func (l *pipeListener) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	server, client := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	date := func(d time.Duration) string { return now.Add(d).Format(http.TimeFormat) }
	tests := []struct {
		retryAfter, date string
		want             time.Duration
		ok               bool
	}{
		{"", "", 0, false},
		{"0", "", 0, true},
		{"30", "", 30 * time.Second, true},
		{" 30 ", "", 30 * time.Second, true},
		{"1.5", "", 0, false},
		{"-1", "", 0, false},
		{"30s", "", 0, false},
		{"9223372036854775807", "", math.MaxInt64, true},
		{"99999999999999999999999", "", math.MaxInt64, true},
		{date(time.Minute), "", time.Minute, true},
		{date(-time.Minute), "", 0, true},
		// Measured from the server's Date, not our clock, which is an hour behind it.
		{date(time.Hour + time.Minute), date(time.Hour), time.Minute, true},
		{date(time.Minute), "not a date", time.Minute, true},
		{"Sunday, 06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:00 GMT", 37 * time.Second, true}, // RFC 850
		{"tomorrow", "", 0, false},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.retryAfter != "" {
			h.Set("Retry-After", tt.retryAfter)
		}
		if tt.date != "" {
			h.Set("Date", tt.date)
		}
		if got, ok := retryAfter(h, now); got != tt.want || ok != tt.ok {
			t.Errorf("retryAfter(Retry-After %q, Date %q) = %v, %v; want %v, %v", tt.retryAfter, tt.date, got, ok, tt.want, tt.ok)
		}
	}
}
