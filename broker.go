package sse

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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

// Option configures a Broker.
type Option func(*options)

type options struct {
	history      int
	historyAge   time.Duration
	memory       int64
	logger       *slog.Logger
	heartbeat    time.Duration
	retry        time.Duration
	writeTimeout time.Duration
	maxClients   int
}

// WithHistory sets how many events each topic keeps, 1024 if n is not positive. The history
// is what reconnecting clients replay, and also how far a client may fall behind before it is
// disconnected (as is the memory budget; see WithHistoryMemory).
func WithHistory(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.history = n
		}
	}
}

// WithHistoryAge drops events from the history once they are older than d. By default, and
// when d is not positive, events leave the history only when newer ones push them out.
func WithHistoryAge(d time.Duration) Option {
	return func(o *options) { o.historyAge = d }
}

// WithHistoryMemory sets how many bytes the history of all topics may take together, 64 MiB
// by default (when n is zero); a negative n sets no limit. Over it, the oldest events of all
// topics are dropped first, so that the history covers the same span of time for every topic
// as far as it can. An event published to several topics counts once. What is counted is the
// events as they go on the wire, the chunks of eight that hold them, at least one for each
// topic, and the indexes of the IDs the application chose and of the events several topics
// hold; the package documentation says what else each topic and client takes.
func WithHistoryMemory(n int64) Option {
	return func(o *options) {
		if n != 0 {
			o.memory = n
		}
	}
}

// WithHeartbeat sets the heartbeat interval, 15s by default (when d is zero); a negative d
// turns heartbeats off. A client that has been sent nothing for a whole interval gets a comment
// line at the end of the next one, so an idle stream carries one every one to two intervals.
// Heartbeats keep proxies from closing idle streams and find clients that left without a word.
func WithHeartbeat(d time.Duration) Option {
	return func(o *options) {
		if d != 0 {
			o.heartbeat = d
		}
	}
}

// WithRetry sets the reconnection delay sent to each client when its stream starts, 3s by
// default (when d is not positive). When the broker shuts down or turns a client away, the
// hint it sends instead is spread between d and 2d, so that clients do not all come back in
// the same millisecond.
func WithRetry(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.retry = min(max(d, time.Millisecond), maxRetry)
		}
	}
}

// WithWriteTimeout sets how long one write to a client may take before the client is
// disconnected as stalled, 10s by default (when d is not positive). The deadline is set
// for each write, so a server's WriteTimeout does not cut long-lived streams.
func WithWriteTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.writeTimeout = d
		}
	}
}

// WithLogger has the broker log the end of every stream to l: why it ended, its topics, how
// long it lasted and how many events it was sent, with the request's context. A client that
// left, or a stream that Shutdown ended, is logged at level Debug; a client disconnected for
// being too slow, turned away over the client limit, or disconnected because the log the
// broker follows broke (ErrEventsLost), at Warn. By default, and when l is nil, nothing is
// logged; nothing is built for a level l does not log. ServeEvents returns the same reason,
// for handlers that log with their own request's details.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithMaxClients limits how many streams may be open at once; by default (n not positive)
// there is no limit. A client over the limit is told to retry later, see [Broker.ServeEvents].
func WithMaxClients(n int) Option {
	return func(o *options) { o.maxClients = max(n, 0) }
}

// Broker fans published events out to every client subscribed to their topics, keeps a
// bounded history per topic for clients that reconnect, and never lets a slow client hold
// anyone else up. Broker is safe for concurrent use.
type Broker struct {
	opts options
	done chan struct{} // closed by Shutdown

	// Clients read these without a lock.
	published atomic.Uint64 // the sequence number of the last event appended to all its topics
	beats     atomic.Uint64 // how many heartbeat ticks there have been
	breaks    atomic.Uint64 // how many times the log the Broker follows broke; see Append

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
	caughtUp  chan struct{} // made for resumes waiting for Append, closed once seq reaches awaited
	awaited   uint64        // the lowest sequence number a resume waits for

	ids       strings.Builder // holds the IDs the broker assigns; see id
	topics    map[string]*topic
	unread    list.List // of *topic: those no client reads, most recently published first
	forgotten *marks    // of the topics forgotten; nil until one with events is
	groups    map[string]*group
	closed    bool
	beatTimer *time.Timer   // ticks while clients > 0
	drained   chan struct{} // made by Shutdown; closed once no client is left

	stats struct {
		// clients counts open streams. It changes only under mu, whose holders may rely on it.
		clients atomic.Int64

		published, delivered, slow, replays, unknownReplays, refused atomic.Int64
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

	wakeMu sync.Mutex    // guards wake, which clients set without Broker.mu
	wake   chan struct{} // closed to wake the group's clients; nil when none waits
}

// wakeUp wakes the group's waiting clients.
func (g *group) wakeUp() {
	if ch := g.take(); ch != nil {
		close(ch)
	}
}

// take returns the channel that wakes the group's waiting clients once closed, or nil if none
// waits; whoever waits next gets a new one. Closing a channel readies each goroutine waiting
// on it, which is work per client: the caller closes it once it has let go of Broker.mu.
func (g *group) take() chan struct{} {
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	ch := g.wake
	g.wake = nil
	return ch
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
	for _, t := range added {
		for _, g := range t.groups {
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
	if !sameEpoch || seq != b.seq-b.base+1 {
		b.restart(epoch, seq)
	}
	b.seq++
	waiting := b.add(entry{seq: b.seq, at: at, id: ev.ID, frame: frame}, topics, wakeBuf[:0])
	if b.caughtUp != nil && b.seq >= b.awaited {
		close(b.caughtUp)
		b.caughtUp = nil
	}
	b.mu.Unlock()
	wake(waiting) // as Publish does
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
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.following && b.prefix == epoch+"-" && seq <= b.seq-b.base {
		return nil
	}
	b.restart(epoch, seq+1)
	return nil
}

// restart makes the broker follow epoch from seq on: it drops what it holds, which came
// before a break in the log, and disconnects every client. b.mu must be held.
func (b *Broker) restart(epoch string, seq uint64) {
	b.following = true
	b.prefix = epoch + "-"
	b.base = b.seq + 1 - seq // the event seq is the next: b.seq+1
	b.floor = b.seq          // resuming from seq-1 misses nothing
	for _, t := range b.topics {
		for t.len() > 0 {
			b.hist.drop(t)
		}
	}
	b.forgetEmptied()
	b.breaks.Add(1)
	for _, g := range b.groups {
		g.wakeUp()
	}
	if b.caughtUp != nil {
		close(b.caughtUp) // what they wait for is from before the break
		b.caughtUp = nil
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
// ErrEventsLost if the log the broker follows broke (see Append).
// Call it from a handler that chooses the topics per request; refuse a request before calling
// it with an ordinary error response.
//
// The client is subscribed before the response headers are flushed: once it sees the stream
// open, it receives every event published afterwards. A client that sends a Last-Event-ID
// header (or, for clients that cannot set headers, a lastEventId query parameter) first
// receives the events it missed; see the package documentation on replay. A request that is
// not a GET gets 405, and an error.
//
// To send a client events of its own ahead of the broker's (a greeting, say), start the
// response with NewStream, Send them, then call ServeEvents; refuse requests other than GET
// before that, since the response has then begun. Such a client sees its stream open before it
// is subscribed: what is published before ServeEvents is called does not reach it. Once the broker is shut down
// or over its client limit, ServeEvents answers 200 with only a retry hint and ends the
// response, so that an EventSource comes back later: any other status would stop it for good.
func (b *Broker) ServeEvents(w http.ResponseWriter, r *http.Request, topics ...string) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "sse: method not allowed", http.StatusMethodNotAllowed)
		return errMethod
	}
	setHeaders(w.Header())
	s := newFlushWriter(w, r, b.opts.writeTimeout)
	// What net/http writes after the handler returns (over HTTP/1.1, the end of the chunked
	// body) must not wait forever on a client that stopped reading.
	defer func() { s.rc.SetWriteDeadline(time.Now().Add(s.timeout)) }()

	began := time.Now()
	c, start, missed, err := b.joinWaiting(r.Context(), topics, lastEventID(r))
	if err == context.Canceled || err == context.DeadlineExceeded {
		b.logEnd(r, topics, began, 0, nil)
		return nil // gone while it waited
	}
	if err != nil {
		b.stats.refused.Add(1)
		s.write(appendRetry(nil, b.retryLater()))
		b.logEnd(r, topics, began, 0, err)
		return err
	}
	defer b.leave(c)
	err = b.stream(r.Context(), s, c, start, missed)
	b.logEnd(r, topics, began, c.sent, err)
	return err
}

var errMethod = errors.New("sse: method not allowed")

// An aheadError is what join returns for a client that resumes from an ID of the log the
// broker follows that Append has not reached: caughtUp is closed at the next Append.
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
		select {
		case <-ahead.caughtUp:
		case <-deadline:
			return b.join(names, lastID, false) // it did not come: resume as from an unknown ID
		case <-b.done:
		case <-ctx.Done():
			return nil, "", false, ctx.Err()
		}
	}
}

// stream writes the client's events until its stream ends, and returns why, as ServeEvents.
func (b *Broker) stream(ctx context.Context, s *flushWriter, c *client, start string, missed bool) error {
	if err := s.write(preamble(b.opts.retry, start, missed)); err != nil {
		return b.writeError(err)
	}
	closing := false
	for {
		frames, wake, lost := c.next(b)
		// Append counts a break before it adds the first event after it: a client that
		// read that event sees the break too, and does not skip what was lost.
		if b.breaks.Load() != c.breaks {
			clear(frames)
			return ErrEventsLost
		}
		if lost {
			b.stats.slow.Add(1)
			return ErrSlowClient
		}
		if len(frames) > 0 {
			err := s.write(frames...)
			clear(frames) // let the history drop them
			if err != nil {
				return b.writeError(err)
			}
			b.stats.delivered.Add(int64(len(frames)))
			c.sent += len(frames)
			c.idle = false
			continue
		}
		if closing {
			s.write(appendRetry(nil, b.retryLater()))
			return ErrClosed
		}
		// Publish, heartbeat ticks and Shutdown all wake the group.
		select {
		case <-wake:
		case <-ctx.Done():
			return nil
		}
		if n := b.beats.Load(); n != c.beats {
			c.beats = n
			if c.idle {
				if err := s.write(heartbeat); err != nil {
					return b.writeError(err)
				}
			}
			c.idle = true
		}
		// Send what was published before Shutdown first: Publish accepts nothing more, so
		// this ends.
		closing = b.isClosed()
	}
}

// writeError returns why a failed write ends a stream: the client was too slow if the write
// timed out, and otherwise it went away (nil).
func (b *Broker) writeError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		b.stats.slow.Add(1)
		return fmt.Errorf("%w: write timed out: %w", ErrSlowClient, err)
	}
	return nil
}

// logEnd logs why the stream of r ended, if the broker has a logger for that level.
func (b *Broker) logEnd(r *http.Request, topics []string, began time.Time, sent int, err error) {
	l := b.opts.logger
	if l == nil {
		return
	}
	level, reason := slog.LevelDebug, "client gone"
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		level, reason = slog.LevelWarn, "write timed out"
	case errors.Is(err, ErrSlowClient):
		level, reason = slog.LevelWarn, "fell behind the history"
	case errors.Is(err, ErrEventsLost):
		level, reason = slog.LevelWarn, "events lost upstream"
	case errors.Is(err, ErrTooManyClients):
		level, reason = slog.LevelWarn, "refused: too many clients"
	case errors.Is(err, ErrClosed):
		reason = "shutdown"
	}
	ctx := r.Context()
	if !l.Enabled(ctx, level) {
		return
	}
	if len(topics) == 0 {
		topics = defaultTopics
	}
	l.LogAttrs(ctx, level, "sse: stream ended",
		slog.String("reason", reason),
		slog.Any("topics", topics),
		slog.Duration("duration", time.Since(began)),
		slog.Int("events", sent),
		slog.String("remote", r.RemoteAddr))
}

var heartbeat = []byte(":\n")

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

// A client is one open stream's place in the history of its topics. Only the stream's handler
// goroutine uses it.
type client struct {
	reader // a cursor for each of g.topics
	g      *group
	idle   bool   // nothing was sent since the last heartbeat tick
	sent   int    // events written
	breaks uint64 // Broker.breaks when the client joined
	beats  uint64 // Broker.beats when the client last looked
}

// next returns the client's next events, in publish order, and advances its cursors. When there
// are none, it returns a channel that is closed when there may be. lost reports that the
// client fell further behind than the history holds.
func (c *client) next(b *Broker) (frames [][]byte, wake <-chan struct{}, lost bool) {
	if frames, lost = c.read(b.published.Load()); lost || len(frames) > 0 {
		return frames, nil, lost
	}
	wake = c.g.waiter()
	// What happened before the waiter was made did not close it: an event published, a
	// heartbeat tick, Shutdown. Each is done before its wake-up, so it is seen now.
	if frames, lost = c.read(b.published.Load()); lost || len(frames) > 0 {
		return frames, nil, lost
	}
	if c.beats != b.beats.Load() || b.isClosed() {
		return nil, woken, false
	}
	return nil, wake, false
}

// woken is a closed channel: a wake-up that has already happened.
var woken = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// isClosed reports whether Shutdown has been called.
func (b *Broker) isClosed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

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
	if b.opts.maxClients > 0 && b.stats.clients.Load() >= int64(b.opts.maxClients) {
		return nil, "", false, ErrTooManyClients
	}
	if wait && lastID != "" {
		if seq, _, ahead := b.lookup(lastID); ahead {
			if b.caughtUp == nil || seq < b.awaited {
				if b.caughtUp != nil {
					close(b.caughtUp) // its waiters wait again, for the new awaited
				}
				b.caughtUp, b.awaited = make(chan struct{}), seq
			}
			return nil, "", false, &aheadError{b.caughtUp}
		}
	}
	g := b.groups[key]
	if g == nil {
		g = &group{key: key}
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
	}
	g.clients++
	if b.stats.clients.Add(1) == 1 && b.opts.heartbeat > 0 {
		if b.beatTimer == nil {
			b.beatTimer = time.AfterFunc(b.opts.heartbeat, b.tick)
		} else {
			b.beatTimer.Reset(b.opts.heartbeat)
		}
	}

	c = &client{reader: reader{cursors: make([]cursor, len(g.topics))}, g: g, beats: b.beats.Load(), breaks: b.breaks.Load()}
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
		}
	}
}

// tick counts a heartbeat and wakes every client, and starts the next interval.
func (b *Broker) tick() {
	b.mu.Lock()
	if b.stats.clients.Load() == 0 || b.closed {
		b.mu.Unlock()
		return
	}
	b.beats.Add(1)
	waiting := make([]chan struct{}, 0, len(b.groups))
	for _, g := range b.groups {
		if ch := g.take(); ch != nil {
			waiting = append(waiting, ch)
		}
	}
	b.beatTimer.Reset(b.opts.heartbeat)
	b.mu.Unlock()
	wake(waiting) // as Publish does
}

// Shutdown ends every stream, each with a retry hint, and makes Publish return ErrClosed. It
// returns once every stream has ended, or with ctx's error if ctx is done first. Shutdown is
// idempotent and safe to call from any goroutine. To end streams when an http.Server shuts
// down, register it with the server's RegisterOnShutdown; see the package example.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.done)
		for _, g := range b.groups {
			g.wakeUp()
		}
		if b.beatTimer != nil {
			b.beatTimer.Stop()
		}
		b.drained = make(chan struct{})
		if b.stats.clients.Load() == 0 {
			close(b.drained)
		}
	}
	drained := b.drained
	b.mu.Unlock()
	select {
	case <-drained:
		return nil
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
	}
}
