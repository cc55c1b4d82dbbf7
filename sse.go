// Package sse sends Server-Sent Events from a net/http server to browsers' EventSource and
// other clients, exactly as the WHATWG HTML "Server-sent events" section specifies.
//
// Mount a [Broker]'s handler on a route and publish from anywhere in the program:
//
//	b := sse.NewBroker()
//	mux.Handle("/events", b.Handler())
//	b.Publish(sse.Event{Type: "tick", Data: "42"})
//
// For a stream that belongs to one response only (a reply streamed word by word), use
// [NewStream]; to write events to any io.Writer, use an [Encoder].
//
// # Events
//
// An [Event] reaches every conforming client exactly as it was published, with one exception
// the format forces: each line break in Data (LF, CRLF or a lone CR) arrives as LF. Empty data,
// leading and trailing white space, NUL, a byte order mark and any other valid UTF-8 arrive
// unchanged. What cannot be represented (a line break in Type, invalid UTF-8, an ID that would
// not come back unchanged in the Last-Event-ID header, a negative or too large Retry) is
// refused with a [*FieldError] naming the field, and nothing is written or published.
//
// # Topics
//
// Every Publish goes to one or more topics, and every stream reads one or more; with none
// named both use the default topic, "". A topic's history outlives its clients, so that they
// can resume; of the topics no client reads, the Broker keeps the 1024 most recently published
// and forgets the rest (a client resuming on a forgotten one receives [MissedType] if the topic
// had events after its ID). A client subscribed to several topics receives each event
// once, in publish order, even when it was published to several of them. Handler serves fixed
// topics; to choose them per request (from the path, the query or the signed-in user), call
// [Broker.ServeEvents] from your own handler, after refusing requests you do not serve with an
// ordinary error response:
//
//	mux.HandleFunc("GET /rooms/{room}/events", func(w http.ResponseWriter, r *http.Request) {
//		if !mayRead(r, r.PathValue("room")) {
//			http.Error(w, "forbidden", http.StatusForbidden)
//			return
//		}
//		b.ServeEvents(w, r, "room:"+r.PathValue("room"))
//	})
//
// # Replay
//
// Each topic keeps its last 1024 events ([WithHistory], and optionally [WithHistoryAge]), and
// all topics together keep what fits in 64 MiB ([WithHistoryMemory]): beyond that, the oldest
// events of all topics go first. The Broker gives every event an ID, unless the publisher set one: a prefix chosen at random
// when the Broker is made, and a sequence number that increases with every Publish across all
// topics. When a client reconnects with a Last-Event-ID header (EventSource sends it by
// itself) or a lastEventId query parameter, it first receives exactly the events of its topics
// published after that one, then the live ones, with no gap and no duplicate between the two.
//
// An ID the application gave its events should be unique across topics: a client resuming
// from it receives, of its own topics' events, those published after the newest event held
// that has it, whichever topic that event was published to. Finding an ID costs the same
// whatever the size of the history.
//
// If the Broker cannot resume from the ID, because no event it holds has it (it came from an
// earlier run of the process, say) or because events after it have already left the history,
// the client first receives an event of type [MissedType] with empty data, then every event
// still held: it may have missed some, and should refresh its state. For a client of several
// topics, MissedType says that one of its topics dropped events after its ID; one of those
// may still be held by another of its topics, and is then sent too. A client that connects
// without a Last-Event-ID receives only the events published after it connects; its stream
// starts with an ID of where it joined, so that even if it loses the connection before its
// first event, it resumes without a gap.
//
// # Slow clients
//
// Publish never waits for a client: it appends one shared copy of the event to each topic's
// history and wakes the clients waiting on it, and each client's handler writes what it has
// not yet sent, in batches when it is behind. A client that falls further behind than the
// history holds, or whose write does not finish within the write timeout ([WithWriteTimeout],
// 10s), is disconnected; its EventSource reconnects and replays what it missed, or receives
// [MissedType]. The same per-write deadline keeps a server's WriteTimeout from cutting streams.
//
// # Memory
//
// Memory is bounded whatever the clients do. The history takes at most its budget
// ([WithHistoryMemory]): every event once, as it goes on the wire, however many topics hold
// it, the chunks of eight events that hold them (at least one for each topic), and the
// indexes of the IDs the application chose and of the events several topics hold. Beside it,
// each topic takes about 1 KiB, and up to eight events that it dropped but that share a chunk
// with the events it holds; each client takes under 1 KiB beside its connection (net/http's
// buffers, a few KiB), and a client stalled in a write holds on to the chunk it is writing
// from until the write times out. A topic that no client reads and whose events have all gone
// is forgotten.
//
// # Heartbeats and close detection
//
// A stream that has been sent nothing for a heartbeat interval ([WithHeartbeat], 15s) gets a
// comment line, so that no stream goes 1.25 intervals without a byte: a proxy whose read
// timeout is that or more never cuts an idle stream. Heartbeats also reveal a client that
// vanished without closing its connection. A client that closes its connection is noticed at
// once through the request's context, and any failed write or flush ends its stream.
//
// # Why streams end
//
// [Broker.ServeEvents] returns why a stream ended: nil when the client went away,
// [ErrSlowClient] when it was disconnected for falling behind or stalling a write, [ErrClosed]
// at shutdown, [ErrTooManyClients] when it was turned away, [ErrEventsLost] when the log the
// broker follows broke ([Broker.Append]), the cause when the request's context ended for
// another (a middleware's deadline). With [WithLogger], the broker also logs each end with its
// reason, topics, duration and number of events: a client leaving, a shutdown or a break in
// the log at level Debug (the break itself once, at Warn), a slow or refused client, or a
// context that ended for another cause, at Warn. [WithStreamEnd] calls a function of yours
// with the request's context and the reason, once for every stream: the moment to mark a
// client gone, for a list of who is connected, whichever goroutine serves the stream.
//
//	b := sse.NewBroker(sse.WithLogger(slog.Default()))
//
// # Shutdown
//
// [Broker.Shutdown] ends every stream with a retry hint spread over a few seconds, so that
// clients reconnect to the next process without all arriving at once, and from then on Publish
// returns [ErrClosed]. An http.Server's Shutdown waits for streams to end, which they never do
// on their own: register the Broker's Shutdown with the server.
//
//	srv.RegisterOnShutdown(func() { b.Shutdown(context.Background()) })
//
// # Limits and HTTP
//
// [WithMaxClients] bounds the number of open streams. EventSource gives up for good on any
// status but 200 (and 204 means "never come back"), so a client over the limit, or one that
// arrives during shutdown, gets 200 with only a retry hint, and tries again later.
// Streams are served to GET requests only (others get 405), with Content-Type
// text/event-stream, Cache-Control no-cache and X-Accel-Buffering no (which stops nginx from
// buffering), over HTTP/1.1 and HTTP/2 alike. Middleware that wraps the ResponseWriter must
// offer Unwrap (see http.ResponseController) for flushes and write deadlines to reach it: a
// ResponseWriter that cannot flush is refused with a 500 that says so (its events would never
// reach the client), and one that cannot set write deadlines is served, with a warning in the
// log, once: the server's WriteTimeout then cuts its streams.
//
// # Reading streams
//
// [Read] and [Decoder] read events from any io.Reader exactly as a browser's EventSource
// interprets them, in bounded memory ([Decoder.MaxEventSize]): a decoded [Event] has the
// stream's last event ID as its ID, and an empty Type where EventSource says "message". Read
// suits a response read once, such as an LLM API's answer to a POST:
//
//	for ev, err := range sse.Read(resp.Body) { ... }
//
// [Client.Events] follows a feed as EventSource does: it reconnects when the connection
// drops, after the server's retry delay, resuming with Last-Event-ID, rides out a proxy's
// 502, 503 or 504 and a 429 (honouring Retry-After), and stops on 204, on any other response
// that is not an event stream ([*ResponseError]) or when the request's context ends.
// It runs in the goroutine that ranges over it, and starts none. Decoder is not safe for
// concurrent use; Client is.
//
// The strings of a decoded event share their memory with others (see [Decoder.Next]): keep
// a clone (strings.Clone) of one that outlives most of the stream.
//
// # Concurrency
//
// Broker is safe for concurrent use. Each stream is written only by the goroutine net/http
// runs its handler on; the Broker starts no goroutine per client, and runs none of its own
// but a timer's, briefly, at each heartbeat tick. With [WithHijack], a stream the broker takes
// over is written instead by one of its pollers: about GOMAXPROCS goroutines in all, started
// with the first such stream and ended by [Broker.Shutdown], each waiting on an epoll set of
// the streams it holds, none per stream. Both follow the same rules, with the same client state.
// Encoder and Stream are not safe for concurrent use.
package sse
