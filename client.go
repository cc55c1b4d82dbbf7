package sse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Client reads an event stream over HTTP as a browser's EventSource does: it reconnects when
// the connection drops or the response ends, resuming with the Last-Event-ID header, and gives
// up only when the server says so or the request's context ends.
//
// Unlike EventSource, which gives up on any status but 200, a Client also rides out the
// answers of an overloaded server or of a proxy whose backend is down or restarting: 429 Too
// Many Requests, 502 Bad Gateway, 503 Service Unavailable and 504 Gateway Timeout make it
// reconnect, as a dropped connection does, honouring a Retry-After header (see
// [Client.Events]). Any other status stays final.
//
// A Client runs in the goroutine that ranges over [Client.Events] and starts none of its own,
// but for a timer's, which ends a wait for the body of a response that is not an event stream.
// Client is safe for concurrent use, if its fields are not changed while it is in use; the
// zero value is ready to use.
type Client struct {
	// HTTPClient sends the requests. Nil means http.DefaultClient. A Timeout on it ends every
	// stream after that time, and the Client then reconnects: leave it unset, and bound the
	// connection with the request's context, or the Transport's dial and header timeouts.
	HTTPClient *http.Client

	// Retry is the reconnection time until the server sets one with a retry field: how long
	// the Client waits before it reconnects. Zero or less means 3 seconds.
	Retry time.Duration

	// MaxBackoff bounds the wait after consecutive failed attempts, which doubles from the
	// reconnection time at each; zero means 30 seconds. A reconnection time longer than
	// MaxBackoff is honoured all the same.
	MaxBackoff time.Duration

	// MaxEventSize bounds an event's size, as Decoder.MaxEventSize does. Zero means 4 MiB.
	MaxEventSize int

	// OnReconnect, if set, is called before each wait to reconnect, in the goroutine that
	// ranges over Events, with the reason (io.EOF if the server ended the response, a
	// [*ResponseError] for a 429, 502, 503 or 504 answer, the error of the attempt or of the
	// connection otherwise) and how long the Client will wait. It may log, or cancel the
	// request's context to give up.
	OnReconnect func(err error, wait time.Duration)
}

const (
	defaultRetry      = 3 * time.Second
	defaultMaxBackoff = 30 * time.Second
	// maxErrorBody is how much of a response that is not an event stream ResponseError keeps,
	// and errorBodyWait how long the Client waits for it: such a response may never end (a
	// stream served with the wrong Content-Type), and EventSource fails it at once.
	maxErrorBody  = 4 << 10
	errorBodyWait = time.Second
	// maxRetryAfter bounds the wait a Retry-After header can impose, unless MaxBackoff is
	// longer: a server or proxy that asks for hours (or names a date years ahead, by mistake
	// or not) must not silence a follower for that long, while a rate limit's or a
	// maintenance's minutes are honoured.
	maxRetryAfter = 5 * time.Minute
)

// Events returns an iterator over the events of the stream req asks for. It sends req with
// Accept: text/event-stream and Cache-Control: no-cache (unless req sets its own) and with the
// Last-Event-ID header once the stream has set an ID, or req set one; the header carries the
// ID's exact bytes (but for spaces and tabs at either end, which net/http drops over
// HTTP/1.1). Each event is as [Decoder.Next] returns it. A req whose URL is not http or https
// ends the iteration at once with an error.
//
// When the connection drops, the response ends or an attempt fails without a response (the
// first included: the server may be restarting), Events waits for the reconnection time (the
// server's retry field, else c.Retry) and sends req again, as EventSource does. After
// consecutive attempts that bring no event, the wait doubles, up to c.MaxBackoff, with
// jitter; the first event resets it. Each attempt sends a clone of req: a request body is
// sent again only if req.GetBody can make one (http.NewRequest sets it for the common
// in-memory bodies), else Events ends with an error instead of reconnecting. A stream that is
// the one-off answer to a POST, as an LLM API's is, is better read once with
// [Read](resp.Body).
//
// A 429, 502, 503 or 504 response counts as such a failed attempt: it is a server asking
// for time, or a proxy in front of one that is down or restarting, and the stream is still
// there to resume once it is back. If the response has a Retry-After header (seconds, or an
// HTTP date, which is measured from the response's Date header when it has one), Events
// waits at least that long, plus a random part of up to the reconnection time so that the
// clients a server turned away together do not return together; Retry-After counts for at
// most 5 minutes, or c.MaxBackoff if that is longer. Events reads at most 4 KiB of such a
// response's body, for at most a second, before it closes it, and passes it to
// c.OnReconnect as a [*ResponseError].
//
// The iteration ends:
//   - quietly, on a 204 No Content response: the server says not to come back;
//   - with a [*ResponseError], on any other response that is not 200 with a
//     text/event-stream Content-Type, but for 429, 502, 503 and 504, which are retried;
//   - with an error wrapping [ErrEventTooLarge], on an event over c.MaxEventSize;
//   - with req.Context().Err(), once that context is done;
//   - when the loop breaks, which closes the response.
//
// An error is yielded once, as the last pair; the errors that make the Client reconnect are
// not yielded, but passed to c.OnReconnect.
func (c *Client) Events(req *http.Request) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if req.URL == nil || req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			// EventSource refuses such a URL at once; no attempt would ever succeed.
			yield(Event{}, fmt.Errorf("sse: cannot read events from %v: not an http or https URL", req.URL))
			return
		}
		s := &session{c: c, req: req, lastID: headerValue(req.Header, "Last-Event-ID"), retry: c.retry()}
		if err := s.run(yield); err != nil {
			yield(Event{}, err)
		}
	}
}

// A session is one range over Events: the state that outlives each connection.
type session struct {
	c        *Client
	req      *http.Request
	lastID   string        // the last event ID string, sent as Last-Event-ID
	retry    time.Duration // the reconnection time
	failures int           // attempts since the last event
	wait     time.Duration // how long to wait before the next attempt
}

// run connects and reconnects until the iteration ends, and returns the error to end it with,
// if any.
func (s *session) run(yield func(Event, error) bool) error {
	ctx := s.req.Context()
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := s.sleep(ctx); err != nil {
				return err
			}
		}
		resp, err := s.connect(attempt)
		if err == nil {
			var done bool
			if done, err = s.read(resp, yield); done {
				return err
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == errNoContent {
			return nil
		}
		var final *finalError
		if errors.As(err, &final) {
			return final.err
		}
		s.failures++
		s.wait = s.backoff()
		var re *ResponseError
		if errors.As(err, &re) {
			if d, ok := retryAfter(re.Header, time.Now()); ok {
				s.wait = s.honour(d)
			}
		}
		if s.c.OnReconnect != nil {
			s.c.OnReconnect(err, s.wait)
		}
	}
}

// errNoContent is returned by connect for a 204 response, which ends the iteration quietly.
var errNoContent = errors.New("sse: 204 No Content")

// finalError wraps an error that ends the iteration rather than cause a reconnection.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// connect sends the request for one attempt, and returns the response if it is an event
// stream. A response that is not ends the iteration.
func (s *session) connect(attempt int) (*http.Response, error) {
	req := s.req.Clone(s.req.Context())
	if req.Header == nil {
		req.Header = make(http.Header)
	}
	switch {
	case attempt > 0 && s.req.GetBody != nil:
		body, err := s.req.GetBody()
		if err != nil {
			return nil, &finalError{err}
		}
		req.Body = body
	case attempt > 0 && s.req.Body != nil && s.req.Body != http.NoBody:
		return nil, &finalError{errors.New("sse: cannot reconnect: the request body cannot be sent again (no GetBody)")}
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "text/event-stream")
	}
	if req.Header.Get("Cache-Control") == "" {
		req.Header.Set("Cache-Control", "no-cache")
	}
	for k := range req.Header {
		if http.CanonicalHeaderKey(k) == "Last-Event-Id" {
			delete(req.Header, k) // however the request spelt it
		}
	}
	if s.lastID != "" {
		if !validHeaderValue(s.lastID) {
			// The transport would refuse the request at every attempt.
			return nil, &finalError{fmt.Errorf("sse: cannot reconnect: last event ID %q cannot be sent in a header", s.lastID)}
		}
		req.Header.Set("Last-Event-ID", s.lastID)
	}
	hc := s.c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNoContent {
		resp.Body.Close()
		return nil, errNoContent
	}
	if !isEventStream(resp) {
		err := newResponseError(resp)
		resp.Body.Close()
		if transient(resp.StatusCode) {
			return nil, err
		}
		return nil, &finalError{err}
	}
	return resp, nil
}

// transient reports whether a response with the given status is worth another attempt: the
// server is overloaded or rate-limiting (429, 503), or a gateway cannot reach it (502, 504),
// as happens while it restarts behind a proxy.
func transient(status int) bool {
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryAfter returns the wait a response's Retry-After header asks for (RFC 9110 §10.2.3:
// a number of seconds, or an HTTP date), and reports whether it has a valid one. A date is
// measured from the response's Date header if it is valid, so that the server's clock and
// ours need not agree, and else from now; a date past gives 0.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			// Digits too many for a uint64 still ask for more than any bound.
			if errors.Is(err, strconv.ErrRange) {
				return time.Duration(math.MaxInt64), true
			}
			return 0, false
		}
		if n > uint64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		now = date
	}
	return max(t.Sub(now), 0), true
}

// honour returns the wait before the next attempt when the server asked for d with
// Retry-After: the backoff already chosen, if it is longer, else d, bounded, and a random
// part of up to the reconnection time.
func (s *session) honour(d time.Duration) time.Duration {
	d = min(d, max(maxRetryAfter, s.c.maxBackoff()))
	if d <= s.wait {
		return s.wait
	}
	return d + rand.N(s.retry+1)
}

// headerValue returns the first value of h's header key, however the request spelt the key.
func headerValue(h http.Header, key string) string {
	if v := h.Get(key); v != "" {
		return v
	}
	for k, vs := range h {
		if len(vs) > 0 && http.CanonicalHeaderKey(k) == http.CanonicalHeaderKey(key) {
			return vs[0]
		}
	}
	return ""
}

// validHeaderValue reports whether net/http sends v as a header value: it refuses control
// characters other than tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// isEventStream reports whether resp opens an event stream (WHATWG HTML §9.2.3: status 200
// and the text/event-stream MIME type, whatever its parameters). Only the type and subtype
// are compared, as the WHATWG MIME Sniffing standard parses them: the parameters cannot
// refuse a stream, not even a repeated one, which mime.ParseMediaType refuses.
func isEventStream(resp *http.Response) bool {
	essence, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	return resp.StatusCode == http.StatusOK &&
		strings.EqualFold(strings.Trim(essence, " \t\r\n"), "text/event-stream")
}

// read yields the events of resp, and closes it. It reports done if the iteration is over,
// and returns why the stream ended.
func (s *session) read(resp *http.Response, yield func(Event, error) bool) (done bool, err error) {
	defer resp.Body.Close()
	d := NewDecoder(resp.Body)
	d.MaxEventSize = s.c.MaxEventSize
	// The last event ID string outlives the connection (WHATWG HTML §9.2.3): an event
	// without an id field after a reconnection still reports it.
	d.lastID = s.lastID
	for {
		ev, err := d.Next()
		s.lastID = d.lastID
		if d.retry >= 0 {
			s.retry = d.retry
		}
		if err != nil {
			if errors.Is(err, ErrEventTooLarge) {
				return true, err
			}
			return false, err
		}
		s.failures = 0
		if err := s.req.Context().Err(); err != nil {
			return true, err // what is buffered is not yielded once the context is done
		}
		if !yield(ev, nil) {
			return true, nil
		}
	}
}

// sleep waits before the next attempt, unless ctx ends first.
func (s *session) sleep(ctx context.Context) error {
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff returns how long to wait before the next attempt: the reconnection time after the
// first failure, as EventSource waits, and after each further one twice as long, up to the
// ceiling, less a random part of up to a half, so that clients that failed together spread
// out. It never waits less than the reconnection time, which the spec asks for.
func (s *session) backoff() time.Duration {
	if s.failures <= 1 {
		return s.retry
	}
	ceiling := max(s.c.maxBackoff(), s.retry)
	d := max(s.retry, time.Millisecond) // a zero reconnection time still backs off
	for i := 1; i < s.failures && d < ceiling; i++ {
		d = min(d, ceiling/2) * 2
	}
	d = min(d, ceiling)
	return d - rand.N(min(d/2, d-s.retry)+1)
}

func (c *Client) retry() time.Duration {
	if c.Retry > 0 {
		return c.Retry
	}
	return defaultRetry
}

func (c *Client) maxBackoff() time.Duration {
	if c.MaxBackoff > 0 {
		return c.MaxBackoff
	}
	return defaultMaxBackoff
}

// ResponseError is the error Client.Events ends with when the server answers with something
// other than an event stream: a status other than 200 (and 204, which ends the iteration
// quietly), or a Content-Type other than text/event-stream. EventSource never reconnects after
// such a response, and neither does the Client, but for a 429, 502, 503 or 504 answer, which
// asks for time rather than refuses: it reconnects, and passes the ResponseError to
// Client.OnReconnect.
type ResponseError struct {
	StatusCode  int
	ContentType string      // the Content-Type header
	Header      http.Header // the response's headers, Retry-After for instance
	Body        []byte      // the start of the body, where APIs describe the error: up to 4 KiB, what came within a second
}

func newResponseError(resp *http.Response) *ResponseError {
	// Closing the body ends a read that waits on it; Body keeps what came before.
	t := time.AfterFunc(errorBodyWait, func() { resp.Body.Close() })
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	t.Stop()
	return &ResponseError{
		StatusCode:  resp.StatusCode,
		ContentType: resp.Header.Get("Content-Type"),
		Header:      resp.Header,
		Body:        body,
	}
}

func (e *ResponseError) Error() string {
	var b strings.Builder
	b.WriteString("sse: not an event stream: ")
	b.WriteString(strconv.Itoa(e.StatusCode))
	if text := http.StatusText(e.StatusCode); text != "" {
		b.WriteString(" " + text)
	}
	if e.ContentType != "" {
		b.WriteString(", " + e.ContentType)
	}
	if body := strings.TrimSpace(string(e.Body)); body != "" {
		if n := 200; len(body) > n {
			for n > 0 && !utf8.RuneStart(body[n]) {
				n--
			}
			body = body[:n] + "..."
		}
		if !utf8.ValidString(body) || strings.ContainsFunc(body, func(r rune) bool { return r < ' ' }) {
			body = strconv.Quote(body)
		}
		b.WriteString(": " + body)
	}
	return b.String()
}
