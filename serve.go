package sse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Handler returns an http.Handler that streams the events of topics (the default topic if
// none is given) to each client; see ServeEvents.
func (b *Broker) Handler(topics ...string) http.Handler {
	topics = slices.Clone(topics)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.ServeEvents(w, r, topics...)
	})
}

// ServeEvents streams the events published to topics (the default topic if none is given) to
// the client of r, until the client goes away, falls too far behind, or the broker shuts down,
// and returns why: nil if the client went away, ErrSlowClient if it was disconnected for being
// too slow, ErrClosed if the broker shut down, ErrTooManyClients if it turned the client away,
// ErrEventsLost if the log the broker follows broke (see Append), and an error wrapping the
// cause if r's context ended for another cause than the client leaving (a timeout
// middleware's deadline, say). Every stream the broker ends while it can still write to it
// carries a retry hint spread over the retry delay. WithStreamEnd and WithLogger are told the
// same reason. Call it from a handler that chooses the topics per request; refuse a request
// before calling it with an ordinary error response.
//
// The client is subscribed before the response headers are flushed: once it sees the stream
// open, it receives every event published afterwards. A client that sends a Last-Event-ID
// header (or, for clients that cannot set headers, a lastEventId query parameter) first
// receives the events it missed; see the package documentation on replay. A request that is
// not a GET gets 405, and an error. A ResponseWriter that cannot flush (middleware that wraps
// it without Unwrap, or http.TimeoutHandler) gets 500 with a body that says so, and an error
// that is http.ErrNotSupported: its events would never reach the client.
//
// To send a client events of its own ahead of the broker's (a greeting, say), start the
// response with NewStream, Send them, then call ServeEvents; refuse requests other than GET
// before that, since the response has then begun. Such a client sees its stream open before it
// is subscribed: what is published before ServeEvents is called does not reach it. Once the
// broker is shut down or over its client limit, ServeEvents answers 200 with only a retry hint
// and ends the response, so that an EventSource comes back later: any other status would stop
// it for good.
//
// With WithHijack, a stream that the broker takes over from net/http (see WithHijack) is
// subscribed and handed to the broker's pollers, and ServeEvents returns nil at once, while the
// stream goes on: it writes nothing more to w, and the handler must not either. Why the stream
// ends later reaches the logger (WithLogger) and the function WithStreamEnd sets, as for every
// stream; what ServeEvents returns for a stream it refuses, or for one it serves in the
// handler, is as above.
func (b *Broker) ServeEvents(w http.ResponseWriter, r *http.Request, topics ...string) error {
	end := &ending{ctx: r.Context(), remote: r.RemoteAddr, topics: topics, began: time.Now()}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "sse: method not allowed", http.StatusMethodNotAllowed)
		return b.ended(end, 0, errMethod)
	}
	if err := checkFlush(w); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return b.ended(end, 0, err)
	}
	setHeaders(w.Header())
	s := newFlushWriter(w, r, b.opts.writeTimeout)
	if !canSetDeadline(w) && b.warnedDeadline.CompareAndSwap(false, true) && b.opts.logger != nil {
		b.opts.logger.LogAttrs(r.Context(), slog.LevelWarn, "sse: the ResponseWriter cannot set write deadlines: "+
			"a middleware that wraps it must offer Unwrap; until then the server's WriteTimeout cuts streams, "+
			"and a stalled client is not cut at the broker's write timeout",
			slog.String("writer", fmt.Sprintf("%T", w)))
	}
	// What net/http writes after the handler returns (over HTTP/1.1, the end of the chunked
	// body) must not wait forever on a client that stopped reading.
	defer func() { s.rc.SetWriteDeadline(time.Now().Add(s.timeout)) }()

	c, start, missed, err := b.joinWaiting(r.Context(), topics, lastEventID(r))
	if err != nil {
		if ctxErr := r.Context().Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			err = contextEnded(r.Context()) // it ended while the client waited for Append
		} else {
			b.stats.refused.Add(1)
		}
		if err != nil {
			s.write(b.goodbye()...) // the client is still there
		}
		return b.ended(end, 0, err)
	}
	if b.opts.hijack {
		if handled, err := b.hijack(w, r, c, start, missed, end); handled {
			return err // nil once the broker's pollers serve the stream
		}
	}
	defer b.leave(c)
	err = b.stream(r.Context(), s, c, start, missed)
	return b.ended(end, c.sent, err)
}

// An ending is what the end of a stream is reported with: to the logger, and to the function
// WithStreamEnd sets.
type ending struct {
	ctx    context.Context // the request's
	remote string
	topics []string
	began  time.Time
}

// ended reports the end of a stream that was sent sent events, and returns err, why it ended.
func (b *Broker) ended(e *ending, sent int, err error) error {
	b.logEnd(e, sent, err)
	if b.opts.onEnd != nil {
		b.opts.onEnd(e.ctx, err)
	}
	return err
}

var errMethod = errors.New("sse: method not allowed")

// An aheadError is what join returns for a client that resumes from an ID of the log the
// broker follows that Append has not reached: caughtUp is closed when Append reaches it, or
// at a break in the log.
type aheadError struct{ caughtUp <-chan struct{} }

func (*aheadError) Error() string { return "sse: resuming from an event not yet appended" }

// maxAhead is how far ahead of the last event appended a resume may be and wait for Append.
const maxAhead = 1 << 16

// aheadWait is how long a client resuming from an ID that Append has not reached waits for it;
// tests shorten it.
var aheadWait = 5 * time.Second

// joinWaiting is join, but a client that resumes from an ID that Append has not reached yet
// waits for it, up to aheadWait, or until ctx is done (and then it returns ctx's error).
func (b *Broker) joinWaiting(ctx context.Context, names []string, lastID string) (c *client, start string, missed bool, err error) {
	var deadline <-chan time.Time
	for {
		c, start, missed, err = b.join(names, lastID, true)
		ahead, ok := err.(*aheadError)
		if !ok {
			return c, start, missed, err
		}
		if deadline == nil {
			timer := time.NewTimer(aheadWait)
			defer timer.Stop()
			deadline = timer.C
		}
		timedOut := false
		select {
		case <-ahead.caughtUp:
		case <-deadline:
			timedOut = true
		case <-b.done:
		case <-ctx.Done():
		}
		b.mu.Lock()
		b.waiting--
		b.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return nil, "", false, err
		}
		if timedOut {
			return b.join(names, lastID, false) // it did not come: resume as from an unknown ID
		}
	}
}

// logEnd logs why a stream ended, if the broker has a logger for that level.
func (b *Broker) logEnd(e *ending, sent int, err error) {
	l := b.opts.logger
	if l == nil {
		return
	}
	level, reason := slog.LevelDebug, "client gone"
	switch {
	case errors.Is(err, errNoFlush):
		level, reason = slog.LevelError, "the ResponseWriter cannot flush"
	case errors.Is(err, os.ErrDeadlineExceeded):
		level, reason = slog.LevelWarn, "write timed out"
	case errors.Is(err, ErrSlowClient):
		level, reason = slog.LevelWarn, "fell behind the history"
	case errors.Is(err, ErrEventsLost):
		reason = "events lost upstream" // Append logs the break once, at Warn
	case errors.Is(err, ErrTooManyClients):
		level, reason = slog.LevelWarn, "refused: too many clients"
	case errors.Is(err, ErrClosed):
		reason = "shutdown"
	case err == errMethod:
		reason = "method not allowed"
	case err != nil:
		level, reason = slog.LevelWarn, err.Error() // the request's context ended
	}
	if !l.Enabled(e.ctx, level) {
		return
	}
	topics := e.topics
	if len(topics) == 0 {
		topics = defaultTopics
	}
	l.LogAttrs(e.ctx, level, "sse: stream ended",
		slog.String("reason", reason),
		slog.Any("topics", topics),
		slog.Duration("duration", time.Since(e.began)),
		slog.Int("events", sent),
		slog.String("remote", e.remote))
}

// preamble returns what a stream starts with: the retry hint, the MissedType event if missed,
// and the ID start as the client's last event ID unless it is empty. They form one block,
// which a client applies even when it dispatches no event (WHATWG HTML §9.2.6), so that a
// client that loses its connection before its first event still resumes from where it started.
func preamble(retry time.Duration, start string, missed bool) []byte {
	b := appendRetry(nil, retry)
	b = b[:len(b)-1] // the block goes on
	if missed {
		b = append(b, "event: "+MissedType+"\ndata: \n"...)
	}
	if start != "" {
		b = append(b, idPrefix...)
		b = append(b, start...)
		b = append(b, '\n')
	}
	return append(b, '\n')
}

// lastEventID returns the ID of the last event the client of r saw, if it says. An ID longer
// than MaxIDLen cannot be one that was assigned: it is unknownID, at a cost that does not
// depend on how much the client sent.
func lastEventID(r *http.Request) string {
	id := r.Header.Get("Last-Event-ID")
	if id == "" && strings.Contains(r.URL.RawQuery, "lastEventId") {
		id = r.URL.Query().Get("lastEventId")
	}
	if len(id) > MaxIDLen {
		// In ISO-8859-1 (below) an ID takes fewer bytes than in UTF-8, never more.
		return unknownID
	}
	if !utf8.ValidString(id) {
		// RFC 9110 §5.5: header bytes that are not UTF-8 are taken as ISO-8859-1. Browsers send
		// the ID as UTF-8, but fetch-based clients (Node's) send characters up to U+00FF as
		// single bytes.
		utf := make([]byte, 0, 2*len(id))
		for i := range len(id) {
			utf = utf8.AppendRune(utf, rune(id[i]))
		}
		id = string(utf)
	}
	return id
}

// unknownID stands for a Last-Event-ID that no event can have: it holds a NUL, which Publish
// refuses in an ID, and no broker's prefix.
const unknownID = "\x00"

func appendRetry(b []byte, d time.Duration) []byte {
	b = append(b, retryPrefix...)
	b = strconv.AppendInt(b, d.Milliseconds(), 10)
	return append(b, "\n\n"...)
}

// retryLater returns a reconnection delay between the configured one and twice that.
func (b *Broker) retryLater() time.Duration {
	return min(b.opts.retry+rand.N(b.opts.retry), maxRetry)
}

// A client is one open stream: its place in the history of its topics, and what the rules
// every stream follows need to know of it. One goroutine at a time uses it: the stream's
// handler, or the poller that holds the stream.
type client struct {
	reader // a cursor for each of g.topics
	g      *group
	sent   int    // events written
	batch  int    // events in what next returned last
	breaks uint64 // Broker.breaks when the client joined
	beats  uint64 // g.beats when the client last looked
}

// next returns what the client's stream writes next, and end, not nil if the stream ends once
// that is written: the client's next events, in publish order, up to maxBatch (its cursors
// advance past them); a heartbeat; or, for a stream the broker ends while it can still write
// to it, a retry hint spread over the retry delay, so that its clients do not all come back
// at once. With nothing to write and no end, the stream waits until its group is woken (see
// group.take): everything that next looks at is done before the wake-up it causes.
func (c *client) next(b *Broker) (out [][]byte, end error) {
	c.batch = 0
	frames, lost := c.read(b.published.Load())
	// Append counts a break before it adds the first event after it: a client that read that
	// event sees the break too, and does not skip what was lost.
	if b.breaks.Load() != c.breaks {
		clear(frames)
		return b.goodbye(), ErrEventsLost
	}
	if lost {
		b.stats.slow.Add(1)
		return b.goodbye(), fmt.Errorf("%w: it fell behind the history", ErrSlowClient)
	}
	if len(frames) > 0 {
		c.batch = len(frames)
		return frames, nil
	}
	// What was published before Shutdown was sent first: Publish accepts nothing more, so
	// this ends.
	if b.isClosed() {
		return b.goodbye(), ErrClosed
	}
	if n := c.g.beats.Load(); n != c.beats {
		c.beats = n
		return heartbeats, nil
	}
	return nil, nil
}

// wrote records that what next returned last was written.
func (c *client) wrote(b *Broker) {
	if c.batch > 0 {
		clear(c.frames[:c.batch]) // let the history drop them
		b.stats.delivered.Add(int64(c.batch))
		c.sent += c.batch
	}
}

// goodbye returns the last words of a stream that the broker ends: a retry hint spread over
// the retry delay.
func (b *Broker) goodbye() [][]byte {
	return [][]byte{appendRetry(nil, b.retryLater())}
}

var heartbeats = [][]byte{heartbeat}

// join subscribes a new client to topics, placing it after the event lastID names, or at the
// end of the history if lastID is empty. missed reports that lastID was unknown or that events
// after it were dropped, in which case the client starts at the oldest event held. start is
// the ID to give the client as its last event ID, if not the one it has: where it starts.
//
// If lastID is one of the log the broker follows that Append has not reached yet, and wait is
// true, join subscribes nothing and returns an *aheadError.
func (b *Broker) join(names []string, lastID string, wait bool) (c *client, start string, missed bool, err error) {
	if len(names) == 0 {
		names = defaultTopics
	} else {
		names = slices.Compact(slices.Sorted(slices.Values(names)))
	}
	key := groupKey(names)

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, "", false, ErrClosed
	}
	if b.opts.maxClients > 0 && b.stats.clients.Load()+int64(b.waiting) >= int64(b.opts.maxClients) {
		return nil, "", false, ErrTooManyClients
	}
	if wait && lastID != "" {
		if seq, _, ahead := b.lookup(lastID); ahead {
			ch := b.ahead[seq]
			if ch == nil {
				if b.ahead == nil {
					b.ahead = make(map[uint64]chan struct{})
				}
				ch = make(chan struct{})
				b.ahead[seq] = ch
			}
			b.waiting++ // until joinWaiting is done waiting
			return nil, "", false, &aheadError{ch}
		}
	}
	g := b.groups[key]
	if g == nil {
		g = &group{key: key, active: b.ticks.Load()}
		for _, name := range names {
			t := b.topic(name)
			if t.unread != nil {
				b.unread.Remove(t.unread)
				t.unread = nil
			}
			g.slots = append(g.slots, len(t.groups))
			t.groups = append(t.groups, g)
			g.topics = append(g.topics, t)
		}
		b.groups[key] = g
		b.dueAt(g, int(g.active%ticksPerBeat))
	}
	g.clients++
	if b.stats.clients.Add(1) == 1 && b.opts.heartbeat > 0 {
		if b.beatTimer == nil {
			b.beatTimer = time.AfterFunc(b.tickEvery(), b.tick)
		} else {
			b.beatTimer.Reset(b.tickEvery())
		}
	}

	c = &client{reader: reader{cursors: make([]cursor, len(g.topics))}, g: g, beats: g.beats.Load(), breaks: b.breaks.Load()}
	place := func(i int, pos uint64) {
		t := g.topics[i]
		c.cursors[i] = cursor{t: t, c: t.chunk(pos), pos: pos}
	}
	if lastID == "" {
		for i, t := range g.topics {
			place(i, t.head.Load())
		}
		return c, b.id(b.seq), false, nil
	}
	if b.opts.historyAge > 0 {
		cutoff := time.Now().Add(-b.opts.historyAge).UnixNano()
		for _, t := range g.topics {
			b.hist.dropOlder(t, cutoff)
		}
		clear(b.hist.emptied)
		b.hist.emptied = b.hist.emptied[:0] // the client reads them
	}
	seq, known, _ := b.lookup(lastID)
	for i, t := range g.topics {
		place(i, t.after(seq))
		if t.evicted > seq {
			known = false
		}
	}
	if known {
		b.stats.replays.Add(1)
		return c, "", false, nil
	}
	b.stats.unknownReplays.Add(1)
	// Resuming from just before the first event a cursor is on replays the same events, and
	// no earlier ones that other cursors have passed (without MissedType again, unless
	// events of one topic were dropped after another's first event: then they are missed).
	from := b.seq
	for _, cur := range c.cursors {
		if cur.pos < cur.t.head.Load() {
			from = min(from, cur.t.at(cur.pos).seq-1)
		}
	}
	return c, b.id(from), true, nil
}

// lookup returns the sequence number of the event with the given ID, or 0 and false if the
// broker cannot resume from it: it assigned no such ID, or no event held has it. ahead
// reports an ID of the log the broker follows that Append has not reached yet, up to maxAhead
// events ahead, with the sequence number it will have.
func (b *Broker) lookup(id string) (seq uint64, ok, ahead bool) {
	if s, found := strings.CutPrefix(id, b.prefix); found {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || strconv.FormatUint(n, 10) != s {
			return 0, false, false
		}
		// In the log's numbers: what the broker can resume from (see Broker.floor).
		first, last := b.floor-b.base, b.seq-b.base
		if n > last {
			// An ID far ahead was not given by a Broker following the same log.
			if b.following && n-last <= maxAhead {
				return n + b.base, false, true
			}
			return 0, false, false
		}
		if n < first {
			return 0, false, false
		}
		return n + b.base, true, false
	}
	// An ID the application chose: the newest event that has it.
	seq, ok = b.hist.byID[id]
	return seq, ok, false
}

// groupKey returns a key that tells every set of topic names apart, whatever bytes the names
// hold: each name is preceded by its length.
func groupKey(names []string) string {
	var key strings.Builder
	for _, n := range names {
		key.WriteString(strconv.Itoa(len(n)))
		key.WriteByte(':')
		key.WriteString(n)
	}
	return key.String()
}

// removeGroup removes the group at index i of t.groups, moving the last one into its place,
// so that many clients leaving a topic with many groups cost time in proportion to their number.
func (t *topic) removeGroup(i int) {
	last := t.groups[len(t.groups)-1]
	t.groups[i] = last
	last.slots[slices.Index(last.topics, t)] = i
	t.groups[len(t.groups)-1] = nil
	t.groups = t.groups[:len(t.groups)-1]
}

// leave unsubscribes c, forgetting its group and topics when nothing else needs them.
func (b *Broker) leave(c *client) {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := c.g
	if g.clients--; g.clients == 0 {
		delete(b.groups, g.key)
		b.undue(g)
		for i, t := range g.topics {
			t.removeGroup(g.slots[i])
			if len(t.groups) == 0 {
				if t.head.Load() == t.tail.Load() {
					b.forget(t) // nothing to replay: only its subscribers made it
				} else {
					b.markUnread(t)
				}
			}
		}
	}
	if b.stats.clients.Add(-1) == 0 {
		if b.beatTimer != nil {
			b.beatTimer.Stop()
		}
		if b.drained != nil {
			close(b.drained)
			b.stopPollers() // no stream is left, and none can come
		}
	}
}
