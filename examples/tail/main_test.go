package main

import (
	"bufio"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sse"
	"sse/internal/ssetest"
)

// TestTail runs tail against a Broker's stream, cuts its connection, and checks that it
// prints every event once, in order, across the reconnection.
func TestTail(t *testing.T) {
	ssetest.CheckGoroutines(t)
	b := sse.NewBroker(sse.WithRetry(time.Millisecond))
	ts := httptest.NewServer(b.Handler())
	t.Cleanup(ts.Close)
	t.Cleanup(func() { b.Shutdown(context.Background()) }) // before ts.Close, which waits for streams

	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	logs := &syncWriter{w: new(strings.Builder)}
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		runErr = run(ctx, ts.URL, "", pw, log.New(logs, "", 0))
		pw.Close()
	})
	defer func() {
		cancel()
		pr.Close()
		wg.Wait()
		if runErr != nil {
			t.Errorf("run: %v", runErr)
		}
	}()
	lines := bufio.NewScanner(pr)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("tail ended before printing %q", want)
		}
		if got := lines.Text(); got != want {
			t.Fatalf("tail printed %q, want %q", got, want)
		}
	}

	waitClients(t, b, 1)
	b.Publish(sse.Event{ID: "1", Type: "tick", Data: "one"})
	expect("tick [1] one")
	b.Publish(sse.Event{ID: "2", Data: "two\nlines"})
	expect("message [2] two")
	expect("\tlines")

	// Cut the stream: tail reconnects with Last-Event-ID 2 and gets what it missed.
	ts.CloseClientConnections()
	b.Publish(sse.Event{ID: "3", Type: "tick", Data: "three"})
	expect("tick [3] three")
	if st := b.Stats(); st.Replays != 1 {
		t.Errorf("the broker counts %d replays, want 1", st.Replays)
	}
	if got := logs.String(); !strings.Contains(got, "reconnecting in") {
		t.Errorf("tail logged %q, want a reconnection", got)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		ev   sse.Event
		want string
	}{
		{sse.Event{Data: "x"}, "message x\n"},
		{sse.Event{Type: "t", ID: "7", Data: "a\nb"}, "t [7] a\n\tb\n"},
		{sse.Event{}, "message \n"},
	}
	for _, tt := range tests {
		if got := format(tt.ev); got != tt.want {
			t.Errorf("format(%+v) = %q, want %q", tt.ev, got, tt.want)
		}
	}
}

// waitClients waits until the Broker has n streams open.
func waitClients(t *testing.T, b *sse.Broker, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); b.Stats().Clients != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients connected, want %d", b.Stats().Clients, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestTailClock runs the clock example as its own process, as a user would, and tail against
// it: tail prints its ticks as they come.
func TestTailClock(t *testing.T) {
	ssetest.CheckGoroutines(t)
	bin := filepath.Join(t.TempDir(), "clock")
	if out, err := exec.Command("go", "build", "-o", bin, "sse/examples/clock").CombinedOutput(); err != nil {
		t.Fatalf("building the clock: %v\n%s", err, out)
	}
	clock := exec.Command(bin, "-addr", "127.0.0.1:0")
	stdout, err := clock.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := clock.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		clock.Process.Signal(os.Interrupt)
		clock.Wait()
	}()
	// "clock: open http://ADDR/"
	first, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the clock's address: %v", err)
	}
	url := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(first), "clock: open "), "/") + "/events"

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() {
		run(ctx, url, "", pw, log.New(io.Discard, "", 0))
		pw.Close()
	})
	defer func() {
		cancel()
		pr.Close()
		wg.Wait()
	}()
	// The clock greets each client with the time it connected, then ticks once a second.
	lines := bufio.NewScanner(pr)
	for _, want := range []string{"connecttime ", "tick [", "tick ["} {
		if !lines.Scan() {
			t.Fatalf("tail ended before printing %q", want)
		}
		if got := lines.Text(); !strings.HasPrefix(got, want) {
			t.Fatalf("tail printed %q, want %q…", got, want)
		}
	}
}
