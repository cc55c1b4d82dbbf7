package redisbroker

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// A link is a go-redis client of the Broker's own, made with the options of the client New
// was given, whose connections it can close at any time: what ends a call that Redis does not
// answer, at once, when New's context is done or at Shutdown. go-redis stops waiting for an
// answer at its ReadTimeout (3s by default, the block time plus 10s for a blocking read), or
// at a context's deadline only if its options say ContextTimeoutEnabled, and never when a
// context is canceled; closing its redis.Conn waits for the call on it to end. Closing the
// network connection under a call ends it whatever the options.
//
// The reader and the publisher have a link each, so that Shutdown can end the reader's read
// at once and still let a publish on its way get its answer.
type link struct {
	client *redis.Client
	ctx    context.Context // done once the link is cut: it ends dials and go-redis's retries
	cancel context.CancelFunc

	cutting sync.Mutex // held by cut, so that a cut returns once the connections are closed

	mu    sync.Mutex
	conns map[*linkConn]struct{} // guarded by mu; nil once the link is cut
}

// errCut is what a link's dialer returns once the link is cut.
var errCut = errors.New("redisbroker: the Broker's connections to Redis are closed")

// newLink returns a link made with opt, a client's options, which it does not change.
func newLink(opt *redis.Options) *link {
	l := &link{conns: map[*linkConn]struct{}{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	o := *opt
	dial := o.Dialer
	if dial == nil { // (a client's options have one)
		dial = redis.NewDialer(&o)
	}
	o.Dialer = l.dialer(dial)
	// What the caller's client holds for itself: its connections beyond the one in use, its
	// push notification handlers, and a client-side cache, which a stream read cannot use.
	o.MinIdleConns = 0
	o.PushNotificationProcessor = nil
	o.ClientSideCache = nil
	o.ClientSideCacheConfig = nil
	l.client = redis.NewClient(&o)
	return l
}

// dialer returns a dialer that dials with dial, and keeps the connections it makes so that
// cut can close them.
func (l *link) dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(l.ctx, cancel) // a dial on its way ends when the link is cut
		defer stop()
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.conns == nil {
			c.Close()
			return nil, errCut
		}
		lc := &linkConn{Conn: c, l: l}
		l.conns[lc] = struct{}{}
		if sc, ok := c.(syscall.Conn); ok {
			// go-redis looks at an idle connection through its file descriptor before it uses
			// it, to find one Redis closed.
			return linkSysConn{lc, sc}, nil
		}
		return lc, nil
	}
}

// cut closes the link's connections, which ends every call on them at once, and makes it
// refuse to dial more. It is idempotent, and safe from any goroutine.
func (l *link) cut() {
	l.cutting.Lock()
	defer l.cutting.Unlock()
	l.cancel()
	l.mu.Lock()
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// close cuts the link and closes its client. Call it once, when nothing uses the client.
func (l *link) close() {
	l.cut()
	l.client.Close()
}

// A linkConn is a connection of a link's, which forgets it when it is closed.
type linkConn struct {
	net.Conn
	l *link
}

func (c *linkConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// A linkSysConn is a linkConn whose connection gives its file descriptor.
type linkSysConn struct {
	*linkConn
	sc syscall.Conn
}

func (c linkSysConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }
