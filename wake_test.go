package sse

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Stress tests of the broker's wake-ups against a model: publishers and clients on random
// topic sets, clients joining, resuming and leaving all along; at the end of every round each
// client must have received exactly the events of its topics, in order, each once, within a
// bound. And the checks that Publish, Append and the heartbeat tick wake clients once they
// have let go of the broker's lock, and that no wake-up is lost.

// A streamRecorder is a ResponseWriter that parses what the broker writes, line by line.
type streamRecorder struct {
	h http.Header

	mu       sync.Mutex
	partial  []byte
	fields   map[string]string
	started  bool   // the preamble came
	startID  string // the ID the preamble set, if any
	got      []uint64
	ids      []string
	beats    int
	bad      []string
	retryEnd bool // a block with only retry after the preamble
}

func newStreamRecorder() *streamRecorder {
	return &streamRecorder{h: http.Header{}, fields: map[string]string{}}
}

func (w *streamRecorder) Header() http.Header { return w.h }
func (w *streamRecorder) WriteHeader(int)     {}
func (w *streamRecorder) Flush()              {}

func (w *streamRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		switch {
		case line == "":
			w.block()
		case strings.HasPrefix(line, ":"):
			w.beats++
		default:
			k, v, _ := strings.Cut(line, ": ")
			w.fields[k] = v
		}
	}
	return len(p), nil
}

func (w *streamRecorder) block() {
	f := w.fields
	w.fields = map[string]string{}
	if !w.started {
		w.started = true
		w.startID = f["id"]
		if _, ok := f["event"]; ok {
			w.bad = append(w.bad, "missed event in the preamble")
		}
		return
	}
	if _, ok := f["data"]; !ok {
		if _, ok := f["retry"]; ok && len(f) == 1 {
			w.retryEnd = true
			return
		}
		w.bad = append(w.bad, fmt.Sprintf("unexpected block %v", f))
		return
	}
	w.got = append(w.got, idSeq(f["id"]))
	w.ids = append(w.ids, f["id"])
}

func idSeq(id string) uint64 {
	n, err := strconv.ParseUint(id[strings.LastIndexByte(id, '-')+1:], 10, 64)
	if err != nil {
		panic("bad id " + id)
	}
	return n
}

type modelClient struct {
	topics []string
	resume string // Last-Event-ID sent
	w      *streamRecorder
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

// publishModel is what was published: sequence number (in the log's numbers) → topics.
type publishModel struct {
	mu   sync.Mutex
	pubs map[uint64][]string
}

func (m *publishModel) record(seq uint64, topics []string) {
	if len(topics) == 0 {
		topics = defaultTopics
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.pubs[seq]; dup {
		panic("seq published twice")
	}
	m.pubs[seq] = topics
}

// want returns the events client c should get after sequence number from, in order.
func (m *publishModel) want(c *modelClient, from uint64) []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var w []uint64
	for seq, topics := range m.pubs {
		if seq > from && slices.ContainsFunc(topics, func(t string) bool { return slices.Contains(c.topics, t) }) {
			w = append(w, seq)
		}
	}
	slices.Sort(w)
	return w
}

var modelTopics = []string{"", "a", "b", "c", "d", "e"}

func modelTopicSet(r *rand.Rand, private string) []string {
	n := 1 + r.IntN(3)
	var ts []string
	for range n {
		ts = append(ts, modelTopics[r.IntN(len(modelTopics))])
	}
	if private != "" && r.IntN(3) == 0 {
		ts = append(ts, private)
	}
	return ts
}

func startModelClient(b *Broker, topics []string, resume string) *modelClient {
	ctx, cancel := context.WithCancel(context.Background())
	r := httptest.NewRequestWithContext(ctx, "GET", "/", nil)
	if resume != "" {
		r.Header.Set("Last-Event-ID", resume)
	}
	c := &modelClient{topics: slices.Clone(topics), resume: resume, w: newStreamRecorder(), cancel: cancel, done: make(chan error, 1)}
	if len(c.topics) == 0 {
		c.topics = defaultTopics
	}
	go func() { c.done <- b.ServeEvents(c.w, r, topics...) }()
	return c
}

// from returns the sequence number after which c receives events, once it has started.
func (c *modelClient) from(t *testing.T) (uint64, bool) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	if !c.w.started {
		return 0, false
	}
	if c.w.startID != "" {
		if c.resume != "" {
			t.Errorf("resume from %q started at %q: missed", c.resume, c.w.startID)
		}
		return idSeq(c.w.startID), true
	}
	return idSeq(c.resume), true
}

func (c *modelClient) snapshot() ([]uint64, []string, int) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	return slices.Clone(c.w.got), slices.Clone(c.w.bad), c.w.beats
}

func (c *modelClient) waitEnd(t *testing.T, d time.Duration) error {
	t.Helper()
	if c.ended {
		return c.err
	}
	select {
	case c.err = <-c.done:
		c.ended = true
		return c.err
	case <-time.After(d):
		got, _, _ := c.snapshot()
		t.Fatalf("client %q: stream did not end within %v (received %d)", c.topics, d, len(got))
		return nil
	}
}

// check checks that c received exactly want, or (prefix) a prefix of it.
func (c *modelClient) check(t *testing.T, m *publishModel, prefix bool, bound time.Duration) {
	t.Helper()
	from, ok := c.from(t)
	if !ok {
		if prefix {
			return
		}
		t.Fatalf("client %q never started", c.topics)
	}
	want := m.want(c, from)
	deadline := time.Now().Add(bound)
	for {
		got, bad, _ := c.snapshot()
		if len(bad) > 0 {
			t.Fatalf("client %q: %v", c.topics, bad)
		}
		if prefix || len(got) >= len(want) || time.Now().After(deadline) {
			if prefix && len(got) <= len(want) && slices.Equal(got, want[:len(got)]) {
				return
			}
			if !prefix && slices.Equal(got, want) {
				return
			}
			n := min(len(got), len(want))
			i := 0
			for i < n && got[i] == want[i] {
				i++
			}
			t.Fatalf("client %q (from %d, prefix %v): received %d events, want %d; first difference at %d: got %v want %v",
				c.topics, from, prefix, len(got), len(want), i, got[i:min(len(got), i+5)], want[i:min(len(want), i+5)])
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// newStress returns a random source, seeded anew and logged, a broker that keeps every event
// and is shut down when the test ends (which ends the streams of a test that failed early),
// and an empty model.
func newStress(t *testing.T, stream uint64, opts ...Option) (*rand.Rand, *Broker, *publishModel) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	b := NewBroker(append([]Option{WithHistory(1 << 20), WithHistoryMemory(-1)}, opts...)...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	return rand.New(rand.NewPCG(seed, stream)), b, &publishModel{pubs: map[uint64][]string{}}
}

// waitStarted waits for c's stream to start.
func (c *modelClient) waitStarted(t *testing.T, bound time.Duration) {
	t.Helper()
	waitWithin(t, bound, "a client to start", func() bool { _, ok := c.from(t); return ok })
}

// TestStressPublish publishes from several goroutines while clients churn, then shuts the
// broker down while publishing.
func TestStressPublish(t *testing.T) {
	for _, hb := range []time.Duration{-1, 2 * time.Millisecond} {
		t.Run(fmt.Sprint("heartbeat=", hb), func(t *testing.T) { stressPublish(t, hb) })
	}
}

func stressPublish(t *testing.T, heartbeat time.Duration) {
	r, b, m := newStress(t, 1, WithHeartbeat(heartbeat))
	const (
		rounds     = 60
		publishers = 4
		clients    = 24
	)
	bound := 10 * time.Second // what a correct broker needs is far less; the bound is for a stuck client
	var live []*modelClient
	nextPrivate := 0
	newClient := func(r *rand.Rand) *modelClient {
		nextPrivate++
		return startModelClient(b, modelTopicSet(r, "u"+strconv.Itoa(nextPrivate)), "")
	}
	for range clients {
		c := newClient(r)
		c.waitStarted(t, bound)
		live = append(live, c)
	}
	publish := func(p int, n int, seed uint64, stopOnClosed bool, privates int) {
		r := rand.New(rand.NewPCG(seed, uint64(p)))
		for i := range n {
			var topics []string
			if r.IntN(10) > 0 {
				topics = modelTopicSet(r, "")
				if r.IntN(5) == 0 {
					// a topic some clients read alone, besides many groups
					topics = append(topics, "u"+strconv.Itoa(1+r.IntN(privates)))
				}
			}
			id, err := b.Publish(Event{Data: fmt.Sprintf("%d-%d", p, i)}, topics...)
			if err != nil {
				if stopOnClosed && errors.Is(err, ErrClosed) {
					return
				}
				t.Errorf("Publish: %v", err)
				return
			}
			m.record(idSeq(id), topics)
			if r.IntN(8) == 0 {
				time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
			}
		}
	}
	for round := range rounds {
		// Churn before the round: end some clients (checked below), start others, some
		// resuming where an ended one stopped.
		var ended []*modelClient
		var started []*modelClient
		for i := 0; i < len(live); i++ {
			if r.IntN(6) == 0 {
				c := live[i]
				c.cancel()
				if err := c.waitEnd(t, bound); err != nil {
					t.Fatalf("ServeEvents of a client that left: %v", err)
				}
				ended = append(ended, c)
				live = slices.Delete(live, i, i+1)
				i--
				got, _, _ := c.snapshot()
				resume := c.resume
				if c.w.startID != "" {
					resume = c.w.startID
				}
				if len(got) > 0 {
					resume = c.w.ids[len(c.w.ids)-1]
				}
				if r.IntN(2) == 0 {
					started = append(started, startModelClient(b, c.topics, resume))
				} else {
					started = append(started, newClient(r))
				}
			}
		}
		// Publishers, and clients joining and leaving while they publish.
		var wg sync.WaitGroup
		roundSeed := r.Uint64()
		for p := range publishers {
			n, privates := r.IntN(40), nextPrivate
			wg.Go(func() { publish(p, n, roundSeed, false, privates) })
		}
		churnSeed := r.Uint64()
		var midStarted, midEnded []*modelClient
		wg.Go(func() {
			r := rand.New(rand.NewPCG(churnSeed, 99))
			for range r.IntN(4) {
				c := startModelClient(b, modelTopicSet(r, ""), "")
				midStarted = append(midStarted, c)
				if r.IntN(2) == 0 {
					time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
					c.cancel()
					midEnded = append(midEnded, c)
				}
			}
		})
		wg.Wait()
		for _, c := range started {
			c.waitStarted(t, bound)
		}
		live = append(live, started...)
		for _, c := range midStarted {
			if slices.Contains(midEnded, c) {
				if err := c.waitEnd(t, bound); err != nil {
					t.Fatalf("ServeEvents of a client that left: %v", err)
				}
				ended = append(ended, c)
			} else {
				c.waitStarted(t, bound)
				live = append(live, c)
			}
		}
		for _, c := range ended {
			c.check(t, m, true, bound)
		}
		for _, c := range live {
			c.check(t, m, false, bound)
		}
		if t.Failed() {
			t.Fatalf("round %d", round)
		}
	}
	if heartbeat > 0 {
		for _, c := range live {
			waitWithin(t, bound, "a heartbeat", func() bool { _, _, beats := c.snapshot(); return beats > 0 })
		}
	}
	// Shutdown while publishing: every client gets each event whose Publish succeeded, then
	// its stream ends.
	var wg sync.WaitGroup
	finalSeed := r.Uint64()
	for p := range publishers {
		privates := nextPrivate
		wg.Go(func() { publish(p, 1000, finalSeed, true, privates) })
	}
	time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	for _, c := range live {
		if err := c.waitEnd(t, bound); err != ErrClosed {
			t.Errorf("client %q ended with %v, want ErrClosed", c.topics, err)
		}
		c.check(t, m, false, 0)
		if !c.w.retryEnd {
			t.Errorf("client %q: no retry hint at the end", c.topics)
		}
	}
}

// TestStressAppend appends from one goroutine (the Redis module's mode), with breaks by
// skipped sequence numbers and by Follow, while clients churn. After a break, every client
// that was there ends with ErrEventsLost, having received a prefix of its events.
func TestStressAppend(t *testing.T) {
	r, b, m := newStress(t, 2, WithHeartbeat(-1))
	const (
		rounds  = 60
		clients = 20
	)
	bound := 10 * time.Second // what a correct broker needs is far less; the bound is for a stuck client
	var live []*modelClient
	if err := b.Follow("e1", 0); err != nil {
		t.Fatal(err)
	}
	for range clients {
		c := startModelClient(b, modelTopicSet(r, ""), "")
		c.waitStarted(t, bound)
		live = append(live, c)
	}
	var n uint64 // the last appended
	for round := range rounds {
		brk := r.IntN(8)
		var midStarted []*modelClient
		var wg sync.WaitGroup
		count := r.IntN(60)
		appendSeed := r.Uint64()
		wg.Go(func() {
			r := rand.New(rand.NewPCG(appendSeed, 3))
			for range count {
				var topics []string
				if r.IntN(10) > 0 {
					topics = modelTopicSet(r, "")
				}
				n++
				if err := b.Append("e1", n, time.Time{}, Event{Data: "x"}, topics...); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				m.record(n, topics)
				if r.IntN(8) == 0 {
					time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
				}
			}
		})
		churnSeed := r.Uint64()
		wg.Go(func() {
			r := rand.New(rand.NewPCG(churnSeed, 4))
			for range r.IntN(4) {
				midStarted = append(midStarted, startModelClient(b, modelTopicSet(r, ""), ""))
				time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
			}
		})
		wg.Wait()
		for _, c := range midStarted {
			c.waitStarted(t, bound)
		}
		live = append(live, midStarted...)
		for _, c := range live {
			c.check(t, m, false, bound)
		}
		if brk < 2 {
			// A break: by a skipped event (then one more Append), or by Follow further on.
			n += 5
			if brk == 0 {
				n++
				if err := b.Append("e1", n, time.Time{}, Event{Data: "x"}, "a"); err != nil {
					t.Fatal(err)
				}
				m.record(n, []string{"a"})
			} else if err := b.Follow("e1", n); err != nil {
				t.Fatal(err)
			}
			for _, c := range live {
				if err := c.waitEnd(t, bound); err != ErrEventsLost {
					t.Fatalf("after a break, client %q ended with %v, want ErrEventsLost", c.topics, err)
				}
				got, _, _ := c.snapshot()
				for _, s := range got {
					if s > n-5 {
						t.Fatalf("client received %d, after the break", s)
					}
				}
				c.check(t, m, true, 0)
			}
			live = live[:0]
			for range clients {
				c := startModelClient(b, modelTopicSet(r, ""), "")
				c.waitStarted(t, bound)
				live = append(live, c)
			}
		}
		if t.Failed() {
			t.Fatalf("round %d", round)
		}
	}
	for _, c := range live {
		c.cancel()
		c.waitEnd(t, bound)
	}
}

// joinGroups joins n clients to b, client i to topics(i), without streams: stand-ins for
// clients that wait.
func joinGroups(t *testing.T, b *Broker, n int, topics func(i int) []string) []*client {
	t.Helper()
	clients := make([]*client, 0, n)
	for i := range n {
		c, _, _, err := b.join(topics(i), "", false)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	return clients
}

func leaveAll(b *Broker, clients []*client) {
	for _, c := range clients {
		b.leave(c)
	}
}

// wakesAfterUnlock checks that do, which wakes every group, does so once it has let go of the
// broker's lock, as TestPublishWakesAfterUnlock does for Publish.
func wakesAfterUnlock(t *testing.T, b *Broker, do func()) {
	t.Helper()
	clients := joinGroups(t, b, 20000, func(i int) []string { return []string{"all", "user:" + strconv.Itoa(i)} })
	defer leaveAll(b, clients)
	var waiters []<-chan struct{}
	for _, c := range clients {
		waiters = append(waiters, c.g.waiter())
	}
	free := make(chan bool, 1)
	go func() {
		<-waiters[0]
		ok := b.mu.TryLock()
		if ok {
			b.mu.Unlock()
		}
		free <- ok
	}()
	do()
	select {
	case ok := <-free:
		if !ok {
			t.Error("a client was woken while the broker's lock was held")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("group 0 was not woken")
	}
	for i, w := range waiters {
		select {
		case <-w:
		default:
			t.Fatalf("group %d was not woken", i)
		}
	}
}

func TestAppendWakesAfterUnlock(t *testing.T) {
	b := NewBroker(WithHeartbeat(-1))
	defer b.Shutdown(context.Background())
	if err := b.Follow("e1", 0); err != nil {
		t.Fatal(err)
	}
	wakesAfterUnlock(t, b, func() {
		if err := b.Append("e1", 1, time.Time{}, Event{Data: "x"}, "all"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestTickWakesAfterUnlock(t *testing.T) {
	b := NewBroker(WithHeartbeat(time.Hour))
	defer b.Shutdown(context.Background())
	wakesAfterUnlock(t, b, func() {
		b.ticks.Add(ticksPerBeat - 1) // every group is due for a heartbeat at the next tick
		b.tick()
	})
}

// TestTickWakeNotLost checks that a heartbeat that comes while a client is between looking for
// events and waiting must not be lost to it: the client sees the new beat count within a
// bound, with nothing published after the tick. Many other groups make the tick long.
func TestTickWakeNotLost(t *testing.T) {
	b := NewBroker(WithHeartbeat(time.Hour))
	defer b.Shutdown(context.Background())
	others := joinGroups(t, b, 2000, func(i int) []string { return []string{"g" + strconv.Itoa(i)} })
	defer leaveAll(b, others)
	c, _, _, err := b.join([]string{"a"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.leave(c)
	var seen atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the client's loop, as Broker.stream's
		defer close(done)
		var w <-chan struct{}
		for {
			out, _ := c.next(b)
			if len(out) > 0 {
				seen.Store(c.beats)
				w = nil
				continue
			}
			if w == nil {
				w = c.g.waiter()
				continue
			}
			select {
			case <-w:
				w = nil
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	deadline := time.Now().Add(time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		for range 1 + r.IntN(20) {
			publish(t, b, "x", "a")
		}
		for range ticksPerBeat { // the group is due for a heartbeat at the last
			b.tick()
		}
		want := c.g.beats.Load()
		waitWithin(t, 10*time.Second, fmt.Sprintf("the client to see tick %d (iteration %d)", want, i),
			func() bool { return seen.Load() == want })
	}
}

// TestBreakEndsClientsBehind checks the end reason of a client that has events left to read
// when the log breaks (one busy writing, say): it ends with ErrEventsLost, as every client the
// break ends, and not as a slow client, though the break drops the events it had not read.
// The client looks at its stream as soon as the break begins to drop them.
func TestBreakEndsClientsBehind(t *testing.T) {
	b := NewBroker(WithHeartbeat(-1), WithHistory(1<<16), WithHistoryMemory(-1))
	defer b.Shutdown(context.Background())
	if err := b.Follow("e1", 0); err != nil {
		t.Fatal(err)
	}
	c, _, _, err := b.join([]string{"a"}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.leave(c)
	const held = 20000 // dropping them all takes the break a while
	for n := range uint64(held) {
		if err := b.Append("e1", n+1, time.Time{}, Event{Data: "x"}, "a"); err != nil {
			t.Fatal(err)
		}
	}
	ended := make(chan error, 1)
	go func() { // the client, which has read none of them
		tp := c.cursors[0].t
		for deadline := time.Now().Add(10 * time.Second); tp.tail.Load() == 0 && time.Now().Before(deadline); {
		}
		_, end := c.next(b)
		ended <- end
	}()
	if err := b.Append("e1", held+2, time.Time{}, Event{Data: "x"}, "a"); err != nil { // a gap
		t.Fatal(err)
	}
	if err := <-ended; err != ErrEventsLost {
		t.Errorf("a client behind at a break ended with %v, want ErrEventsLost", err)
	}
	if n := b.Stats().SlowDisconnects; n != 0 {
		t.Errorf("SlowDisconnects = %d after a break, want 0", n)
	}
}

// flushCounter is a ResponseWriter that counts its flushes: the broker's driver flushes once
// for the preamble and once for each event or heartbeat it writes. After counting one, Flush
// spins for a random while, to vary where the driver is when the count is seen.
type flushCounter struct {
	h       http.Header
	flushes atomic.Int64
	spin    atomic.Int64
}

func (w *flushCounter) Header() http.Header         { return w.h }
func (w *flushCounter) WriteHeader(int)             {}
func (w *flushCounter) Write(p []byte) (int, error) { return len(p), nil }

func (w *flushCounter) Flush() {
	w.flushes.Add(1)
	for range rand.IntN(64) {
		w.spin.Add(1)
	}
}

// TestStreamWakeNotLost checks the handler driver's waiting, as TestTickWakeNotLost checks
// the client's state: an event published while the driver is between looking for events and
// waiting reaches the client, with heartbeats off, so nothing else would wake it. Each event
// is published as soon as the last one was flushed, and the flush returns after a random
// spin, so that the publishes fall all over the driver's way from its write back to waiting.
func TestStreamWakeNotLost(t *testing.T) {
	b := NewBroker(WithHeartbeat(-1))
	defer b.Shutdown(context.Background())
	w := &flushCounter{h: http.Header{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.ServeEvents(w, httptest.NewRequestWithContext(ctx, "GET", "/", nil)) }()
	defer func() { cancel(); <-done }()
	stop := time.Now().Add(time.Second)
	for i := int64(1); time.Now().Before(stop); i++ {
		for bound := time.Now().Add(5 * time.Second); w.flushes.Load() < i; {
			if time.Now().After(bound) {
				t.Fatalf("event %d was not written within 5s: a wake-up was lost", i-1)
			}
		}
		publish(t, b, "x")
	}
}
