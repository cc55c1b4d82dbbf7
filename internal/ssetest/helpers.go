package ssetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"sse/internal/spec"
)

// Next returns d's next event, failing t if the stream ends or breaks first.
func Next(t testing.TB, d *spec.Decoder) spec.Event {
	t.Helper()
	ev, err := d.Next()
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

// CheckPage checks that ts serves an HTML page at / that contains want.
func CheckPage(t testing.TB, ts *httptest.Server, want string) {
	t.Helper()
	resp, err := ts.Client().Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /: status %d, want 200", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET /: Content-Type %q, want text/html", ct)
	}
	if !strings.Contains(string(body), want) {
		t.Errorf("GET /: page does not contain %q", want)
	}
}

// Main runs m's tests and exits, failing the run if any test left a goroutine behind: it is
// the body of a package's TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitGoroutines(5*time.Second, 0); leaked != nil {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", strings.Join(leaked, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// CheckGoroutines makes t fail if, once it and the cleanups registered after this call are
// done, more goroutines are running than when it was called. Call it first in a test that
// does not run in parallel with others.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := len(Goroutines())
	t.Cleanup(func() {
		if leaked := waitGoroutines(5*time.Second, before); leaked != nil {
			t.Errorf("%d goroutines left running, want %d:\n%s", len(leaked), before, strings.Join(leaked, "\n\n"))
		}
	})
}

// waitGoroutines waits up to d for no more than n goroutines to be running (of those
// Goroutines returns), and returns their stacks if more are left.
func waitGoroutines(d time.Duration, n int) []string {
	deadline := time.Now().Add(d)
	for {
		gs := Goroutines()
		if len(gs) <= n {
			return nil
		}
		if time.Now().After(deadline) {
			return gs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Goroutines returns the stacks of the running goroutines that are not the runtime's or the
// test framework's own.
func Goroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var gs []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		_, stack, _ := strings.Cut(g, "\n")
		switch {
		case stack == "",
			strings.Contains(stack, "testing.(*M).") || strings.Contains(stack, "testing.tRunner") || strings.Contains(stack, "testing.runTests"),
			strings.Contains(stack, ".TestMain("),
			strings.Contains(stack, "ssetest.Goroutines("),
			strings.Contains(stack, "runtime.goexit") && strings.Contains(stack, "created by runtime"),
			strings.Contains(stack, "os/signal.signal_recv"),
			strings.Contains(stack, "testing.(*F).Fuzz"):
			continue
		}
		gs = append(gs, strings.TrimSpace(g))
	}
	return gs
}

// Subscribe opens an event stream at path on ts, sending lastID as Last-Event-ID unless it is
// empty, checks that it is one (200, text/event-stream, over the protocol ts serves), and
// returns a decoder for it. The stream is closed when the test ends.
func Subscribe(t testing.TB, ts *httptest.Server, path, lastID string) *spec.Decoder {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+path, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200", path, resp.StatusCode)
	}
	if (resp.ProtoMajor == 2) != ts.EnableHTTP2 {
		t.Fatalf("GET %s: served over %s", path, resp.Proto)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("GET %s: Content-Type %q, want text/event-stream", path, ct)
	}
	return spec.NewDecoder(resp.Body)
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ModuleRoot returns the directory of the go.mod above the test's directory.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
