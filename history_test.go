package sse

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sse/internal/spec"
)

// Over the memory budget the oldest events of all topics go first, a client resuming from
// one of them is told it missed events, and an event of several topics counts once.
func TestHistoryMemory(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		data := strings.Repeat("x", 1000)
		frame := int64(len(appendEvent(Event{Data: data}))) + 64 // with room for the ID
		b := newBroker(m, WithHistoryMemory(10*frame+3*chunkBytes))
		mux := http.NewServeMux()
		mux.HandleFunc("/{topic}", func(w http.ResponseWriter, r *http.Request) {
			b.ServeEvents(w, r, r.PathValue("topic"))
		})
		s := newServer(t, m, b, mux)

		a0 := publish(t, b, data, "a")
		a1 := publish(t, b, data, "a")
		for range 4 {
			publish(t, b, data, "a", "b") // one copy in each, counted once
		}
		b.mu.Lock()
		held := b.hist.bytes
		b.mu.Unlock()
		if max := 6*frame + 2*chunkBytes + 4*copyIndexBytes; held > max {
			t.Errorf("%d bytes held for 6 events, want at most %d", held, max)
		}
		for range 6 {
			publish(t, b, data, "b") // pushes out the oldest two: a's own
		}
		b.mu.Lock()
		aHeld, bHeld, held := b.topics["a"].len(), b.topics["b"].len(), b.hist.bytes
		b.mu.Unlock()
		if held > b.opts.memory {
			t.Errorf("%d bytes held, over the budget of %d", held, b.opts.memory)
		}
		if aHeld != 4 || bHeld != 10 {
			t.Errorf("a holds %d, b holds %d; want 4 and 10: the oldest dropped first", aHeld, bHeld)
		}
		ts := s.open(t, "/a", a0)
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming from an evicted event: got %+v, want %s", ev, MissedType)
		}
		ts.close()
		ts = s.open(t, "/a", a1) // the newest evicted: all after it are held
		ts.expect(data, data, data, data)
		waitFor(t, "the client to join", func() bool { return b.Stats().Clients == 1 })
		publish(t, b, "next", "a")
		ts.expect("next")
	})
}

// appendEvent returns ev as it goes on the wire.
func appendEvent(ev Event) []byte { return ev.appendTo(nil) }

// An event bigger than the whole budget is still published and delivered: only older ones
// make room for it.
func TestHistoryMemoryBigEvent(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		b := newBroker(m, WithHistoryMemory(1000))
		s := newServer(t, m, b, b.Handler())
		ts := s.openN(t, "/", 1)
		publish(t, b, "small")
		ts.expect("small")
		big := strings.Repeat("x", 10000)
		publish(t, b, big)
		ts.expect(big)
		publish(t, b, "after")
		ts.expect("after")
	})
}

// The heap a broker holds stays within its memory budget plus a bounded overhead for each
// topic and each client: 2,000 topics with five readers each, publishing 1 KiB events to
// all of them in turn, far more than the budget holds.
func TestHistoryMemoryHeap(t *testing.T) {
	const (
		topics  = 2000
		readers = 5
		budget  = 16 << 20
		events  = 60000 // 60 MiB published, 30 per topic: within the history of each
	)
	heap := historyHeap(t, budget, topics, readers, events)
	limit := budget + topics*perTopicBytes(1<<10) + topics*readers*perClientBytes
	t.Logf("heap %.1f MiB with a %d MiB budget; limit %.1f MiB", float64(heap)/(1<<20), budget>>20, float64(limit)/(1<<20))
	if heap > uint64(limit) {
		t.Errorf("heap %d bytes, over the budget plus overhead, %d", heap, limit)
	}
}

// The budget counts the indexes too: the entry of each ID the application chose, and of
// each event several topics hold, which take more than a short event itself.
func TestHistoryMemoryIndexes(t *testing.T) {
	const budget = 8 << 20
	data := strings.Repeat("x", 100)
	for _, tt := range []struct {
		name   string
		ids    bool
		topics []string
	}{
		{"IDs", true, nil},
		{"two topics", false, []string{"a", "b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A topic's overhead, and the slack of maps that grow by doubling.
			limit := uint64(budget + budget/10 + 2*perTopicBytes(len(data)))
			// What another goroutine frees between the two looks at the heap counts as the
			// broker's: a heap over the limit is measured again, up to three times.
			var heap uint64
			for range 3 {
				if heap = historyIndexHeap(t, budget, data, tt.ids, tt.topics); heap <= limit {
					break
				}
			}
			t.Logf("heap %.1f MiB with a %d MiB budget", float64(heap)/(1<<20), budget>>20)
			if heap > limit {
				t.Errorf("heap %d bytes, over the budget plus overhead, %d", heap, limit)
			}
		})
	}
}

// historyIndexHeap publishes 150,000 events of data (over twice what the budget holds) to
// topics, with IDs of their own if ids is set, and returns the heap the broker then holds.
func historyIndexHeap(t *testing.T, budget int64, data string, ids bool, topics []string) uint64 {
	b := NewBroker(WithHistoryMemory(budget), WithHistory(1<<20))
	for i := range 150000 {
		ev := Event{Data: data}
		if ids {
			ev.ID = "e" + strconv.Itoa(i)
		}
		if _, err := b.Publish(ev, topics...); err != nil {
			t.Fatal(err)
		}
	}
	// The heap with the broker, less the heap once it is gone (b is not used after Shutdown),
	// which what earlier tests left does not change.
	held := heapInUse()
	b.Shutdown(context.Background())
	return held - min(heapInUse(), held)
}

// perTopicBytes is what a topic may take beside its events, with events of eventSize bytes:
// its own fields and map entries, two chunks (one filling, one the tail is in), and the events
// dropped from the chunk its tail is in, which go with the chunk. The package documentation
// gives the same figure.
func perTopicBytes(eventSize int) int {
	return 1024 + 2*int(chunkBytes) + chunkSize*(eventSize+64)
}

// perClientBytes is what a client that keeps up takes, beside its connection: its cursors,
// group and batch.
const perClientBytes = 1024

// historyHeap publishes events of 1 KiB to topics in turn, with readers in-process readers on
// each that read everything, and returns the heap in use once they are done, less what was in
// use before.
func historyHeap(tb testing.TB, budget int64, topics, readers, events int) uint64 {
	before := heapInUse()
	b := NewBroker(WithHistoryMemory(budget))
	names := make([]string, topics)
	var clients []*client
	for i := range names {
		names[i] = "topic" + strconv.Itoa(i)
		for range readers {
			c, _, _, err := b.join([]string{names[i]}, "", false)
			if err != nil {
				tb.Fatal(err)
			}
			clients = append(clients, c)
		}
	}
	// A few goroutines read for all the clients, as their handlers would.
	var wg sync.WaitGroup
	done := make(chan struct{})
	const workers = 4
	for w := range workers {
		wg.Go(func() {
			for {
				finished := false
				select {
				case <-done:
					finished = true
				default:
				}
				for _, c := range clients[w*len(clients)/workers : (w+1)*len(clients)/workers] {
					for {
						frames, lost := c.read(b.published.Load())
						if lost {
							panic("a reader fell behind")
						}
						if len(frames) == 0 {
							break
						}
						clear(frames)
					}
				}
				if finished {
					return
				}
				runtime.Gosched()
			}
		})
	}
	data := strings.Repeat("x", 1<<10-40)
	for i := range events {
		if _, err := b.Publish(Event{Data: data}, names[i%topics]); err != nil {
			tb.Fatal(err)
		}
		if i%topics == topics-1 {
			time.Sleep(time.Millisecond) // let the readers keep up
		}
	}
	close(done)
	wg.Wait()
	after := heapInUse()
	runtime.KeepAlive(b)
	runtime.KeepAlive(clients)
	for _, c := range clients {
		b.leave(c)
	}
	// Its heartbeat timer would keep it, and its history, until it fires: a later test that
	// measures the heap would see them go.
	b.Shutdown(context.Background())
	return after - min(before, after)
}

// heapInUse collects garbage and returns the bytes of heap in use.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkHistoryMemory reports the heap that 2,000 topics with five readers each take after
// 60 MiB of 1 KiB events, with the default budget and with none (each topic then holds its
// 1,024 most recent events; here 30).
func BenchmarkHistoryMemory(b *testing.B) {
	for _, budget := range []int64{64 << 20, -1} {
		name := fmt.Sprintf("budget=%dMiB", budget>>20)
		if budget < 0 {
			name = "budget=none"
		}
		b.Run(name, func(b *testing.B) {
			var heap uint64
			for b.Loop() {
				heap = historyHeap(b, budget, 2000, 5, 120000)
			}
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// TestHistoryModel publishes at random to random sets of topics, with random IDs, limits and
// clients coming and going, and checks after every step that what the history counts, indexes
// and orders is what it holds.
func TestHistoryModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		b := NewBroker(WithHistory(1+rng.IntN(20)), WithHistoryMemory(int64(2000+rng.IntN(20000))))
		var clients []*client
		for step := range 2000 {
			switch r := rng.IntN(100); {
			case r < 5:
				c, _, _, err := b.join(randomTopics(rng), "", false)
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, c)
			case r < 10 && len(clients) > 0:
				i := rng.IntN(len(clients))
				b.leave(clients[i])
				clients = slices.Delete(clients, i, i+1)
			default:
				ev := Event{Data: strings.Repeat("x", rng.IntN(300))}
				if rng.IntN(3) == 0 {
					ev.ID = "app-" + strconv.Itoa(rng.IntN(50))
				}
				if _, err := b.Publish(ev, randomTopics(rng)...); err != nil {
					t.Fatal(err)
				}
			}
			if err := checkHistory(b); err != nil {
				t.Fatalf("round %d, step %d: %v", round, step, err)
			}
		}
		for _, c := range clients {
			b.leave(c)
		}
	}
}

// randomTopics returns one to three of 1,500 topic names, more than the unread topics kept.
func randomTopics(rng *rand.Rand) []string {
	names := make([]string, 1+rng.IntN(3))
	for i := range names {
		names[i] = "t" + strconv.Itoa(rng.IntN(1500))
	}
	return names
}

// checkHistory recounts what b's history holds and compares it with what the history says.
func checkHistory(b *Broker) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := &b.hist
	var bytes int64
	copies := map[uint64]int{}
	newest := map[string]uint64{}
	aged := 0
	for name, t := range b.topics {
		bytes += int64(len(t.chunks)) * chunkBytes
		if n := t.len(); n > uint64(h.perTopic) {
			return fmt.Errorf("topic %q holds %d events, over %d", name, n, h.perTopic)
		}
		if t.len() > 0 {
			aged++
			if t.aged == 0 || h.byAge[t.aged-1] != t {
				return fmt.Errorf("topic %q holds events but is not in byAge where it says", name)
			}
		}
		for p := t.tail.Load(); p < t.head.Load(); p++ {
			e := t.at(p)
			if copies[e.seq]++; copies[e.seq] == 1 {
				bytes += eventBytes(e)
				if e.id != "" && e.seq > newest[e.id] {
					newest[e.id] = e.seq
				}
			}
		}
	}
	bytes += int64(len(newest))*idIndexBytes + int64(len(h.copies))*copyIndexBytes
	if bytes != h.bytes {
		return fmt.Errorf("history counts %d bytes, holds %d", h.bytes, bytes)
	}
	if h.budget > 0 && bytes > h.budget+int64(2*len(b.topics))*chunkBytes+400 {
		// Over the budget only by chunks that cannot go yet (each topic's last, and the one
		// its tail is in), or by the newest event.
		return fmt.Errorf("%d bytes held, budget %d", bytes, h.budget)
	}
	for seq, n := range copies {
		if n > 1 && h.copies[seq] != n {
			return fmt.Errorf("event %d held by %d topics, counted as %d", seq, n, h.copies[seq])
		}
	}
	for seq, n := range h.copies {
		if copies[seq] != n {
			return fmt.Errorf("event %d counted as held by %d topics, held by %d", seq, n, copies[seq])
		}
	}
	if !maps.Equal(newest, h.byID) {
		return fmt.Errorf("IDs indexed %v, held %v", h.byID, newest)
	}
	if len(h.byAge) != aged {
		return fmt.Errorf("byAge has %d topics, %d hold events", len(h.byAge), aged)
	}
	for i := 1; i < len(h.byAge); i++ {
		if h.byAge.Less(i, (i-1)/2) {
			return fmt.Errorf("byAge is not a heap at %d", i)
		}
	}
	return nil
}

// BenchmarkResumeUnknownID measures what a client resuming from an ID the broker does not
// know costs under the broker's lock (join and leave), with a history of 1,024 and 100,000
// events that all have IDs the application chose: it should not depend on the history.
func BenchmarkResumeUnknownID(b *testing.B) {
	for _, n := range []int{1024, 100000} {
		b.Run("history="+strconv.Itoa(n), func(b *testing.B) {
			br := NewBroker(WithHistory(n), WithHistoryMemory(-1))
			for i := range n {
				br.Publish(Event{ID: "app-" + strconv.Itoa(i), Data: "x"})
			}
			for b.Loop() {
				c, _, missed, err := br.join(nil, "garbage", false)
				if err != nil || !missed {
					b.Fatalf("join: missed %v, %v", missed, err)
				}
				br.leave(c)
			}
		})
	}
}

// Publish goes on at its usual pace while clients storm in with IDs the broker does not know,
// against a history of 100,000 events with IDs the application chose.
func TestPublishDuringUnknownIDStorm(t *testing.T) {
	b := NewBroker(WithHistory(100000), WithHistoryMemory(-1))
	s := newServer(t, http1, b, b.Handler("history"))
	for i := range 100000 {
		if _, err := b.Publish(Event{ID: "app-" + strconv.Itoa(i), Data: "x"}, "history"); err != nil {
			t.Fatal(err)
		}
	}
	// slow publishes n events, one every 20µs, and returns how many took over 250µs.
	slow := func(n int) int {
		slow := 0
		for range n {
			start := time.Now()
			if _, err := b.Publish(Event{Data: "live"}, "elsewhere"); err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 250*time.Microsecond {
				slow++
			}
			time.Sleep(20 * time.Microsecond)
		}
		return slow
	}
	quiet := slow(1000)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var storms atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "GET", s.URL, nil)
				req.Header.Set("Last-Event-ID", "garbage-"+strconv.Itoa(rand.IntN(1e9)))
				resp, err := s.Client().Do(req)
				if err == nil {
					ev, err := spec.NewDecoder(resp.Body).Next()
					if err == nil && ev.Type == MissedType {
						storms.Add(1)
					}
					resp.Body.Close()
				}
				cancel()
			}
		})
	}
	waitFor(t, "the storm to start", func() bool { return storms.Load() >= 20 })
	stormy := slow(1000)
	close(stop)
	wg.Wait()
	t.Logf("Publish over 250µs: %d of 1000 quiet, %d of 1000 during %d unknown-ID resumes", quiet, stormy, storms.Load())
	// Before the index, each resume held the lock for a walk of the history (1.3ms, 10ms
	// under the race detector) and a third to a half of the publishes waited for one. Now
	// they share only the CPU.
	if stormy > 100 {
		t.Errorf("%d of 1000 publishes took over 250µs during the storm, want at most 100", stormy)
	}
}
