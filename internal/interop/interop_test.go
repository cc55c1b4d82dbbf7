package interop

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sse"
	"sse/internal/ssetest"
)

// page is what a browser loads first, so that its EventSources are same-origin.
const page = `<!doctype html><meta charset="utf-8"><title>sse interop</title>`

// hijack reports whether the tests run with the streams taken over from net/http by the
// broker's pollers (sse.WithHijack): CI runs them a second time so. It reads the environment
// while a test runs, so that go test's cache tells the two runs apart.
func hijack() bool { return os.Getenv("SSE_HIJACK") != "" }

// newServer starts a server on 127.0.0.1 with a Broker's stream on /events and page on /.
// Tests add their own handlers to the mux.
func newServer(t *testing.T, opts ...sse.Option) (*sse.Broker, *http.ServeMux, *httptest.Server) {
	t.Helper()
	return newServerConfig(t, nil, opts...)
}

// newServerConfig is newServer, with config (if not nil) called on the http.Server before it
// starts.
func newServerConfig(t *testing.T, config func(*http.Server), opts ...sse.Option) (*sse.Broker, *http.ServeMux, *httptest.Server) {
	t.Helper()
	if hijack() {
		opts = append(opts, sse.WithHijack())
	}
	b := sse.NewBroker(opts...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
	mux.Handle("/events", b.Handler())
	srv := httptest.NewUnstartedServer(mux)
	if config != nil {
		config(srv.Config)
	}
	srv.Start()
	// Cleanups run last first: the Broker must end its streams before Close, which waits for them.
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return b, mux, srv
}

// waitClients waits until the broker has n streams open. Publish reaches only the clients
// connected when it is called, so tests wait for this before they publish.
func waitClients(t *testing.T, b *sse.Broker, n int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := b.Stats().Clients
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Stats().Clients = %d after %v, want %d", got, waitTimeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// publish publishes ev to the default topic and returns what a client should see of it.
func publish(t *testing.T, b *sse.Broker, ev sse.Event) seen {
	t.Helper()
	id, err := b.Publish(ev)
	if err != nil {
		t.Fatalf("Publish(%+v): %v", ev, err)
	}
	if ev.ID != "" && id != ev.ID {
		t.Fatalf("Publish(%+v) = %q, want the event's own ID", ev, id)
	}
	return delivered(ev, id)
}

// delivered returns what a client should see of ev, published with the given id.
func delivered(ev sse.Event, id string) seen {
	// The one change the format forces: every line break arrives as LF.
	data := strings.ReplaceAll(ev.Data, "\r\n", "\n")
	data = strings.ReplaceAll(data, "\r", "\n")
	return seen{Kind: "event", Type: cmp.Or(ev.Type, "message"), Data: data, LastEventID: id, ReadyState: 1}
}

// expect waits until es has fired len(want) times and stops the test unless all it has fired
// equals want.
func expect(t *testing.T, c *client, es string, want []seen) []record {
	t.Helper()
	recs := c.waitRecords(t, es, len(want))
	checkSeen(t, seenOf(recs), want)
	if t.Failed() {
		t.FailNow()
	}
	return recs
}

// TestRoundTrip sends every edge case of the wire format and checks that each client sees its
// type, data and lastEventId, with IDs the broker assigns and with IDs the application chose.
func TestRoundTrip(t *testing.T) {
	types := []string{"message"}
	for _, tc := range ssetest.RoundTrip {
		if tc.Type != "" && !slices.Contains(types, tc.Type) {
			types = append(types, tc.Type)
		}
	}
	passes := []struct {
		name string
		id   func(i int, tc ssetest.Case) string
	}{
		{"broker IDs", func(int, ssetest.Case) string { return "" }},
		{"app IDs", func(i int, tc ssetest.Case) string { return cmp.Or(tc.ID, "app-"+strconv.Itoa(i)) }},
	}
	eachClient(t, func(t *testing.T, c *client) {
		b, _, srv := newServer(t)
		c.load(t, srv.URL)
		for _, pass := range passes {
			t.Run(pass.name, func(t *testing.T) {
				es := c.open(t, srv.URL+"/events", types...)
				expect(t, c, es, []seen{opened})
				waitClients(t, b, 1)
				want := []seen{opened}
				for i, tc := range ssetest.RoundTrip {
					want = append(want, publish(t, b, sse.Event{ID: pass.id(i, tc), Type: tc.Type, Data: tc.Data, Retry: tc.Retry}))
				}
				got := c.waitSeen(t, es, len(want))
				if got[0] != opened {
					t.Errorf("first record: got %v, want %v", got[0], opened)
				}
				for i, tc := range ssetest.RoundTrip {
					t.Run(tc.Name, func(t *testing.T) {
						if got[i+1] != want[i+1] {
							t.Errorf("got %v, want %v", got[i+1], want[i+1])
						}
					})
				}
				if len(got) != len(want) {
					checkSeen(t, got, want)
				}
				c.close(t, es)
				waitClients(t, b, 0)
			})
		}
	})
}

// TestNamedTypes checks that addEventListener gets the events of its type and no others, and
// that an event named "error" is an event, not a failure of the connection.
func TestNamedTypes(t *testing.T) {
	eachClient(t, func(t *testing.T, c *client) {
		b, _, srv := newServer(t)
		c.load(t, srv.URL)
		es := c.open(t, srv.URL+"/events", "tick", "tock", "error", "message")
		expect(t, c, es, []seen{opened})
		waitClients(t, b, 1)
		want := []seen{opened}
		for _, ev := range []sse.Event{
			{Type: "tick", Data: "1"},
			{Type: "unheard", Data: "nobody listens for this type"},
			{Type: "error", Data: "an event, not a failure"},
			{Data: "no type"},
			{Type: "message", Data: "typed message"},
			{Type: "tock", Data: "2"},
		} {
			w := publish(t, b, ev)
			if ev.Type != "unheard" {
				want = append(want, w)
			}
		}
		// The last event arrives after "unheard", so had "unheard" reached a listener, it
		// would be among these.
		expect(t, c, es, want)
		c.close(t, es)
	})
}

// TestThousand checks that 1,000 events arrive, all of them and in order.
func TestThousand(t *testing.T) {
	eachClient(t, func(t *testing.T, c *client) {
		b, _, srv := newServer(t)
		c.load(t, srv.URL)
		es := c.open(t, srv.URL+"/events", "message")
		expect(t, c, es, []seen{opened})
		waitClients(t, b, 1)
		want := []seen{opened}
		for i := range 1000 {
			want = append(want, publish(t, b, sse.Event{Data: strconv.Itoa(i)}))
		}
		expect(t, c, es, want)
		if s := b.Stats(); s.SlowDisconnects != 0 {
			t.Errorf("Stats().SlowDisconnects = %d, want 0", s.SlowDisconnects)
		}
		c.close(t, es)
	})
}

// TestOpen checks that onopen fires before any event is sent: the stream's headers must be
// flushed at once, not with the first event.
func TestOpen(t *testing.T) {
	eachClient(t, func(t *testing.T, c *client) {
		t.Run("broker", func(t *testing.T) {
			b, _, srv := newServer(t)
			c.load(t, srv.URL)
			es := c.open(t, srv.URL+"/events", "message")
			expect(t, c, es, []seen{opened}) // nothing published yet
			waitClients(t, b, 1)
			expect(t, c, es, []seen{opened, publish(t, b, sse.Event{Data: "first"})})
			c.close(t, es)
		})
		t.Run("stream", func(t *testing.T) {
			_, mux, srv := newServer(t)
			var calls atomic.Int32
			release := make(chan struct{})
			releaseOnce := sync.OnceFunc(func() { close(release) })
			t.Cleanup(releaseOnce) // before srv.Close, which waits for the handler
			ev := sse.Event{ID: "answer-1", Data: "the answer", Retry: 100 * time.Millisecond}
			mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) > 1 {
					w.WriteHeader(http.StatusNoContent) // the answer was given: don't come back
					return
				}
				s, err := sse.NewStream(w, r)
				if err != nil {
					return
				}
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				s.Send(ev)
			})
			c.load(t, srv.URL)
			es := c.open(t, srv.URL+"/stream", "message")
			expect(t, c, es, []seen{opened}) // the handler is still waiting to send
			releaseOnce()
			// The stream ends after the event; the client comes back after the event's retry
			// delay and is told to stop.
			expect(t, c, es, []seen{opened, delivered(ev, ev.ID), lost, failed})
			c.close(t, es)
		})
	})
}

// TestReplay cuts a client's connection from outside the server, publishes while it is away,
// and checks that the client, reconnecting with Last-Event-ID by itself, receives what it
// missed exactly once, in order, followed by the live events.
func TestReplay(t *testing.T) {
	tests := []struct {
		name string
		id   func(i int) string // the ID to publish event i with
		// fetchCannotSend marks IDs that Node's fetch, which the eventsource package uses,
		// refuses to put in a header (it takes only characters up to U+00FF): that client
		// cannot reconnect with them at all. The README documents the limit.
		fetchCannotSend bool
	}{
		{"broker IDs", func(int) string { return "" }, false},
		{"app IDs", func(i int) string { return "app-" + strconv.Itoa(i) }, false},
		{"app IDs at the length cap", func(i int) string { return fmt.Sprintf("%s%04d", strings.Repeat("y", sse.MaxIDLen-4), i) }, false},
		// Event.ID accepts any UTF-8 without control characters. Browsers send it back as UTF-8;
		// Node's fetch sends characters up to U+00FF as ISO-8859-1, which the broker decodes.
		{"app IDs not ASCII", func(i int) string { return "日本-ü-" + strconv.Itoa(i) }, true},
		{"app IDs not ASCII, Latin-1", func(i int) string { return "ü-" + strconv.Itoa(i) }, false},
	}
	eachClient(t, func(t *testing.T, c *client) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if tt.fetchCannotSend && c.kind.name == "eventsource" {
					t.Skip("Node's fetch cannot send a header with characters above U+00FF (a known client limit, in README)")
				}
				b, _, srv := newServer(t, sse.WithRetry(100*time.Millisecond))
				p := ssetest.NewProxy(t, srv.Listener.Addr().String())
				c.load(t, p.URL())
				// MissedType too: if the replay failed, the test should see that it did.
				es := c.open(t, p.URL()+"/events", "message", sse.MissedType)
				expect(t, c, es, []seen{opened})
				waitClients(t, b, 1)
				want := []seen{opened}
				for i := range 3 {
					want = append(want, publish(t, b, sse.Event{ID: tt.id(i), Data: fmt.Sprintf("before %d", i)}))
				}
				expect(t, c, es, want)

				// Hold the reconnection at the proxy, so that the client stays away while the
				// test publishes, whatever its retry delay.
				p.Pause()
				p.Cut()
				want = append(want, lost)
				expect(t, c, es, want)
				waitClients(t, b, 0)
				var away []seen
				for i := 3; i < 6; i++ {
					away = append(away, publish(t, b, sse.Event{ID: tt.id(i), Data: fmt.Sprintf("away %d", i)}))
				}
				p.Resume()
				want = append(want, opened)
				want = append(want, away...)
				expect(t, c, es, want)
				waitClients(t, b, 1)
				// A live event last: had anything been replayed twice, it would come before it.
				want = append(want, publish(t, b, sse.Event{ID: tt.id(6), Data: "live"}))
				expect(t, c, es, want)
				if s := b.Stats(); s.Replays != 1 || s.UnknownReplays != 0 {
					t.Errorf("Stats() Replays = %d, UnknownReplays = %d; want 1, 0", s.Replays, s.UnknownReplays)
				}
				c.close(t, es)
			})
		}
	})
}

// TestRetry checks that the client reconnects after the delay the stream asks for: the
// broker's 3s by default, or what a later event's retry field sets. Timing is only checked
// coarsely; the point is which delay the client used.
func TestRetry(t *testing.T) {
	tests := []struct {
		name  string
		retry time.Duration // the Retry of the event published before the cut
		fast  bool          // the reconnection must come well before 3s, else well after 0
	}{
		{name: "broker default", fast: false},
		{name: "event retry 200ms", retry: 200 * time.Millisecond, fast: true},
	}
	eachClient(t, func(t *testing.T, c *client) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				b, _, srv := newServer(t)
				p := ssetest.NewProxy(t, srv.Listener.Addr().String())
				c.load(t, p.URL())
				es := c.open(t, p.URL()+"/events", "message")
				expect(t, c, es, []seen{opened})
				waitClients(t, b, 1)
				want := []seen{opened, publish(t, b, sse.Event{Data: "x", Retry: tt.retry})}
				expect(t, c, es, want)
				p.Cut()
				want = append(want, lost, opened)
				recs := expect(t, c, es, want)
				gap := recs[3].at.Sub(recs[2].at)
				t.Logf("reconnected %v after the connection dropped", gap)
				if tt.fast && gap > 1500*time.Millisecond {
					t.Errorf("reconnected %v after the connection dropped, want well under the 3s default with retry %v", gap, tt.retry)
				}
				if !tt.fast && gap < 1500*time.Millisecond {
					t.Errorf("reconnected %v after the connection dropped, want about the broker's 3s", gap)
				}
				c.close(t, es)
			})
		}
	})
}

// TestHeartbeat checks that heartbeat comments reach the client and that it sees nothing of
// them: no event, no error, no reconnection.
func TestHeartbeat(t *testing.T) {
	eachClient(t, func(t *testing.T, c *client) {
		b, _, srv := newServer(t, sse.WithHeartbeat(50*time.Millisecond))
		p := ssetest.NewProxy(t, srv.Listener.Addr().String()) // to see the comments on the wire
		c.load(t, p.URL())
		es := c.open(t, p.URL()+"/events", "message")
		expect(t, c, es, []seen{opened})
		waitClients(t, b, 1)
		want := []seen{opened, publish(t, b, sse.Event{Data: "before"})}
		expect(t, c, es, want)
		time.Sleep(400 * time.Millisecond) // eight heartbeat intervals of idleness
		want = append(want, publish(t, b, sse.Event{Data: "after"}))
		expect(t, c, es, want)
		beats := 0
		for _, line := range strings.Split(p.Downstream(), "\n") {
			if line == ":" {
				beats++
			}
		}
		if beats < 2 {
			t.Errorf("%d heartbeat comments went through the proxy, want at least 2", beats)
		}
		c.close(t, es)
	})
}

// Test204 checks that a 204 answer stops the client for good: readyState CLOSED and no
// reconnection, whether it comes first or when the client reconnects.
func Test204(t *testing.T) {
	eachClient(t, func(t *testing.T, c *client) {
		t.Run("first answer", func(t *testing.T) {
			_, mux, srv := newServer(t)
			var calls atomic.Int32
			mux.HandleFunc("/gone", func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				w.WriteHeader(http.StatusNoContent)
			})
			c.load(t, srv.URL)
			es := c.open(t, srv.URL+"/gone", "message")
			expect(t, c, es, []seen{failed})
			if n := calls.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			c.close(t, es)
		})
		t.Run("on reconnection", func(t *testing.T) {
			b, mux, srv := newServer(t, sse.WithRetry(100*time.Millisecond))
			var calls atomic.Int32
			mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) > 1 {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				b.ServeEvents(w, r)
			})
			p := ssetest.NewProxy(t, srv.Listener.Addr().String())
			c.load(t, p.URL())
			es := c.open(t, p.URL()+"/flaky", "message")
			expect(t, c, es, []seen{opened})
			waitClients(t, b, 1)
			want := []seen{opened, publish(t, b, sse.Event{Data: "x"})}
			expect(t, c, es, want)
			p.Cut()
			want = append(want, lost, failed)
			expect(t, c, es, want)
			// Only time shows that nothing more happens: ten times the 100ms retry delay.
			time.Sleep(time.Second)
			checkSeen(t, seenOf(c.records(es)), want)
			if n := calls.Load(); n != 2 {
				t.Errorf("%d requests, want 2", n)
			}
			c.close(t, es)
		})
	})
}

// TestGoroutines checks that the server's goroutines go back to what they were once the
// clients leave, whether they close their EventSources or just go away.
func TestGoroutines(t *testing.T) {
	// Not in parallel: the count is the whole process's.
	for _, k := range clientKinds {
		t.Run(k.name, func(t *testing.T) {
			c := startClient(t, k)
			// Connections without a stream hold net/http goroutines that have nothing to do
			// with the Broker: idle keep-alive ones, and those that undici (Node's fetch) opens
			// after an abort and leaves without a request until its 4s keep-alive timeout.
			b, _, srv := newServerConfig(t, func(s *http.Server) {
				s.SetKeepAlivesEnabled(false)
				s.ReadHeaderTimeout = 200 * time.Millisecond
			})
			c.load(t, srv.URL)
			for _, leave := range []string{"close", "exit"} {
				t.Run(leave, func(t *testing.T) {
					base := runtime.NumGoroutine() // counted here, with this subtest's own goroutine
					if hijack() {
						// The broker's pollers, started with its first stream taken over, stay.
						base += runtime.GOMAXPROCS(0)
					}
					var sources []string
					for range 5 {
						sources = append(sources, c.open(t, srv.URL+"/events", "message"))
					}
					waitClients(t, b, 5)
					switch n := runtime.NumGoroutine(); {
					case hijack() && n > base+2:
						// The pollers serve the streams: none holds a goroutine (a couple that
						// come and go, a heartbeat tick's, are allowed for).
						t.Errorf("%d goroutines with 5 streams taken over, want at most %d", n, base+2)
					case !hijack() && n < base+5:
						t.Fatalf("%d goroutines with 5 streams open, want at least %d: the count does not see them", n, base+5)
					}
					ev := publish(t, b, sse.Event{Data: leave})
					for _, es := range sources {
						expect(t, c, es, []seen{opened, ev})
					}
					if leave == "close" {
						for _, es := range sources {
							c.close(t, es)
						}
					} else {
						c.exit(t) // the process ends without closing anything
					}
					waitClients(t, b, 0)
					waitGoroutines(t, base)
				})
			}
		})
	}
}

// waitGoroutines waits until no more than n goroutines are running.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := runtime.NumGoroutine()
		if got <= n {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines after %v, want at most %d as before the clients came:\n%s", got, waitTimeout, n, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
