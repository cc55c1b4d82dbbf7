package interop

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/redistest"
	"sse/internal/ssetest"
	"sse/redisbroker"
)

// A redisNode is one of several servers sharing a stream through Redis.
type redisNode struct {
	b   *redisbroker.Broker
	srv *httptest.Server
}

// newRedisNode starts a server whose stream at /events is the namespace ns of the Redis
// server at addr, with page at /.
func newRedisNode(t *testing.T, addr, ns string) redisNode {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	b, err := redisbroker.New(ctx, rdb, ns, redisbroker.WithBrokerOptions(sse.WithRetry(100*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
	mux.Handle("/events", b.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return redisNode{b, srv}
}

// publish publishes ev through n and returns what a client should see of it.
func (n redisNode) publish(t *testing.T, ev sse.Event) seen {
	t.Helper()
	id, err := n.b.Publish(ev)
	if err != nil {
		t.Fatalf("Publish(%+v): %v", ev, err)
	}
	return delivered(ev, id)
}

// waitStats waits until cond holds for n's Stats.
func (n redisNode) waitStats(t *testing.T, what string, cond func(sse.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond(n.b.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, n.b.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReplayAcrossNodes cuts a client's connection to one server of two that share a stream
// through Redis, sends its reconnection to the other, as a load balancer may, and checks that
// the client, resuming with its Last-Event-ID by itself, receives every event exactly once, in
// order: those published on either server while it was away, then the live ones.
func TestReplayAcrossNodes(t *testing.T) {
	rs := redistest.Start(t)
	eachClient(t, func(t *testing.T, c *client) {
		ns := "interop-" + c.kind.name
		a, b := newRedisNode(t, rs.Addr(), ns), newRedisNode(t, rs.Addr(), ns)
		// Until a namespace's first event, its servers follow no log yet.
		a.publish(t, sse.Event{Data: "first"})
		a.waitStats(t, "a to read the first event", func(s sse.Stats) bool { return s.Published == 1 })
		b.waitStats(t, "b to read the first event", func(s sse.Stats) bool { return s.Published == 1 })

		p := ssetest.NewProxy(t, a.srv.Listener.Addr().String())
		c.load(t, p.URL())
		es := c.open(t, p.URL()+"/events", "message", sse.MissedType)
		expect(t, c, es, []seen{opened})
		a.waitStats(t, "the client on a", func(s sse.Stats) bool { return s.Clients == 1 })
		want := []seen{opened}
		for i := range 3 {
			want = append(want, []redisNode{a, b}[i%2].publish(t, sse.Event{Data: fmt.Sprintf("before %d", i)}))
		}
		expect(t, c, es, want)

		p.Pause()
		p.Cut()
		want = append(want, lost)
		expect(t, c, es, want)
		a.waitStats(t, "the client to leave a", func(s sse.Stats) bool { return s.Clients == 0 })
		var away []seen
		for i := 3; i < 6; i++ {
			away = append(away, []redisNode{a, b}[i%2].publish(t, sse.Event{Data: fmt.Sprintf("away %d", i)}))
		}
		p.Retarget(b.srv.Listener.Addr().String())
		p.Resume()
		want = append(want, opened)
		want = append(want, away...)
		expect(t, c, es, want)
		b.waitStats(t, "the client on b", func(s sse.Stats) bool { return s.Clients == 1 })
		// A live event last, published on a: had anything been replayed twice, it would come
		// before it.
		want = append(want, a.publish(t, sse.Event{Data: "live"}))
		expect(t, c, es, want)
		if s := b.b.Stats(); s.Replays != 1 || s.UnknownReplays != 0 {
			t.Errorf("b's Stats() Replays = %d, UnknownReplays = %d; want 1, 0", s.Replays, s.UnknownReplays)
		}
		c.close(t, es)
	})
}
