package redisbroker_test

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

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/spec"
	"sse/redisbroker"
)

// node is one process sharing a stream: its own Redis client, Broker and HTTP server, which
// serves the topics named by the query's topic parameters at /events.
type node struct {
	t   *testing.T
	b   *redisbroker.Broker
	ts  *httptest.Server
	rdb *redis.Client

	ends chan error // what each ServeEvents returned
}

// testOpts are the options every test node starts with: short blocks, so that the reader
// notices a log begun anew quickly, and short heartbeats.
func testOpts() []redisbroker.Option {
	return []redisbroker.Option{
		redisbroker.WithBlock(200 * time.Millisecond),
		redisbroker.WithPublishTimeout(time.Second),
		redisbroker.WithBrokerOptions(sse.WithHeartbeat(100*time.Millisecond), sse.WithRetry(50*time.Millisecond)),
	}
}

// startNode starts a node on the namespace ns of the Redis server at addr; it is shut down
// when the test ends.
func startNode(t *testing.T, addr, ns string, opts ...redisbroker.Option) *node {
	t.Helper()
	n := &node{t: t, ends: make(chan error, 1000)}
	n.rdb = redis.NewClient(&redis.Options{Addr: addr, MaxRetries: 1})
	t.Cleanup(func() { n.rdb.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	b, err := redisbroker.New(ctx, n.rdb, ns, append(testOpts(), opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n.b = b
	n.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.ends <- b.ServeEvents(w, r, r.URL.Query()["topic"]...)
	}))
	t.Cleanup(n.ts.Close)
	t.Cleanup(func() { n.shutdown(5 * time.Second) })
	return n
}

// shutdown shuts the node's broker down, failing the test if that takes longer than d.
func (n *node) shutdown(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := n.b.Shutdown(ctx); err != nil {
		n.t.Errorf("Shutdown: %v", err)
	}
}

// publish publishes data to topics on the node, failing the test on an error.
func (n *node) publish(data string, topics ...string) string {
	n.t.Helper()
	id, err := n.b.Publish(sse.Event{Data: data}, topics...)
	if err != nil {
		n.t.Fatalf("Publish(%q): %v", data, err)
	}
	return id
}

// stream is one client's open event stream.
type stream struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	dec    *spec.Decoder
	beats  int // heartbeat comments seen
	cancel context.CancelFunc
}

// open opens a stream of topics on the node, resuming from lastID if it is not empty, sent as
// the Last-Event-ID header, or as the lastEventId query parameter if query is true.
func (n *node) open(lastID string, query bool, topics ...string) *stream {
	n.t.Helper()
	q := make([]string, 0, len(topics)+1)
	for _, t := range topics {
		q = append(q, "topic="+t)
	}
	if lastID != "" && query {
		q = append(q, "lastEventId="+lastID)
	}
	ctx, cancel := context.WithTimeout(n.t.Context(), 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.ts.URL+"/events?"+strings.Join(q, "&"), nil)
	if lastID != "" && !query {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := n.ts.Client().Do(req)
	if err != nil {
		cancel()
		n.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		n.t.Fatalf("GET: status %d", resp.StatusCode)
	}
	s := &stream{t: n.t, resp: resp, cancel: cancel}
	s.r = bufio.NewReader(resp.Body)
	s.dec = spec.NewDecoder(s.r)
	s.dec.OnComment = func(string) { s.beats++ }
	n.t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event, failing the test if the stream ends first.
func (s *stream) next() spec.Event {
	s.t.Helper()
	ev, err := s.dec.Next()
	if err != nil {
		s.t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

// expect reads len(want) events and checks their data.
func (s *stream) expect(want ...string) []spec.Event {
	s.t.Helper()
	evs := make([]spec.Event, 0, len(want))
	for i, w := range want {
		ev := s.next()
		if ev.Type != "message" || ev.Data != w {
			s.t.Fatalf("event %d: %s %q (ID %q), want message %q", i, ev.Type, ev.Data, ev.LastEventID, w)
		}
		evs = append(evs, ev)
	}
	return evs
}

// expectEnd checks that the stream ends without another event.
func (s *stream) expectEnd() {
	s.t.Helper()
	if ev, err := s.dec.Next(); !errors.Is(err, io.EOF) {
		s.t.Fatalf("got %+v, %v; want the stream to end", ev, err)
	}
}

// startID reads the block a stream starts with, returns the last event ID it sets, and
// closes the stream: what a client that lost its connection before its first event resumes
// from.
func (s *stream) startID() string {
	s.t.Helper()
	var block string
	for !strings.HasSuffix(block, "\n\n") {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading the preamble: %q, %v", block, err)
		}
		block += line
	}
	s.close()
	ev, err := spec.NewDecoder(strings.NewReader(block + "data\n\n")).Next()
	if err != nil || ev.LastEventID == "" {
		s.t.Fatalf("preamble %q gives %+v, %v; want a last event ID", block, ev, err)
	}
	return ev.LastEventID
}

// waitFor waits up to 10s for cond to hold.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// numbers returns "from" .. "to" as strings.
func numbers(from, to int) []string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return s
}
