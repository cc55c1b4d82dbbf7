package ssetest

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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

// CheckGoroutines makes t fail if, once it and the cleanups registered after this call are
// done, more goroutines are running than when it was called. Call it first in a test.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines running, want %d:\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
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
