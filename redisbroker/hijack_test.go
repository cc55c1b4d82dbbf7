package redisbroker_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"testing"

	"sse"
	"sse/internal/redistest"
	"sse/redisbroker"
)

// With sse.WithHijack in the broker options, the streams the nodes' pollers serve follow the
// shared log as any other: events published on one node reach a stream taken over on another,
// an ID resumes on either node, and when Redis loses the log the stream ends with
// ErrEventsLost, reported where a stream's end is reported in this mode.
func TestHijack(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("streams are taken over on Linux only")
	}
	t.Parallel()
	rs := redistest.Start(t)
	ends := make(chan error, 100)
	opts := redisbroker.WithBrokerOptions(sse.WithHijack(), sse.WithStreamEnd(func(_ context.Context, err error) { ends <- err }))
	a, b := startNode(t, rs.Addr(), "hijack", opts), startNode(t, rs.Addr(), "hijack", opts)
	s := b.open("", false)
	waitFor(t, "the stream to be taken over", func() bool { return b.b.Stats().Hijacked == 1 })
	var ids []string
	for i := 1; i <= 3; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}
	s.expect("1", "2", "3")
	waitAppended(t, 3, a, b)

	r := a.open(ids[0], false)
	r.expect("2", "3")
	if st := a.b.Stats(); st.Hijacked != 1 || st.Replays != 1 {
		t.Errorf("node a: Hijacked, Replays = %d, %d; want 1, 1", st.Hijacked, st.Replays)
	}

	if got := rs.Do("FLUSHALL"); got != "+OK" {
		t.Fatalf("FLUSHALL: %s", got)
	}
	waitFor(t, "a publish to succeed", func() bool {
		_, err := a.b.Publish(sse.Event{Data: "new"})
		return err == nil
	})
	s.expectEnd()
	r.expectEnd()
	for range 2 {
		if err := <-ends; !errors.Is(err, sse.ErrEventsLost) {
			t.Errorf("a stream ended with %v, want ErrEventsLost", err)
		}
	}
	waitFor(t, "the nodes' pollers to let the streams go", func() bool {
		return a.b.Stats().Hijacked == 0 && b.b.Stats().Hijacked == 0
	})
}
