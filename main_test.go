package sse

import (
	"testing"

	"sse/internal/ssetest"
)

// TestMain fails the run if any test leaves a goroutine behind.
func TestMain(m *testing.M) { ssetest.Main(m) }

// checkGoroutines makes t fail if, once it and its cleanups are done, more goroutines are
// running than when it started.
func checkGoroutines(t *testing.T) { ssetest.CheckGoroutines(t) }
