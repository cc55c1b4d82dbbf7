package sse

import (
	"container/heap"
	"container/list"
	"sync/atomic"
	"time"
	"unsafe"
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
	aged    int           // 1 + its index in history.byAge while it holds events, else 0
}

// chunkSize is how many events a chunk holds: Publish allocates one chunk every chunkSize
// events. A chunk goes once the tail is past its end, so a topic keeps up to chunkSize events
// in memory that it no longer holds (and a client stalled in a write, its chunk).
const chunkSize = 8

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

// append adds e to the topic, and reports whether it took a new chunk. b.mu must be held.
func (t *topic) append(e entry) (grew bool) {
	h := t.head.Load()
	last := t.chunks[len(t.chunks)-1]
	if h == last.start+chunkSize {
		c := &chunk{start: h}
		last.next.Store(c)
		t.chunks = append(t.chunks, c)
		last, grew = c, true
	}
	last.entries[h-last.start] = e
	t.head.Store(h + 1) // publishes the entry, and the chunk's next, to clients
	return grew
}

// len returns how many events the topic holds.
func (t *topic) len() uint64 { return t.head.Load() - t.tail.Load() }

// dropOldest drops the oldest event held, which it returns, and how many chunks it let go of.
// b.mu must be held.
func (t *topic) dropOldest() (e *entry, freed int) {
	tail := t.tail.Load() + 1
	e = t.at(tail - 1)
	t.evicted = e.seq
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
		freed++
	}
	return e, freed
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

// history holds every topic's events within the Broker's limits: a number of events per
// topic, an age, and one budget in bytes for all of them, and it finds events by the IDs the
// application gave them. Broker.mu guards it.
type history struct {
	perTopic int           // the most events a topic holds
	age      time.Duration // the oldest event a topic holds, if positive
	budget   int64         // the most bytes all topics hold, if positive

	bytes   int64             // held now: every chunk, every event once however many topics hold it, and the indexes
	byID    map[string]uint64 // the sequence number of the newest event held with each ID the application chose
	copies  map[uint64]int    // how many topics hold each event that several hold
	byAge   ageHeap           // the topics that hold events, oldest event first
	emptied []*topic          // topics that add left with no events, for the Broker to forget if unread
}

// chunkBytes is what a chunk takes in memory, but for its events' frames and IDs.
const chunkBytes = int64(unsafe.Sizeof(chunk{}))

// eventBytes is what the event of e takes in memory beside its chunks' entries and the
// indexes.
func eventBytes(e *entry) int64 { return int64(cap(e.frame) + len(e.id)) }

// idIndexBytes and copyIndexBytes are about what an entry of byID and of copies takes: a Go
// map's entry takes one to two times its slot, as the map fills and grows (measured with Go
// 1.26, with the ID's own allocation: 57 to 76 bytes, and 32 to 48).
const (
	idIndexBytes   = 72
	copyIndexBytes = 48
)

// newTopic returns a topic with no events, the newest of its name dropped being evicted.
func (h *history) newTopic(name string, evicted uint64) *topic {
	h.bytes += chunkBytes
	return &topic{name: name, evicted: evicted, chunks: []*chunk{{}}}
}

// add appends e to topics, once to each, and counts it once; then it drops what goes beyond
// the limits, but never e.
func (h *history) add(e entry, topics []*topic) {
	for _, t := range topics {
		if t.append(e) {
			h.bytes += chunkBytes
		}
		if t.aged == 0 {
			heap.Push(&h.byAge, t)
		}
	}
	h.bytes += eventBytes(&e)
	if len(topics) > 1 {
		h.copies[e.seq] = len(topics)
		h.bytes += copyIndexBytes
	}
	if e.id != "" {
		if _, ok := h.byID[e.id]; !ok {
			h.bytes += idIndexBytes
		}
		h.byID[e.id] = e.seq
	}
	for _, t := range topics {
		for t.len() > uint64(h.perTopic) {
			h.drop(t)
		}
		if h.age > 0 {
			h.dropOlder(t, e.at-int64(h.age))
		}
	}
	for h.budget > 0 && h.bytes > h.budget {
		t := h.byAge[0]
		if t.at(t.tail.Load()).seq == e.seq {
			break // only e is left: it goes in as the newest, whatever its size
		}
		h.drop(t)
	}
}

// drop drops t's oldest event.
func (h *history) drop(t *topic) {
	e, freed := t.dropOldest()
	h.bytes -= int64(freed) * chunkBytes
	h.release(e)
	if t.len() == 0 {
		heap.Remove(&h.byAge, t.aged-1)
		h.emptied = append(h.emptied, t)
	} else {
		heap.Fix(&h.byAge, t.aged-1)
	}
}

// dropOlder drops t's events published before the Unix time cutoff (in nanoseconds).
func (h *history) dropOlder(t *topic, cutoff int64) {
	for t.len() > 0 && t.at(t.tail.Load()).at < cutoff {
		h.drop(t)
	}
}

// release counts that a topic no longer holds e: once no topic does, its bytes are free.
func (h *history) release(e *entry) {
	if n, ok := h.copies[e.seq]; ok {
		if n > 1 {
			h.copies[e.seq] = n - 1
			return
		}
		delete(h.copies, e.seq)
		h.bytes -= copyIndexBytes
	}
	h.bytes -= eventBytes(e)
	if e.id != "" && h.byID[e.id] == e.seq {
		delete(h.byID, e.id)
		h.bytes -= idIndexBytes
	}
}

// clear releases everything t holds, as the Broker forgets it.
func (h *history) clear(t *topic) {
	for p := t.tail.Load(); p < t.head.Load(); p++ {
		h.release(t.at(p))
	}
	h.bytes -= int64(len(t.chunks)) * chunkBytes
	if t.aged != 0 {
		heap.Remove(&h.byAge, t.aged-1)
	}
}

// An ageHeap orders topics by the sequence number of the oldest event each holds: the first
// is the one that holds the oldest event of all. It implements heap.Interface.
type ageHeap []*topic

func (a ageHeap) Len() int { return len(a) }

func (a ageHeap) Less(i, j int) bool {
	return a[i].at(a[i].tail.Load()).seq < a[j].at(a[j].tail.Load()).seq
}

func (a ageHeap) Swap(i, j int) {
	a[i], a[j] = a[j], a[i]
	a[i].aged, a[j].aged = i+1, j+1
}

func (a *ageHeap) Push(x any) {
	t := x.(*topic)
	*a = append(*a, t)
	t.aged = len(*a)
}

func (a *ageHeap) Pop() any {
	old := *a
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*a = old[:len(old)-1]
	t.aged = 0
	return t
}
