package sse

import (
	"container/list"
	"sync/atomic"
)

// The history: each topic's last events, kept in chunks that Publish fills once and never
// changes, and the cursors through which clients read them without a lock.

// A topic is the history of one topic: the last events published to it, which are both the
// queue its clients read from and what reconnecting clients replay. Events are kept in chunks
// that Publish fills once and never changes, so that clients read them without a lock: the
// head tells them how far the chunks are filled.
type topic struct {
	name string

	// Written by Publish under Broker.mu, read by clients without it.
	head atomic.Uint64 // position of the next event; every entry before it is filled
	tail atomic.Uint64 // position of the oldest event held

	// Guarded by Broker.mu.
	chunks  []*chunk // holding tail up to head, oldest first; never empty
	evicted uint64   // sequence number of the newest event dropped, 0 if none
	groups  []*group
	unread  *list.Element // its place in Broker.unread while no client reads it
}

// chunkSize is how many events a chunk holds: Publish allocates one chunk every chunkSize
// events, and a topic holds up to chunkSize-1 events beyond its history.
const chunkSize = 32

// A chunk holds chunkSize consecutive events of a topic. Publish writes each entry, and next,
// before the topic's head moves past them, and never again: a client that has loaded the head
// may read everything before it.
type chunk struct {
	start   uint64 // position of entries[0]
	entries [chunkSize]entry
	next    atomic.Pointer[chunk] // set before head passes start+chunkSize; cut once the tail is past it
}

type entry struct {
	seq   uint64
	at    int64  // publish time in Unix nanoseconds, kept only with a history age
	id    string // the ID the application gave the event, if it did
	frame []byte // the whole event on the wire; shared by every client, never modified
}

// append adds e to the topic, dropping the oldest event if the topic holds limit already.
// b.mu must be held.
func (t *topic) append(e entry, limit int) {
	h := t.head.Load()
	last := t.chunks[len(t.chunks)-1]
	if h == last.start+chunkSize {
		c := &chunk{start: h}
		last.next.Store(c)
		t.chunks = append(t.chunks, c)
		last = c
	}
	last.entries[h-last.start] = e
	if h+1-t.tail.Load() > uint64(limit) {
		t.dropOldest()
	}
	t.head.Store(h + 1) // publishes the entry, and the chunk's next, to clients
}

// dropOldest drops the oldest event held. b.mu must be held.
func (t *topic) dropOldest() {
	tail := t.tail.Load() + 1
	t.evicted = t.at(tail - 1).seq
	t.tail.Store(tail)
	// Let go of the chunks wholly before the tail (clients still reading one keep it), but
	// not of the last, which the next event may go into.
	// A chunk is let go of only once the tail is strictly past its end: then no client
	// that is not lost needs its next, which is cut so that a client stalled on it (in a
	// write) does not keep every later chunk reachable.
	for len(t.chunks) > 1 && t.chunks[0].start+chunkSize < tail {
		t.chunks[0].next.Store(nil)
		t.chunks[0] = nil
		t.chunks = t.chunks[1:]
	}
}

// dropOlder drops the events published before the Unix time cutoff (in nanoseconds).
// b.mu must be held.
func (t *topic) dropOlder(cutoff int64) {
	for t.tail.Load() < t.head.Load() && t.at(t.tail.Load()).at < cutoff {
		t.dropOldest()
	}
}

// chunk returns the chunk that holds position p, or for p == head, the last chunk if p is its
// end. b.mu must be held.
func (t *topic) chunk(p uint64) *chunk {
	i := int((p - t.chunks[0].start) / chunkSize)
	return t.chunks[min(i, len(t.chunks)-1)]
}

// at returns the event at position p, which must be held. b.mu must be held.
func (t *topic) at(p uint64) *entry {
	c := t.chunk(p)
	return &c.entries[p-c.start]
}

// after returns the position of the first event held with a sequence number above seq.
// b.mu must be held.
func (t *topic) after(seq uint64) uint64 {
	lo, hi := t.tail.Load(), t.head.Load()
	for lo < hi {
		mid := lo + (hi-lo)/2
		if t.at(mid).seq <= seq {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// A cursor is a client's place in one topic: the position of the next event to send, and
// the chunk that holds it (or ends there).
type cursor struct {
	t   *topic
	c   *chunk
	pos uint64
}

// peek returns the event at the cursor, which must be before the topic's head, or nil if the
// cursor's chunk was cut from the history: the client is lost.
func (cur *cursor) peek() *entry {
	if cur.pos == cur.c.start+chunkSize {
		next := cur.c.next.Load()
		if next == nil {
			return nil
		}
		cur.c = next
	}
	return &cur.c.entries[cur.pos-cur.c.start]
}

// A reader is a client's place in the history of its topics: one cursor for each.
type reader struct {
	cursors []cursor
	frames  [][]byte // reused for every batch
}

// maxBatch bounds how many events a client writes between flushes, and so the memory it holds.
const maxBatch = 128

// read returns the reader's next events, up to sequence number published, in publish order,
// and advances its cursors; lost reports that the reader fell further behind than the history
// holds. It takes no lock: every entry before a topic's head is written and will not change.
func (r *reader) read(published uint64) (frames [][]byte, lost bool) {
	for i := range r.cursors {
		if r.cursors[i].pos < r.cursors[i].t.tail.Load() {
			return nil, true
		}
	}
	frames = r.frames[:0]
	if len(r.cursors) == 1 {
		cur := &r.cursors[0]
		for head := cur.t.head.Load(); cur.pos < head && len(frames) < maxBatch; cur.pos++ {
			e := cur.peek()
			if e == nil {
				r.frames = frames
				return nil, true
			}
			frames = append(frames, e.frame)
		}
	} else {
		if frames, lost = r.merge(frames, published); lost {
			r.frames = frames
			return nil, true
		}
	}
	r.frames = frames
	return frames, false
}

// merge appends the events of several topics in sequence order, each event once however many
// of the topics it was published to. It takes only events up to sequence number published,
// which are in all their topics already.
func (r *reader) merge(frames [][]byte, published uint64) ([][]byte, bool) {
	for len(frames) < maxBatch {
		var next *entry
		for i := range r.cursors {
			cur := &r.cursors[i]
			if cur.pos < cur.t.head.Load() {
				e := cur.peek()
				if e == nil {
					return frames, true
				}
				if e.seq <= published && (next == nil || e.seq < next.seq) {
					next = e
				}
			}
		}
		if next == nil {
			return frames, false
		}
		frames = append(frames, next.frame)
		seq := next.seq
		for i := range r.cursors {
			cur := &r.cursors[i]
			if cur.pos < cur.t.head.Load() {
				if e := cur.peek(); e != nil && e.seq == seq { // nil: lost, found by the next read
					cur.pos++
				}
			}
		}
	}
	return frames, false
}
