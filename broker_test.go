package sse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHeaders(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		// The response arrives before anything is published: headers are flushed at once,
		// so EventSource's onopen fires before the first event.
		ts := s.openN(t, "/", 1)
		h := ts.resp.Header
		want := map[string]string{
			"Content-Type":      "text/event-stream; charset=utf-8",
			"Cache-Control":     "no-cache",
			"X-Accel-Buffering": "no",
			"Content-Length":    "",
			"Content-Encoding":  "",
			"Connection":        "",
		}
		for k, v := range want {
			if got := h.Get(k); got != v {
				t.Errorf("header %s = %q, want %q", k, got, v)
			}
		}
		if ts.resp.ContentLength != -1 {
			t.Errorf("ContentLength = %d, want -1 (streamed)", ts.resp.ContentLength)
		}
		publish(t, b, "x")
		if ev := ts.next(); ev.Data != "x" {
			t.Errorf("first event data %q, want %q", ev.Data, "x")
		}
		if got := ts.dec.Retry(); got != 3000 {
			t.Errorf("retry hint = %d ms, want 3000", got)
		}
	})
}

func TestMethodNotAllowed(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		for _, method := range []string{"POST", "PUT", "DELETE", "HEAD"} {
			req, _ := http.NewRequest(method, s.URL, nil)
			resp, err := s.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
				t.Errorf("%s: status %d, Allow %q; want 405, GET", method, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
		if got := b.Stats().Clients; got != 0 {
			t.Errorf("Clients = %d, want 0", got)
		}
	})
}

// TestFanOut publishes to varied sets of topics and checks that each client receives exactly
// the events of its topics, once each, in publish order.
func TestFanOut(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.URL.Query()["t"]...)
		})
		s := newServer(t, m, b, mux)

		subs := [][]string{{"a"}, {"a"}, {"b"}, {"a", "b"}, {"b", "a", "b"}, {"a", "b", "c"}, {"c"}, {}, {"", "c"}}
		streams := make([]*testStream, len(subs))
		for i, topics := range subs {
			q := ""
			for _, tp := range topics {
				q += "&t=" + tp
			}
			streams[i] = s.openN(t, "/?"+q, i+1)
		}
		pubs := [][]string{{"a"}, {"b"}, {"a", "b"}, {"c"}, {}, {"a", "a"}, {"c", "b", "a"}, {"", "c"}, {"b"}, {"d"}}
		want := make([][]string, len(subs))
		for round := 0; round < 20; round++ {
			for j, topics := range pubs {
				data := fmt.Sprintf("%d/%d", round, j)
				publish(t, b, data, topics...)
				for i, sub := range subs {
					if len(sub) == 0 {
						sub = []string{""}
					}
					pt := topics
					if len(pt) == 0 {
						pt = []string{""}
					}
					if slices.ContainsFunc(sub, func(s string) bool { return slices.Contains(pt, s) }) {
						want[i] = append(want[i], data)
					}
				}
			}
		}
		var wg sync.WaitGroup
		for i, ts := range streams {
			wg.Go(func() {
				for j, w := range want[i] {
					ev, err := ts.dec.Next()
					if err != nil || ev.Data != w {
						t.Errorf("client %v, event %d: %q, %v; want %q", subs[i], j, ev.Data, err, w)
						return
					}
				}
			})
		}
		wg.Wait()
		// Nothing more arrives: publish a marker to every topic and check it comes next.
		publish(t, b, "end", "", "a", "b", "c")
		for i, ts := range streams {
			if ev := ts.next(); ev.Data != "end" {
				t.Errorf("client %v: %q after its events, want %q", subs[i], ev.Data, "end")
			}
		}
	})
}

func TestReplay(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		ts := s.openN(t, "/", 1)
		for _, d := range seqData("e", 0, 5) {
			publish(t, b, d)
		}
		evs := ts.expect(seqData("e", 0, 5)...)
		last := evs[4].LastEventID
		ts.close()
		waitFor(t, "the client to leave", func() bool { return b.Stats().Clients == 0 })

		for _, d := range seqData("e", 5, 10) {
			publish(t, b, d)
		}
		for _, how := range []string{"header", "query"} {
			t.Run(how, func(t *testing.T) {
				var ts *testStream
				if how == "header" {
					ts = s.open(t, "/", last)
				} else {
					ts = s.open(t, "/?lastEventId="+last, "")
				}
				want := seqData("e", 5, 10)
				if how == "query" {
					want = append(want, "live-header")
				}
				got := ts.expect(want...)
				for i := 1; i < len(got); i++ {
					if got[i].LastEventID == got[i-1].LastEventID {
						t.Errorf("events %d and %d share ID %q", i-1, i, got[i].LastEventID)
					}
				}
				// Then live events, with nothing in between.
				waitFor(t, "the client to join", func() bool { return b.Stats().Clients == 1 })
				publish(t, b, "live-"+how)
				ts.expect("live-" + how)
				ts.close()
				waitFor(t, "the client to leave", func() bool { return b.Stats().Clients == 0 })
			})
		}
		if st := b.Stats(); st.Replays != 2 || st.UnknownReplays != 0 {
			t.Errorf("Replays, UnknownReplays = %d, %d; want 2, 0", st.Replays, st.UnknownReplays)
		}
	})
}

// TestReplayRace reconnects while events are being published: the replayed and the live events
// must join with no gap and no duplicate.
func TestReplayRace(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistory(100000))
		s := newServer(t, m, b, b.Handler())
		ts := s.openN(t, "/", 1)
		publish(t, b, "0")
		last := ts.next().LastEventID
		ts.close()

		const n = 3000
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 1; i <= n; i++ {
				if _, err := b.Publish(Event{Data: strconv.Itoa(i)}); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
			}
		}()
		for round := 0; round < 5; round++ {
			ts := s.open(t, "/", last)
			for i := 0; i < 100; i++ {
				ev := ts.next()
				want := strconv.Itoa(round*100 + i + 1)
				if ev.Data != want {
					t.Fatalf("round %d: got %q, want %q", round, ev.Data, want)
				}
				last = ev.LastEventID
			}
			ts.close()
		}
		<-done
	})
}

// TestReplayPolicy checks each kind of Last-Event-ID against the same history.
func TestReplayPolicy(t *testing.T) {
	earlier := NewBroker()
	earlierID := publish(t, earlier, "from an earlier run")
	earlier.Shutdown(context.Background())

	tests := []struct {
		name   string
		lastID func(ids []string, b *Broker) string
		missed bool
		want   []string
	}{
		{"known", func(ids []string, _ *Broker) string { return ids[7] }, false, []string{"8", "9"}},
		{"newest", func(ids []string, _ *Broker) string { return ids[9] }, false, nil},
		{"oldest held", func(ids []string, _ *Broker) string { return ids[6] }, false, []string{"7", "8", "9"}},
		// The newest event evicted is still a place to resume from: all after it are held.
		{"newest evicted", func(ids []string, _ *Broker) string { return ids[5] }, false, []string{"6", "7", "8", "9"}},
		{"evicted", func(ids []string, _ *Broker) string { return ids[4] }, true, []string{"6", "7", "8", "9"}},
		{"long evicted", func(ids []string, _ *Broker) string { return ids[0] }, true, []string{"6", "7", "8", "9"}},
		{"earlier broker", func([]string, *Broker) string { return earlierID }, true, []string{"6", "7", "8", "9"}},
		{"unknown", func([]string, *Broker) string { return "garbage" }, true, []string{"6", "7", "8", "9"}},
		{"future", func(_ []string, b *Broker) string { return b.prefix + "999" }, true, []string{"6", "7", "8", "9"}},
		{"not canonical", func(_ []string, b *Broker) string { return b.prefix + "08" }, true, []string{"6", "7", "8", "9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run(t, func(t *testing.T, m mode) {
				b := newBroker(m, WithHistory(4))
				s := newServer(t, m, b, b.Handler())
				ids := make([]string, 10)
				for i := range ids {
					ids[i] = publish(t, b, strconv.Itoa(i))
				}
				lastID := tt.lastID(ids, b)
				ts := s.open(t, "/", lastID)
				if tt.missed {
					ev := ts.next()
					if ev.Type != MissedType || ev.Data != "" {
						t.Fatalf("first event %+v, want type %q and empty data", ev, MissedType)
					}
					// Its ID resumes the same replay, with no MissedType again.
					again := s.open(t, "/", ev.LastEventID)
					again.expect(tt.want...)
					again.close()
					ts.expect(tt.want...)
					waitFor(t, "the other client to leave", func() bool { return b.Stats().Clients == 1 })
				} else {
					ts.expect(tt.want...)
				}
				waitFor(t, "the client to join", func() bool { return b.Stats().Clients == 1 })
				publish(t, b, "live")
				ts.expect("live")
				st := b.Stats()
				if tt.missed && st.UnknownReplays != 1 || !tt.missed && st.Replays != 1 && st.Replays != 2 {
					t.Errorf("Replays, UnknownReplays = %d, %d", st.Replays, st.UnknownReplays)
				}
			})
		})
	}
}

func TestReplayAppIDs(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		for i := 1; i <= 5; i++ {
			id, err := b.Publish(Event{ID: "app-" + strconv.Itoa(i), Data: strconv.Itoa(i)})
			if err != nil || id != "app-"+strconv.Itoa(i) {
				t.Fatalf("Publish = %q, %v; want the app's ID", id, err)
			}
		}
		ts := s.open(t, "/", "app-3")
		evs := ts.expect("4", "5")
		if evs[0].LastEventID != "app-4" {
			t.Errorf("lastEventId = %q, want app-4", evs[0].LastEventID)
		}
	})
}

// TestReplayLatin1 resumes from a non-ASCII ID sent back the way Node's fetch sends it: one byte
// per character, ISO-8859-1.
func TestReplayLatin1(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		for _, id := range []string{"ü-1", "ü-2", "ü-3"} {
			if _, err := b.Publish(Event{ID: id, Data: id}); err != nil {
				t.Fatal(err)
			}
		}
		s.open(t, "/", "\xfc-2").expect("ü-3")
		s.open(t, "/", "ü-1").expect("ü-2", "ü-3")
	})
}

func TestReplayAcrossTopics(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		mux := http.NewServeMux()
		mux.Handle("/ab", b.Handler("a", "b"))
		mux.Handle("/b", b.Handler("b"))
		s := newServer(t, m, b, mux)
		first := publish(t, b, "a1", "a")
		publish(t, b, "b1", "b")
		publish(t, b, "ab", "a", "b")
		publish(t, b, "a2", "a")
		s.open(t, "/ab", first).expect("b1", "ab", "a2")
		// One ID space across topics: an ID from topic a places a client of topic b.
		s.open(t, "/b", first).expect("b1", "ab")
	})
}

// TestUnreadTopics publishes to more topics than the broker keeps unread: memory stays bounded,
// and a client returning to a forgotten topic is told it missed events, never silently not.
func TestUnreadTopics(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		mux := http.NewServeMux()
		mux.HandleFunc("/{topic}", func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.PathValue("topic"))
		})
		s := newServer(t, m, b, mux)
		k0 := publish(t, b, "k0", "keep")
		publish(t, b, "k1", "keep")
		first := make([]string, maxUnreadTopics+10)
		for i := range first {
			first[i] = publish(t, b, "first", "t"+strconv.Itoa(i))
		}
		b.mu.Lock()
		topics := len(b.topics)
		b.mu.Unlock()
		if topics != maxUnreadTopics {
			t.Errorf("%d topics kept, want %d", topics, maxUnreadTopics)
		}

		ts := s.open(t, "/keep", k0)
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming a forgotten topic: got %+v, want %q", ev, MissedType)
		}
		ts.close()

		last := "t" + strconv.Itoa(len(first)-1)
		publish(t, b, "second", last)
		s.open(t, "/"+last, first[len(first)-1]).expect("second")
	})
}

// TestResumeBeforeFirstEvent drops a client before it received any event: the ID it was
// given when it connected resumes it with everything published since.
func TestResumeBeforeFirstEvent(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		publish(t, b, "before")
		id := s.openN(t, "/", 1).startID()
		waitFor(t, "the client to leave", func() bool { return b.Stats().Clients == 0 })
		publish(t, b, "away1")
		publish(t, b, "away2")
		s.open(t, "/", id).expect("away1", "away2")
	})
}

// TestTopicNames checks that any bytes in topic names keep topics apart.
func TestTopicNames(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.URL.Query()["t"]...)
		}))
		odd := s.openN(t, "/?t=a%00b", 1)
		pair := s.openN(t, "/?t=a&t=b", 2)
		colon := s.openN(t, "/?t=1:a", 3)
		publish(t, b, "to a", "a")
		publish(t, b, "to a NUL b", "a\x00b")
		publish(t, b, "to 1:a", "1:a")
		pair.expect("to a")
		odd.expect("to a NUL b")
		colon.expect("to 1:a")
	})
}

// TestConcurrentPublishers publishes from several goroutines to overlapping topics: every
// client of several topics still receives each of its events once, in publish order.
func TestConcurrentPublishers(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistory(10000))
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.URL.Query()["t"]...)
		}))
		subs := []string{"/?t=a&t=b", "/?t=b&t=c", "/?t=a&t=b&t=c"}
		streams := make([]*testStream, len(subs))
		for i, path := range subs {
			streams[i] = s.openN(t, path, i+1)
		}
		const perPublisher = 500
		pubs := [][]string{{"a"}, {"b"}, {"c"}, {"a", "c"}}
		var mu sync.Mutex
		order := map[string]uint64{} // data → sequence number, from the ID
		var wg sync.WaitGroup
		for p, topics := range pubs {
			wg.Go(func() {
				for i := range perPublisher {
					data := fmt.Sprintf("%d-%d", p, i)
					id, err := b.Publish(Event{Data: data}, topics...)
					if err != nil {
						t.Errorf("Publish: %v", err)
						return
					}
					n, _ := strconv.ParseUint(strings.TrimPrefix(id, b.prefix), 10, 64)
					mu.Lock()
					order[data] = n
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		for i, ts := range streams {
			want := 0
			for _, topics := range pubs {
				if slices.ContainsFunc(topics, func(tp string) bool { return strings.Contains(subs[i], "t="+tp) }) {
					want += perPublisher
				}
			}
			var last uint64
			for j := range want {
				ev := ts.next()
				if n := order[ev.Data]; n <= last {
					t.Fatalf("client %s, event %d: %q (#%d) after #%d", subs[i], j, ev.Data, n, last)
				}
				last = order[ev.Data]
			}
		}
	})
}

// TestNoGoroutinePerClient counts goroutines with many streams open: only net/http's own.
// TestPublishWakesAfterUnlock checks that Publish wakes clients once it has let go of the
// broker's lock: closing a channel readies each goroutine that waits on it, which is work per
// client, and every Publish, join and leave would wait for it (see wakesAfterUnlock).
func TestPublishWakesAfterUnlock(t *testing.T) {
	b := NewBroker(WithHeartbeat(-1))
	defer b.Shutdown(context.Background())
	wakesAfterUnlock(t, b, func() {
		if _, err := b.Publish(Event{Data: "x"}, "all"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNoGoroutinePerClient(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker()
	s := newServer(t, http1, b, b.Handler())
	s.openN(t, "/", 1)
	before := runtime.NumGoroutine()
	const n = 50
	for i := range n {
		s.openN(t, "/", i+2)
	}
	// Per connection, all net/http's: the server's, which runs the handler, its background
	// read, which notices a client that goes away, and the client transport's read and
	// write loops. A goroutine per stream of the broker's own would make it 5 each; a
	// couple more that come and go (a heartbeat tick's, a dial's) are allowed for.
	if grown, limit := runtime.NumGoroutine()-before, 4*n+2; grown > limit {
		t.Errorf("%d goroutines for %d more streams, want at most %d", grown, n, limit)
	}
}

func TestPublishRefuses(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		ts := s.openN(t, "/", 1)
		bad := []Event{{Type: "a\nb"}, {Data: "\xff"}, {ID: "x\r"}, {Retry: -1}}
		for _, ev := range bad {
			id, err := b.Publish(ev)
			var fe *FieldError
			if !errors.Is(err, ErrInvalidEvent) || !errors.As(err, &fe) || id != "" {
				t.Errorf("Publish(%+v) = %q, %v; want ErrInvalidEvent", ev, id, err)
			}
		}
		publish(t, b, "good")
		ts.expect("good")
		if got := b.Stats().Published; got != 1 {
			t.Errorf("Published = %d, want 1", got)
		}
	})
}

func TestIDs(t *testing.T) {
	b1, b2 := NewBroker(), NewBroker()
	defer b1.Shutdown(context.Background())
	defer b2.Shutdown(context.Background())
	if b1.prefix == b2.prefix {
		t.Fatalf("two brokers share the ID prefix %q", b1.prefix)
	}
	var last uint64
	for i, topic := range []string{"a", "b", "", "a"} {
		id := publish(t, b1, "x", topic)
		if err := validateID(id); err != nil {
			t.Errorf("assigned ID %q: %v", id, err)
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(id, b1.prefix), 10, 64)
		if err != nil || n <= last {
			t.Errorf("ID %d = %q, want the prefix %q and a number above %d", i, id, b1.prefix, last)
		}
		last = n
	}
}

// TestSlowClient connects a client that never reads: Publish must go on regardless, every
// other client must receive everything, and the slow client must be disconnected once its
// write stalls past the deadline.
func TestSlowClient(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		const n, size = 20000, 1024
		// The write timeout is long enough for the reading client to keep up on a loaded
		// machine under the race detector, where a write to it may wait seconds for the CPU.
		b := newBroker(m, WithHistory(n), WithWriteTimeout(8*time.Second))
		s := newServer(t, m, b, b.Handler())
		good := s.openN(t, "/", 1)
		// The slow client's body is never read: over HTTP/1.1 the socket buffers fill, over
		// HTTP/2 the stream's flow-control window, and the broker's write stalls.
		s.openN(t, "/", 2)

		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)

		received := make(chan error, 1)
		go func() {
			for i := range n {
				ev, err := good.dec.Next()
				if err != nil || ev.Data[:8] != fmt.Sprintf("%08d", i) {
					received <- fmt.Errorf("event %d: %.8q, %v", i, ev.Data, err)
					return
				}
			}
			received <- nil
		}()
		pad := strings.Repeat("x", size-8)
		for i := range n {
			publish(t, b, fmt.Sprintf("%08d", i)+pad)
		}
		// Publish did not wait for the stalled client: it is still connected, its write not
		// yet past the deadline.
		if st := b.Stats(); st.Clients != 2 || st.SlowDisconnects != 0 {
			t.Errorf("after publishing: Clients = %d, SlowDisconnects = %d; want 2, 0", st.Clients, st.SlowDisconnects)
		}
		if err := <-received; err != nil {
			t.Fatalf("the reading client: %v", err)
		}
		// The disconnect is counted when the write fails, and the client leaves after: wait
		// for both.
		waitWithin(t, 20*time.Second, "the slow client to be disconnected", func() bool {
			st := b.Stats()
			return st.SlowDisconnects >= 1 && st.Clients <= 1
		})
		if st := b.Stats(); st.Clients != 1 || st.SlowDisconnects != 1 {
			t.Errorf("Clients = %d, SlowDisconnects = %d; want 1, 1", st.Clients, st.SlowDisconnects)
		}

		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		// The history holds n events of size bytes (in 1152-byte allocations, with the ring);
		// the transports buffer a few MiB more. Nothing grows with the slow client.
		if grown, limit := int64(after.HeapAlloc)-int64(before.HeapAlloc), int64(2*n*size); grown > limit {
			t.Errorf("heap grew by %d bytes, want at most %d", grown, limit)
		}
	})
}

// gatedWriter is middleware whose Write blocks until the gate opens. It has no Unwrap, so no
// write deadline reaches the connection: the broker has to notice the lag by itself.
type gatedWriter struct {
	http.ResponseWriter
	gate chan struct{}
	once sync.Once
	hit  chan struct{}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), "data: ") {
		g.once.Do(func() { close(g.hit) })
		<-g.gate
	}
	return g.ResponseWriter.Write(p)
}

func (g *gatedWriter) Flush() { g.ResponseWriter.(http.Flusher).Flush() }

// newGatedServer serves b's streams through a gatedWriter: hit is closed once a client's first
// event write blocks, and closing gate lets it go on.
func newGatedServer(t *testing.T, m mode, b *Broker) (s *server, gate, hit chan struct{}) {
	t.Helper()
	gate, hit = make(chan struct{}), make(chan struct{})
	s = newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.ServeEvents(&gatedWriter{ResponseWriter: w, gate: gate, hit: hit}, r)
	}))
	return s, gate, hit
}

// TestLaggingClient stalls a client's writes while more events than the history holds are
// published: the client must be disconnected rather than skip events.
func TestLaggingClient(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistory(8))
		s, gate, hit := newGatedServer(t, m, b)
		ts := s.openN(t, "/", 1)
		publish(t, b, "0")
		<-hit // the client is stuck writing event 0
		for i := 1; i <= 20; i++ {
			publish(t, b, strconv.Itoa(i))
		}
		close(gate)
		ts.expect("0")
		ts.expectEnd()
		if st := b.Stats(); st.SlowDisconnects != 1 {
			t.Errorf("SlowDisconnects = %d, want 1", st.SlowDisconnects)
		}
	})
}

// TestStalledClientMemory stalls a client's write with no deadline to end it (middleware
// without Unwrap) while far more than the history is published: what the stalled client holds
// on to must not grow with what is published.
func TestStalledClientMemory(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistory(64))
		s, gate, hit := newGatedServer(t, m, b)
		ts := s.openN(t, "/", 1)
		publish(t, b, "0")
		<-hit // the client is stuck writing event 0

		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		pad := strings.Repeat("x", 1000)
		for range 20000 {
			publish(t, b, pad)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		// 20 MB were published; the history holds 64 KB of it.
		if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 4<<20 {
			t.Errorf("heap grew by %d bytes while a client was stalled, want under 4 MiB", grown)
		}
		close(gate)
		ts.expect("0")
		ts.expectEnd() // and it is then found to have fallen behind
	})
}

func TestClientGoesAway(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler("a", "b"))
		// Goroutines are checked by run; the broker's own state is checked here.
		for range 10 {
			s.openN(t, "/", 1).close()
			waitFor(t, "the client to leave", func() bool { return b.Stats().Clients == 0 })
		}
		b.mu.Lock()
		topics, groups := len(b.topics), len(b.groups)
		b.mu.Unlock()
		if topics != 0 || groups != 0 {
			t.Errorf("%d topics and %d groups left, want none", topics, groups)
		}
	})
}

func TestShutdown(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithRetry(time.Second))
		s := newServer(t, m, b, b.Handler())
		var streams []*testStream
		for i := range 5 {
			streams = append(streams, s.openN(t, "/", i+1))
		}
		publish(t, b, "before")
		if err := b.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if err := b.Shutdown(context.Background()); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
		for _, ts := range streams {
			ts.expect("before")
			ts.expectEnd()
			if r := ts.dec.Retry(); r < 1000 || r >= 2000 {
				t.Errorf("retry hint at shutdown = %d ms, want within [1000, 2000)", r)
			}
		}
		if _, err := b.Publish(Event{Data: "after"}); !errors.Is(err, ErrClosed) {
			t.Errorf("Publish after Shutdown = %v, want ErrClosed", err)
		}
		// A client arriving now is told to come back later: 200, a retry hint, the end.
		ts := s.open(t, "/", "")
		ts.expectEnd()
		if r := ts.dec.Retry(); r < 1000 {
			t.Errorf("retry hint = %d, want one", r)
		}
		if st := b.Stats(); st.Clients != 0 || st.Refused != 1 {
			t.Errorf("Clients, Refused = %d, %d; want 0, 1", st.Clients, st.Refused)
		}
	})
}

func TestShutdownContext(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker()
	s, gate, hit := newGatedServer(t, http1, b)
	s.openN(t, "/", 1)
	publish(t, b, "x")
	<-hit
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stuck stream = %v, want DeadlineExceeded", err)
	}
	close(gate)
}

// TestServerShutdown shows the wiring the documentation gives: http.Server.Shutdown returns
// promptly with many streams open, and the broker's Shutdown, registered with
// RegisterOnShutdown, ends every stream with a retry hint, those it took over from net/http
// too (which http.Server.Shutdown does not know of), and closes them.
func TestServerShutdown(t *testing.T) {
	for _, m := range []mode{http1, http1h} {
		t.Run(string(m), func(t *testing.T) { testServerShutdown(t, m) })
	}
}

func testServerShutdown(t *testing.T, m mode) {
	checkGoroutines(t)
	const n = 500
	b := newBroker(m)
	srv := &http.Server{Handler: b.Handler()}
	srv.RegisterOnShutdown(func() { b.Shutdown(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		conns[i] = c
	}
	takenOver := m == http1h && runtime.GOOS == "linux"
	waitFor(t, "every client to connect", func() bool {
		st := b.Stats()
		return st.Clients == n && (!takenOver || st.Hijacked == n)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("http.Server.Shutdown = %v, want nil: streams kept it waiting", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve = %v", err)
	}
	// Every stream ended with a retry hint.
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || !strings.Contains(string(body), "retry: ") {
			t.Fatalf("conn %d: body %q, %v; want a retry hint, then the end", i, body, err)
		}
	}
	// Shutdown again waits for the streams to be closed, as the application does.
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if st := b.Stats(); st.Clients != 0 || st.Hijacked != 0 {
		t.Errorf("Clients, Hijacked = %d, %d after Shutdown, want 0, 0", st.Clients, st.Hijacked)
	}
}

func TestMaxClients(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithMaxClients(2), WithRetry(time.Second))
		s := newServer(t, m, b, b.Handler())
		a := s.openN(t, "/", 1)
		s.openN(t, "/", 2)
		over := s.open(t, "/", "")
		over.expectEnd()
		if r := over.dec.Retry(); r < 1000 || r >= 2000 {
			t.Errorf("retry hint = %d ms, want within [1000, 2000)", r)
		}
		if st := b.Stats(); st.Clients != 2 || st.Refused != 1 {
			t.Errorf("Clients, Refused = %d, %d; want 2, 1", st.Clients, st.Refused)
		}
		a.close()
		waitFor(t, "a place to free up", func() bool { return b.Stats().Clients == 1 })
		ts := s.openN(t, "/", 2)
		publish(t, b, "in")
		ts.expect("in")
	})
}

// wrapped is middleware of the usual kind: it wraps the ResponseWriter to record the status,
// and offers Unwrap so that http.ResponseController reaches the connection.
type wrapped struct {
	http.ResponseWriter
	status int
}

func (w *wrapped) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *wrapped) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func TestMiddleware(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(&wrapped{ResponseWriter: w}, r)
		}))
		ts := s.openN(t, "/", 1)
		publish(t, b, "through")
		ts.expect("through")
	})
}

// TestServerWriteTimeout streams for longer than the server's WriteTimeout, which would cut
// the stream without the broker's per-write deadlines.
func TestServerWriteTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("streams for 3s")
	}
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler(), func(srv *http.Server) { srv.WriteTimeout = time.Second })
		ts := s.openN(t, "/", 1)
		for i := range 12 {
			time.Sleep(250 * time.Millisecond)
			publish(t, b, strconv.Itoa(i))
			ts.expect(strconv.Itoa(i))
		}
	})
}

func TestHeartbeat(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHeartbeat(10*time.Millisecond))
		s := newServer(t, m, b, b.Handler())
		ts := s.openN(t, "/", 1)
		comments := 0
		ts.dec.OnComment = func(string) { comments++ }
		time.Sleep(100 * time.Millisecond)
		// Heartbeats are invisible: the next event is the published one.
		publish(t, b, "after")
		ts.expect("after")
		if comments == 0 {
			t.Errorf("no heartbeat in 100ms at a 10ms interval")
		}
	})
}

func TestStream(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		sent := make(chan error, 1)
		s := newServer(t, m, newBroker(m), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st, err := NewStream(w, r)
			if err != nil {
				sent <- err
				return
			}
			for _, word := range strings.Fields("one two three") {
				if err := st.Send(Event{Data: word}); err != nil {
					sent <- err
					return
				}
			}
			if err := st.Send(Event{Type: "bad\n"}); !errors.Is(err, ErrInvalidEvent) {
				sent <- fmt.Errorf("Send(bad) = %v", err)
				return
			}
			st.Send(Event{Type: "done"})
			<-r.Context().Done()
			// The client is gone: Send says so.
			sent <- st.Send(Event{Data: "lost"})
		}))
		ts := s.open(t, "/", "")
		if ct := ts.resp.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
			t.Errorf("Content-Type = %q", ct)
		}
		ts.expect("one", "two", "three")
		if ev := ts.next(); ev.Type != "done" {
			t.Errorf("got %+v, want the done event", ev)
		}
		ts.close()
		if err := <-sent; err == nil {
			t.Errorf("Send after the client left = nil, want an error")
		}
	})
}

// A handler that returns long after its last Send still ends its response cleanly: the
// client reads to the end of the body without an error, and over HTTP/1.1 reuses the
// connection.
func TestStreamEndsAfterWriteTimeout(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		s := newServer(t, m, newBroker(m), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st, err := NewStream(w, r)
			if err != nil {
				return
			}
			st.SetWriteTimeout(20 * time.Millisecond)
			st.Send(Event{Data: "last"})
			time.Sleep(200 * time.Millisecond) // finishing up, ten times the write timeout
		}))
		var reused []bool
		for range 2 {
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", s.URL, nil)
			resp, err := s.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading the body: %v (got %q)", err, body)
			}
			if !strings.HasSuffix(string(body), "data: last\n\n") {
				t.Fatalf("body %q, want it to end with the last event", body)
			}
		}
		if !reused[1] {
			t.Errorf("the second request did not reuse the connection")
		}
	})
}

// SetWriteTimeout bounds how long a Send to a client that does not read may take.
func TestStreamSetWriteTimeout(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		sent := make(chan error, 1)
		s := newServer(t, m, newBroker(m), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st, err := NewStream(w, r)
			if err != nil {
				sent <- err
				return
			}
			st.SetWriteTimeout(50 * time.Millisecond)
			big := Event{Data: strings.Repeat("x", 64<<10)}
			for {
				if err := st.Send(big); err != nil {
					sent <- err
					return
				}
			}
		}))
		ts := s.open(t, "/", "") // and never read
		select {
		case err := <-sent:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Send to a client that does not read: %v, want a deadline error", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Send still blocked after 5s with a 50ms write timeout")
		}
		ts.close()
	})
}

// An ID longer than MaxIDLen gets MissedType, and is never converted or copied: what it
// costs does not grow with what the client sent.
func TestReplayHugeID(t *testing.T) {
	huge := strings.Repeat("\xfc", 512<<10) // not UTF-8: taken as ISO-8859-1
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		s := newServer(t, m, b, b.Handler())
		publish(t, b, "1")
		ts := s.open(t, "/", huge)
		if ev := ts.next(); ev.Type != MissedType {
			t.Fatalf("got %+v, want %s", ev, MissedType)
		}
		ts.expect("1")
	})

	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Last-Event-ID", huge)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		lastEventID(r)
	}
	runtime.ReadMemStats(&after)
	if n := (after.TotalAlloc - before.TotalAlloc) / 10; n > 4*MaxIDLen {
		t.Errorf("reading a %d-byte Last-Event-ID allocates %d bytes, want at most %d", len(huge), n, 4*MaxIDLen)
	}
}

// After MissedType, a client of several topics resumes from the ID it was given without
// receiving again what one topic holds from before the replay.
func TestMissedAcrossTopics(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistory(3))
		s := newServer(t, m, b, b.Handler("a", "b"))
		var ids []string
		for i := 1; i <= 7; i++ {
			topic := "b"
			if i <= 2 {
				topic = "a"
			}
			ids = append(ids, publish(t, b, strconv.Itoa(i), topic))
		}
		ts := s.open(t, "/", ids[1]) // event 2: b has dropped 3 and 4 since
		missed := ts.next()
		if missed.Type != MissedType {
			t.Fatalf("got %+v, want %s", missed, MissedType)
		}
		ts.expect("5", "6", "7")
		again := s.open(t, "/", missed.LastEventID)
		again.expect("5", "6", "7")
	})
}

// A topic that never had an event is not taken for one that lost events when it is made
// again, however many other topics were forgotten meanwhile; one that had events is.
func TestForgottenTopicMarks(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m)
		mux := http.NewServeMux()
		mux.HandleFunc("/{topic}", func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.PathValue("topic"))
		})
		s := newServer(t, m, b, mux)
		b.mu.Lock()
		b.forgotten = newMarks() // made here to choose names below
		b.mu.Unlock()
		old := publish(t, b, "old", "busy")
		publish(t, b, "newer", "busy")
		start := s.openN(t, "/quiet", 1).startID()
		waitFor(t, "the client to leave", func() bool { return b.Stats().Clients == 0 })

		// Forget many topics with events, none sharing quiet's slot (sharing one is the
		// documented cost of bounded memory).
		for i, n := 0, 0; n < maxUnreadTopics+100; i++ {
			name := "t" + strconv.Itoa(i)
			if b.forgotten.slot(name) != b.forgotten.slot("quiet") {
				publish(t, b, "x", name)
				n++
			}
		}
		ts := s.open(t, "/quiet", start)
		waitFor(t, "the client to join", func() bool { return b.Stats().Clients == 1 })
		publish(t, b, "hello", "quiet")
		ts.expect("hello")
		ts.close()

		ts = s.open(t, "/busy", old)
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming a forgotten topic that had events: got %+v, want %s", ev, MissedType)
		}
	})
}
