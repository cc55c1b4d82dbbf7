package redisbroker_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

// TestMain fails the run if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	// go-redis logs every failed dial, which the tests that stop Redis cause on purpose.
	redis.SetLogger(&logging.VoidLogger{})
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to d for the goroutines started by tests to end, and returns the
// stacks of those that did not.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		leaked := interestingGoroutines()
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// interestingGoroutines returns the stacks of goroutines that are not the runtime's or the
// test framework's own.
func interestingGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var gs []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		_, stack, _ := strings.Cut(g, "\n")
		switch {
		case stack == "",
			strings.Contains(stack, "testing.(*M).") || strings.Contains(stack, "testing.tRunner") || strings.Contains(stack, "testing.runTests"),
			strings.Contains(stack, "redisbroker_test.TestMain"),
			strings.Contains(stack, "redisbroker_test.interestingGoroutines"),
			strings.Contains(stack, "runtime.goexit") && strings.Contains(stack, "created by runtime"),
			strings.Contains(stack, "os/signal.signal_recv"):
			continue
		}
		gs = append(gs, strings.TrimSpace(g))
	}
	return gs
}

// checkGoroutines makes t fail if, once it and the cleanups registered after this call are
// done, more goroutines are running than when it was called. Call it first in a test that
// does not run in parallel with others.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := len(interestingGoroutines())
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for {
			g := interestingGoroutines()
			if len(g) <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines left running, want %d:\n%s", len(g), before, strings.Join(g, "\n\n"))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}
