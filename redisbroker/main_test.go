package redisbroker_test

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"

	"sse/internal/ssetest"
)

// TestMain fails the run if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	// go-redis logs every failed dial, which the tests that stop Redis cause on purpose.
	redis.SetLogger(&logging.VoidLogger{})
	ssetest.Main(m)
}

// checkGoroutines makes t fail if, once it and the cleanups registered after this call are
// done, more goroutines are running than when it was called. Call it first in a test that
// does not run in parallel with others.
func checkGoroutines(t *testing.T) { ssetest.CheckGoroutines(t) }
