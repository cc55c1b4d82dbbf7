package ssetest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// A Proxy forwards TCP connections to a server and can cut them all at once, as a network
// failure or a restarting load balancer would: a test drops a client's connection without the
// server's help, so that what it sees is what a real failure looks like to both ends.
type Proxy struct {
	ln   net.Listener
	done chan struct{}  // closed by close
	wg   sync.WaitGroup // the accept loop and every connection's goroutines

	mu     sync.Mutex            // guards the fields below
	target string                // where new connections go
	conns  map[net.Conn]struct{} // both ends of every open connection
	gate   chan struct{}         // closed while new connections are forwarded
	paused bool
	closed bool
	down   []byte // what the server sent, up to maxTap bytes, for tests that look at the wire
}

const maxTap = 1 << 20

// NewProxy starts a proxy on 127.0.0.1 to target (a host:port), closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{
		ln:     ln,
		target: target,
		done:   make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
		gate:   make(chan struct{}),
	}
	close(p.gate)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URL returns the proxy's base URL.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Cut closes every open connection, both ends.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Pause holds new connections, accepted but not forwarded, until Resume: a client that
// reconnects stays away for as long as the test needs, whatever its retry delay.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused = true
		p.gate = make(chan struct{})
	}
}

// Resume forwards the held connections, and new ones again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.gate)
	}
}

// Retarget sends new connections to target from now on, as a load balancer that sends a
// client to another server does; open connections stay where they are.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
}

// Downstream returns what the server has sent through the proxy so far.
func (p *Proxy) Downstream() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.down)
}

func (p *Proxy) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
		for c := range p.conns {
			c.Close()
		}
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

// track registers c so that cut and close reach it, and reports false if the proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *Proxy) forward(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		client.Close()
		return
	}
	defer p.untrack(client)

	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
	case <-p.done:
		return
	}

	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	server, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)

	// Either direction ending ends both, as a dropped connection does.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		io.Copy(server, client)
		server.Close()
		client.Close()
	}()
	io.Copy(client, io.TeeReader(server, tap{p}))
	client.Close()
	server.Close()
}

// tap records what the server sends.
type tap struct{ p *Proxy }

func (t tap) Write(b []byte) (int, error) {
	t.p.mu.Lock()
	defer t.p.mu.Unlock()
	if n := min(len(b), maxTap-len(t.p.down)); n > 0 {
		t.p.down = append(t.p.down, b[:n]...)
	}
	return len(b), nil
}
