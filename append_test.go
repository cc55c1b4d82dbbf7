package sse

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"
)

// node is one of several Brokers following the same log, served over HTTP.
type node struct {
	*server
	ends chan error
}

func newNode(t *testing.T, m mode, opts ...Option) *node {
	b := newBroker(m, opts...)
	ends := make(chan error, 100)
	if m == http1h {
		// ServeEvents returns once the pollers have the stream: its end comes here.
		b.opts.onEnd = func(_ context.Context, err error) { ends <- err }
	}
	s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := b.ServeEvents(w, r, "a", "b")
		if m != http1h {
			ends <- err
		}
	}))
	return &node{s, ends}
}

// appendAll appends the log's events from..to (inclusive) of epoch to every node; event n goes
// to topic a if n is even, b if odd, and has data "n".
func appendAll(t *testing.T, epoch string, from, to uint64, nodes ...*node) {
	t.Helper()
	for n := from; n <= to; n++ {
		topic := "a"
		if n%2 == 1 {
			topic = "b"
		}
		for _, nd := range nodes {
			if err := nd.b.Append(epoch, n, time.Time{}, Event{Data: strconv.FormatUint(n, 10)}, topic); err != nil {
				t.Fatalf("Append(%s, %d): %v", epoch, n, err)
			}
		}
	}
}

// Brokers that follow one log give its events the same IDs, so a client resumes on any of
// them from where another left it, even from the ID its stream started with.
func TestAppendResumeOnAnotherBroker(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		a, b := newNode(t, m), newNode(t, m)
		appendAll(t, "e1", 1, 5, a, b)
		ts := a.open(t, "/", "")
		start := ts.startID()
		waitFor(t, "the client to leave", func() bool { return a.b.Stats().Clients == 0 })
		appendAll(t, "e1", 6, 8, a, b)

		ts = b.open(t, "/", start) // from the start ID a gave, on b
		evs := ts.expect("6", "7", "8")
		if evs[2].LastEventID != "e1-8" {
			t.Errorf("ID %q, want e1-8", evs[2].LastEventID)
		}
		ts.close()
		ts = a.open(t, "/", "e1-6")
		ts.expect("7", "8")
		waitFor(t, "the client to join", func() bool { return a.b.Stats().Clients == 1 })
		appendAll(t, "e1", 9, 9, a, b)
		ts.expect("9")
	})
}

// A client that resumes from an ID that its Broker has not reached waits for it, then
// resumes exactly; one whose ID never comes gets MissedType.
func TestAppendAhead(t *testing.T) {
	defer func(d time.Duration) { aheadWait = d }(aheadWait)
	aheadWait = 500 * time.Millisecond
	run(t, func(t *testing.T, m mode) {
		ahead, behind := newNode(t, m), newNode(t, m)
		appendAll(t, "e1", 1, 5, ahead, behind)
		appendAll(t, "e1", 6, 7, ahead)

		got := make(chan []string)
		go func() {
			ts := behind.open(t, "/", "e1-7")
			var data []string
			for range 2 {
				ev, err := ts.dec.Next()
				if err != nil {
					break
				}
				data = append(data, ev.Type+":"+ev.Data)
			}
			ts.close()
			got <- data
		}()
		time.Sleep(50 * time.Millisecond) // let it wait
		appendAll(t, "e1", 6, 9, behind)
		if data := <-got; len(data) != 2 || data[0] != "message:8" || data[1] != "message:9" {
			t.Errorf("resuming ahead got %q, want 8 and 9", data)
		}

		ts := behind.open(t, "/", "e1-99") // never comes
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming from an ID that never comes: got %+v, want %s", ev, MissedType)
		}
	})
}

// A break in the log (a gap, or a new epoch) disconnects every client, and resuming from an
// ID from before it gets MissedType, never a silent gap.
func TestAppendBreak(t *testing.T) {
	for _, tt := range []struct {
		name  string
		epoch string
		from  uint64
	}{
		{"gap", "e1", 8},
		{"new epoch", "e2", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			run(t, func(t *testing.T, m mode) {
				nd := newNode(t, m)
				appendAll(t, "e1", 1, 5, nd)
				ts := nd.open(t, "/", "e1-3")
				ts.expect("4", "5")
				appendAll(t, tt.epoch, tt.from, tt.from+1, nd)
				ts.expectEnd()
				if err := <-nd.ends; err != ErrEventsLost {
					t.Errorf("ServeEvents returned %v, want ErrEventsLost", err)
				}
				ts = nd.open(t, "/", "e1-5")
				if ev := ts.next(); ev.Type != MissedType {
					t.Errorf("resuming from before the break: got %+v, want %s", ev, MissedType)
				}
				ts.expect(strconv.FormatUint(tt.from, 10), strconv.FormatUint(tt.from+1, 10))
				ts.close()
				id := tt.epoch + "-" + strconv.FormatUint(tt.from, 10)
				nd.open(t, "/", id).expect(strconv.FormatUint(tt.from+1, 10))
			})
		})
	}
}

// What Append refuses or ignores: event 0, an event appended already (the log delivered it
// twice), and Publish on a Broker that follows a log; and an ID far ahead of the log is
// unknown at once, without waiting.
func TestAppendEdges(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m)
		if err := nd.b.Append("e1", 0, time.Time{}, Event{Data: "0"}); err == nil {
			t.Errorf("Append of event 0 = nil, want an error")
		}
		appendAll(t, "e1", 1, 3, nd)
		ts := nd.open(t, "/", "e1-1")
		ts.expect("2", "3")
		appendAll(t, "e1", 2, 4, nd) // 2 and 3 again, then 4
		ts.expect("4")
		if st := nd.b.Stats(); st.Published != 4 {
			t.Errorf("Published = %d, want 4", st.Published)
		}
		if _, err := nd.b.Publish(Event{Data: "local"}); err == nil {
			t.Errorf("Publish on a broker that follows a log = nil, want an error")
		}

		start := time.Now()
		far := nd.open(t, "/", "e1-"+strconv.Itoa(5+maxAhead))
		if ev := far.next(); ev.Type != MissedType {
			t.Errorf("resuming from far ahead: got %+v, want %s", ev, MissedType)
		}
		if d := time.Since(start); d >= aheadWait {
			t.Errorf("resuming from far ahead took %v, want no wait", d)
		}
	})
}

// A Broker that follows a log from a position, with no event, gives its clients IDs of the
// log, and the log's next event reaches them as any other.
func TestFollow(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m)
		if err := nd.b.Follow("e1", 0); err != nil {
			t.Fatal(err)
		}
		ts := nd.openN(t, "/", 1)
		appendAll(t, "e1", 1, 2, nd)
		evs := ts.expect("1", "2")
		if evs[0].LastEventID != "e1-1" {
			t.Errorf("ID %q, want e1-1", evs[0].LastEventID)
		}
		if err := nd.b.Follow("e1", 1); err != nil { // behind: nothing changes
			t.Fatal(err)
		}
		appendAll(t, "e1", 3, 3, nd)
		ts.expect("3")
		ts.close()
		nd.open(t, "/", "e1-0").expect("1", "2", "3")
	})
}

// WithHistoryAge counts from when the log took an event, not from when this Broker appended
// it: a Broker that reads old events late holds the same ones as one that read them on time.
func TestAppendAgeFromPublished(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m, WithHistoryAge(time.Minute))
		now := time.Now()
		for n, at := range []time.Time{now.Add(-2 * time.Minute), now.Add(-time.Second), now} {
			if err := nd.b.Append("e1", uint64(n+1), at, Event{Data: strconv.Itoa(n + 1)}, "a"); err != nil {
				t.Fatal(err)
			}
		}
		ts := nd.open(t, "/", "e1-0")
		if ev := ts.next(); ev.Type != MissedType {
			t.Fatalf("resuming from before an event 2 minutes old: got %+v, want %s", ev, MissedType)
		}
		ts.expect("2", "3")
	})
}

// A break in the log ends every stream with a retry hint spread over [retry, 2×retry), so that
// the clients of every node do not all come back in the same millisecond.
func TestAppendBreakSpreadsReturns(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		const clients = 100
		nd := newNode(t, m, WithRetry(time.Second))
		appendAll(t, "e1", 1, 1, nd)
		var streams []*testStream
		for i := range clients {
			streams = append(streams, nd.openN(t, "/", i+1))
		}
		appendAll(t, "e2", 1, 1, nd) // a new epoch: the log was lost
		lo, hi := int64(2000), int64(0)
		for _, ts := range streams {
			ts.expectEnd()
			r := ts.dec.Retry()
			if r < 1000 || r >= 2000 {
				t.Fatalf("retry hint = %d ms, want within [1000, 2000)", r)
			}
			lo, hi = min(lo, r), max(hi, r)
		}
		if hi-lo < 800 {
			t.Errorf("%d clients' retry hints span [%d, %d] ms, want at least 80%% of [1000, 2000)", clients, lo, hi)
		}
		for range clients {
			if err := <-nd.ends; !errors.Is(err, ErrEventsLost) {
				t.Errorf("ServeEvents returned %v, want ErrEventsLost", err)
			}
		}
	})
}

// Resumes from IDs that Append has not reached count against the client limit while they
// wait: a storm of them is turned away with a retry hint beyond it, and each that waits is
// served exactly once its event comes.
func TestAppendAheadLimit(t *testing.T) {
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m, WithMaxClients(4), WithRetry(time.Second))
		appendAll(t, "e1", 1, 2, nd)
		live := nd.openN(t, "/", 1)
		type result struct {
			data []string
			err  error
		}
		results := make(chan result, 10)
		for i := range 10 { // waiting for events 3 to 12
			go func() {
				ts := nd.open(t, "/", "e1-"+strconv.Itoa(i+3))
				var got []string
				for {
					ev, err := ts.dec.Next()
					if err != nil {
						results <- result{got, err}
						return
					}
					got = append(got, ev.Data)
					if ev.Data == "13" {
						results <- result{got, nil}
						return
					}
				}
			}()
		}
		// Three of them wait (with the live client, the limit), seven are refused.
		for range 7 {
			if r := <-results; len(r.data) != 0 || !errors.Is(r.err, io.EOF) {
				t.Errorf("an ahead resume over the limit got %q, %v; want a refusal", r.data, r.err)
			}
		}
		if st := nd.b.Stats(); st.Refused != 7 || st.Clients != 1 {
			t.Errorf("Refused, Clients = %d, %d while three wait; want 7, 1", st.Refused, st.Clients)
		}
		appendAll(t, "e1", 3, 13, nd)
		live.expect(seqData("", 3, 14)...)
		for range 3 {
			r := <-results
			if r.err != nil || len(r.data) == 0 {
				t.Fatalf("a waiting resume got %q, %v", r.data, r.err)
			}
			from, _ := strconv.Atoi(r.data[0])
			if !slices.Equal(r.data, seqData("", from, 14)) {
				t.Errorf("a waiting resume got %q, want %d to 13 once each", r.data, from)
			}
		}
	})
}

// A resume that waits for an event Append has not reached leaves the client limit when it
// stops waiting: when the event does not come in time (it is served, with MissedType) and when
// its client leaves (its stream ends as any whose client left: nil, not a refusal).
func TestAppendAheadStopsWaiting(t *testing.T) {
	defer func(d time.Duration) { aheadWait = d }(aheadWait)
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m, WithMaxClients(1))
		appendAll(t, "e1", 1, 2, nd)
		waiting := func() int {
			nd.b.mu.Lock()
			defer nd.b.mu.Unlock()
			return nd.b.waiting
		}

		aheadWait = 200 * time.Millisecond
		ts := nd.open(t, "/", "e1-5") // never comes in time
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming from an ID that does not come: got %+v, want %s", ev, MissedType)
		}
		ts.close()
		if err := <-nd.ends; err != nil {
			t.Errorf("ServeEvents of a client that left after waiting returned %v, want nil", err)
		}

		aheadWait = time.Minute
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", nd.URL+"/", nil)
		req.Header.Set("Last-Event-ID", "e1-5")
		done := make(chan struct{})
		go func() {
			defer close(done)
			if resp, err := nd.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		waitFor(t, "the resume to wait", func() bool { return waiting() == 1 })
		cancel()
		<-done
		if err := <-nd.ends; err != nil {
			t.Errorf("ServeEvents of a client that left while waiting returned %v, want nil", err)
		}
		if w, st := waiting(), nd.b.Stats(); w != 0 || st.Refused != 0 {
			t.Errorf("after both stopped waiting: %d waiting, %d refused; want 0, 0", w, st.Refused)
		}
		ts = nd.openN(t, "/", 1) // within the limit
		appendAll(t, "e1", 3, 3, nd)
		ts.expect("3")
	})
}

// A break in the log releases at once the resumes that wait for events from before it: they
// get MissedType, then the log's new events; and events after the break that take the places
// they waited for wake nothing twice.
func TestAppendAheadBreak(t *testing.T) {
	defer func(d time.Duration) { aheadWait = d }(aheadWait)
	aheadWait = 5 * time.Second
	run(t, func(t *testing.T, m mode) {
		nd := newNode(t, m)
		appendAll(t, "e1", 1, 5, nd)
		waiting := func() int {
			nd.b.mu.Lock()
			defer nd.b.mu.Unlock()
			return nd.b.waiting
		}
		resume := func(id string) <-chan *testStream {
			opened := make(chan *testStream, 1)
			go func() { opened <- nd.open(t, "/", id) }()
			waitFor(t, "the resume to wait", func() bool { return waiting() == 1 })
			return opened
		}

		// One waits and is served: the place it waited for is done with.
		opened := resume("e1-6")
		appendAll(t, "e1", 6, 7, nd)
		(<-opened).expect("7")

		// One waits when the log breaks.
		opened = resume("e1-9")
		start := time.Now()
		appendAll(t, "e2", 1, 1, nd)
		ts := <-opened
		if ev := ts.next(); ev.Type != MissedType {
			t.Errorf("resuming from before the break: got %+v, want %s", ev, MissedType)
		}
		if d := time.Since(start); d > aheadWait/2 {
			t.Errorf("the break released a waiting resume after %v, want at once", d)
		}
		appendAll(t, "e2", 2, 4, nd) // the broker's sequence numbers pass 9 again
		ts.expect("1", "2", "3", "4")
	})
}
