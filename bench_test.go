package sse

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchData is a typical small payload: 64 bytes, one line.
var benchData = strings.Repeat("x", 64)

// publishBatch is how many events BenchmarkPublish publishes before it stops the timer and
// waits for every client to have written them. It is half the default history, so that a
// client that is a whole batch behind is still inside the ring and is never disconnected as
// lost: without the pause, clients on two cores cannot keep up with a publisher that does
// O(1) work per event, would fall out of the history, and the benchmark would end up
// measuring a broker with no subscribers.
const publishBatch = 512

// BenchmarkPublish measures what one Publish costs the publisher with 0, 100 and 10,000
// subscribed clients. The DESIGN aims for O(1) work per Publish, so ns/op and allocs/op
// should not grow with the clients.
//
// 100 clients are real HTTP/1.1 streams from an httptest.Server, read by net/http clients.
// 10,000 real connections would need 20,000 descriptors in this one process (client and
// server end), all that the hard limit allows on the machines we run on, so 10,000 clients
// are driven in process instead: ServeEvents on a ResponseWriter that discards what it is given, with a
// request whose context the benchmark cancels. The broker cannot tell the difference; what
// is left out is the kernel's and net/http's cost per write, which is per client, not per
// Publish. clients=100/inproc is the same in-process setup with 100 clients, so that
// 100 and 10,000 can be compared like for like.
//
// The time each client spends writing runs on the other core while the publisher runs, and
// so shows up in ns/op only as contention for the broker's lock and the CPU; the time the
// clients need to catch up after a batch is outside the timer, and is reported separately as
// ns/delivery: the whole loop's wall time, timed or not, per event written to a client.
func BenchmarkPublish(b *testing.B) {
	for _, bb := range []struct {
		name    string
		clients int
		http    bool
	}{
		{"clients=0", 0, false},
		{"clients=100/http", 100, true},
		{"clients=100/inproc", 100, false},
		{"clients=10000/inproc", 10000, false},
	} {
		b.Run(bb.name, func(b *testing.B) {
			br := NewBroker()
			var f *benchClients
			if bb.http {
				f = connectHTTP(b, br, bb.clients)
			} else {
				f = connectInProcess(b, br, bb.clients)
			}
			defer f.close(b)
			f.waitClients(b, bb.clients)

			ev := Event{Data: benchData}
			base := br.Stats().Delivered
			start := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := br.Publish(ev); err != nil {
					b.Fatal(err)
				}
				if (i+1)%publishBatch == 0 || i+1 == b.N {
					b.StopTimer()
					f.waitDelivered(b, base+int64(i+1)*int64(bb.clients))
					b.StartTimer()
				}
			}
			b.StopTimer()
			if st := br.Stats(); st.SlowDisconnects != 0 || st.Clients != int64(bb.clients) {
				b.Fatalf("after the run: %d clients, %d slow disconnects; want %d, 0", st.Clients, st.SlowDisconnects, bb.clients)
			}
			if bb.clients > 0 {
				b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*bb.clients), "ns/delivery")
			}
		})
	}
}

// BenchmarkClientWrite measures a client's write path: the time for one subscriber to receive
// 1,000 events that were published before it connected, replayed from the history after its
// Last-Event-ID. One op is one whole replay; ns/event is the time per event delivered.
// "inproc" writes to a ResponseWriter that discards (the broker's own cost: reading the ring,
// batching, deadlines, flushes); "http" is a real stream from an httptest.Server on a new
// connection for each replay, read by net/http's client, and "http/baseline" is the same
// bytes written by a bare handler in batches of the same size: the floor that net/http, the
// kernel and the reading client set.
func BenchmarkClientWrite(b *testing.B) {
	const events = 1000
	br := NewBroker(WithHistory(events + 1))
	defer br.Shutdown(context.Background())
	// A first event to resume after: the client replays the 1,000 that follow it.
	lastID, err := br.Publish(Event{Data: "start"})
	if err != nil {
		b.Fatal(err)
	}
	var wire []byte // the replayed events exactly as a client receives them
	for range events {
		ev := Event{Data: benchData}
		if ev.ID, err = br.Publish(ev); err != nil {
			b.Fatal(err)
		}
		wire, _ = ev.AppendText(wire)
	}
	// Every event and the retry hint that precedes them end in a blank line.
	const boundaries = events + 1

	b.Run("inproc", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			ctx, cancel := context.WithCancel(context.Background())
			w := &discardResponse{h: make(http.Header), want: boundaries, done: make(chan struct{})}
			r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
			r.Header.Set("Last-Event-ID", lastID)
			served := make(chan struct{})
			go func() {
				defer close(served)
				br.ServeEvents(w, r)
			}()
			select {
			case <-w.done:
			case <-time.After(10 * time.Second):
				b.Fatalf("replay: %d of %d events after 10s", w.seen.count-1, events)
			}
			cancel()
			<-served
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
	})

	run := func(b *testing.B, h http.Handler) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		// A new connection for every replay: a stream ends only when its client goes.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Last-Event-ID", lastID)
		buf := make([]byte, 64<<10)
		b.ReportAllocs()
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := client.Do(req.WithContext(ctx))
			if err != nil {
				b.Fatal(err)
			}
			var c blankLineCounter
			for c.count < boundaries {
				n, err := resp.Body.Read(buf)
				c.Write(buf[:n])
				if err != nil && c.count < boundaries {
					b.Fatalf("after %d events: %v", c.count-1, err)
				}
			}
			cancel()
			resp.Body.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
	}
	b.Run("http", func(b *testing.B) { run(b, br.Handler()) })
	b.Run("http/baseline", func(b *testing.B) {
		// The same headers and bytes, flushed in batches of 128 events as the broker
		// does, and nothing else: no ring, no lock, no deadlines.
		frames := bytes.SplitAfter(wire, []byte("\n\n"))
		run(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
			w.Header().Set("X-Accel-Buffering", "no")
			rc := http.NewResponseController(w)
			io.WriteString(w, "retry: 3000\n\n")
			rc.Flush()
			for i := 0; i < len(frames); i += 128 {
				for _, f := range frames[i:min(i+128, len(frames))] {
					w.Write(f)
				}
				rc.Flush()
			}
			<-r.Context().Done()
		}))
	})
}

// benchClients are a broker's clients, connected for a benchmark.
type benchClients struct {
	br     *Broker
	cancel context.CancelFunc // ends the in-process clients' requests
	wg     sync.WaitGroup     // the clients' goroutines
	srv    *httptest.Server   // nil for in-process clients
	tr     *http.Transport
}

// connectInProcess subscribes n clients that write to a ResponseWriter discarding everything.
func connectInProcess(b *testing.B, br *Broker, n int) *benchClients {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &benchClients{br: br, cancel: cancel}
	for range n {
		r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		w := &discardResponse{h: make(http.Header)}
		f.wg.Go(func() { br.ServeEvents(w, r) })
	}
	return f
}

// connectHTTP subscribes n clients over real HTTP/1.1 connections to an httptest.Server, each
// read by a goroutine that discards the stream.
func connectHTTP(b *testing.B, br *Broker, n int) *benchClients {
	b.Helper()
	f := &benchClients{br: br, cancel: func() {}, srv: httptest.NewServer(br.Handler())}
	f.tr = &http.Transport{MaxIdleConnsPerHost: n}
	client := &http.Client{Transport: f.tr}
	for range n {
		resp, err := client.Get(f.srv.URL)
		if err != nil {
			f.close(b)
			b.Fatal(err)
		}
		f.wg.Go(func() {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	return f
}

// waitClients waits until the broker counts n clients, so that none is still joining once
// the timer starts.
func (f *benchClients) waitClients(b *testing.B, n int) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for f.br.Stats().Clients != int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d clients subscribed after 30s", f.br.Stats().Clients, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitDelivered waits until the broker has written target events to clients in all.
func (f *benchClients) waitDelivered(b *testing.B, target int64) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := f.br.Stats()
		if st.Delivered >= target {
			return
		}
		if st.SlowDisconnects > 0 || time.Now().After(deadline) {
			b.Fatalf("%d of %d deliveries; %d slow disconnects", st.Delivered, target, st.SlowDisconnects)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// close ends every stream, the broker first: an httptest.Server's Close waits for the open
// streams, which end only when the broker shuts down.
func (f *benchClients) close(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.br.Shutdown(ctx); err != nil {
		b.Errorf("Shutdown: %v", err)
	}
	f.cancel()
	f.wg.Wait()
	if f.tr != nil {
		f.tr.CloseIdleConnections()
	}
	if f.srv != nil {
		f.srv.Close()
	}
}

// discardResponse is an http.ResponseWriter with Flush and SetWriteDeadline, as
// http.ResponseController looks for, that throws away what is written. With want set, it
// closes done once it has seen that many blank lines (event ends).
type discardResponse struct {
	h    http.Header
	want int
	done chan struct{}
	seen blankLineCounter
}

func (w *discardResponse) Header() http.Header { return w.h }
func (w *discardResponse) WriteHeader(int)     {}
func (w *discardResponse) Flush()              {}

func (w *discardResponse) SetWriteDeadline(time.Time) error { return nil }

func (w *discardResponse) Write(p []byte) (int, error) {
	if w.done != nil {
		w.seen.Write(p)
		if w.seen.count == w.want {
			close(w.done)
		}
	}
	return len(p), nil
}

// blankLineCounter counts the blank lines ("\n\n") in what is written to it, also when one is
// split between two writes.
type blankLineCounter struct {
	count int
	last  byte
}

func (c *blankLineCounter) Write(p []byte) {
	if len(p) == 0 {
		return
	}
	if c.last == '\n' && p[0] == '\n' {
		c.count++
	}
	c.count += bytes.Count(p, []byte("\n\n"))
	c.last = p[len(p)-1]
}

// BenchmarkPublishGroups publishes to a topic that every client reads beside a topic of its
// own, the per-user pattern ("user:ID", "announcements"): each client is a group of its own,
// and Publish's work grows with the number of groups, not faster.
func BenchmarkPublishGroups(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			br := NewBroker(WithHistory(1 << 16))
			ctx, cancel := context.WithCancel(context.Background())
			f := &benchClients{br: br, cancel: cancel}
			for i := range n {
				r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
				w := &discardResponse{h: make(http.Header)}
				f.wg.Go(func() { br.ServeEvents(w, r, "user:"+strconv.Itoa(i), "announcements") })
			}
			f.waitClients(b, n)
			defer f.close(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := br.Publish(Event{Data: benchData}, "announcements"); err != nil {
					b.Fatal(err)
				}
				if i++; i%publishBatch == 0 {
					b.StopTimer()
					f.waitDelivered(b, int64(i*n))
					b.StartTimer()
				}
			}
		})
	}
}

// stalledResponse is a client whose first event's write blocks until release is closed, as a
// client that stops reading blocks a write: it cannot set a deadline, so it stays stuck.
type stalledResponse struct {
	discardResponse
	release chan struct{}
}

func (w *stalledResponse) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("data: ")) {
		<-w.release
	}
	return len(p), nil
}

// BenchmarkPublishStalled publishes 1 KiB events to 100 reading clients, with and without one
// more client stuck in a write: Publish must not notice it.
func BenchmarkPublishStalled(b *testing.B) {
	const readers = 100
	payload := strings.Repeat("x", 1024)
	for _, stalled := range []bool{false, true} {
		b.Run(fmt.Sprintf("stalled=%v", stalled), func(b *testing.B) {
			br := NewBroker()
			f := connectInProcess(b, br, readers)
			clients := readers
			release := make(chan struct{})
			if stalled {
				w := &stalledResponse{discardResponse{h: make(http.Header)}, release}
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				f.wg.Go(func() { br.ServeEvents(w, r) })
				clients++
			}
			f.waitClients(b, clients)
			defer f.close(b)
			defer close(release) // before close, which waits for every client
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := br.Publish(Event{Data: payload}); err != nil {
					b.Fatal(err)
				}
				if i++; i%publishBatch == 0 {
					b.StopTimer()
					f.waitDelivered(b, int64(i*readers))
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkAheadStorm measures what a storm of resumes from IDs a Broker that follows a log has
// not reached yet costs the clients already streaming: the p99 latency of 100 clients reading
// events appended at 1,000 a second for 2 s, without a storm, and with 2,000 resumes from IDs up
// to 2 s ahead arriving over one second from 0.5 s on, under WithMaxClients(300). Resumes over
// the limit are turned away at once; those under it wait, each for its own event, on the
// request's goroutine alone. The storm's connections are made in the same process, on the same
// cores: part of what it costs the readers is theirs.
func BenchmarkAheadStorm(b *testing.B) {
	for _, storm := range []int{0, 2000} {
		b.Run(fmt.Sprint("resumes=", storm), func(b *testing.B) {
			var p99s []time.Duration
			for b.Loop() {
				p99s = append(p99s, aheadStorm(b, storm))
			}
			slices.Sort(p99s)
			b.ReportMetric(float64(p99s[len(p99s)/2])/1e6, "p99-ms")
		})
	}
}

// aheadStorm runs one round of BenchmarkAheadStorm and returns the streaming clients' p99.
func aheadStorm(b *testing.B, storm int) time.Duration {
	const (
		readers = 100
		rate    = time.Millisecond // between two events
		length  = 2 * time.Second
		stormAt = length / 4
	)
	br := NewBroker(WithMaxClients(300), WithHeartbeat(-1))
	if err := br.Append("e1", 1, time.Time{}, Event{Data: "0"}); err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(br.Handler())
	defer ts.Close()
	defer br.Shutdown(context.Background())
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, MaxIdleConnsPerHost: -1}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The readers note each event's latency, from the time in its data, once the storm may come.
	var mu sync.Mutex
	var lat []time.Duration
	begin := time.Now()
	var wg sync.WaitGroup
	for range readers {
		req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL, nil)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer resp.Body.Close()
			var mine []time.Duration
			for ev, err := range Read(resp.Body) {
				if err != nil {
					break
				}
				if ns, err := strconv.ParseInt(ev.Data, 10, 64); err == nil && ns > begin.Add(stormAt).UnixNano() {
					mine = append(mine, time.Since(time.Unix(0, ns)))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	for br.Stats().Clients < readers {
		time.Sleep(time.Millisecond)
	}

	// The storm: resumes from the IDs of events 1 ms to 2 s ahead, one every 0.5 ms.
	var storms sync.WaitGroup
	var seq atomic.Uint64
	seq.Store(1)
	if storm > 0 {
		storms.Add(1)
		go func() {
			defer storms.Done()
			time.Sleep(stormAt)
			tick := time.NewTicker(time.Second / time.Duration(storm))
			defer tick.Stop()
			for i := range storm {
				<-tick.C
				storms.Add(1)
				go func() {
					defer storms.Done()
					req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL, nil)
					req.Header.Set("Last-Event-ID", "e1-"+strconv.FormatUint(seq.Load()+1+uint64(i%2000), 10))
					resp, err := client.Do(req)
					if err != nil {
						return
					}
					defer resp.Body.Close()
					for _, err := range Read(resp.Body) { // one event, or the refusal's end
						if err != nil {
							return
						}
						break
					}
				}()
			}
		}()
	}

	for n := uint64(2); time.Since(begin) < length; n++ {
		time.Sleep(rate)
		if err := br.Append("e1", n, time.Time{}, Event{Data: strconv.FormatInt(time.Now().UnixNano(), 10)}); err != nil {
			b.Fatal(err)
		}
		seq.Store(n)
	}
	cancel()
	storms.Wait()
	wg.Wait()
	if len(lat) == 0 {
		b.Fatal("no latency measured")
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// BenchmarkHeartbeatTick measures a heartbeat tick (one op) with many groups, as an
// application with a topic per user has: each client on a topic of its own, none of them
// reading, so that every group is due for a heartbeat once an interval (four ticks), and a
// tenth of them published to between ticks. It also reports how long a Publish to another
// topic, from a goroutine that publishes while ticks run, took (p99-publish-µs): a tick holds
// the broker's lock.
func BenchmarkHeartbeatTick(b *testing.B) {
	for _, groups := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			b.ReportAllocs()
			br := NewBroker(WithHeartbeat(time.Hour), WithHistory(1))
			names := make([]string, groups)
			clients := make([]*client, groups)
			for i := range groups {
				names[i] = "user-" + strconv.Itoa(i)
				c, _, _, err := br.join(names[i:i+1], "", false)
				if err != nil {
					b.Fatal(err)
				}
				clients[i] = c
			}
			defer func() {
				for _, c := range clients {
					br.leave(c)
				}
			}()
			var stop, ticking atomic.Bool
			var took []time.Duration
			done := make(chan struct{})
			go func() {
				defer close(done)
				for !stop.Load() {
					if !ticking.Load() {
						runtime.Gosched()
						continue
					}
					start := time.Now()
					br.Publish(Event{Data: "x"}, "elsewhere")
					took = append(took, time.Since(start))
				}
			}()
			next := 0
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				for range groups / 10 {
					br.Publish(Event{Data: "x"}, names[next])
					next = (next + 1) % groups
				}
				b.StartTimer()
				ticking.Store(true)
				br.tick()
				ticking.Store(false)
			}
			b.StopTimer()
			stop.Store(true)
			<-done
			if len(took) > 0 {
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-publish-µs")
				b.ReportMetric(float64(len(took))/float64(b.N), "publishes/op")
			}
		})
	}
}
