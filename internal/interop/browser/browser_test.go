package browser

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"sse/internal/ssetest"
)

// newServer serves an empty page at /, a 404 elsewhere, and at /text a response of the wrong
// type for an EventSource.
func newServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>test</title>`)
	})
	mux.HandleFunc("GET /text", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "data: not a stream\n\n")
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

// TestProblems checks that every kind of problem a page can show reaches the test.
func TestProblems(t *testing.T) {
	ssetest.CheckGoroutines(t)
	ts := newServer(t)
	// A port nobody listens on, for a request that fails.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/"
	ln.Close()
	p := Start(t).Open("page", ts.URL+"/")
	p.Allow(func(string) bool { return true }) // the problems are what this test is after
	p.Eval(`new EventSource("/missing");
		new EventSource("/text");
		console.error("logged");
		setTimeout(() => { throw new Error("thrown"); });
		fetch(`+jsString(closed)+`).catch(() => {});
		null`, nil)
	want := []string{
		"EventSource " + ts.URL + "/missing: error, now closed",
		"GET " + ts.URL + "/missing: status 404",
		"EventSource " + ts.URL + "/text: error, now closed",
		"console.error: logged",
		"uncaught Error: thrown",
		"GET " + closed + ": net::ERR_CONNECTION_REFUSED",
	}
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		got := p.Problems()
		var absent []string
		for _, w := range want {
			if !slices.Contains(got, w) {
				absent = append(absent, w)
			}
		}
		if absent == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("problems %q\nwant among them %q", got, absent)
		}
	}
}

// TestUnexpectedProblem checks that a problem the test did not allow fails it, by running
// the test binary again for a test that meets one.
func TestUnexpectedProblem(t *testing.T) {
	if os.Getenv("BROWSER_TEST_FAIL") != "" {
		t.Skip("run by TestUnexpectedProblem only")
	}
	require(t) // skips or fails here, if the browser is missing
	cmd := exec.Command(os.Args[0], "-test.run=^TestPageThrows$", "-test.v")
	cmd.Env = append(os.Environ(), "BROWSER_TEST_FAIL=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "page thrower: uncaught Error: from the page") ||
		!strings.Contains(string(out), "--- FAIL: TestPageThrows") {
		t.Fatalf("TestPageThrows: %v, want it to fail for the page's error; output:\n%s", err, out)
	}
}

// TestPageThrows fails, when TestUnexpectedProblem runs it, because the page it loads throws.
func TestPageThrows(t *testing.T) {
	if os.Getenv("BROWSER_TEST_FAIL") == "" {
		t.Skip("run by TestUnexpectedProblem only")
	}
	ts := newServer(t)
	p := Start(t).Open("thrower", ts.URL+"/")
	p.Eval(`setTimeout(() => { throw new Error("from the page"); }); null`, nil)
	p.Wait("nothing", "false", nil) // fails at once with the page's error, not after the timeout
}
