package sse

import (
	"context"
	"io"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"sse/internal/spec"
)

// These tests run the broker in a synctest bubble, on a fake clock, with an in-memory
// ResponseWriter: they check timing exactly, without sleeping. The same behaviours are tested
// through real servers in broker_test.go.

// recorder is an in-memory ResponseWriter that a test may read while the handler writes.
type recorder struct {
	mu sync.Mutex
	*httptest.ResponseRecorder
	writes []time.Time // when each write came
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, time.Now())
	return r.ResponseRecorder.Write(p)
}

// longestSilence returns the longest time between two writes, or from the last one to now.
func (r *recorder) longestSilence() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var longest time.Duration
	for i := 1; i <= len(r.writes); i++ {
		end := time.Now()
		if i < len(r.writes) {
			end = r.writes[i]
		}
		longest = max(longest, end.Sub(r.writes[i-1]))
	}
	return longest
}

func (r *recorder) Flush() {}

// take returns what was written since the last call.
func (r *recorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.Body.String()
	r.Body.Reset()
	return s
}

// serve runs ServeEvents for a request with lastID as its Last-Event-ID, on topics, until the
// returned function is called.
func serve(b *Broker, lastID string, topics ...string) (*recorder, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	r := httptest.NewRequestWithContext(ctx, "GET", "/", nil)
	if lastID != "" {
		r.Header.Set("Last-Event-ID", lastID)
	}
	rec := &recorder{ResponseRecorder: httptest.NewRecorder()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.ServeEvents(rec, r, topics...)
	}()
	return rec, func() { cancel(); <-done }
}

// TestHeartbeatTiming checks the heartbeat's promise: an idle stream never goes longer than
// 1.25 intervals without a byte, whenever its client joined and whenever events came, and a
// stream whose events come more often than that gets no heartbeat between them.
func TestHeartbeatTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 15 * time.Second
		b := NewBroker(WithHeartbeat(interval))
		var recs []*recorder
		for range 7 { // clients that join at different points of the ticks
			rec, stop := serve(b, "")
			defer stop()
			recs = append(recs, rec)
			time.Sleep(interval * 3 / 10)
		}
		time.Sleep(5 * interval) // idle
		for _, gap := range []float64{0.3, 1.1, 0.05, 0.9, 1.3, 0.2, 2.5, 1.0} {
			time.Sleep(time.Duration(gap * float64(interval)))
			b.Publish(Event{Data: "x"})
		}
		time.Sleep(3 * interval)
		synctest.Wait()
		for i, rec := range recs {
			// The promise is less than 1.25 intervals; the schedule gives at most one.
			if d := rec.longestSilence(); d > interval {
				t.Errorf("client %d: %v without a byte, at a heartbeat interval of %v", i, d, interval)
			}
			rec.take()
		}

		// Events every 0.7 intervals: no heartbeat comes between them.
		for range 10 {
			time.Sleep(interval * 7 / 10)
			b.Publish(Event{Data: "x"})
		}
		synctest.Wait()
		for i, rec := range recs {
			_, got, _ := strings.Cut(rec.take(), "data: x") // a heartbeat may come before the first
			if strings.Contains(got, ":\n") {
				t.Errorf("client %d: a heartbeat between events 0.7 intervals apart: %q", i, got)
			}
		}
		b.Shutdown(context.Background())
	})
}

// TestHeartbeatManyGroups checks the heartbeat's promise with many groups, each woken at
// times of its own, and groups that go and come back: a tick looks only at the groups due
// then, and moves the others to the tick they are due at (see Broker.tick). Clients of the
// topic published every 0.6 intervals get no heartbeat; no stream goes an interval without a
// byte.
func TestHeartbeatManyGroups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 15 * time.Second
		b := NewBroker(WithHeartbeat(interval))
		defer b.Shutdown(context.Background())
		subs := [][]string{{"busy"}, {"a"}, {"b"}, {"a", "b"}, {"c"}, {"busy", "c"}, {"d"}, {"a", "d"}}
		type stream struct {
			rec  *recorder
			stop func()
		}
		streams := make([]stream, len(subs))
		for i, topics := range subs {
			rec, stop := serve(b, "", topics...)
			streams[i] = stream{rec, stop}
			time.Sleep(interval * time.Duration(1+i%3) / 7)
		}
		// Enough idle groups to be due at one tick that a tick lets go of the lock between
		// them.
		for i := range 2*tickBatch + 10 {
			rec, stop := serve(b, "", "idle-"+strconv.Itoa(i))
			streams = append(streams, stream{rec, stop})
			subs = append(subs, []string{"idle-" + strconv.Itoa(i)})
		}
		synctest.Wait()
		for _, st := range streams {
			st.rec.take() // the preamble
		}
		busy := time.NewTicker(interval * 6 / 10)
		defer busy.Stop()
		gaps := []float64{0.3, 1.1, 0.05, 0.9, 1.3, 0.2, 2.5, 1.0, 0.45, 0.7}
		topics := []string{"a", "b", "c", "d", "a", "c", "b", "a", "d", "c"}
		for i, gap := range gaps {
			deadline := time.After(time.Duration(gap * float64(interval)))
		wait:
			for {
				select {
				case <-busy.C:
					b.Publish(Event{Data: "x"}, "busy")
				case <-deadline:
					break wait
				}
			}
			b.Publish(Event{Data: "x"}, topics[i])
			if i == 4 || i == 7 { // a group goes, and comes back
				streams[6].stop()
				synctest.Wait()
				streams[6].rec.take()
				rec, stop := serve(b, "", subs[6]...)
				streams[6] = stream{rec, stop}
			}
		}
		synctest.Wait()
		for i, st := range streams {
			if !slices.Contains(subs[i], "busy") {
				continue
			}
			// A heartbeat may come before the first event.
			if _, got, _ := strings.Cut(st.rec.take(), "data: x"); strings.Contains(got, ":\n") {
				t.Errorf("stream %d on %q: a heartbeat between events 0.6 intervals apart", i, subs[i])
			}
		}
		time.Sleep(2 * interval) // idle
		synctest.Wait()
		for i, st := range streams {
			if d := st.rec.longestSilence(); d > interval {
				t.Errorf("stream %d on %q: %v without a byte, at a heartbeat interval of %v", i, subs[i], d, interval)
			}
		}
		checkDue(t, b)
		for _, st := range streams {
			st.stop()
		}
		checkDue(t, b)
	})
}

// TestTickLetsGo checks a tick over more groups than a batch while, with the lock let go
// between batches, clients leave and come, another tick runs, or the broker shuts down: every
// group still due is woken with a heartbeat exactly once, and the lists of ticks stay whole.
func TestTickLetsGo(t *testing.T) {
	for _, tc := range []struct {
		name string
		// meanwhile runs at the first let-go; it returns whether the tick goes on.
		meanwhile func(b *Broker, leave func(i int), join func()) bool
	}{
		{"nothing", func(*Broker, func(int), func()) bool { return true }},
		{"clients leave and come", func(b *Broker, leave func(int), join func()) bool {
			for i := 0; i < 3*tickBatch; i += 7 { // on both sides of where the tick is
				leave(i)
			}
			for range 20 {
				join()
			}
			return true
		}},
		{"every client leaves, one comes, and its tick runs", func(b *Broker, leave func(int), join func()) bool {
			for i := range 3 * tickBatch {
				leave(i)
			}
			join() // which starts the timer again
			b.tick()
			b.Publish(Event{Data: "x"}, "new0") // at the tick after this one
			return false
		}},
		{"shutdown", func(b *Broker, leave func(int), join func()) bool {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			b.Shutdown(ctx) // which does not wait: the clients here never leave
			return false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBroker(WithHeartbeat(time.Hour))
			join := func(name string) *client {
				c, _, _, err := b.join([]string{name}, "", false)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			const n = 3 * tickBatch
			clients := make([]*client, n)
			for i := range clients {
				clients[i] = join("g" + strconv.Itoa(i)) // all due at tick 4
			}
			for range ticksPerBeat - 1 {
				b.tick()
			}
			gone := map[int]bool{}
			var joined []*client
			leave := func(i int) {
				if !gone[i] {
					b.leave(clients[i])
					gone[i] = true
				}
			}
			goesOn := true
			first := true
			b.tickHook = func() {
				if !first {
					return
				}
				first = false
				goesOn = tc.meanwhile(b, leave, func() {
					joined = append(joined, join("new"+strconv.Itoa(len(joined))))
				})
			}
			b.tick() // tick 4
			b.tickHook = nil
			for i, c := range clients {
				// The tick looks at the list from its end, and lets go of the lock after
				// the first tickBatch-1 groups.
				var want uint64
				switch {
				case i >= n-(tickBatch-1):
					want = 1 // before the let-go
				case goesOn && !gone[i]:
					want = 1
				}
				if got := c.g.beats.Load(); got != want {
					t.Errorf("group %d (its client gone: %t): %d heartbeats, want %d", i, gone[i], got, want)
				}
			}
			for _, c := range joined {
				if c.g.beats.Load() != 0 {
					t.Errorf("group %q, new at this tick, woken with a heartbeat", c.g.key)
				}
			}
			checkDue(t, b)
			for i := range clients {
				leave(i)
			}
			for _, c := range joined {
				b.leave(c)
			}
			checkDue(t, b)
		})
	}
}

// checkDue checks that every group of b is in the lists of ticks (Broker.due) once, at the
// index it knows, and nothing else is.
func checkDue(t *testing.T, b *Broker) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for k, list := range b.due {
		for i, g := range list {
			if g.due != k || g.dueIdx != i || b.groups[g.key] != g {
				t.Errorf("due[%d][%d] is group %q, which says it is at due[%d][%d] (in the broker's groups: %t)",
					k, i, g.key, g.due, g.dueIdx, b.groups[g.key] == g)
			}
		}
		n += len(list)
	}
	if n != len(b.groups) {
		t.Errorf("%d groups in the lists of ticks, %d groups", n, len(b.groups))
	}
}

func TestHeartbeatOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker(WithHeartbeat(-1))
		rec, stop := serve(b, "")
		defer stop()
		synctest.Wait()
		rec.take()
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := rec.take(); got != "" {
			t.Errorf("with heartbeats off, an idle hour wrote %q", got)
		}
	})
}

// TestHistoryAgeTiming drops events from the history exactly when they are older than the age.
func TestHistoryAgeTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker(WithHistoryAge(time.Minute), WithHeartbeat(-1))
		defer b.Shutdown(context.Background())
		first, _ := b.Publish(Event{Data: "0"})
		time.Sleep(30 * time.Second)
		b.Publish(Event{Data: "30s"})
		time.Sleep(31 * time.Second) // "0" is over a minute old: gone; "30s" is held

		read := func(lastID string) []spec.Event {
			rec, stop := serve(b, lastID)
			synctest.Wait()
			stop()
			var evs []spec.Event
			d := spec.NewDecoder(strings.NewReader(rec.take()))
			for {
				ev, err := d.Next()
				if err == io.EOF {
					return evs
				}
				evs = append(evs, ev)
			}
		}
		// Resuming after "0" loses nothing: "0" was the last event seen, "30s" is held.
		if evs := read(first); len(evs) != 1 || evs[0].Data != "30s" {
			t.Errorf("after the first event: %+v, want only 30s", evs)
		}
		time.Sleep(30 * time.Second) // now "30s" is over a minute old too
		if evs := read(first); len(evs) != 1 || evs[0].Type != MissedType {
			t.Errorf("once all aged out: %+v, want only %q", evs, MissedType)
		}
	})
}

// TestHistoryBounded publishes far more than the history holds, with events also aging out in
// between, at a publish or at a client's join: the chunks a topic keeps stay within the
// history, plus one partly filled.
func TestHistoryBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const history = 100
		b := NewBroker(WithHistory(history), WithHistoryAge(time.Second), WithHeartbeat(-1))
		defer b.Shutdown(context.Background())
		_, stop := serve(b, "") // a client that keeps the topic alive throughout
		defer stop()
		for round := range 10 {
			for range chunkSize * (round%3 + 1) {
				b.Publish(Event{Data: "x"})
			}
			time.Sleep(2 * time.Second) // all of them age out
			if round%2 == 0 {
				_, stop := serve(b, "resume") // which ages them out at the join
				synctest.Wait()
				stop()
			}
		}
		for range 10 * history {
			b.Publish(Event{Data: "x"})
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		tp := b.topics[""]
		if held, max := len(tp.chunks), history/chunkSize+2; held > max {
			t.Errorf("topic keeps %d chunks, want at most %d", held, max)
		}
		if n := tp.head.Load() - tp.tail.Load(); n != history {
			t.Errorf("topic holds %d events, want %d", n, history)
		}
	})
}

// TestShutdownRetryJitter checks that the retry hints at shutdown are spread out.
func TestShutdownRetryJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBroker(WithRetry(time.Second), WithHeartbeat(-1))
		const n = 20
		recs := make([]*recorder, n)
		for i := range recs {
			recs[i], _ = serve(b, "")
		}
		synctest.Wait()
		b.Shutdown(context.Background())
		seen := map[int64]bool{}
		for _, rec := range recs {
			d := spec.NewDecoder(strings.NewReader(rec.take()))
			d.Next()
			if r := d.Retry(); r < 1000 || r >= 2000 {
				t.Errorf("retry hint %d ms, want within [1000, 2000)", r)
			}
			seen[d.Retry()] = true
		}
		if len(seen) < n/2 {
			t.Errorf("%d clients got only %d distinct retry hints", n, len(seen))
		}
	})
}

// TestHeartbeatEveryInterval checks that an idle stream gets one heartbeat an interval, not
// one a tick, and that heartbeats start again for a client that comes after every other
// client has left (the broker's timer stops then).
func TestHeartbeatEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 15 * time.Second
		b := NewBroker(WithHeartbeat(interval))
		defer b.Shutdown(context.Background())
		for round := range 2 {
			time.Sleep(interval * 7 / 10) // no client: the timer is stopped
			rec, stop := serve(b, "")
			synctest.Wait()
			rec.take() // the preamble
			time.Sleep(10 * interval)
			synctest.Wait()
			if d := rec.longestSilence(); d > interval {
				t.Errorf("round %d: %v without a byte, at a heartbeat interval of %v", round, d, interval)
			}
			if n := strings.Count(rec.take(), ":\n"); n < 9 || n > 10 {
				t.Errorf("round %d: %d heartbeats in 10 idle intervals, want 9 or 10", round, n)
			}
			stop()
		}
	})
}
