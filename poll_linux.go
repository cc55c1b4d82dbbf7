//go:build linux

package sse

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The poller driver: a few goroutines, each waiting on an epoll set of the streams it holds and
// on an eventfd that wake-ups of their groups, the end of the broker and new streams are told
// through. A poller writes each stream's next events with one writev from the history's own
// frames, keeping the offset into a write the socket took only part of; a write that would
// block waits for the socket to be writable, up to the write timeout, checked on a coarse tick
// of the poller's, not by a timer per stream. A stream whose client closes its connection,
// resets it or sends anything is ended at once.

// A poller serves a set of streams from one goroutine.
type poller struct {
	b    *Broker
	epfd int
	wfd  int // an eventfd: written to wake the poller

	// ep is epfd on Go's network poller, where the poller's goroutine waits for its set, parked
	// like any goroutine that reads from a connection, rather than in a system call. A
	// goroutine blocked in epoll_wait holds a thread, and the Go runtime takes its P away after
	// a while and then watches closely, which costs more per wait than its writes do. raw is
	// nil if Go's poller refused epfd: then the goroutine blocks in epoll_wait.
	ep           *os.File
	raw          syscall.RawConn
	readDeadline int64 // the deadline set on ep (see monotime), 0 if none, -1 if it passed

	mu       sync.Mutex
	queue    []*pgroup  // groups woken since the poller last looked
	incoming []*pstream // streams handed over
	stopping bool       // the broker is shut down and has no stream left
	kicked   atomic.Bool

	// The poller's own.
	streams map[int32]*pstream // by descriptor
	blocked []*pstream         // streams whose write waits for the socket
	iov     []syscall.Iovec
}

// waitOnGo is whether pollers wait on Go's network poller (see poller.ep); tests turn it off
// to try the other way.
var waitOnGo = true

// maxIovecs bounds the pieces of one writev (the system's IOV_MAX is 1024).
const maxIovecs = 1024

// newPollers starts about GOMAXPROCS pollers, or returns nil if the system refuses what they
// need.
func newPollers(b *Broker) *pollers {
	n := max(runtime.GOMAXPROCS(0), 1)
	ps := &pollers{ended: make(chan struct{})}
	for range n {
		p, err := newPoller(b)
		if err != nil {
			for _, p := range ps.all {
				p.close()
			}
			return nil
		}
		ps.all = append(ps.all, p)
	}
	ps.running.Store(int32(len(ps.all)))
	for _, p := range ps.all {
		go func() {
			p.loop()
			if ps.running.Add(-1) == 0 {
				close(ps.ended)
			}
		}()
	}
	return ps
}

func newPoller(b *Broker) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wfd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil, errno
	}
	p := &poller{b: b, epfd: epfd, wfd: int(wfd), streams: make(map[int32]*pstream)}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p.wfd)}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wfd, &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p.wfd)
		return nil, err
	}
	// An epoll set is readable while it has events, and can itself be on an epoll set: Go's.
	// os.NewFile puts a descriptor in non-blocking mode on Go's poller; a deadline can be set
	// only on one that is there.
	if waitOnGo && syscall.SetNonblock(epfd, true) == nil {
		p.ep = os.NewFile(uintptr(epfd), "sse-poller")
		if p.ep.SetReadDeadline(time.Time{}) == nil {
			p.raw, _ = p.ep.SyscallConn()
		}
	}
	return p, nil
}

// close closes p's descriptors.
func (p *poller) close() {
	if p.ep != nil {
		p.ep.Close() // which closes epfd
	} else {
		syscall.Close(p.epfd)
	}
	syscall.Close(p.wfd)
}

// wait waits until p's set has events, or until the monotonic time due if it is not 0, and
// returns how many it put in events.
func (p *poller) wait(events []syscall.EpollEvent, due int64) int {
	if p.raw == nil {
		timeout := -1
		if due != 0 {
			timeout = int(max(time.Duration(due-monotime()), time.Millisecond) / time.Millisecond)
		}
		return p.epollWait(events, timeout)
	}
	if due != p.readDeadline {
		var t time.Time
		if due != 0 {
			t = epoch.Add(time.Duration(due))
		}
		p.ep.SetReadDeadline(t)
		p.readDeadline = due
	}
	n := 0
	// Read calls the function until it reports it read something, and waits for ep to be
	// readable in between; an event that comes after the function found none makes ep
	// readable, so none is missed.
	err := p.raw.Read(func(uintptr) bool {
		n = p.epollWait(events, 0)
		return n > 0
	})
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			panic("sse: waiting for the poller's epoll set: " + err.Error())
		}
		p.readDeadline = -1 // set it again, even to the same time
		// A deadline that had passed when Read began ends it before it looks at the set.
		n = p.epollWait(events, 0)
	}
	return n
}

// epollWait is epoll_wait on p's set.
func (p *poller) epollWait(events []syscall.EpollEvent, timeout int) int {
	for {
		n, err := syscall.EpollWait(p.epfd, events, timeout)
		switch err {
		case nil:
			return n
		case syscall.EINTR:
			if timeout != 0 {
				return 0 // the caller works out the time left
			}
		default:
			panic("sse: epoll_wait: " + err.Error()) // a descriptor of its own that went bad
		}
	}
}

// takeFD returns a descriptor of conn's socket that Go's network poller does not know of, in
// non-blocking mode, or -1 if it cannot. The caller closes conn, which leaves the socket open.
func takeFD(conn net.Conn) int {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	err = raw.Control(func(s uintptr) {
		nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if errno == 0 {
			fd = int(nfd)
		}
	})
	if err != nil || fd < 0 {
		return -1
	}
	if syscall.SetNonblock(fd, true) != nil {
		syscall.Close(fd)
		return -1
	}
	return fd
}

// add hands st over to p, and reports whether it did: if the socket cannot join p's epoll set,
// st is still the caller's. wakes is what st's group's wake-up count (pgroup.wakes) was before
// the caller last asked st's client for its next write, and found it had none or wrote all
// of it (st has nothing pending): then p is woken only if a wake-up came since, whose own
// kick may have found st not yet handed over; otherwise p takes st over when it next wakes
// anyway, which saves the wake-up (an eventfd write, an epoll_wait and an eventfd read) on
// every stream that opens with nothing to write.
func (p *poller) add(st *pstream, wakes uint64) bool {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(st.fd)}
	p.mu.Lock()
	// On the set and among the incoming at once, under p.mu: an event of the socket that p
	// sees is seen after it (the poller takes the incoming before it looks at the events).
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, st.fd, &ev); err != nil {
		p.mu.Unlock()
		return false
	}
	p.incoming = append(p.incoming, st)
	wake := st.pending() || st.pg.wakes.Load() != wakes
	if wake {
		p.kicked.Store(true)
	}
	p.mu.Unlock()
	if wake {
		p.kick()
	}
	return true
}

// notify tells p that pg's group was woken; Broker.mu is held.
func (p *poller) notify(pg *pgroup) {
	p.mu.Lock()
	pg.wakes.Add(1)
	if !pg.queued {
		pg.queued = true
		p.queue = append(p.queue, pg)
		p.kicked.Store(true)
	}
	p.mu.Unlock()
}

// stop has p end once it holds no stream; Broker.mu is held.
func (p *poller) stop() {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	p.kicked.Store(true)
	p.kick()
}

// kick wakes p if it was told something since it was last woken.
func (p *poller) kick() {
	if p.kicked.Swap(false) {
		one := uint64(1)
		syscall.Write(p.wfd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

// loop is the poller's goroutine.
func (p *poller) loop() {
	defer p.close()
	events := make([]syscall.EpollEvent, 256)
	tick := min(max(p.b.opts.writeTimeout/10, time.Millisecond), time.Second)
	var nextCheck int64
	for {
		var due int64
		if len(p.blocked) > 0 {
			due = max(nextCheck, 1)
		}
		n := p.wait(events, due)
		// The eventfd is read before what it tells of is taken: a kick after the read is not
		// lost, its eventfd write wakes the next wait.
		for _, ev := range events[:n] {
			if ev.Fd == int32(p.wfd) {
				var buf [8]byte
				syscall.Read(p.wfd, buf[:])
				break
			}
		}
		p.mu.Lock()
		incoming, queue, stopping := p.incoming, p.queue, p.stopping
		p.incoming, p.queue = nil, nil
		for _, pg := range queue {
			pg.queued = false // a wake-up from now on queues it again
		}
		p.mu.Unlock()

		// The streams handed over are on the epoll set already (see add): known before their
		// events are looked at.
		for _, st := range incoming {
			st.pg.streams = append(st.pg.streams, st)
			st.idx = len(st.pg.streams) - 1
			p.streams[int32(st.fd)] = st
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(p.wfd) {
				continue
			}
			st := p.streams[ev.Fd]
			if st == nil {
				continue
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				// The client closed its connection, reset it, or sent what it should not: it
				// is gone (and a stream that was ending ends as it would have).
				p.finish(st, st.fin)
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 {
				p.run(st)
			}
		}
		for _, st := range incoming {
			// What was published since the hand-over looked last (see add), or the rest of
			// what it began to write; unless the stream ended above.
			if st.fd >= 0 {
				p.run(st)
			}
		}
		for _, pg := range queue {
			// run may end a stream, moving the last into its place: from the end, none is missed.
			for i := len(pg.streams) - 1; i >= 0; i-- {
				if i >= len(pg.streams) {
					continue
				}
				if st := pg.streams[i]; !st.pending() {
					p.run(st)
				}
			}
		}
		if len(p.blocked) > 0 {
			if now := monotime(); now >= nextCheck {
				for i := len(p.blocked) - 1; i >= 0; i-- {
					if i >= len(p.blocked) {
						continue
					}
					if st := p.blocked[i]; now >= st.deadline {
						end := st.fin
						if !st.finishes {
							end = p.b.writeError(os.ErrDeadlineExceeded)
						}
						p.finish(st, end)
					}
				}
				nextCheck = now + int64(tick)
			}
		}
		clear(incoming)
		clear(queue)
		if stopping && len(p.streams) == 0 {
			return
		}
	}
}

// run writes what st has to write until it has nothing more, its socket takes no more, or the
// stream ends.
func (p *poller) run(st *pstream) {
	b := p.b
	progress := false
	for {
		if !st.pending() {
			out, end := st.c.next(b)
			if len(out) == 0 && end == nil {
				p.unblock(st)
				return
			}
			st.set(out, end)
		}
		n, errno := p.write(st)
		if n > 0 {
			progress = true
			st.done += n
		}
		switch errno {
		case 0:
		case syscall.EAGAIN:
			if progress || st.blocked == 0 {
				st.deadline = monotime() + int64(b.opts.writeTimeout)
			}
			p.block(st)
			return
		case syscall.EINTR:
			continue
		default:
			// The client is gone; if the stream was ending anyway, it ends as it would have.
			p.finish(st, st.fin)
			return
		}
		if st.done < st.total() {
			continue // written in part
		}
		st.clear()
		if st.fromNext {
			st.fromNext = false
			st.c.wrote(b)
			if cap(st.c.frames) > 8 {
				// A burst's batch buffer would stay as long as the stream, idle or not.
				st.c.frames = nil
			}
		}
		if st.finishes {
			p.finish(st, st.fin)
			return
		}
	}
}

// total returns how many bytes the write under way has in all.
func (st *pstream) total() int {
	n := len(st.head) + len(st.tail)
	for _, f := range st.out {
		n += len(f)
	}
	return n
}

// write writes what is left of st's write under way with one writev, without blocking.
func (p *poller) write(st *pstream) (int, syscall.Errno) {
	iov := p.iov[:0]
	skip := st.done
	addIov := func(f []byte) {
		if skip >= len(f) {
			skip -= len(f)
			return
		}
		f = f[skip:]
		skip = 0
		if len(iov) < maxIovecs {
			v := syscall.Iovec{Base: &f[0]}
			v.SetLen(len(f))
			iov = append(iov, v)
		}
	}
	addIov(st.head)
	for _, f := range st.out {
		addIov(f)
	}
	addIov(st.tail)
	p.iov = iov
	if len(iov) == 0 {
		return 0, 0
	}
	// A write to a connection the client closed fails with EPIPE: the Go runtime ignores the
	// SIGPIPE it raises on descriptors other than 1 and 2 (os/signal).
	n, _, errno := syscall.Syscall(syscall.SYS_WRITEV, uintptr(st.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	clear(iov) // hold no frame past the write
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// firstWrite writes what it can of st's write under way, the response's head, in one write
// that does not block, from the handler that hands st over (see Broker.hijack); what the
// socket does not take, the poller writes.
func (st *pstream) firstWrite() {
	n, err := syscall.Write(st.fd, st.head)
	if err != nil || n <= 0 {
		return // the poller tries again, and ends the stream if the client is gone
	}
	if st.done = n; st.done == st.total() {
		st.clear()
	}
}

// closeFD closes a descriptor of the pollers'.
func closeFD(fd int) { syscall.Close(fd) }

// block has st wait for its socket to be writable.
func (p *poller) block(st *pstream) {
	if st.blocked != 0 {
		return
	}
	p.blocked = append(p.blocked, st)
	st.blocked = len(p.blocked)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLOUT, Fd: int32(st.fd)}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, st.fd, &ev)
}

// unblock records that st no longer waits for its socket.
func (p *poller) unblock(st *pstream) {
	if st.blocked == 0 {
		return
	}
	p.dropBlocked(st)
	st.deadline = 0
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(st.fd)}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, st.fd, &ev)
}

func (p *poller) dropBlocked(st *pstream) {
	i := st.blocked - 1
	last := p.blocked[len(p.blocked)-1]
	p.blocked[i] = last
	last.blocked = i + 1
	p.blocked[len(p.blocked)-1] = nil
	p.blocked = p.blocked[:len(p.blocked)-1]
	st.blocked = 0
}

// finish ends st, for the reason end: it is reported, the client leaves, and the connection
// is closed.
func (p *poller) finish(st *pstream, end error) {
	b := p.b
	if st.blocked != 0 {
		p.dropBlocked(st)
	}
	delete(p.streams, int32(st.fd))
	pg := st.pg
	last := pg.streams[len(pg.streams)-1]
	pg.streams[st.idx] = last
	last.idx = st.idx
	pg.streams[len(pg.streams)-1] = nil
	pg.streams = pg.streams[:len(pg.streams)-1]
	st.clear()

	b.unpoll(st)
	b.ended(st.end, st.c.sent, end)
	b.leave(st.c)
	syscall.Close(st.fd) // which takes it out of the epoll set
	st.fd = -1
}
