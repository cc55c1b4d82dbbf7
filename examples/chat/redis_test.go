package main

import (
	"context"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sse/internal/redistest"
	"sse/internal/ssetest"
	"sse/redisbroker"
)

// Two chat processes sharing a Redis server share their rooms: what is said on one reaches the
// pages of the other, and a page resumes on either.
func TestChatSharedRooms(t *testing.T) {
	ssetest.CheckGoroutines(t)
	rs := redistest.Start(t)
	a, b := startShared(t, rs.Addr()), startShared(t, rs.Addr())

	post(t, a, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {"first"}})
	// A page that opens now, on b, may see the first message or not; wait until it is there.
	waitRead(t, 1, a, b)
	d := ssetest.Subscribe(t, b.Server, "/rooms/lobby/events", "")
	post(t, a, "/rooms/lobby/messages", url.Values{"name": {"ann"}, "text": {"one"}})
	post(t, b, "/rooms/lobby/messages", url.Values{"name": {"bob"}, "text": {"two"}})
	one := ssetest.Next(t, d)
	checkMessage(t, one, "ann", "one")
	checkMessage(t, ssetest.Next(t, d), "bob", "two")

	// The page's connection drops, and comes back on the other process.
	again := ssetest.Subscribe(t, a.Server, "/rooms/lobby/events", one.LastEventID)
	checkMessage(t, ssetest.Next(t, again), "bob", "two")
}

// startShared serves the chat on a test server, sharing its rooms through Redis at addr.
func startShared(t *testing.T, addr string) server {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	p := newPresence()
	b, err := redisbroker.New(ctx, rdb, "chat", redisbroker.WithBrokerOptions(p.option()))
	if err != nil {
		t.Fatal(err)
	}
	p.b = b
	ts := httptest.NewServer(newServer(b, p))
	t.Cleanup(ts.Close)
	t.Cleanup(func() {
		if err := b.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return server{ts, b}
}

// waitRead waits until each server has read n messages from Redis.
func waitRead(t *testing.T, n int64, servers ...server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range servers {
		for s.b.Stats().Published < n {
			if time.Now().After(deadline) {
				t.Fatal("a server does not read the messages")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
