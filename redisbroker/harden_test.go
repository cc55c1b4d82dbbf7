package redisbroker_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/redistest"
	"sse/internal/ssetest"
	"sse/redisbroker"
)

// WithHistoryAge counts an event's age from when Redis took it, so that a node that read it
// late (it started after the event had aged out) drops it as the node that read it at once
// does: both give the same answer for the same Last-Event-ID, MissedType for an ID followed
// by an event too old, the events after it for one followed by events young enough.
func TestHistoryAgeAcrossNodes(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	const age = 2 * time.Second
	opt := redisbroker.WithBrokerOptions(sse.WithHistoryAge(age))
	a := startNode(t, rs.Addr(), "age", opt)
	old := a.publish("1")
	a.publish("2")
	time.Sleep(age + age/4)
	young := a.publish("3")
	a.publish("4")
	late := startNode(t, rs.Addr(), "age", opt) // it reads all four events now
	if got := late.b.Stats().Published; got != 4 {
		t.Fatalf("the late node read %d events, want 4", got)
	}
	for _, tt := range []struct {
		name string
		n    *node
	}{{"on time", a}, {"late", late}} {
		// "2" is older than age on every node: resuming from "1" misses it.
		s := tt.n.open(old, false)
		if ev := s.next(); ev.Type != sse.MissedType {
			t.Errorf("%s node, resuming from %q: got %s %q, want %s", tt.name, old, ev.Type, ev.Data, sse.MissedType)
		}
		s.close()
		tt.n.open(young, false).expect("4")
	}
}

// Catching up reads the log in pages of a bounded size, so that a process that starts on a
// log of big entries needs about its history's memory, not the log's: New on a log of 400
// entries of 128 events of 4 KiB (200 MiB) with a history of 16 MiB holds less than twice the
// history live at any collection, and the heap, which the collector lets grow to twice what
// it found live, less than four times.
func TestCatchUpMemory(t *testing.T) {
	// Not parallel: it measures the heap of the whole test process.
	rs := redistest.Start(t)
	const (
		ns      = "big"
		entries = 400
		perCall = 128
		budget  = 16 << 20
	)
	writeLog(t, rs, ns, entries, perCall, 4<<10)

	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	heap := watchHeap(t)
	b, err := redisbroker.New(t.Context(), rdb, ns, redisbroker.WithMaxLen(entries),
		redisbroker.WithBrokerOptions(sse.WithHistory(1<<20), sse.WithHistoryMemory(budget)))
	live, objects := heap()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer b.Shutdown(context.Background())
	if got := b.Stats().Published; got != entries*perCall {
		t.Fatalf("New read %d events, want %d", got, entries*perCall)
	}
	t.Logf("while New read %d MiB of events into a history of %d MiB, the heap grew by %.1f MiB live, %.1f MiB in all",
		entries*perCall*4>>10, budget>>20, mib(live), mib(objects))
	if live > 2*budget {
		t.Errorf("the heap held %.1f MiB more live while New read the log, want less than %d MiB: twice the history's budget", mib(live), 2*budget>>20)
	}
	if objects > 4*budget {
		t.Errorf("the heap grew by %.1f MiB while New read the log, want less than %d MiB: four times the history's budget", mib(objects), 4*budget>>20)
	}
}

// A process that fell behind catches up in pages of a bounded size too: a node whose
// connections to Redis stall while 400 entries of 128 events of 4 KiB (200 MiB) are added to
// the log holds less than twice its history (16 MiB) live while it reads them.
func TestFallBehindMemory(t *testing.T) {
	// Not parallel: it measures the heap of the whole test process.
	rs := redistest.Start(t)
	const (
		ns      = "behind"
		entries = 400
		perCall = 128
		budget  = 16 << 20
	)
	p := newStallProxy(t, rs.Addr())
	n := startNode(t, p.addr(), ns, redisbroker.WithMaxLen(entries),
		redisbroker.WithBrokerOptions(sse.WithHistory(1<<20), sse.WithHistoryMemory(budget)))
	// Small entries first, as a log has while it is quiet.
	for i := range 20 {
		n.publish(strconv.Itoa(i))
	}
	waitAppended(t, 20, n)
	time.Sleep(100 * time.Millisecond) // the reader waits for entries again
	p.hold()
	writeLog(t, rs, ns, entries, perCall, 4<<10)
	heap := watchHeap(t)
	p.release()
	waitFor(t, "the node to read the log", func() bool { return n.b.Stats().Published == 20+entries*perCall })
	live, objects := heap()
	t.Logf("while a node read %d MiB of events it had fallen behind on into a history of %d MiB, the heap grew by %.1f MiB live, %.1f MiB in all",
		entries*perCall*4>>10, budget>>20, mib(live), mib(objects))
	if live > 2*budget {
		t.Errorf("the heap held %.1f MiB more live while the node caught up, want less than %d MiB: twice the history's budget", mib(live), 2*budget>>20)
	}
	if objects > 4*budget {
		t.Errorf("the heap grew by %.1f MiB while the node caught up, want less than %d MiB: four times the history's budget", mib(objects), 4*budget>>20)
	}
}

// A stallProxy forwards TCP connections to Redis, except while it holds them: then it
// forwards nothing either way until it releases them, as a network that stalls.
type stallProxy struct {
	ln     net.Listener
	target string

	mu   sync.Mutex
	gate chan struct{} // guarded by mu; closed while nothing is held
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, gate: make(chan struct{})}
	close(p.gate)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { p.pipe(s, c) })
			wg.Go(func() { p.pipe(c, s) })
		}
	})
	t.Cleanup(func() {
		p.release()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

// pipe copies from src to dst, waiting at the gate before each write.
func (p *stallProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hold stops forwarding until release.
func (p *stallProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

// release forwards what was held, and what comes next.
func (p *stallProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// writeLog adds entries entries of perCall events of size bytes each to the log of ns, as
// the publish script of one process would.
func writeLog(t *testing.T, rs *redistest.Server, ns string, entries, perCall, size int) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	var evs []byte
	for i := range perCall {
		evs = redisbroker.AppendEvent(evs, sse.Event{Data: strings.Repeat(strconv.Itoa(i%10), size)}, nil)
	}
	keys := append(redisbroker.Keys(ns), redisbroker.PubKey(ns, "writer"))
	pipe := rdb.Pipeline()
	for i := range entries {
		redisbroker.PublishScript.Eval(t.Context(), pipe, keys, "abcdefgh", entries, perCall, i+1, evs, 60000)
		if i%8 == 7 || i == entries-1 {
			if _, err := pipe.Exec(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// watchHeap samples the heap every millisecond until the test ends, and returns a function
// that reports by how much it grew from what was live after a collection at the start, at
// most so far: live, as the last collection found it, and in all (the bytes of objects live,
// or dead and not yet swept).
func watchHeap(t *testing.T) func() (live, objects uint64) {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	var mu sync.Mutex
	var most [2]uint64 // guarded by mu
	read := func() {
		metrics.Read(samples)
		mu.Lock()
		defer mu.Unlock()
		for i, s := range samples {
			most[i] = max(most[i], s.Value.Uint64())
		}
	}
	read()
	base := most[1]
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			read()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return func() (live, objects uint64) {
		read()
		mu.Lock()
		defer mu.Unlock()
		return most[0] - min(base, most[0]), most[1] - base
	}
}

// New returns at its context's deadline, or as soon as it is canceled, while Redis hangs (it
// holds its connections and answers nothing), whatever the client's options (by default,
// go-redis waits for an answer its ReadTimeout, 3s, and dials five times), and leaves nothing
// running.
func TestNewWhileRedisHangs(t *testing.T) {
	checkGoroutines(t)
	rs := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()}) // go-redis's defaults
	defer rdb.Close()
	rs.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { rs.Signal(syscall.SIGCONT) })
	const wait = 500 * time.Millisecond
	for _, tt := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"deadline", func() (context.Context, context.CancelFunc) { return context.WithTimeout(t.Context(), wait) }},
		{"canceled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(wait, cancel)
			return ctx, cancel
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			began := time.Now()
			b, err := redisbroker.New(ctx, rdb, "hung")
			took := time.Since(began)
			if err == nil {
				b.Shutdown(context.Background())
				t.Fatal("New while Redis hangs: no error")
			}
			if !errors.Is(err, ctx.Err()) {
				t.Errorf("New: %v, want the context's error, %v", err, ctx.Err())
			}
			if took > wait+300*time.Millisecond {
				t.Errorf("New took %v, want about %v: its context's", took, wait)
			}
			if left := brokerGoroutines(); len(left) > 0 {
				t.Errorf("%d goroutines of the broker left running once New returned:\n%s", len(left), strings.Join(left, "\n\n"))
			}
		})
	}
}

// Shutdown returns at its context's deadline while Redis hangs, with a publish its caller
// gave up on still on its way to Redis and the reader waiting for Redis, and then nothing of
// the broker's runs: no goroutine of its own, none in go-redis on its behalf.
func TestShutdownWhileRedisHangs(t *testing.T) {
	checkGoroutines(t)
	rs := redistest.Start(t)
	n := startNode(t, rs.Addr(), "hang", redisbroker.WithPublishTimeout(5*time.Second))
	n.publish("1")
	s := n.open("", false)
	waitFor(t, "the client to join", func() bool { return n.b.Stats().Clients == 1 })
	before := goroutinesIn("github.com/redis/go-redis/")
	rs.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { rs.Signal(syscall.SIGCONT) })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := n.b.PublishContext(ctx, sse.Event{Data: "lost?"}); err == nil {
		t.Fatal("Publish while Redis hangs: no error")
	}
	// Its event is still on its way, for up to the publish timeout.
	if len(goroutinesIn("redisbroker.(*Broker).send(")) == 0 {
		t.Fatal("the publisher is not waiting for Redis")
	}

	const wait = 500 * time.Millisecond
	ctx, cancel = context.WithTimeout(context.Background(), wait)
	defer cancel()
	began := time.Now()
	err := n.b.Shutdown(ctx)
	took := time.Since(began)
	left := brokerGoroutines()
	inRedis := redisGoroutines(len(before))
	if took > wait+300*time.Millisecond {
		t.Errorf("Shutdown took %v, want about %v: its context's", took, wait)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	if len(left) > 0 {
		t.Errorf("%d goroutines of the broker left running once Shutdown returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
	if len(inRedis) > len(before) {
		t.Errorf("%d goroutines in go-redis once Shutdown returned, %d before Redis hung:\n%s", len(inRedis), len(before), strings.Join(inRedis, "\n\n"))
	}
	s.expectEnd()
}

// settle is how long a goroutine that has done its work may take to return: it may not have
// run since, on a busy machine. A call left in Redis lasts seconds.
const settle = 100 * time.Millisecond

// brokerGoroutines returns the stacks of the goroutines running code of the redisbroker
// package (not its tests'), once those that are returning have returned.
func brokerGoroutines() []string { return settled("sse/redisbroker.", 0) }

// redisGoroutines returns the stacks of the goroutines running code of go-redis, once those
// that are returning have returned, if no more than want are left.
func redisGoroutines(want int) []string { return settled("github.com/redis/go-redis/", want) }

// settled returns the stacks of the goroutines that contain code, waiting up to settle for no
// more than want to be left.
func settled(code string, want int) []string {
	deadline := time.Now().Add(settle)
	for {
		gs := goroutinesIn(code)
		if len(gs) <= want || time.Now().After(deadline) {
			return gs
		}
		time.Sleep(time.Millisecond)
	}
}

// goroutinesIn returns the stacks of the goroutines that contain code.
func goroutinesIn(code string) []string {
	var gs []string
	for _, g := range ssetest.Goroutines() {
		if strings.Contains(g, code) {
			gs = append(gs, g)
		}
	}
	return gs
}

// After a break in the log (FLUSHALL: Redis lost it), every node ends every stream with a
// retry hint spread over [retry, 2×retry], so that the 300 clients of two nodes come back over
// most of that span rather than all at once; and each node logs the break once, at Warn, with
// how many streams it ended, and nothing else at Warn or above.
func TestLogBreakSpreadsReturns(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	const (
		retry   = 2 * time.Second
		perNode = 150
	)
	logs := []*records{{}, {}}
	var nodes []*node
	for _, l := range logs {
		logger := slog.New(l)
		nodes = append(nodes, startNode(t, rs.Addr(), "herd", redisbroker.WithLogger(logger),
			redisbroker.WithBrokerOptions(sse.WithRetry(retry), sse.WithLogger(logger))))
	}
	nodes[0].publish("0")
	waitAppended(t, 1, nodes...)

	type end struct {
		at   time.Time     // when the stream ended
		hint time.Duration // the last retry hint it carried
	}
	ends := make(chan end, len(nodes)*perNode)
	var wg sync.WaitGroup
	for _, n := range nodes {
		for range perNode {
			s := n.open("", false)
			wg.Go(func() {
				var hint time.Duration
				for {
					line, err := s.r.ReadString('\n')
					if err != nil {
						ends <- end{time.Now(), hint}
						return
					}
					if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "retry:"); ok {
						ms, _ := strconv.Atoi(strings.TrimSpace(v))
						hint = time.Duration(ms) * time.Millisecond
					}
				}
			})
		}
		waitFor(t, "the clients to join", func() bool { return n.b.Stats().Clients == perNode })
	}

	rs.Do("FLUSHALL")
	nodes[1].publish("1") // begins a new log, which every node notices
	wg.Wait()
	close(ends)
	for _, n := range nodes {
		for range perNode {
			if err := <-n.ends; !errors.Is(err, sse.ErrEventsLost) {
				t.Errorf("a stream ended with %v, want ErrEventsLost", err)
			}
		}
	}

	// When each client comes back: the end of its stream and its hint later.
	var back []time.Time
	var first time.Time
	for e := range ends {
		if e.hint < retry || e.hint > 2*retry {
			t.Errorf("a stream ended with a retry hint of %v, want one in [%v, %v]", e.hint, retry, 2*retry)
		}
		back = append(back, e.at.Add(e.hint))
		if first.IsZero() || e.at.Before(first) {
			first = e.at
		}
	}
	// Of 20 equal parts of [first+retry, first+2×retry], at least 16 see a client come back.
	const parts = 20
	var seen [parts]bool
	for _, at := range back {
		if i := int(at.Sub(first.Add(retry)) * parts / retry); i >= 0 && i < parts {
			seen[i] = true
		}
	}
	covered := 0
	for _, s := range seen {
		if s {
			covered++
		}
	}
	slices.SortFunc(back, func(a, b time.Time) int { return a.Compare(b) })
	t.Logf("%d clients come back over %v, covering %d%% of [retry, 2×retry]", len(back), back[len(back)-1].Sub(back[0]), covered*100/parts)
	if covered < parts*8/10 {
		t.Errorf("the clients come back over %d%% of [retry, 2×retry], want 80%% at least", covered*100/parts)
	}

	for i, l := range logs {
		var breaks, others []slog.Record
		for _, r := range l.all() {
			switch {
			case r.Level < slog.LevelWarn:
			case strings.Contains(r.Message, "the log broke"):
				breaks = append(breaks, r)
			default:
				others = append(others, r)
			}
		}
		if len(others) > 0 {
			t.Errorf("node %d logged %d records at Warn or above but the break, such as %s %q; want none", i, len(others), others[0].Level, others[0].Message)
		}
		if len(breaks) != 1 {
			t.Errorf("node %d logged the break %d times, want once", i, len(breaks))
			continue
		}
		var streams int64 = -1
		breaks[0].Attrs(func(a slog.Attr) bool {
			if a.Key == "streams" {
				streams = a.Value.Int64()
			}
			return true
		})
		if streams != perNode {
			t.Errorf("node %d logged that the break ended %d streams, want %d", i, streams, perNode)
		}
	}
}

// records is a slog.Handler that keeps every record.
type records struct {
	mu   sync.Mutex
	recs []slog.Record // guarded by mu
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }

func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

func (h *records) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *records) WithGroup(string) slog.Handler      { return h }

func (h *records) all() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.recs)
}
