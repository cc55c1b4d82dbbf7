package nginxtest

import (
	"testing"

	"sse/internal/ssetest"
)

// TestMain fails the run if any test leaves a goroutine behind.
func TestMain(m *testing.M) { ssetest.Main(m) }
