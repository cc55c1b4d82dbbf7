package sse

import (
	"net/http"
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
	b := NewBroker(opts...)
	ends := make(chan error, 100)
	s := newServer(t, m, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ends <- b.ServeEvents(w, r, "a", "b")
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
