package sse

import (
	"container/list"
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Publish after Shutdown has been called, and by ServeEvents for a
// stream that Shutdown ended or that came after it.
var ErrClosed = errors.New("sse: broker shut down")

// ErrTooManyClients is returned by ServeEvents for a client turned away over the limit that
// WithMaxClients sets.
var ErrTooManyClients = errors.New("sse: too many clients")

// ErrSlowClient is returned by ServeEvents for a client that was disconnected because it fell
// further behind than the history holds, or because a write to it did not finish within the
// write timeout; the error then also wraps os.ErrDeadlineExceeded.
var ErrSlowClient = errors.New("sse: client too slow")

// ErrEventsLost is returned by ServeEvents for a client disconnected because events were lost
// before they reached the Broker, which follows a log ordered elsewhere; see [Broker.Append].
var ErrEventsLost = errors.New("sse: events lost before they reached the broker")

// MissedType is the Type of the event a Broker sends first to a client that reconnects with a
// Last-Event-ID it cannot resume from: one it never assigned (from an earlier run of the
// process, say), or one whose successors have left the history. Events may have been lost;
// the retained history follows, so a client that gets this event should refresh its state.
// The event has empty data, and an ID from which the client resumes the same replay.
const MissedType = "missed"

// Broker fans published events out to every client subscribed to their topics, keeps a
// bounded history per topic for clients that reconnect, and never lets a slow client hold
// anyone else up. Broker is safe for concurrent use.
type Broker struct {
	opts options
	done chan struct{} // closed by Shutdown

	// Clients read these without a lock.
	published atomic.Uint64 // the sequence number of the last event appended to all its topics
	ticks     atomic.Uint64 // how many heartbeat ticks there have been; see heartbeat.go
	breaks    atomic.Uint64 // how many times the log the Broker follows broke; see Append

	warnedDeadline atomic.Bool // a ResponseWriter that cannot set deadlines was logged

	polls atomic.Pointer[pollers] // serve the streams taken over (WithHijack); made under mu, on the first

	// Set by tests only: handOverHook is called just before a handler hands its stream to
	// poller p, which serves the stream's group as pg; tickHook, whenever a tick has let go
	// of mu between batches of groups.
	handOverHook func(p *poller, pg *pgroup)
	tickHook     func()

	// mu guards the fields below it, and what topics and groups say it guards. Publish,
	// subscribing and unsubscribing hold it; clients reading the history do not.
	mu     sync.Mutex
	seq    uint64 // the sequence number of the last event published
	hist   history
	prefix string // starts every ID this broker assigns; unique to this broker, or to the log it follows

	// A Broker that follows a log ordered elsewhere (Append) numbers the log's event n base+n,
	// and resumes from IDs of the log's current epoch from floor-base up to seq-base.
	following bool
	base      uint64
	floor     uint64
	ahead     map[uint64]chan struct{} // closed once seq reaches the key: for resumes that wait for it
	waiting   int                      // resumes waiting in ahead; they count against the client limit

	ids       strings.Builder // holds the IDs the broker assigns; see id
	topics    map[string]*topic
	unread    list.List // of *topic: those no client reads, most recently published first
	forgotten *marks    // of the topics forgotten; nil until one with events is
	groups    map[string]*group
	due       [ticksPerBeat][]*group // the groups a tick looks at, by the tick modulo ticksPerBeat; see tick
	closed    bool
	beatTimer *time.Timer   // ticks while clients > 0
	drained   chan struct{} // made by Shutdown; closed once no client is left

	stats struct {
		// clients counts open streams. It changes only under mu, whose holders may rely on it.
		clients atomic.Int64

		published, delivered, slow, replays, unknownReplays, refused, hijacked atomic.Int64
	}
}

// maxUnreadTopics bounds how many topics that no client reads keep their history. Beyond it,
// the least recently published are forgotten, so that publishing to ever new topics cannot
// grow memory without bound.
const maxUnreadTopics = 1024

// A group is the clients subscribed to the same set of topics. They share one wake-up
// channel, so that Publish does work per group, not per client.
type group struct {
	// Guarded by Broker.mu.
	key     string // the topics' names, sorted; see groupKey
	topics  []*topic
	slots   []int // the group's index in each of its topics' groups
	clients int
	active  uint64 // Broker.ticks when the group was last woken, by an event or a heartbeat
	due     int    // the list of Broker.due the group is in
	dueIdx  int    // and its index there

	beats atomic.Uint64 // how many heartbeats the group was woken with

	polled []*pgroup // the pollers that hold streams of the group (WithHijack); guarded by Broker.mu

	wakeMu sync.Mutex    // guards wake, which clients set without Broker.mu
	wake   chan struct{} // closed to wake the group's clients; nil when none waits
}

// take returns the channel that wakes the group's waiting clients once closed, or nil if none
// waits; whoever waits next gets a new one. Closing a channel readies each goroutine waiting
// on it, which is work per client: the caller closes it once it has let go of Broker.mu. The
// pollers that hold streams of the group are told too, once each; the caller wakes them
// (kickPollers) once it has let go of Broker.mu. Broker.mu must be held.
func (g *group) take() chan struct{} {
	for _, pg := range g.polled {
		pg.p.notify(pg)
	}
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	ch := g.wake
	g.wake = nil
	return ch
}

// takeAll takes every group's channel (see take), appending those that wake clients to
// waiting. Broker.mu must be held.
func (b *Broker) takeAll(waiting []chan struct{}) []chan struct{} {
	for _, g := range b.groups {
		if ch := g.take(); ch != nil {
			waiting = append(waiting, ch)
		}
	}
	return waiting
}

// wake closes the channels that take returned, waking the clients that wait on them.
func wake(chs []chan struct{}) {
	for _, ch := range chs {
		close(ch)
	}
}

// waiter returns a channel that is closed the next time the group is woken.
func (g *group) waiter() <-chan struct{} {
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	if g.wake == nil {
		g.wake = make(chan struct{})
	}
	return g.wake
}

// NewBroker returns a Broker with replay history, heartbeats and a retry hint on, each with the
// default its option documents.
func NewBroker(opts ...Option) *Broker {
	b := &Broker{
		opts: options{
			history:      1024,
			memory:       64 << 20,
			heartbeat:    15 * time.Second,
			retry:        3 * time.Second,
			writeTimeout: defaultWriteTimeout,
		},
		prefix: newIDPrefix(),
		done:   make(chan struct{}),
		topics: make(map[string]*topic),
		groups: make(map[string]*group),
	}
	for _, opt := range opts {
		opt(&b.opts)
	}
	b.hist = history{
		perTopic: b.opts.history,
		age:      b.opts.historyAge,
		budget:   b.opts.memory,
		byID:     make(map[string]uint64),
		copies:   make(map[uint64]int),
	}
	return b
}

// newIDPrefix returns a random prefix for a broker's IDs, so that an ID from an earlier run of
// the process is never mistaken for one of this run's.
func newIDPrefix() string {
	// math/rand/v2 is seeded afresh from the operating system at every start.
	return strconv.FormatUint(rand.Uint64()>>24, 36) + "-"
}

// Publish sends ev to every client subscribed to one of topics (the default topic if none is
// given) and adds it to those topics' history. It never blocks on a client. If ev.ID is empty,
// the broker assigns one that increases with every Publish; either way Publish returns the
// event's ID. An Event that cannot be represented on the wire is refused with an error
// wrapping ErrInvalidEvent; after Shutdown, Publish returns ErrClosed.
//
// An ID the application sets should be unique: a client that resumes from it receives what
// was published after the newest event that has it.
func (b *Broker) Publish(ev Event, topics ...string) (id string, err error) {
	if err := ev.validate(); err != nil {
		return "", err
	}
	if len(topics) == 0 {
		topics = defaultTopics
	}
	// Encode everything but the ID before taking the lock; the ID, which depends on the
	// sequence number, is written last.
	var frame []byte
	if ev.ID != "" {
		frame = ev.appendTo(make([]byte, 0, ev.size()))
		id = ev.ID
	} else {
		frame = ev.appendFields(make([]byte, 0, ev.fieldsSize()+len(idPrefix)+maxLocalPrefix+20+2))
	}
	at := b.stamp()

	// The clients are woken once the lock is let go (see group.take); most publishes wake
	// no more groups than wakeBuf holds.
	var wakeBuf [8]chan struct{}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return "", ErrClosed
	case b.following:
		b.mu.Unlock()
		return "", errFollowing
	}
	b.seq++
	if id == "" {
		id = b.id(b.seq)
		frame = append(frame, idPrefix...)
		frame = append(frame, id...)
		frame = append(frame, "\n\n"...)
	}
	waiting := b.add(entry{seq: b.seq, at: at, id: ev.ID, frame: frame}, topics, wakeBuf[:0])
	b.mu.Unlock()
	wake(waiting)
	b.kickPollers()
	return id, nil
}

var errFollowing = errors.New("sse: Publish on a broker that follows a log: publish to the log")

// add puts e in the history of topics, once in each, and appends to waiting the channels that
// wake their clients (see group.take), for the caller to close once it has let go of b.mu.
// b.mu must be held.
func (b *Broker) add(e entry, topics []string, waiting []chan struct{}) []chan struct{} {
	var topicBuf [4]*topic
	added := topicBuf[:0]
	for i, name := range topics {
		if slices.Contains(topics[:i], name) {
			continue // once per topic, however often it is named
		}
		added = append(added, b.topic(name))
	}
	b.hist.add(e, added)
	for _, t := range added {
		if len(t.groups) == 0 {
			b.markUnread(t)
		}
	}
	b.forgetEmptied()
	// Only now is the event in every topic, so only now may a client of several read it:
	// wake clients after this. A client gets its group's channel (waiter) before it looks at
	// published, so that it misses no wake-up. (A group in several of the topics has its
	// channel taken once: the first time.)
	b.published.Store(e.seq)
	now := b.ticks.Load()
	for _, t := range added {
		for _, g := range t.groups {
			g.active = now
			if ch := g.take(); ch != nil {
				waiting = append(waiting, ch)
			}
		}
	}
	b.stats.published.Add(1)
	return waiting
}

// Append adds an event that was put in order elsewhere: number seq of the shared log called
// epoch. It is the seam for a module that shares one stream among several processes, each
// with its own Broker, so that each serves its clients from its own history as if it had
// published every event itself; an application publishes with Publish. A Broker takes its
// events either from Publish or from Append, not both.
//
// If ev.ID is empty, the event's ID is epoch+"-"+seq (seq in decimal), the same on every
// Broker that follows the log. Call Append with every event of the log, in order, from one
// goroutine, numbered from 1; an event appended already (a seq not above the last one of the
// same epoch) is ignored. When seq skips ahead of the last one appended in the same epoch (events were
// lost to this Broker), when the epoch changes (the log was lost and begun anew), and on the
// first Append, the Broker drops its history and disconnects every client (ServeEvents
// returns ErrEventsLost), so that they resume; resuming from an ID from before the break
// gets MissedType, and so no client misses events silently. A client that resumes from an ID
// of the current epoch that Append has not reached yet (it was served by a Broker further
// ahead) waits for it, up to a few seconds, and gets MissedType if it does not come. An event
// that cannot be represented is refused as by Publish.
//
// published is when the log took the event (the zero Time: now). WithHistoryAge counts an
// event's age from it, so that every Broker following the log drops the same events, however
// late it read them.
func (b *Broker) Append(epoch string, seq uint64, published time.Time, ev Event, topics ...string) error {
	if err := ev.validate(); err != nil {
		return err
	}
	if len(topics) == 0 {
		topics = defaultTopics
	}
	if seq == 0 {
		return errSeqZero
	}
	wire := ev
	if wire.ID == "" {
		wire.ID = epoch + "-" + strconv.FormatUint(seq, 10)
		if err := validateID(wire.ID); err != nil {
			return err
		}
	}
	frame := wire.appendTo(make([]byte, 0, wire.size()))
	at := b.stamp()
	if at != 0 && !published.IsZero() {
		at = published.UnixNano()
	}

	var wakeBuf [8]chan struct{}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	sameEpoch := b.following && b.prefix == epoch+"-"
	if sameEpoch && seq <= b.seq-b.base {
		b.mu.Unlock()
		return nil // appended already
	}
	ended, waiting := 0, wakeBuf[:0]
	if !sameEpoch || seq != b.seq-b.base+1 {
		ended, waiting = b.restart(epoch, seq, waiting)
	}
	b.seq++
	waiting = b.add(entry{seq: b.seq, at: at, id: ev.ID, frame: frame}, topics, waiting)
	// Append adds the log's events one by one, so every sequence number a resume waits for
	// comes up: each waiting resume is woken once, when its event is there.
	if ch := b.ahead[b.seq]; ch != nil {
		delete(b.ahead, b.seq)
		waiting = append(waiting, ch)
	}
	b.mu.Unlock()
	wake(waiting) // as Publish does
	b.kickPollers()
	if ended > 0 {
		b.logBreak(epoch, ended)
	}
	return nil
}

var errSeqZero = errors.New("sse: Append of event 0: a log's events are numbered from 1")

// Follow makes the Broker follow the log called epoch from after its event seq (0 for a log
// with no events yet), holding nothing of it: for a module whose Broker starts on a log that
// has nothing to append, so that its first clients get IDs of the log, and the log's next
// event, seq+1, reaches them rather than being taken for a break. If the Broker follows epoch
// at seq or later already, Follow does nothing; otherwise it drops the history and
// disconnects every client, as a break does (see Append).
func (b *Broker) Follow(epoch string, seq uint64) error {
	if err := validateID(epoch + "-0"); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.following && b.prefix == epoch+"-" && seq <= b.seq-b.base {
		b.mu.Unlock()
		return nil
	}
	ended, waiting := b.restart(epoch, seq+1, nil)
	b.mu.Unlock()
	wake(waiting)
	b.kickPollers()
	if ended > 0 {
		b.logBreak(epoch, ended)
	}
	return nil
}

// restart makes the broker follow epoch from seq on: it drops what it holds, which came
// before a break in the log, and disconnects every client. It returns how many streams it
// ends, and waiting with the channels that wake them appended, for the caller to close once
// it has let go of b.mu (see group.take). b.mu must be held.
func (b *Broker) restart(epoch string, seq uint64, waiting []chan struct{}) (ended int, _ []chan struct{}) {
	b.following = true
	b.prefix = epoch + "-"
	b.base = b.seq + 1 - seq // the event seq is the next: b.seq+1
	b.floor = b.seq          // resuming from seq-1 misses nothing
	// Counted before the history is dropped: a client that finds the events it had yet to
	// read gone sees the break, and does not take itself for a slow client.
	b.breaks.Add(1)
	for _, t := range b.topics {
		for t.len() > 0 {
			b.hist.drop(t)
		}
	}
	b.forgetEmptied()
	waiting = b.takeAll(waiting)
	for _, ch := range b.ahead {
		waiting = append(waiting, ch) // what they wait for is from before the break
	}
	clear(b.ahead)
	return int(b.stats.clients.Load()), waiting
}

// logBreak logs, once for the Broker, that a break in the log it follows ended streams
// ended; each stream's own end is logged at Debug.
func (b *Broker) logBreak(epoch string, streams int) {
	if b.opts.logger != nil {
		b.opts.logger.LogAttrs(context.Background(), slog.LevelWarn, "sse: the log broke: events were lost; streams ended, to resume with "+MissedType,
			slog.String("epoch", epoch), slog.Int("streams", streams))
	}
}

// maxLocalPrefix is the longest prefix newIDPrefix returns.
const maxLocalPrefix = 9

var defaultTopics = []string{""}

// stamp returns the time to keep with an event: now in Unix nanoseconds if the history has an
// age limit, else 0.
func (b *Broker) stamp() int64 {
	if b.opts.historyAge > 0 {
		return time.Now().UnixNano()
	}
	return 0
}

// id returns the broker's ID for sequence number seq. IDs are cut from a shared buffer, so
// that assigning one costs no allocation of its own, and an ID the application keeps holds on
// to a few kilobytes at most, never to its event. b.mu must be held.
func (b *Broker) id(seq uint64) string {
	const chunk = 4 << 10
	if b.ids.Cap()-b.ids.Len() < len(b.prefix)+20 {
		b.ids = strings.Builder{} // earlier IDs keep the old buffer, which is never written again
		b.ids.Grow(chunk)
	}
	start := b.ids.Len()
	b.ids.WriteString(b.prefix)
	var digits [20]byte
	b.ids.Write(strconv.AppendUint(digits[:0], seq-b.base, 10))
	return b.ids.String()[start:]
}

// topic returns the topic called name, making it if need be.
func (b *Broker) topic(name string) *topic {
	t := b.topics[name]
	if t == nil {
		// Events of a topic forgotten earlier under this name are not in the new ring: a
		// client resuming from before them must be told it missed them.
		t = b.hist.newTopic(name, b.forgotten.get(name))
		b.topics[name] = t
	}
	return t
}

// markUnread records that t, which no client reads, was just published to, and forgets the
// least recently published unread topics beyond maxUnreadTopics.
func (b *Broker) markUnread(t *topic) {
	if t.unread != nil {
		b.unread.MoveToFront(t.unread)
		return
	}
	t.unread = b.unread.PushFront(t)
	for b.unread.Len() > maxUnreadTopics {
		b.forget(b.unread.Back().Value.(*topic))
	}
}

// forgetEmptied forgets the topics that no client reads and whose history the limits emptied:
// they have nothing left to replay.
func (b *Broker) forgetEmptied() {
	for i, t := range b.hist.emptied {
		if len(t.groups) == 0 && t.len() == 0 && b.topics[t.name] == t {
			b.forget(t)
		}
		b.hist.emptied[i] = nil
	}
	b.hist.emptied = b.hist.emptied[:0]
}

// forget drops t and its history, keeping a mark of its newest event.
func (b *Broker) forget(t *topic) {
	newest := t.evicted
	if h := t.head.Load(); h > t.tail.Load() {
		newest = t.at(h - 1).seq
	}
	if newest > 0 {
		if b.forgotten == nil {
			b.forgotten = newMarks()
		}
		b.forgotten.raise(t.name, newest)
	}
	if t.unread != nil {
		b.unread.Remove(t.unread)
	}
	b.hist.clear(t)
	delete(b.topics, t.name)
}

// marks remember, for the topics a Broker forgot, the sequence number of each one's newest
// event, in bounded memory: a fixed table indexed by a hash of the name, each slot holding the
// highest mark of the names that share it. A name's mark is never too low, so a client resuming
// on a topic forgotten since is always told it missed events; it is too high only when another
// name in the same slot was forgotten later with newer events, which costs that client a
// needless MissedType.
type marks struct {
	seed  maphash.Seed
	slots [markSlots]uint64
}

// markSlots is how many slots marks have: 32 KiB, made on the first topic forgotten with
// events. With f topics forgotten after a client's last event, it is sent a needless
// MissedType with a chance of about f/markSlots.
const markSlots = 4096

func newMarks() *marks { return &marks{seed: maphash.MakeSeed()} }

func (m *marks) slot(name string) *uint64 {
	return &m.slots[maphash.String(m.seed, name)%markSlots]
}

// raise records that a topic called name was forgotten with newest as its newest event.
func (m *marks) raise(name string, newest uint64) {
	s := m.slot(name)
	*s = max(*s, newest)
}

// get returns the mark of name: no event of a topic of that name that was forgotten is newer.
func (m *marks) get(name string) uint64 {
	if m == nil {
		return 0
	}
	return *m.slot(name)
}

// isClosed reports whether Shutdown has been called.
func (b *Broker) isClosed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// Shutdown ends every stream, each with a retry hint, and makes Publish return ErrClosed. It
// returns once every stream has ended, or with ctx's error if ctx is done first. Shutdown is
// idempotent and safe to call from any goroutine. To end streams when an http.Server shuts
// down, register it with the server's RegisterOnShutdown; see the package example.
func (b *Broker) Shutdown(ctx context.Context) error {
	var waiting []chan struct{}
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.done)
		waiting = b.takeAll(nil)
		if b.beatTimer != nil {
			b.beatTimer.Stop()
		}
		b.drained = make(chan struct{})
		if b.stats.clients.Load() == 0 {
			close(b.drained)
			b.stopPollers()
		}
	}
	drained := b.drained
	b.mu.Unlock()
	wake(waiting) // as Publish does
	b.kickPollers()
	select {
	case <-drained:
		return b.pollersEnded(ctx) // they close the connections they held
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats are a Broker's counters since it was made. They marshal to JSON as they are, for
// expvar.Func or a status page.
type Stats struct {
	Clients         int64 // streams open now
	Published       int64 // events Publish (or Append) accepted
	Delivered       int64 // events written to clients, once per client
	SlowDisconnects int64 // clients disconnected for falling behind the history or stalling a write
	Replays         int64 // streams that resumed from a known Last-Event-ID
	UnknownReplays  int64 // streams whose Last-Event-ID could not be resumed from (sent MissedType)
	Refused         int64 // requests turned away with a retry hint: over the client limit or shut down
	Hijacked        int64 // streams open now that the broker's pollers serve (WithHijack); counted in Clients too
}

// Stats returns the broker's counters. It takes no lock and is cheap enough to poll.
func (b *Broker) Stats() Stats {
	s := &b.stats
	return Stats{
		Clients:         s.clients.Load(),
		Published:       s.published.Load(),
		Delivered:       s.delivered.Load(),
		SlowDisconnects: s.slow.Load(),
		Replays:         s.replays.Load(),
		UnknownReplays:  s.unknownReplays.Load(),
		Refused:         s.refused.Load(),
		Hijacked:        s.hijacked.Load(),
	}
}
