//go:build linux

package sse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sse/internal/spec"
)

// rawStream is a client of an event stream over a TCP connection of its own, which it reads
// only when told to.
type rawStream struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	resp *http.Response
}

// dialStream sends a GET of path to addr; if head, it reads the response's head.
func dialStream(t *testing.T, addr, path string, head bool) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	rs := &rawStream{t: t, conn: conn, r: bufio.NewReader(conn)}
	if head {
		rs.readHead()
	}
	return rs
}

func (rs *rawStream) readHead() {
	rs.t.Helper()
	rs.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(rs.r, nil)
	if err != nil {
		rs.t.Fatalf("reading the response head: %v", err)
	}
	rs.resp = resp
}

// dialSmall sends a GET of / to addr over a connection with a small receive buffer, set
// before the connection is made (so that its window is small too), which fills with little.
func dialSmall(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return nil
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	return conn
}

// openFDs returns how many descriptors the process has open.
func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// endRecorder returns a WithStreamEnd option that sends every end to the channel.
func endRecorder(n int) (Option, chan error) {
	ends := make(chan error, n)
	return WithStreamEnd(func(_ context.Context, err error) { ends <- err }), ends
}

// A plain HTTP/1.1 stream is taken over: the handler returns at once with nil, Stats counts it,
// the head is the broker's own (the same headers, the body ending with the connection), and
// events still reach the client. Streams that cannot be taken over are served as before.
func TestHijackTakesOver(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	returned := make(chan error, 4)
	s := newServer(t, http1, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "kept")
		if r.URL.Path == "/nounwrap" {
			w = flushOnly{w}
		}
		returned <- b.ServeEvents(w, r)
	}))
	ts := s.openN(t, "/", 1)
	select {
	case err := <-returned:
		if err != nil {
			t.Errorf("ServeEvents returned %v, want nil once the stream is handed over", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeEvents did not return while the stream is open")
	}
	if st := b.Stats(); st.Hijacked != 1 || st.Clients != 1 {
		t.Errorf("Hijacked, Clients = %d, %d; want 1, 1", st.Hijacked, st.Clients)
	}
	h := ts.resp.Header
	if h.Get("Content-Type") != "text/event-stream; charset=utf-8" || h.Get("Cache-Control") != "no-cache" ||
		h.Get("X-Accel-Buffering") != "no" || h.Get("X-App") != "kept" || h.Get("Date") == "" || !ts.resp.Close {
		t.Errorf("head %v (close %v), want the stream's headers, the handler's, a Date and Connection: close", h, ts.resp.Close)
	}
	publish(t, b, "1")
	publish(t, b, "2")
	ts.expect("1", "2")

	// A writer that hides the connection is served in its handler.
	other := s.openN(t, "/nounwrap", 2)
	if st := b.Stats(); st.Hijacked != 1 {
		t.Errorf("Hijacked = %d with a writer that cannot hijack, want 1", st.Hijacked)
	}
	publish(t, b, "3")
	ts.expect("3")
	other.expect("3")

	ts.close()
	waitFor(t, "the stream to end", func() bool { return b.Stats().Hijacked == 0 })
	other.close()
	<-returned
}

// HTTP/2 streams are never taken over.
func TestHijackNotHTTP2(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http2, b, b.Handler())
	ts := s.openN(t, "/", 1)
	publish(t, b, "x")
	ts.expect("x")
	if st := b.Stats(); st.Hijacked != 0 {
		t.Errorf("Hijacked = %d over HTTP/2, want 0", st.Hijacked)
	}
}

// A client that closes its connection, or sends anything on it, leaves at once: with no
// heartbeat and nothing published, nothing is written that could fail first.
func TestHijackCloseDetected(t *testing.T) {
	checkGoroutines(t)
	onEnd, ends := endRecorder(4)
	b := NewBroker(WithHijack(), WithHeartbeat(-1), onEnd)
	s := newServer(t, http1, b, b.Handler())
	addr := s.Listener.Addr().String()
	// The first stream starts the pollers, whose descriptors stay.
	s.openN(t, "/", 1).close()
	waitFor(t, "the first stream to end", func() bool { return b.Stats().Clients == 0 })
	<-ends
	for _, how := range []string{"close", "send bytes", "reset"} {
		base := openFDs(t)
		rs := dialStream(t, addr, "/", true)
		waitFor(t, "the stream to be handed over", func() bool { return b.Stats().Hijacked == 1 })
		switch how {
		case "close":
			rs.conn.Close()
		case "send bytes":
			rs.conn.Write([]byte("GET / HTTP/1.1\r\n"))
		case "reset":
			rs.conn.(*net.TCPConn).SetLinger(0)
			rs.conn.Close()
		}
		begin := time.Now()
		waitWithin(t, time.Second, how+": the client to leave", func() bool { return b.Stats().Clients == 0 })
		t.Logf("%s: left after %v", how, time.Since(begin))
		if st := b.Stats(); st.Hijacked != 0 {
			t.Errorf("%s: Hijacked = %d, want 0", how, st.Hijacked)
		}
		if err := <-ends; err != nil {
			t.Errorf("%s: the stream ended with %v, want nil (the client went away)", how, err)
		}
		rs.conn.Close()
		waitFor(t, "descriptors to be closed", func() bool { return openFDs(t) <= base })
	}
}

// A client that stops reading is cut at the write timeout, counted as slow, while the clients
// that read receive every event.
func TestHijackSlowClient(t *testing.T) {
	checkGoroutines(t)
	const readers, events = 5, 2500
	onEnd, ends := endRecorder(readers + 1)
	// No heartbeats: nothing but the write timeout's own tick wakes the poller once the
	// events are out.
	b := NewBroker(WithHijack(), WithWriteTimeout(2*time.Second), WithHistory(events), WithHeartbeat(-1), onEnd)
	s := newServer(t, http1, b, b.Handler())
	dialSmall(t, s.Listener.Addr().String()) // and never read
	waitFor(t, "the stalled client", func() bool { return b.Stats().Clients == 1 })
	var wg sync.WaitGroup
	got := make([]int, readers)
	for i := range readers {
		rs := dialStream(t, s.Listener.Addr().String(), "/", true)
		wg.Go(func() {
			d := spec.NewDecoder(rs.resp.Body)
			for got[i] < events {
				ev, err := d.Next()
				if err != nil {
					t.Errorf("reader %d after %d events: %v", i, got[i], err)
					return
				}
				if want := fmt.Sprint(got[i]); ev.Data[:len(want)] != want {
					t.Errorf("reader %d: event %q, want %s…", i, ev.Data[:10], want)
					return
				}
				got[i]++
			}
		})
	}
	waitFor(t, "every client", func() bool { return b.Stats().Clients == readers+1 })
	pad := strings.Repeat("x", 4<<10) // 10 MB in all, more than the socket buffers hold
	for i := range events {
		publish(t, b, fmt.Sprint(i)+pad)
	}
	wg.Wait()
	var err error
	select {
	case err = <-ends:
	case <-time.After(20 * time.Second):
		t.Fatalf("the stalled stream was not cut; %+v", b.Stats())
	}
	if !errors.Is(err, ErrSlowClient) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the stalled stream ended with %v, want ErrSlowClient and os.ErrDeadlineExceeded", err)
	}
	if st := b.Stats(); st.SlowDisconnects != 1 || st.Clients != readers {
		t.Errorf("SlowDisconnects, Clients = %d, %d; want 1, %d", st.SlowDisconnects, st.Clients, readers)
	}
}

// A handler that greets its client with NewStream and Send, then calls ServeEvents, has the
// stream taken over all the same: the chunked body net/http began goes on.
func TestHijackGreeting(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http1, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := NewStream(w, r)
		if err != nil {
			return
		}
		st.Send(Event{Type: "hello", Data: "greeting"})
		b.ServeEvents(w, r)
	}))
	ts := s.openN(t, "/", 1)
	if len(ts.resp.TransferEncoding) != 1 || ts.resp.TransferEncoding[0] != "chunked" {
		t.Errorf("TransferEncoding %v, want chunked", ts.resp.TransferEncoding)
	}
	if ev := ts.next(); ev.Type != "hello" || ev.Data != "greeting" {
		t.Errorf("first event %+v, want the greeting", ev)
	}
	waitFor(t, "the stream to be handed over", func() bool { return b.Stats().Hijacked == 1 })
	publish(t, b, "1")
	publish(t, b, strings.Repeat("y", 100<<10)) // in several writes
	ts.expect("1", strings.Repeat("y", 100<<10))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Shutdown(ctx)
	// The body ends properly: the last chunk, after the retry hint.
	ts.expectEnd()
	if ts.dec.Retry() == 0 {
		t.Error("no retry hint before the end")
	}
}

// Thousands of streams opened and aborted, then thousands opened and shut down, leave no
// descriptor and no goroutine behind: the pollers' own end with the broker.
func TestHijackNoLeaks(t *testing.T) {
	checkGoroutines(t)
	n := 2000
	if testing.Short() {
		n = 200
	}
	fds := openFDs(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http1, b, b.Handler())
	addr := s.Listener.Addr().String()
	for round := range 2 {
		streams := make([]*rawStream, n)
		for i := range streams {
			streams[i] = dialStream(t, addr, "/", false)
		}
		waitFor(t, "every stream", func() bool { return b.Stats().Hijacked == int64(n) })
		publish(t, b, "x")
		for i, rs := range streams {
			if i%2 == 0 {
				rs.readHead() // some read, some abort unread
			}
			if round == 0 {
				rs.conn.Close()
			}
		}
		if round == 0 {
			waitFor(t, "the aborted streams to end", func() bool { return b.Stats().Clients == 0 })
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := b.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		cancel()
		for _, rs := range streams {
			rs.conn.Close()
		}
	}
	s.Close()
	if st := b.Stats(); st.Clients != 0 || st.Hijacked != 0 {
		t.Errorf("Clients, Hijacked = %d, %d, want 0, 0", st.Clients, st.Hijacked)
	}
	// The pollers close their epoll sets as they end, just after Shutdown returns.
	waitFor(t, "descriptors back to where they were", func() bool { return openFDs(t) <= fds })
}

// hidingListener hands net/http connections that hide their socket, as a listener's wrapper
// (netutil.LimitListener's, say) does.
type hidingListener struct{ net.Listener }

type hidingConn struct{ net.Conn }

func (l hidingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return hidingConn{c}, nil
}

// A connection whose socket the pollers cannot reach is served in its handler, on the
// connection net/http let go of: events, a greeting's chunked body, a client that leaves, and
// Shutdown all work as in the handler driver, and ServeEvents returns why the stream ended.
func TestHijackHiddenSocket(t *testing.T) {
	checkGoroutines(t)
	onEnd, ends := endRecorder(4)
	b := NewBroker(WithHijack(), WithHeartbeat(-1), onEnd)
	returned := make(chan error, 4)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/greet" {
			st, err := NewStream(w, r)
			if err != nil {
				return
			}
			st.Send(Event{Data: "hello"})
		}
		returned <- b.ServeEvents(w, r)
	}))
	ts.Listener = hidingListener{ts.Listener}
	ts.Start()
	s := &server{ts, b}
	t.Cleanup(ts.Close)

	gone := s.openN(t, "/", 1)
	greeted := s.openN(t, "/greet", 2)
	if !gone.resp.Close || len(greeted.resp.TransferEncoding) != 1 {
		t.Errorf("Close %v, TransferEncoding %v: want the broker's head, then the chunked body", gone.resp.Close, greeted.resp.TransferEncoding)
	}
	greeted.expect("hello")
	publish(t, b, "1")
	gone.expect("1")
	greeted.expect("1")
	if st := b.Stats(); st.Hijacked != 0 {
		t.Errorf("Hijacked = %d, want 0: the pollers cannot reach these sockets", st.Hijacked)
	}
	gone.close()
	waitFor(t, "the client that left", func() bool { return b.Stats().Clients == 1 })
	if err := <-returned; err != nil {
		t.Errorf("ServeEvents returned %v for a client that left, want nil", err)
	}
	if err := <-ends; err != nil {
		t.Errorf("the stream ended with %v, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	greeted.expectEnd() // the retry hint, then the body's last chunk
	if greeted.dec.Retry() == 0 {
		t.Error("no retry hint")
	}
	if err := <-returned; !errors.Is(err, ErrClosed) {
		t.Errorf("ServeEvents returned %v at Shutdown, want ErrClosed", err)
	}
}

// A stream taken over holds no goroutine: the pollers, started with the first, serve them all.
func TestHijackNoGoroutinePerStream(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http1, b, b.Handler())
	dialStream(t, s.Listener.Addr().String(), "/", true)
	waitFor(t, "the first stream", func() bool { return b.Stats().Hijacked == 1 })
	before := runtime.NumGoroutine()
	const n = 200
	for range n {
		dialStream(t, s.Listener.Addr().String(), "/", false) // raw connections: no goroutine of the client's
	}
	waitFor(t, "every stream", func() bool { return b.Stats().Hijacked == n+1 })
	publish(t, b, "x")
	// net/http's goroutines of the last connections may still be ending; a couple more that
	// come and go (a heartbeat tick's) are allowed for.
	waitFor(t, "net/http's goroutines to end", func() bool { return runtime.NumGoroutine()-before <= 2 })
}

// A client that reads slowly through a small receive buffer gets every event whole and in
// order: writes the socket takes only part of go on from where they stopped, chunk framing
// included.
func TestHijackPartialWrites(t *testing.T) {
	checkGoroutines(t)
	const events = 300
	b := NewBroker(WithHijack(), WithHistory(events))
	s := newServer(t, http1, b, b.Handler())
	conn := dialSmall(t, s.Listener.Addr().String())
	waitFor(t, "the stream", func() bool { return b.Stats().Hijacked == 1 })
	var want []string
	for i := range events {
		data := fmt.Sprint(i) + strings.Repeat(string(rune('a'+i%26)), (i*7919)%20000)
		want = append(want, data)
		publish(t, b, data)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 512), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.TransferEncoding) != 1 || !resp.Close {
		t.Errorf("TransferEncoding %v, Close %v; want chunked, and the connection closed at the end", resp.TransferEncoding, resp.Close)
	}
	dec := spec.NewDecoder(&slowReader{r: resp.Body})
	for i, w := range want {
		ev, err := dec.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.Data != w {
			t.Fatalf("event %d: %d bytes starting %.10q, want %d starting %.10q", i, len(ev.Data), ev.Data, len(w), w)
		}
	}
	if st := b.Stats(); st.Delivered != events || st.SlowDisconnects != 0 {
		t.Errorf("Delivered, SlowDisconnects = %d, %d; want %d, 0", st.Delivered, st.SlowDisconnects, events)
	}
}

// slowReader reads at most 1000 bytes at a time, and now and then pauses.
type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n++; s.n%50 == 0 {
		time.Sleep(time.Millisecond)
	}
	return s.r.Read(p[:min(len(p), 1000)])
}

// A stream that always has more to write, its reader keeping up with a publisher that never
// pauses, does not hold up the other streams of its poller: each gets a turn.
func TestHijackFairTurns(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack(), WithHeartbeat(-1))
	s := newServer(t, http1, b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.ServeEvents(w, r, r.URL.RawQuery) // the topic is the query
	}))
	addr := s.Listener.Addr().String()
	busy := dialStream(t, addr, "/?busy", true)
	waitFor(t, "the first stream", func() bool { return b.Stats().Hijacked == 1 })
	// Streams go to the pollers in turn: the one after as many more as there are pollers
	// shares the first one's.
	n := len(b.polls.Load().all)
	for i := range n - 1 {
		dialStream(t, addr, "/?idle", true)
		waitFor(t, "the idle streams", func() bool { return b.Stats().Hijacked == int64(i+2) })
	}
	other := dialStream(t, addr, "/?other", true)
	waitFor(t, "the other stream", func() bool { return b.Stats().Hijacked == int64(n+1) })

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { io.Copy(io.Discard, busy.resp.Body) }) // ends when the stream does
	stop := make(chan struct{})
	wg.Go(func() {
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
			select {
			case <-stop:
				return
			default:
			}
			b.Publish(Event{Data: "busy"}, "busy")
		}
	})
	defer close(stop)
	time.Sleep(200 * time.Millisecond) // the busy stream's turn is under way
	d := spec.NewDecoder(other.resp.Body)
	begin := time.Now()
	publish(t, b, "other", "other")
	other.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if ev, err := d.Next(); err != nil || ev.Data != "other" {
		t.Fatalf("the other stream: %+v, %v", ev, err)
	}
	if took := time.Since(begin); took > time.Second {
		t.Errorf("the other stream's event took %v while the busy stream had more to write, want a turn well within 1s", took)
	}
}

// An HTTP/1.0 client, which knows no chunks, gets a body that the connection's end ends.
func TestHijackHTTP10(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http1, b, b.Handler())
	conn, err := net.Dial("tcp", s.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\n\r\n")
	waitFor(t, "the stream", func() bool { return b.Stats().Hijacked == 1 })
	publish(t, b, "1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Shutdown(ctx)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
	if strings.Contains(head, "chunked") || !strings.Contains(head, "Connection: close") {
		t.Errorf("head %q, want Connection: close and no chunks", head)
	}
	if !strings.HasPrefix(body, "retry: ") || !strings.Contains(body, "data: 1\n") || strings.Contains(body, "\r\n") {
		t.Errorf("body %q, want the events unframed", body)
	}
}

// The pollers wait for their sockets parked on Go's network poller, as a goroutine reading a
// connection does, not blocked in a system call: such a goroutine holds a thread, which the
// runtime keeps watching, at a cost larger than the writes' between publishes.
func TestHijackPollersPark(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack())
	s := newServer(t, http1, b, b.Handler())
	rs := dialStream(t, s.Listener.Addr().String(), "/", true)
	waitFor(t, "the stream", func() bool { return b.Stats().Hijacked == 1 })
	publish(t, b, "x")
	if ev, err := spec.NewDecoder(rs.resp.Body).Next(); err != nil || ev.Data != "x" {
		t.Fatalf("read %+v, %v; want the event x", ev, err)
	}
	parked := func(states []string) bool {
		return len(states) == runtime.GOMAXPROCS(0) && !slices.ContainsFunc(states, func(s string) bool {
			return !strings.HasPrefix(s, "IO wait")
		})
	}
	// A poller that just wrote may not be waiting yet.
	states := pollerStates()
	for deadline := time.Now().Add(5 * time.Second); !parked(states) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		states = pollerStates()
	}
	if !parked(states) {
		t.Errorf("the pollers' goroutines are in %q; want %d, each in IO wait", states, runtime.GOMAXPROCS(0))
	}
}

// pollerStates returns the state of every poller goroutine, as a goroutine dump gives it
// ("IO wait", "syscall", "runnable", …).
func pollerStates() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var states []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if !strings.Contains(g, "sse.(*poller).loop") {
			continue
		}
		head, _, _ := strings.Cut(g, "\n")
		_, state, _ := strings.Cut(head, "[")
		state, _, _ = strings.Cut(state, "]")
		states = append(states, state)
	}
	return states
}

// Where Go's poller does not take the pollers' epoll sets, the pollers wait in epoll_wait:
// streams are served the same, and a stalled one is cut at the write timeout.
func TestHijackPollersBlock(t *testing.T) {
	waitOnGo = false
	defer func() { waitOnGo = true }()
	t.Run("Blocked", func(t *testing.T) {
		checkGoroutines(t)
		b := NewBroker(WithHijack())
		s := newServer(t, http1, b, b.Handler())
		dialStream(t, s.Listener.Addr().String(), "/", true)
		waitFor(t, "the stream", func() bool { return b.Stats().Hijacked == 1 })
		for i, p := range b.polls.Load().all {
			if p.raw != nil {
				t.Errorf("poller %d waits on Go's poller", i)
			}
		}
	})
	t.Run("SlowClient", TestHijackSlowClient)
	t.Run("PartialWrites", TestHijackPartialWrites)
	t.Run("CloseDetected", TestHijackCloseDetected)
	t.Run("Shutdown", func(t *testing.T) { testServerShutdown(t, http1h) })
}

// A stream that has nothing to write when its handler hands it over does not wake its poller
// (see poller.add), unless its group was woken since the handler last looked. Here an event
// comes in exactly then, and the poller takes that wake-up before the stream is its own:
// nothing is published after it, and no heartbeat wakes the stream later, so the event arrives
// only if the hand-over wakes the poller.
func TestHijackHandOverWake(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack(), WithHeartbeat(-1))
	b.handOverHook = func(p *poller, pg *pgroup) {
		if _, err := b.Publish(Event{Data: "at the hand-over"}); err != nil {
			t.Error(err)
		}
		for {
			p.mu.Lock()
			queued := pg.queued
			p.mu.Unlock()
			if !queued {
				return
			}
			runtime.Gosched()
		}
	}
	s := newServer(t, http1, b, b.Handler())
	rs := dialStream(t, s.Listener.Addr().String(), "/", true)
	if ev, err := spec.NewDecoder(rs.resp.Body).Next(); err != nil || ev.Data != "at the hand-over" {
		t.Errorf("read %+v, %v; want the event published at the hand-over", ev, err)
	}
}

// A stream that has nothing to write when its handler hands it over does not wake its poller
// (see poller.add), unless an event came in meanwhile. Each round publishes one event at about
// the moment a client resumes from the event before it, with nothing published after it and
// no heartbeats to wake the stream later: it must arrive at once, whichever side of the
// hand-over it falls on.
func TestHijackHandOverRace(t *testing.T) {
	checkGoroutines(t)
	b := NewBroker(WithHijack(), WithHeartbeat(-1))
	s := newServer(t, http1, b, b.Handler())
	last := publish(t, b, "0")
	const rounds = 400
	for i := 1; i <= rounds; i++ {
		conn, err := net.Dial("tcp", s.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		published := make(chan string, 1)
		spin := rand.IntN(200)
		go func() {
			for range spin {
				runtime.Gosched()
			}
			id, err := b.Publish(Event{Data: strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
			}
			published <- id
		}()
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\nLast-Event-ID: %s\r\n\r\n", last)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(conn)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("round %d: reading the head: %v", i, err)
		}
		ev, err := spec.NewDecoder(resp.Body).Next()
		if err != nil || ev.Data != strconv.Itoa(i) {
			t.Fatalf("round %d: read %+v, %v; want the event published at the hand-over", i, ev, err)
		}
		conn.Close()
		last = <-published
	}
}
