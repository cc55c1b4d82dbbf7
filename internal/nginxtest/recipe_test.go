package nginxtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sse"
	"sse/internal/interop/browser"
	"sse/internal/spec"
	"sse/internal/ssetest"
)

// waitTimeout bounds every wait for something that a working setup does in milliseconds; it
// is generous because nginx, the browser and the race detector share the CPU.
const waitTimeout = 10 * time.Second

// TestReadmeShowsRecipe checks that README.md shows docs/nginx.conf as it is, so that the
// recipe these tests prove is the one users copy.
func TestReadmeShowsRecipe(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(ssetest.ModuleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const start, end = "```nginx\n", "```\n"
	_, block, ok := strings.Cut(string(readme), start)
	if !ok {
		t.Fatalf("README.md has no %q block", strings.TrimSpace(start))
	}
	block, _, ok = strings.Cut(block, end)
	if !ok {
		t.Fatal("README.md's nginx block does not end")
	}
	if recipe := Recipe(t); block != recipe {
		t.Errorf("README.md's nginx block differs from docs/nginx.conf:\n%s\nwant:\n%s", block, recipe)
	}
}

// recipe returns the recipe adapted to the test: nginx listening on ng.Addr, in front of
// backend, with the edits given as pairs of old and new text.
func recipe(t *testing.T, ng *Server, backend string, edits ...string) string {
	t.Helper()
	conf := Recipe(t)
	conf = Edit(t, conf, "listen 80;", "listen "+ng.Addr+";")
	conf = Edit(t, conf, "server 127.0.0.1:8080;", "server "+backend+";")
	for i := 0; i+1 < len(edits); i += 2 {
		conf = Edit(t, conf, edits[i], edits[i+1])
	}
	return conf
}

// startRecipe starts an nginx with the recipe in front of backend; see recipe.
func startRecipe(t *testing.T, backend string, edits ...string) *Server {
	t.Helper()
	ng := New(t)
	ng.Start(recipe(t, ng, backend, edits...))
	return ng
}

// page is what the backend serves at /, so that a browser's EventSource is same-origin.
const page = `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>sse behind nginx</title>`

// backend is the Go server behind nginx, on a port of its own that outlives it: the test can
// stop it and start it again, as a restarted server. It keeps every event published, with the
// ID the application gave it, and each start makes a new Broker that holds them all, as an
// application restores its events from a database: so a client resumes exactly across a
// restart, by its Last-Event-ID, if nginx lets it.
type backend struct {
	t    *testing.T
	addr string
	opts []sse.Option

	mu     sync.Mutex // guards the fields below
	events []sse.Event
	b      *sse.Broker // nil while stopped
	srv    *http.Server
	served chan struct{} // closed when srv.Serve has returned
}

// newBackend starts a backend whose brokers have opts, and stops it when the test ends.
func newBackend(t *testing.T, opts ...sse.Option) *backend {
	t.Helper()
	if os.Getenv("SSE_HIJACK") != "" {
		// CI runs these tests a second time with the streams taken over (sse.WithHijack).
		opts = append(opts, sse.WithHijack())
	}
	bk := &backend{t: t, addr: "127.0.0.1:" + strconv.Itoa(ssetest.FreePort(t)), opts: opts}
	bk.start()
	t.Cleanup(func() { bk.stop(true) })
	return bk
}

// start starts the server with a new Broker that holds every event published so far.
func (bk *backend) start() {
	t := bk.t
	t.Helper()
	bk.mu.Lock()
	defer bk.mu.Unlock()
	b := sse.NewBroker(bk.opts...)
	for _, ev := range bk.events {
		if _, err := b.Publish(ev); err != nil {
			t.Fatalf("Publish(%+v): %v", ev, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
	mux.Handle("/events", b.Handler())
	// The port was the server's a moment ago; Go's listeners reuse an address at once, so only
	// another process could have taken it.
	ln, err := net.Listen("tcp", bk.addr)
	if err != nil {
		t.Fatal(err)
	}
	bk.b, bk.srv, bk.served = b, &http.Server{Handler: mux}, make(chan struct{})
	go func(srv *http.Server, served chan struct{}) {
		defer close(served)
		srv.Serve(ln)
	}(bk.srv, bk.served)
}

// stop stops the server, if it runs. Gracefully, as a deploy does, the Broker's Shutdown ends
// each stream with a retry hint before the server closes; otherwise the server closes its
// listener and connections at once, as a crash would.
func (bk *backend) stop(graceful bool) {
	t := bk.t
	t.Helper()
	bk.mu.Lock()
	defer bk.mu.Unlock()
	if bk.b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if graceful {
		if err := bk.b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := bk.srv.Shutdown(ctx); err != nil {
			t.Errorf("http.Server.Shutdown: %v", err)
		}
	} else {
		bk.srv.Close()
		// What is left of the Broker's streams ends with their connections; Shutdown waits
		// for that.
		if err := bk.b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}
	<-bk.served
	bk.b, bk.srv = nil, nil
}

// publish publishes an event with data and the next ID (1, 2, ...) to the default topic, if
// the server runs, and keeps it in any case.
func (bk *backend) publish(data string) sse.Event {
	t := bk.t
	t.Helper()
	bk.mu.Lock()
	defer bk.mu.Unlock()
	ev := sse.Event{ID: strconv.Itoa(len(bk.events) + 1), Data: data}
	bk.events = append(bk.events, ev)
	if bk.b != nil {
		if _, err := bk.b.Publish(ev); err != nil {
			t.Fatalf("Publish(%+v): %v", ev, err)
		}
	}
	return ev
}

// waitClients waits until the running server has n streams open: an event published before a
// client is subscribed does not reach it.
func (bk *backend) waitClients(n int64) {
	t := bk.t
	t.Helper()
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(5 * time.Millisecond) {
		bk.mu.Lock()
		got := bk.b.Stats().Clients
		bk.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend has %d streams open after %v, want %d", got, waitTimeout, n)
		}
	}
}

// newHTTPClient returns a client whose connections are closed when the test ends, so that
// none of its goroutines outlives it.
func newHTTPClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// stream is one connection's event stream, read by a goroutine of its own so that a test can
// bound its waits.
type stream struct {
	events chan spec.Event // closed after err is set
	err    error           // why the stream ended
	gaps   *gapReader
}

// subscribe opens the stream at url, checks that it is one, and reads it until the test ends.
func subscribe(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := newHTTPClient(t).Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s, Content-Type %q; want 200 text/event-stream", url, resp.Status, ct)
	}
	s := &stream{events: make(chan spec.Event, 100), gaps: &gapReader{r: resp.Body, last: time.Now()}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer resp.Body.Close()
		d := spec.NewDecoder(s.gaps)
		for {
			ev, err := d.Next()
			if err != nil {
				s.err = err
				close(s.events)
				return
			}
			s.events <- ev
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

// next returns the stream's next event, or fails the test if the stream ends first or no
// event comes within limit.
func (s *stream) next(t *testing.T, limit time.Duration) spec.Event {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatalf("the stream ended: %v", s.err)
		}
		return ev
	case <-time.After(limit):
		t.Fatalf("no event within %v", limit)
	}
	panic("unreachable")
}

// gapReader records the longest time between two reads that returned bytes.
type gapReader struct {
	r    io.Reader
	mu   sync.Mutex
	last time.Time
	max  time.Duration
}

func (g *gapReader) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if n > 0 {
		g.mu.Lock()
		now := time.Now()
		g.max = max(g.max, now.Sub(g.last))
		g.last = now
		g.mu.Unlock()
	}
	return n, err
}

func (g *gapReader) maxGap() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.max
}

// TestUnbuffered checks that events pass through nginx as they are published: each is read
// through nginx before the next is published, whatever its size. nginx buffers a proxied
// response by default: it passes on what fills its buffers (a page each) at once, but holds
// the rest of an event that spills into a buffer it has not filled, until the next event fills
// it. The backend's X-Accel-Buffering: no turns that off, as the control (the header ignored)
// shows with an event of 10,000 bytes.
func TestUnbuffered(t *testing.T) {
	tests := []struct {
		name     string
		edits    []string
		buffered bool
	}{
		{"recipe", nil, false},
		{"X-Accel-Buffering ignored", []string{
			"proxy_read_timeout", "proxy_ignore_headers X-Accel-Buffering;\n        proxy_read_timeout",
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bk := newBackend(t)
			ng := startRecipe(t, bk.addr, tt.edits...)
			s := subscribe(t, ng.URL()+"/events")
			bk.waitClients(1)
			if tt.buffered {
				bk.publish(strings.Repeat("x", 10000))
				select {
				case ev, ok := <-s.events:
					t.Fatalf("got %d bytes (%v) through a buffering nginx; want nothing yet", len(ev.Data), ok)
				case <-time.After(time.Second):
				}
				return
			}
			var worst time.Duration
			for i := range 20 {
				start := time.Now()
				// Small to 28.5 KB, ending anywhere in nginx's buffers.
				ev := bk.publish(strings.Repeat("x", i*1500))
				got := s.next(t, waitTimeout)
				if got.Data != ev.Data || got.LastEventID != ev.ID {
					t.Fatalf("got %d bytes with ID %q, want %d with ID %q", len(got.Data), got.LastEventID, len(ev.Data), ev.ID)
				}
				worst = max(worst, time.Since(start))
			}
			t.Logf("20 events, each read through nginx before the next was published; the slowest took %v", worst)
		})
	}
}

// TestIdleStream checks that an idle stream outlives a proxy_read_timeout a little above the
// heartbeat interval, as the recipe advises, and that the test would see a stream cut: with
// a proxy_read_timeout below the interval, nginx cuts it.
func TestIdleStream(t *testing.T) {
	const heartbeat = time.Second
	const idle = 5 * time.Second
	tests := []struct {
		readTimeout string
		cut         bool
	}{
		{"1500ms", false}, // 1.5 × the interval, as the README advises
		{"500ms", true},
	}
	for _, tt := range tests {
		t.Run(tt.readTimeout, func(t *testing.T) {
			t.Parallel()
			bk := newBackend(t, sse.WithHeartbeat(heartbeat))
			ng := startRecipe(t, bk.addr, "proxy_read_timeout 25s;", "proxy_read_timeout "+tt.readTimeout+";")
			s := subscribe(t, ng.URL()+"/events")
			start := time.Now()
			bk.waitClients(1)
			select {
			case ev, ok := <-s.events:
				if ok {
					t.Fatalf("the idle stream brought %+v", ev)
				}
				if !tt.cut {
					t.Fatalf("nginx cut the idle stream after %v: %v", time.Since(start).Round(time.Millisecond), s.err)
				}
				t.Logf("cut after %v, as expected: %v", time.Since(start).Round(time.Millisecond), s.err)
				return
			case <-time.After(idle):
				if tt.cut {
					t.Fatalf("the stream outlived %v idle; want nginx to cut it", idle)
				}
			}
			// Still open: an event comes through on the same connection.
			ev := bk.publish("after the quiet")
			if got := s.next(t, waitTimeout); got.Data != ev.Data {
				t.Fatalf("got %q, want %q", got.Data, ev.Data)
			}
			t.Logf("idle for %v behind proxy_read_timeout %s, heartbeat %v: the longest wait for a byte through nginx was %v",
				idle, tt.readTimeout, heartbeat, s.gaps.maxGap())
		})
	}
}

// follow reads url with an sse.Client in a goroutine of its own until the test ends, and
// returns what it saw.
func follow(t *testing.T, url string) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &follower{done: make(chan struct{}), changed: make(chan struct{})}
	c := &sse.Client{
		HTTPClient: newHTTPClient(t),
		// The default, 30s, only makes a test longer: after ten seconds of a server down, the
		// Client would wait up to 16 more.
		MaxBackoff: 4 * time.Second,
		OnReconnect: func(err error, wait time.Duration) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.reconnects = append(f.reconnects, fmt.Sprintf("%v (waits %v)", err, wait.Round(time.Millisecond)))
		},
	}
	go func() {
		defer close(f.done)
		for ev, err := range c.Events(req) {
			f.mu.Lock()
			if err != nil {
				f.err = err
			} else {
				f.events = append(f.events, ev.ID+" "+ev.Data)
			}
			close(f.changed)
			f.changed = make(chan struct{})
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

// follower is what an sse.Client saw of a stream.
type follower struct {
	done chan struct{} // closed when the iteration has ended

	mu         sync.Mutex // guards the fields below
	events     []string   // each event's ID and data
	err        error      // what ended the iteration
	reconnects []string   // why it reconnected, each time
	changed    chan struct{}
}

// wait waits until the follower has seen n events, and returns them; it fails the test if the
// iteration ends first or limit passes.
func (f *follower) wait(t *testing.T, n int, limit time.Duration) []string {
	t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		f.mu.Lock()
		events, err, changed := slices.Clone(f.events), f.err, f.changed
		f.mu.Unlock()
		switch {
		case len(events) >= n:
			return events
		case err != nil:
			t.Fatalf("the sse.Client ended with %v, after %q", err, events)
		}
		select {
		case <-changed:
		case <-timer.C:
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("the sse.Client saw %q after %v, want %d events; it reconnected after %q", events, limit, n, f.reconnects)
		}
	}
}

// seen returns the ID and data of each event, as follower and the page record them.
func seen(evs ...sse.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.ID+" "+ev.Data)
	}
	return out
}

// TestRestart checks that a client behind nginx resumes by Last-Event-ID across a restart of
// the server, with nothing lost and nothing twice: the events published while the server was
// down come first, then the new ones.
func TestRestart(t *testing.T) {
	bk := newBackend(t, sse.WithRetry(100*time.Millisecond))
	ng := startRecipe(t, bk.addr, "retry: 5000", "retry: 200")
	f := follow(t, ng.URL()+"/events")
	bk.waitClients(1)
	var want []sse.Event
	for i := range 3 {
		want = append(want, bk.publish(fmt.Sprint("before ", i)))
		f.wait(t, len(want), waitTimeout)
	}
	bk.stop(true)
	for i := range 3 {
		want = append(want, bk.publish(fmt.Sprint("while down ", i)))
	}
	// Long enough for the client to come back and find the server down.
	time.Sleep(time.Second)
	bk.start()
	bk.waitClients(1)
	want = append(want, bk.publish("after"))
	if got := f.wait(t, len(want), waitTimeout); !slices.Equal(got, seen(want...)) {
		t.Fatalf("the sse.Client saw %q, want %q", got, seen(want...))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t.Logf("it reconnected after: %q", f.reconnects)
}

// recorder is the script a page runs to follow /events and record what its EventSource sees.
const recorder = `window.got = []; window.errors = 0;
window.es = new EventSource("/events");
es.onmessage = (e) => got.push(e.lastEventId + " " + e.data);
es.onerror = () => { errors++; };
null`

// TestBackendDown checks that a server down for longer than the retry delay ends neither an
// EventSource in Chromium nor an sse.Client behind the recipe: both keep coming back while it
// is down, and resume by Last-Event-ID once it is up, with nothing lost. The control, an
// EventSource behind the recipe without its error_page, shows what the recipe prevents: nginx
// answers 502, and EventSource gives up for good.
func TestBackendDown(t *testing.T) {
	const down = 10 * time.Second
	bk := newBackend(t, sse.WithRetry(500*time.Millisecond))
	ng := startRecipe(t, bk.addr, "retry: 5000", "retry: 1000")
	plain := startRecipe(t, bk.addr,
		"proxy_intercept_errors on;\n", "",
		"error_page 502 503 504 = @sse_retry;\n", "")

	br := browser.Start(t)
	p := br.Open("recipe", ng.URL()+"/")
	// The crash cuts the page's stream (Chromium logs the incomplete response), and its
	// EventSource reports that and each answer of the server being down, and comes back. A
	// response with an error status (which Chromium logs too) or an EventSource that gives up
	// would be other problems, and fail the test.
	p.Allow(func(problem string) bool {
		return strings.Contains(problem, ng.URL()+"/events") &&
			!strings.Contains(problem, "status") && !strings.Contains(problem, "now closed")
	})
	control := br.Open("control", plain.URL()+"/")
	control.Allow(func(string) bool { return true })
	p.Eval(recorder, nil)
	control.Eval(recorder, nil)
	f := follow(t, ng.URL()+"/events")
	bk.waitClients(3)

	want := []sse.Event{bk.publish("before")}
	p.Wait("the first event", "got.length >= 1", nil)
	control.Wait("the first event", "got.length >= 1", nil)
	f.wait(t, 1, waitTimeout)

	bk.stop(false)
	start := time.Now()
	for i := range 3 {
		time.Sleep(down / 4)
		want = append(want, bk.publish(fmt.Sprint("while down ", i)))
	}
	time.Sleep(down - time.Since(start))
	var state struct{ ReadyState, Errors int }
	p.Eval("({readyState: es.readyState, errors})", &state)
	if state.ReadyState == 2 {
		t.Fatalf("after %v down, the page's EventSource is closed", down)
	}
	// One error for the crash, one for each retry answer.
	if state.Errors < 3 {
		t.Errorf("after %v down, the page's EventSource reported %d errors; want one for each of several attempts", down, state.Errors)
	}
	var closed bool
	control.Eval("es.readyState === 2", &closed)
	if !closed {
		t.Errorf("after %v down, the control page's EventSource (nginx without the error_page) is still open; want it closed by the 502", down)
	}
	select {
	case <-f.done:
		t.Fatalf("the sse.Client ended: %v", f.err)
	default:
	}

	bk.start()
	want = append(want, bk.publish("after"))
	var got []string
	p.Wait("the events", fmt.Sprintf("got.length >= %d && got", len(want)), &got)
	if !slices.Equal(got, seen(want...)) {
		t.Errorf("the page saw %q, want %q", got, seen(want...))
	}
	if got := f.wait(t, len(want), waitTimeout); !slices.Equal(got, seen(want...)) {
		t.Errorf("the sse.Client saw %q, want %q", got, seen(want...))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t.Logf("the page's EventSource reported %d errors while the server was down; the sse.Client reconnected after %q",
		state.Errors, f.reconnects)
}

// TestRetryAnswer checks what the recipe answers on the streams' location when the server is
// down, or answers 502, 503 or 504 itself: 200, an event stream of only a retry hint, which
// EventSource and sse.Client follow by coming back. Other statuses, and the other locations,
// pass as they are.
func TestRetryAnswer(t *testing.T) {
	// The server answers every request with the status its query asks for.
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		status, err := strconv.Atoi(r.FormValue("status"))
		if err != nil {
			status = http.StatusBadRequest
		}
		http.Error(w, "the server's own answer", status)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	downAddr := "127.0.0.1:" + strconv.Itoa(ssetest.FreePort(t)) // nobody listens there
	up := startRecipe(t, ln.Addr().String())
	down := startRecipe(t, downAddr)

	const retryAnswer = "200 text/event-stream no-cache \"retry: 5000\\n\\n\""
	tests := []struct {
		name   string
		status int    // the server's; 0: the server is down
		path   string // asked of nginx
		want   string // status, Content-Type, Cache-Control and body
	}{
		{"server down", 0, "/events", retryAnswer},
		{"server answers 502", 502, "/events", retryAnswer},
		{"server answers 503", 503, "/events", retryAnswer},
		{"server answers 504", 504, "/events", retryAnswer},
		{"server answers 500", 500, "/events", "500 text/plain; charset=utf-8  \"the server's own answer\\n\""},
		{"server answers 429", 429, "/events", "429 text/plain; charset=utf-8  \"the server's own answer\\n\""},
		{"page, server down", 0, "/", "502 text/html  "},
		{"page, server answers 503", 503, "/", "503 text/plain; charset=utf-8  \"the server's own answer\\n\""},
	}
	hc := newHTTPClient(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ng := up
			if tt.status == 0 {
				ng = down
			}
			resp, err := hc.Get(ng.URL() + tt.path + "?status=" + strconv.Itoa(tt.status))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%d %s %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"), body)
			if tt.path == "/" && tt.status == 0 {
				// nginx's own error page: its body is of no interest.
				got = fmt.Sprintf("%d %s %s ", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
			}
			if got != tt.want {
				t.Errorf("GET %s = %s, want %s", tt.path, got, tt.want)
			}
		})
	}
}
