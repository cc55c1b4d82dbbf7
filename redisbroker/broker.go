// Package redisbroker shares one stream of Server-Sent Events among several processes through
// a Redis stream, so that a publish on any process reaches the clients of every process, and a
// client resumes with its Last-Event-ID on whichever process it reconnects to.
//
// Each process makes a [Broker] on the same Redis and namespace, and uses it as it would an
// sse.Broker; only the way it is made differs:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	b, err := redisbroker.New(ctx, rdb, "chat")
//	if err != nil { ... }
//	mux.Handle("/events", b.Handler())
//	id, err := b.Publish(sse.Event{Data: "hello"}) // an error if Redis cannot be reached
//
// # The log
//
// A namespace is two Redis keys with one hash tag, so that both live on one Redis Cluster
// slot: {namespace}:log, a stream that holds the events of every topic in the order Redis
// accepted them, and {namespace}:meta, a hash that holds the log's epoch (a random name
// chosen when the log is begun) and the number of the last event. A Lua script numbers each
// event and adds it to the log, trimming the log to about [WithMaxLen] entries; events
// published at the same time go in one call, which adds them as one entry of the log (up to
// 128 events each). Every event's ID is the epoch and its number, as in "k3j9x2a-42", unless
// the publisher set one: the same ID on every process.
//
// # What each process keeps
//
// Each Broker reads the log into an sse.Broker of its own, from which it serves its clients:
// replay, heartbeats and slow clients work as in one process, with the history options given
// by [WithBrokerOptions]. New reads what the log retains before it returns, so that a process
// that starts resumes the IDs Redis still holds without sending MissedType. A client that
// resumes from an ID another process has served before this one has read it waits for it, a
// few seconds at most. A Broker reads the log in pages of about a MiB (or one entry, if
// bigger), at New and whenever it has fallen behind, so that catching up holds about the
// history's memory (sse.WithHistoryMemory), however big the log's entries are. While events
// keep coming, a Broker reads the log at most every 10 ms, so that what came meanwhile goes
// to each client in one write: a busy log adds up to 10 ms to each event's way, and saves the
// processes and Redis a read, a wake-up and a write per client for each event. A namespace with no log yet gets one when the first process starts,
// so that even its first clients get IDs of the log.
//
// # When Redis loses data or cannot be reached
//
// If Redis loses the log (it restarted without persistence, or was flushed), the next Publish
// begins a new epoch; each Broker notices it within two seconds, disconnects its clients
// and serves the new log, and clients that resume from an ID of the old epoch receive
// MissedType: never a silent gap. The same happens when the log's number goes back (Redis
// failed over to a replica that had not received the last events), whenever Redis restarts
// unless it keeps every write (AOF with appendfsync always), and whenever it fails over: a
// restart from a snapshot, or a replica, may lack the last events, which, once every process
// that read them is gone, only clients remember. While Redis cannot be reached, Publish returns an error within the
// publish timeout ([WithPublishTimeout]), open streams stay open with their heartbeats, and
// each Broker retries; once Redis is back, delivery goes on.
//
// # Concurrency
//
// Broker is safe for concurrent use. Each Broker runs two goroutines of its own until
// Shutdown: one reads the log, the other sends what Publish calls hand it to Redis, those that
// arrive together in one round trip. Given a *redis.Client, each goroutine talks to Redis
// through a go-redis client of its own, made with that client's options, whose connections
// New and Shutdown close when they must return while Redis does not answer (see New).
package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
)

// Option configures a Broker.
type Option func(*config)

type config struct {
	maxLen         int64
	publishTimeout time.Duration
	block          time.Duration
	logger         *slog.Logger
	brokerOpts     []sse.Option
}

// WithMaxLen sets about how many entries the log keeps in Redis, 10000 if n is not positive.
// An entry holds the events of one call of the publish script: one event when publishes come
// one at a time, up to 128 when many come at once. The log so keeps at least about n events,
// and up to 128 times as many under a heavy load. Redis trims the log in whole blocks of
// entries (MAXLEN ~), so it may keep a few hundred more. A process that starts can resume
// clients only from events the log still holds, and reads all of them before it serves; each
// process keeps in memory at most what its sse.Broker's history allows ([WithBrokerOptions]).
func WithMaxLen(n int64) Option {
	return func(c *config) {
		if n > 0 {
			c.maxLen = n
		}
	}
}

// WithPublishTimeout sets how long Publish waits for Redis, 2s by default (when d is not
// positive). Past it, Publish returns an error; the event may then still have been published.
func WithPublishTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.publishTimeout = d
		}
	}
}

// WithBrokerOptions passes opts to the sse.Broker each process serves its clients from:
// history, heartbeats, retry, write timeout, client limit, logger.
func WithBrokerOptions(opts ...sse.Option) Option {
	return func(c *config) { c.brokerOpts = append(c.brokerOpts, opts...) }
}

// WithLogger logs what the Broker's reader meets: Redis errors (at Warn, once per outage),
// Redis coming back, and the log beginning anew (at Info). Streams are logged by the
// sse.Broker, with sse.WithLogger in WithBrokerOptions.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// withBlock sets how long one read of the log waits for events, and so how often the reader
// looks at the epoch when the log is idle. Tests shorten it.
func withBlock(d time.Duration) Option {
	return func(c *config) { c.block = d }
}

// Broker is one process's part of a stream shared through Redis: it publishes to the log, and
// serves its clients what it reads from it. Broker is safe for concurrent use.
type Broker struct {
	core    *sse.Broker
	pub     redis.UniversalClient // what the publisher sends through: pubLink's client, or the caller's
	pubLink *link                 // nil if the caller's client is not a *redis.Client
	keys    []string              // meta, log, and this process's pubKey
	cfg     config
	r       *reader
	stop    context.CancelFunc // stops the reader and the publisher
	stopped chan struct{}      // closed when the reader has returned

	reqs       chan *publishReq // to the publisher
	pubStopped chan struct{}    // closed when the publisher has returned
	calls      int64            // the publisher's calls of publishScript so far; only it uses this

	mu        sync.Mutex
	closed    bool // guarded by mu
	closeOnce sync.Once
}

// maxNamespaceLen bounds a namespace, which is part of every key.
const maxNamespaceLen = 256

// New returns the Broker of namespace on client, once it has read what the log of namespace
// retains: it does not serve a client from a history it has not caught up on. If Redis cannot
// be reached, or ctx is done first, it returns an error and leaves nothing running. A
// namespace is 1 to 256 bytes without '{' or '}'; processes that share a stream use the same
// one.
//
// If client is a *redis.Client (as redis.NewClient and redis.NewFailoverClient return), the
// Broker talks to Redis through two clients of its own made with its options (address,
// credentials, TLS, dialer, retries), one to read the log and one to publish, so that it can
// close their connections: New returns when ctx is done, and Shutdown at its context's
// deadline, even while Redis hangs, and leave nothing of theirs running, whatever the client's
// timeouts. Hooks added to client (AddHook) do not see the Broker's commands. Any other
// client (a cluster client) is used as it is: New still returns when ctx is done, but a call
// that Redis does not answer ends only at the client's timeouts.
func New(ctx context.Context, client redis.UniversalClient, namespace string, opts ...Option) (*Broker, error) {
	if namespace == "" || len(namespace) > maxNamespaceLen || strings.ContainsAny(namespace, "{}") {
		return nil, fmt.Errorf("redisbroker: invalid namespace %q: want 1 to %d bytes without braces", namespace, maxNamespaceLen)
	}
	cfg := config{maxLen: 10000, publishTimeout: 2 * time.Second, block: time.Second}
	for _, opt := range opts {
		opt(&cfg)
	}
	b := &Broker{
		core:       sse.NewBroker(cfg.brokerOpts...),
		pub:        client,
		keys:       append(keys(namespace), pubKey(namespace, newProcessName())),
		cfg:        cfg,
		stopped:    make(chan struct{}),
		reqs:       make(chan *publishReq, maxBatch),
		pubStopped: make(chan struct{}),
	}
	b.r = &reader{
		client:    client,
		core:      b.core,
		meta:      b.keys[0],
		log:       b.keys[1],
		block:     cfg.block,
		logger:    cfg.logger,
		lastID:    "0-0",
		liveCount: 1, // until the reader has seen entries
	}
	if c, ok := client.(*redis.Client); ok {
		b.r.link, b.pubLink = newLink(c.Options()), newLink(c.Options())
		b.r.client, b.pub = b.r.link.client, b.pubLink.client
	}
	var err error
	if b.r.link != nil {
		// go-redis ends a call at ctx's deadline only if the client's options say
		// ContextTimeoutEnabled, and never when ctx is canceled: cut the link then.
		cut := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(cut)
			b.r.link.cut()
		})
		err = b.r.catchUp(ctx)
		if !stop() {
			<-cut
			if err == nil {
				err = ctx.Err() // the link is cut: the reader cannot go on with it
			}
		}
	} else {
		err = within(ctx, func() error { return b.r.catchUp(ctx) })
	}
	if err != nil {
		b.closeLinks()
		b.core.Shutdown(context.Background())
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			// What go-redis says of a call the link's cut or ctx's deadline ended.
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("redisbroker: reading the log: %w", err)
	}
	rctx, stop := context.WithCancel(context.Background())
	b.stop = stop
	go func() {
		defer close(b.stopped)
		b.r.run(rctx)
	}()
	go func() {
		defer close(b.pubStopped)
		b.publisher(rctx)
	}()
	return b, nil
}

// keys returns the Redis keys of namespace: its meta hash and its log. The hash tag puts them
// on one Redis Cluster slot, with every pubKey of namespace, so that one script may use them.
func keys(namespace string) []string {
	tag := "{" + namespace + "}"
	return []string{tag + ":meta", tag + ":log"}
}

// pubKey returns the key in which the publish script keeps the last call of the process
// called node, for the namespace.
func pubKey(namespace, node string) string {
	return "{" + namespace + "}:pub:" + node
}

// pubKeyLife is how long a process's pubKey outlives its last call, at least: far longer than
// go-redis can take to send the call again, which it does within the call's timeout.
const pubKeyLife = time.Minute

// Handler returns an http.Handler that streams the events of topics to each client, as
// sse.Broker's Handler does.
func (b *Broker) Handler(topics ...string) http.Handler { return b.core.Handler(topics...) }

// ServeEvents streams the events of topics to the client of r, as sse.Broker's ServeEvents
// does, and returns why the stream ended; sse.ErrEventsLost means that Redis lost events, or
// this process could not read them, and the client was disconnected so that it resumes.
func (b *Broker) ServeEvents(w http.ResponseWriter, r *http.Request, topics ...string) error {
	return b.core.ServeEvents(w, r, topics...)
}

// Stats returns the counters of this process's sse.Broker: its clients, and the events it
// read from the log as Published.
func (b *Broker) Stats() sse.Stats { return b.core.Stats() }

// Publish is PublishContext with a background context: it waits for Redis for at most the
// publish timeout ([WithPublishTimeout], 2s).
func (b *Broker) Publish(ev sse.Event, topics ...string) (id string, err error) {
	return b.PublishContext(context.Background(), ev, topics...)
}

// PublishContext adds ev to the log for every process's clients of topics (the default topic
// if none is given), and returns its ID. It returns once Redis has accepted the event, not
// once clients have received it. Events published at the same time, from several goroutines,
// go to Redis together, in one round trip and one call of the publish script. It waits for Redis until ctx is done or the publish timeout
// ([WithPublishTimeout], 2s) has passed, and then returns an error: if Redis did not answer,
// the event may or may not have been published. An Event that cannot be represented on the
// wire is refused with an error wrapping sse.ErrInvalidEvent, as sse.Broker's Publish does;
// after Shutdown, PublishContext returns sse.ErrClosed.
func (b *Broker) PublishContext(ctx context.Context, ev sse.Event, topics ...string) (id string, err error) {
	if err := validate(ev); err != nil {
		return "", err
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return "", sse.ErrClosed
	}
	// A timer rather than a context with a deadline: Publish is called for every event, and
	// the timer is all of that context that it needs.
	timeout := time.NewTimer(b.cfg.publishTimeout)
	defer timeout.Stop()
	req := &publishReq{
		ctx:      ctx,
		deadline: time.Now().Add(b.cfg.publishTimeout),
		enc:      appendEvent(make([]byte, 0, 32+len(ev.Data)), ev, topics),
		done:     make(chan struct{}),
	}
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		return "", fmt.Errorf("redisbroker: publish: %w", ctx.Err())
	case <-timeout.C:
		return "", fmt.Errorf("redisbroker: publish: %w", context.DeadlineExceeded)
	case <-b.pubStopped:
		return "", sse.ErrClosed
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		return "", fmt.Errorf("redisbroker: publish: %w", ctx.Err())
	case <-timeout.C:
		return "", fmt.Errorf("redisbroker: publish: %w", context.DeadlineExceeded)
	case <-b.pubStopped:
		select {
		case <-req.done:
		default:
			return "", sse.ErrClosed // the publisher stopped before it took the event
		}
	}
	if req.err != nil {
		return "", fmt.Errorf("redisbroker: publish: %w", req.err)
	}
	if ev.ID != "" {
		return ev.ID, nil
	}
	return req.epoch + "-" + strconv.FormatInt(req.seq, 10), nil
}

// validate returns the error sse.Broker's Publish would return for ev, if any: what the
// event's wire form cannot represent. It writes the wire form into a pooled buffer, so that
// a publish costs no allocation for it.
func validate(ev sse.Event) error {
	bp := textBufs.Get().(*[]byte)
	b, err := ev.AppendText((*bp)[:0])
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		textBufs.Put(bp)
	}
	return err
}

var textBufs = sync.Pool{New: func() any { return new([]byte) }}

// A publishReq is one event for the publisher to send, and, once done is closed, what Redis
// answered.
type publishReq struct {
	ctx      context.Context // the caller's: once it is done, or the deadline has passed, the event is not sent
	deadline time.Time
	enc      []byte // the event as appendEvent encodes it
	done     chan struct{}
	epoch    string
	seq      int64
	err      error
}

// maxBatch is how many events the publisher sends to Redis at most in one script call, which
// adds them to the log as one entry.
const maxBatch = 128

// publisher sends the events that Publish calls hand it to Redis until ctx is done: the
// events that arrived while the previous ones were on their way go together, in one call of
// the publish script and one entry of the log, which costs Redis and every reader much less
// per event than one call and one entry each.
func (b *Broker) publisher(ctx context.Context) {
	batch := make([]*publishReq, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case req := <-b.reqs:
					req.err = sse.ErrClosed
					close(req.done)
				default:
					return
				}
			}
		case req := <-b.reqs:
			batch = b.take(batch[:0], req)
		more:
			for len(batch) < maxBatch {
				select {
				case req := <-b.reqs:
					batch = b.take(batch, req)
				default:
					break more
				}
			}
			if len(batch) > 0 {
				b.send(batch)
			}
			clear(batch)
		}
	}
}

// take adds req to batch, unless its caller has given up waiting (and been told that it failed).
func (b *Broker) take(batch []*publishReq, req *publishReq) []*publishReq {
	err := req.ctx.Err()
	if err == nil && time.Now().After(req.deadline) {
		err = context.DeadlineExceeded
	}
	if err != nil {
		req.err = err
		close(req.done)
		return batch
	}
	return append(batch, req)
}

// send adds the events of batch to the log, numbered in its order, and tells each its result.
func (b *Broker) send(batch []*publishReq) {
	parent := context.Background()
	if b.pubLink != nil {
		parent = b.pubLink.ctx // a call that Shutdown cuts short is not sent again
	}
	ctx, cancel := context.WithTimeout(parent, b.cfg.publishTimeout)
	defer cancel()
	n := 0
	for _, req := range batch {
		n += len(req.enc)
	}
	evs := make([]byte, 0, n)
	for _, req := range batch {
		evs = append(evs, req.enc...)
	}
	// Run sends the script itself if Redis does not have it (it restarted, say).
	life := max(pubKeyLife, 2*b.cfg.publishTimeout).Milliseconds()
	b.calls++
	res, err := publishScript.Run(ctx, b.pub, b.keys, newEpoch(), b.cfg.maxLen, len(batch), b.calls, evs, life).Slice()
	var epoch string
	var last int64
	if err == nil && len(res) == 2 {
		epoch, _ = res[0].(string)
		last, _ = res[1].(int64)
	}
	if err == nil && (epoch == "" || last < int64(len(batch))) {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	for i, req := range batch {
		req.err = err
		req.epoch = epoch
		req.seq = last - int64(len(batch)-1-i)
		close(req.done)
	}
}

// within runs f and returns its error, or ctx's error if ctx is done first: for a client that
// has no link, which stops waiting for an answer at ctx's deadline only if its options say
// ContextTimeoutEnabled, otherwise at its own ReadTimeout. The caller is not kept waiting
// either way: f goes on alone, until the client gives up.
func within(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newProcessName returns a random name for this process's pubKey.
func newProcessName() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
}

// newEpoch returns a random name for a log that begins, in the same form as sse.Broker's own
// ID prefixes.
func newEpoch() string {
	// math/rand/v2 is seeded afresh from the operating system at every start.
	return strconv.FormatUint(rand.Uint64()>>24, 36)
}

// Shutdown stops reading the log and ends every stream, as sse.Broker's Shutdown does; from
// then on Publish returns sse.ErrClosed. It returns once the reader and the publisher have
// stopped and every stream has ended, or with ctx's error if ctx is done first. Shutdown is
// idempotent and safe to call from any goroutine. It does not close the Redis client, which
// the caller owns.
//
// With a *redis.Client, it closes the reader's connection at once, which ends a read blocked
// in Redis or waiting for an answer that does not come; a publish on its way to Redis gets its
// answer until ctx is done, when Shutdown closes the publisher's connection too: once it has
// returned, even at ctx's deadline while Redis hangs, nothing of the Broker's runs. With
// another client (a cluster client), a read blocked in Redis ends at its block time, a second
// at most, and a call that Redis does not answer at the client's timeouts, which Shutdown
// does not wait for past ctx's deadline.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.stop()
	if b.r.link != nil {
		b.r.link.cut()
	}
	err := b.core.Shutdown(ctx)
	select {
	case <-b.pubStopped:
	case <-ctx.Done():
		if b.pubLink == nil {
			return ctx.Err()
		}
		b.pubLink.cut()
		<-b.pubStopped // at once: its call ended with its connection
		err = ctx.Err()
	}
	if b.r.link == nil {
		select {
		case <-b.stopped:
		case <-ctx.Done():
			return ctx.Err()
		}
		return err
	}
	<-b.stopped // at once: its read ended with its connection
	b.closeLinks()
	return err
}

// closeLinks closes the Broker's links, once nothing uses them.
func (b *Broker) closeLinks() {
	b.closeOnce.Do(func() {
		if b.r.link != nil {
			b.r.link.close()
			b.pubLink.close()
		}
	})
}

// errEntry is logged for an entry of the log that is not one Publish wrote.
var errEntry = errors.New("redisbroker: malformed log entry")
