package sse

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// The hand-over (WithHijack): a stream that is plain HTTP/1.x over TCP leaves net/http. Its
// handler takes the connection over, takes its descriptor out of Go's network poller, and gives
// it to one of the broker's pollers, and the handler returns. The handler writes the response
// head and the preamble, into the socket's empty buffer; the poller writes the rest of them if
// it did not take all, and then whatever the client's next returns, without blocking
// (poll_linux.go).

// startedKey marks, in a ResponseWriter's header map, a response that NewStream began: it is
// set once the head is out, so it never reaches the wire, and a name net/http would not write.
const startedKey = "\x00sse-started"

// pollers are the goroutines that serve the streams taken over, each with its own set of them.
type pollers struct {
	all     []*poller
	next    atomic.Uint32 // round robin: the poller the next stream goes to
	running atomic.Int32  // pollers whose goroutine has not ended
	ended   chan struct{} // closed once every poller's goroutine has
}

// pollersEnded waits until the broker's pollers, if it has any, have ended, and with them every
// connection they held, or until ctx is done. Call it once no client is left of a broker shut
// down.
func (b *Broker) pollersEnded(ctx context.Context) error {
	ps := b.polls.Load()
	if ps == nil {
		return nil
	}
	select {
	case <-ps.ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A pgroup is the streams of one group that one poller holds: a wake-up of the group is told
// to each of its pollers once (see group.take), not to each stream.
type pgroup struct {
	g *group
	p *poller
	n int // how many streams; guarded by Broker.mu

	wakes atomic.Uint64 // how many wake-ups of the group the poller was told of (see poller.add)

	streams []*pstream // only the poller uses it
	queued  bool       // pg is in p.queue; guarded by p.mu
}

// A pstream is a stream that a poller serves: its client, its socket, and what is being
// written to it.
type pstream struct {
	c   *client
	pg  *pgroup
	fd  int
	end *ending

	chunked bool // the body is chunked (over HTTP/1.0 it is not: it ends with the connection)

	// What is being written: head, then out, then tail, of which done bytes are written. out
	// holds the frames the client's next returned, the history's own, never a copy.
	head, tail []byte
	out        [][]byte
	done       int
	fromNext   bool     // out came from next: wrote is due once it is written
	fin        error    // why the stream ends once this is written, if it does
	finishes   bool     // fin is set (it may be nil: the client went away)
	size       [20]byte // holds head for a chunk of a chunked body

	idx      int   // the stream's index in pg.streams
	deadline int64 // when a write that waits for the socket gives up (see monotime); 0 if none waits
	blocked  int   // the stream's index in the poller's blocked list, plus one; 0 if not in it
}

// pending reports whether a write is under way.
func (st *pstream) pending() bool {
	return st.head != nil || st.out != nil || st.tail != nil
}

// set makes out, which next returned with end, the stream's next write, framed as the body is.
func (st *pstream) set(out [][]byte, end error) {
	st.out, st.done, st.fromNext = out, 0, true
	st.fin, st.finishes = end, end != nil
	st.head, st.tail = nil, nil
	if st.chunked {
		n := 0
		for _, f := range out {
			n += len(f)
		}
		st.head = append(strconv.AppendInt(st.size[:0], int64(n), 16), "\r\n"...)
		st.tail = crlf
		if end != nil {
			st.tail = lastChunk
		}
	}
}

// clear records that the write under way is done.
func (st *pstream) clear() {
	st.head, st.out, st.tail, st.done = nil, nil, nil, 0
}

// unreported is the ending of a stream whose end nothing is told of: no logger, no WithStreamEnd.
var unreported ending

var (
	crlf      = []byte("\r\n")
	lastChunk = []byte("\r\n0\r\n\r\n") // ends the last chunk and the body
)

// epoch is what monotime counts from.
var epoch = time.Now()

// monotime returns the time on the monotonic clock, in nanoseconds.
func monotime() int64 { return int64(time.Since(epoch)) }

// hijack takes the stream of client c over from net/http and hands it to a poller, if it can,
// and reports whether it did: if not, nothing was written, and the handler serves the stream.
// Once it did, the stream's end is reported (b.ended) and c leaves, whatever happens. A
// connection whose socket cannot be reached (a listener's wrapper hides it) is served here,
// and err is why its stream ended, as ServeEvents returns.
func (b *Broker) hijack(w http.ResponseWriter, r *http.Request, c *client, start string, missed bool, end *ending) (handled bool, err error) {
	if r.ProtoMajor != 1 || r.TLS != nil {
		return false, nil
	}
	if _, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); !ok {
		return false, nil
	}
	h := w.Header()
	if h.Get("Content-Encoding") != "" {
		// A middleware that compresses the body would be bypassed.
		return false, nil
	}
	_, started := h[startedKey]
	ps := b.startPollers()
	if ps == nil {
		return false, nil
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false, nil
	}
	if rw.Reader.Buffered() > 0 || rw.Writer.Flush() != nil {
		// A client of an event stream sends nothing after its request: anything buffered
		// (a pipelined request) means the connection cannot be served as a stream.
		conn.Close()
		b.ended(end, 0, nil)
		b.leave(c)
		return true, nil
	}

	// The body is chunked, as net/http's is over HTTP/1.1 (after a greeting, it is net/http's,
	// which goes on): a body that only the connection's end ends would be simpler, but nginx
	// with proxy_buffering on passes nothing of it on, not even the head, until its buffers
	// fill, where it passes on each chunk. The framing costs a size line and a CRLF around each
	// write's frames, sent with them, never a copy of them. An HTTP/1.0 client, which knows no
	// chunks, gets a body that the connection's end ends.
	chunked := r.ProtoAtLeast(1, 1)
	var head []byte
	if !started {
		var buf bytes.Buffer
		buf.WriteString("HTTP/1.1 200 OK\r\n")
		if _, ok := h["Date"]; !ok {
			buf.WriteString("Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\n")
		}
		h.Del("Connection")
		h.Del("Transfer-Encoding")
		h.Write(&buf)
		buf.WriteString("Connection: close\r\n") // the stream ends with the connection
		if chunked {
			buf.WriteString("Transfer-Encoding: chunked\r\n")
		}
		buf.WriteString("\r\n")
		head = buf.Bytes()
	}

	fd := takeFD(conn)
	if fd < 0 {
		return true, b.serveConn(conn, rw.Writer, r, c, start, missed, end, head, chunked)
	}
	conn.Close() // the descriptor is ours now: closing conn leaves the socket open

	if b.opts.logger == nil && b.opts.onEnd == nil {
		// Nothing will be told of the stream's end: keep none of the request (its context
		// holds on to a few hundred bytes), which would stay as long as the stream.
		end = &unreported
	}
	st := &pstream{c: c, fd: fd, end: end, chunked: chunked}
	pre := preamble(b.opts.retry, start, missed)
	if chunked {
		head = append(strconv.AppendInt(head, int64(len(pre)), 16), "\r\n"...)
		pre = append(pre, "\r\n"...)
	}
	st.head = append(head, pre...)

	b.mu.Lock()
	p := ps.all[ps.next.Add(1)%uint32(len(ps.all))]
	var pg *pgroup
	for _, x := range c.g.polled {
		if x.p == p {
			pg = x
		}
	}
	if pg == nil {
		pg = &pgroup{g: c.g, p: p}
		c.g.polled = append(c.g.polled, pg)
	}
	pg.n++
	st.pg = pg
	b.mu.Unlock()
	b.stats.hijacked.Add(1)

	// Until the poller has it, the stream is the handler's: it writes the head, into the
	// socket's empty buffer, and looks whether the client has more to write already (events
	// to replay, or published since it joined, which told the poller before pg was there),
	// so that a stream that opens with nothing more to write is handed over without waking
	// the poller (see poller.add).
	wakes := pg.wakes.Load()
	st.firstWrite()
	if !st.pending() {
		if out, end := c.next(b); len(out) > 0 || end != nil {
			st.set(out, end)
		}
	}
	if b.handOverHook != nil {
		b.handOverHook(p, pg)
	}
	if !p.add(st, wakes) {
		// The socket cannot join the poller's set: the stream ends here, as the poller
		// would end it.
		st.clear()
		b.unpoll(st)
		b.ended(st.end, c.sent, nil)
		b.leave(c)
		closeFD(st.fd)
	}
	return true, nil
}

// serveConn serves the stream of client c on conn, which net/http let go of, in the handler's
// goroutine, as the handler driver does: for a connection whose socket the pollers cannot
// reach. head is what the response begins with, if net/http has not begun it. It returns why
// the stream ended.
func (b *Broker) serveConn(conn net.Conn, bw *bufio.Writer, r *http.Request, c *client, start string, missed bool, end *ending, head []byte, chunked bool) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// As net/http does for a handler: a client that closes its connection (or sends anything)
	// ends the stream.
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		var buf [1]byte
		conn.Read(buf[:])
		cancel()
	}()
	bw.Write(head)
	cw := &connWriter{conn: conn, bw: bw, chunked: chunked}
	s := &flushWriter{w: cw, rc: http.NewResponseController(cw), timeout: b.opts.writeTimeout}
	err := b.stream(ctx, s, c, start, missed)
	if chunked && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The broker ended the stream, and the client reads: the body ends properly.
		cw.chunked = false
		s.write(lastChunk[2:])
	}
	err = b.ended(end, c.sent, err)
	b.leave(c)
	conn.Close()
	<-reading
	return err
}

// A connWriter is a ResponseWriter of a connection net/http let go of, for the handler driver.
type connWriter struct {
	conn    net.Conn
	bw      *bufio.Writer
	chunked bool
}

func (w *connWriter) Header() http.Header { return http.Header{} }
func (w *connWriter) WriteHeader(int)     {}

func (w *connWriter) Write(p []byte) (int, error) {
	if w.chunked {
		var size [20]byte
		w.bw.Write(append(strconv.AppendInt(size[:0], int64(len(p)), 16), "\r\n"...))
		defer w.bw.Write(crlf)
	}
	return w.bw.Write(p)
}

func (w *connWriter) FlushError() error                  { return w.bw.Flush() }
func (w *connWriter) SetWriteDeadline(t time.Time) error { return w.conn.SetWriteDeadline(t) }

// unpoll records that st is no longer served by its poller.
func (b *Broker) unpoll(st *pstream) {
	b.mu.Lock()
	pg := st.pg
	if pg.n--; pg.n == 0 {
		g := pg.g
		for i, x := range g.polled {
			if x == pg {
				last := len(g.polled) - 1
				g.polled[i] = g.polled[last]
				g.polled[last] = nil
				g.polled = g.polled[:last]
				break
			}
		}
	}
	b.mu.Unlock()
	b.stats.hijacked.Add(-1)
}

// kickPollers wakes the pollers that were told of a wake-up (see group.take). Call it once
// Broker.mu is let go.
func (b *Broker) kickPollers() {
	if ps := b.polls.Load(); ps != nil {
		for _, p := range ps.all {
			p.kick()
		}
	}
}

// stopPollers has the pollers end once every stream they hold has; Broker.mu must be held, and
// no client be left of a broker shut down.
func (b *Broker) stopPollers() {
	if ps := b.polls.Load(); ps != nil {
		for _, p := range ps.all {
			p.stop()
		}
	}
}

// startPollers returns the broker's pollers, starting them if need be, or nil if there can be
// none.
func (b *Broker) startPollers() *pollers {
	if ps := b.polls.Load(); ps != nil {
		return ps
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if ps := b.polls.Load(); ps != nil {
		return ps
	}
	ps := newPollers(b)
	if ps != nil {
		b.polls.Store(ps)
	}
	return ps
}
