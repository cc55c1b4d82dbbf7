//go:build linux

package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
)

// floor is the load tool's own epoll server, the floor the sse-hijack mode is measured
// against: the least a server can do per stream and still push events to it. Its handler
// takes the connection over from net/http, writes the response head and a retry line, and
// puts the socket on one epoll set (the standard library's syscall package); then the handler
// returns, and no goroutine is left for the stream. One poller goroutine waits on the set for
// the peer to close, reset or send anything, and closes the socket at once.
//
// Publish writes each event's frame to every socket from the publisher's goroutine, without
// blocking. It is a floor, not a server: a socket whose write would block (EAGAIN) or
// takes only part of the frame is cut — there is no per-stream buffer or offset, no waiting
// for writability, no heartbeat, no replay, no write deadline. So it never waits for a client
// and never queues for one, and in a burst larger than the kernel's socket buffers it loses
// the clients that fall behind (the notes count them).
type floor struct {
	epfd int
	// dups bounds the hand-overs in progress: each holds two descriptors for a moment, and
	// at the limit on open files (idle-max) a burst of them would run out.
	dups chan struct{}

	mu    sync.Mutex       // guards fds, at, gen, frame, and the closing of every stream socket
	fds   []int32          // the open stream sockets
	at    map[int32]fdSlot // where each is in fds
	gen   int32            // generation of the socket added last
	frame []byte           // the frame being published; reused

	n   atomic.Int64 // len(fds), for Stats without the lock
	cut atomic.Int64 // sockets cut because a write would have blocked or failed
}

// An fdSlot is an open stream socket's place in floor.fds and the generation it was added
// with: an event the poller took before the lock may name a descriptor that has since been
// closed and reused, and the generation (carried in the epoll event's data) tells them apart.
type fdSlot struct {
	i   int
	gen int32
}

// floorHead is the whole response head and the stream's first bytes: close-delimited (no
// Content-Length, no chunked coding), with the headers our Broker sends and the retry line
// every stream of ours starts with, so that idle streams carry the same bytes.
const floorHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream; charset=utf-8\r\n" +
	"Cache-Control: no-cache\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Connection: close\r\n" +
	"\r\n" +
	"retry: 3000\n\n"

func newFloor() (library, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("floor: epoll_create1: %w", err)
	}
	f := &floor{epfd: epfd, at: make(map[int32]fdSlot), dups: make(chan struct{}, 8)}
	// The poller lives as long as the server process, which the load process ends.
	go f.poll()
	return f, nil
}

func (f *floor) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// A GET has no body and the load side sends one request per connection, so nothing
		// is left in the bufio.Reader Hijack returns.
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, "floor: cannot hijack: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if err := f.adopt(c); err != nil {
			log.Printf("floor: %v", err)
		}
	})
}

// adopt writes the response head on c and moves its socket from Go's network poller to the
// floor's epoll set: it duplicates the descriptor and closes c, which leaves the socket open
// under the duplicate alone (closing one descriptor of a socket neither shuts it down nor
// sends anything).
func (f *floor) adopt(c net.Conn) error {
	defer c.Close()
	// Into an empty socket buffer this write does not wait.
	if _, err := c.Write([]byte(floorHead)); err != nil {
		return err
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errors.New("hijacked connection has no descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var dupErr error
	f.dups <- struct{}{}
	if err := raw.Control(func(s uintptr) { fd, dupErr = syscall.Dup(int(s)) }); err != nil {
		<-f.dups
		return err
	}
	if dupErr != nil {
		<-f.dups
		return fmt.Errorf("dup: %w", dupErr)
	}
	c.Close()
	<-f.dups
	// O_NONBLOCK belongs to the open file, which the duplicate shares and Go has set; set it
	// anyway rather than rely on that.
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	// Any readiness to read means the peer closed, reset, or sent bytes a client of an
	// event stream never sends: the poller closes the socket for all of them.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd), Pad: f.gen}
	if err := syscall.EpollCtl(f.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	f.at[int32(fd)] = fdSlot{i: len(f.fds), gen: f.gen}
	f.fds = append(f.fds, int32(fd))
	f.n.Store(int64(len(f.fds)))
	return nil
}

// poll closes every socket whose peer has closed, reset or sent anything.
func (f *floor) poll() {
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(f.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue // the Go runtime's signals interrupt the wait
		}
		if err != nil {
			log.Printf("floor: epoll_wait: %v", err)
			return
		}
		f.mu.Lock()
		for _, ev := range events[:n] {
			if s, ok := f.at[ev.Fd]; ok && s.gen == ev.Pad {
				f.drop(ev.Fd)
			}
		}
		f.mu.Unlock()
	}
}

// drop closes fd and forgets it; closing its last descriptor also takes it off the epoll
// set. The caller holds f.mu, so that no descriptor is reused while another holder of the
// lock could still write to it.
func (f *floor) drop(fd int32) {
	s := f.at[fd]
	last := len(f.fds) - 1
	if s.i != last {
		moved := f.fds[last]
		f.fds[s.i] = moved
		ms := f.at[moved]
		ms.i = s.i
		f.at[moved] = ms
	}
	f.fds = f.fds[:last]
	delete(f.at, fd)
	syscall.Close(int(fd))
	f.n.Store(int64(len(f.fds)))
}

// publish writes the event's frame to every socket, without blocking: one write system call
// per socket per event. It holds the lock throughout, which the poller waits for; a write
// that would block is never made, so the lock is never held across a wait.
func (f *floor) publish(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frame = append(append(append(f.frame[:0], "data: "...), data...), "\n\n"...)
	for i := 0; i < len(f.fds); {
		fd := f.fds[i]
		n, err := syscall.Write(int(fd), f.frame)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if n == len(f.frame) {
			i++
			continue
		}
		// EAGAIN, a partial write or an error: cut. drop moves the last socket to i.
		f.drop(fd)
		f.cut.Add(1)
	}
	return nil
}

func (f *floor) clients() int   { return int(f.n.Load()) }
func (f *floor) cuts() int64    { return f.cut.Load() }
func (f *floor) streams() int64 { return f.n.Load() }
func (f *floor) config() string {
	return "the load tool's epoll floor: hijack, write the head and a retry line, move the socket to one epoll set (syscall), " +
		"one poller goroutine that closes sockets whose peer closed; publish writes each frame to every socket, non-blocking, " +
		"and cuts a socket whose write would block (no buffering, heartbeats, replay or write deadline)"
}
