package sse

import (
	"context"
	"log/slog"
	"time"
)

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
	onEnd        func(ctx context.Context, err error)
	hijack       bool
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
// turns heartbeats off. A stream that has been sent nothing for an interval gets a comment
// line, so that no stream goes longer than one interval without a byte, plus the moment it
// takes to write it, and never 1.25 intervals: a proxy whose read timeout is 1.25 intervals
// or more never cuts an idle stream. Heartbeats keep proxies from closing idle streams and
// find clients that left without a word.
func WithHeartbeat(d time.Duration) Option {
	return func(o *options) {
		if d != 0 {
			o.heartbeat = d
		}
	}
}

// WithRetry sets the reconnection delay sent to each client when its stream starts, 3s by
// default (when d is not positive). When the broker ends a stream while the client can still
// read it (it shuts down, turns a client away, cuts one that fell behind, the log it follows
// broke, or the request's context ended for another cause than the client leaving), the hint
// it sends last is spread between d and 2d, so that clients do not all come back in the same
// millisecond.
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
// left, a stream that Shutdown ended, or one ended by a break in the log the broker follows
// (ErrEventsLost), is logged at level Debug; a client disconnected for being too slow, turned
// away over the client limit, or whose request's context ended for another cause than its
// leaving (a middleware's deadline), at Warn; a ResponseWriter that cannot flush, at Error.
// A break in the log is logged once, at Warn, with how many streams it ended, and a
// ResponseWriter that cannot set write deadlines once, at Warn. By default, and when l is
// nil, nothing is logged; nothing is built for a level l does not log. ServeEvents returns
// the same reason, for handlers that log with their own request's details.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithMaxClients limits how many streams may be open at once; by default (n not positive)
// there is no limit. A client over the limit is told to retry later, see [Broker.ServeEvents].
func WithMaxClients(n int) Option {
	return func(o *options) { o.maxClients = max(n, 0) }
}

// WithStreamEnd has the broker call f once for every stream that ServeEvents (or Handler)
// served or refused, when it ends, with the request's context and why the stream ended (what
// ServeEvents returns in the handler's goroutine; see ServeEvents). It is the one moment that
// is the same whether a stream runs in its handler or on the broker's pollers (WithHijack):
// an application that counts who is connected marks a client present before it calls
// ServeEvents and absent in f, with what it put in the context (context.WithValue) to tell
// clients apart. f runs on the goroutine that ends the stream; it must not block, and the
// context may be done already.
func WithStreamEnd(f func(ctx context.Context, err error)) Option {
	return func(o *options) { o.onEnd = f }
}

// WithHijack has the broker take each stream it can over from net/http and serve it from a
// few goroutines of its own (about GOMAXPROCS, each waiting on an epoll set), so that an idle
// stream costs no goroutine and a small fraction of the memory net/http's connection takes.
// Turn it on for a server that holds many streams open at once, tens of thousands or more.
//
// A stream is taken over when it is plain HTTP/1.x over TCP on Linux (not TLS: terminate TLS at
// a proxy in front) and the ResponseWriter can hijack its connection, through
// http.ResponseController (a middleware that wraps it must offer Unwrap), and has not been given
// a Content-Encoding. The broker then writes the response head itself (with "Connection: close",
// the body ending when the connection does) or, after a greeting sent with NewStream, goes on
// with the chunked body net/http began; it hands the connection to its pollers, and ServeEvents
// returns at once (see ServeEvents). Every other stream (HTTP/2, TLS, a writer that cannot
// hijack, other systems) is served in its handler, as without this option; so is one whose
// connection a listener's wrapper hides the socket of, on the connection net/http let go of.
//
// What changes for a stream taken over: middleware sees the handler return as soon as the
// stream is handed over, not when it ends, so act on a stream's end with WithStreamEnd; the
// request's context no longer ends the stream, and a client that closes its connection, sends
// anything more on it, or stalls a write for the write timeout ends it at once.
// http.Server.Shutdown does not wait for such streams: register Broker.Shutdown with the
// server's RegisterOnShutdown, and wait for it, to end them. Stats counts them as Hijacked.
func WithHijack() Option {
	return func(o *options) { o.hijack = true }
}
