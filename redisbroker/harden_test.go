package redisbroker_test

import (
	"testing"
	"time"

	"sse"
	"sse/internal/redistest"
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
