package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxPhases bounds the phases a scenario may publish in; the phase is one digit of the data.
const maxPhases = 10

// A conn is one load connection: raw HTTP/1.1 over TCP, read with just enough parsing to find
// data lines and event ends. No HTTP client library is involved, so the load side costs the
// same for every server library.
type conn struct {
	c       net.Conn
	readBuf int // size of the read buffer

	// Written by the reader goroutine; read by others only once done is closed, but for
	// the atomic counters.
	count    [maxPhases]atomic.Int64 // measured events received, per phase
	lastRecv [maxPhases]atomic.Int64 // Unix ns of the last read that completed one, per phase
	syncs    atomic.Int64            // sync events received
	lat      [maxPhases][]uint32     // latency of each measured event, µs
	other    int64                   // events whose data was neither measured nor sync
	outOfOrd int64                   // measured events whose index did not follow the previous one of their phase
	err      error                   // why reading ended
	closed   atomic.Bool             // the reader has stopped: the stream ended or failed
	done     chan struct{}           // closed when the reader goroutine returns
}

const request = "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"

// dial opens a connection to addr, from source address src if it is not nil, and sends the
// request. If read is set, a goroutine reads the stream until it ends; otherwise nothing ever
// reads from the socket (a client that has stopped reading, whose receive window fills).
func dial(ctx context.Context, addr string, src net.IP, read bool, readBuf int) (*conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, request); err != nil {
		c.Close()
		return nil, err
	}
	cn := &conn{c: c, readBuf: readBuf, done: make(chan struct{})}
	if read {
		go cn.read()
	} else {
		close(cn.done)
	}
	return cn, nil
}

// close resets the connection (SO_LINGER 0): no TIME_WAIT is left behind, so that tens of
// thousands of connections in a row do not run out of ephemeral ports.
func (cn *conn) close() {
	if tc, ok := cn.c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	cn.c.Close()
}

// read reads the response until it ends.
func (cn *conn) read() {
	defer close(cn.done)
	defer cn.closed.Store(true)
	p := parser{cn: cn}
	for i := range p.expectIdx {
		p.expectIdx[i] = -1
	}
	buf := make([]byte, cn.readBuf)
	for {
		n, err := cn.c.Read(buf)
		if n > 0 {
			// One clock read per read call: every event completed by these bytes arrived now.
			p.now = time.Now().UnixNano()
			if perr := p.feed(buf[:n]); perr != nil {
				cn.err = perr
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.EOF
			}
			cn.err = err
			return
		}
	}
}

// parser is the load side's reader of an HTTP/1.1 response carrying a text/event-stream.
type parser struct {
	cn  *conn
	now int64 // when the bytes being fed were read

	// Response head.
	headDone bool
	head     []byte
	chunked  bool

	// Chunked transfer coding (RFC 9112 §7.1).
	chunkLeft int  // bytes of chunk data still to come
	inSize    bool // reading a chunk-size line
	size      int  // the chunk size read so far
	sizeExt   bool // past the hex digits of the size line (extensions, CR)
	skipCRLF  int  // bytes of the CRLF after chunk data still to skip

	// Event stream.
	line      []byte // a line split between reads
	haveData  bool
	kind      byte // 'T' measured, 'S' sync, 0 other
	phase     int
	ts        int64
	idx       int64
	expectIdx [maxPhases]int64 // per phase, the index its next measured event should have; -1: any
}

var errBadResponse = errors.New("bad response")

func (p *parser) feed(b []byte) error {
	if !p.headDone {
		p.head = append(p.head, b...)
		i := bytes.Index(p.head, []byte("\r\n\r\n"))
		if i < 0 {
			if len(p.head) > 16<<10 {
				return errBadResponse
			}
			return nil
		}
		head := p.head[:i]
		if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) && !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) {
			line, _, _ := bytes.Cut(head, []byte("\r\n"))
			return fmt.Errorf("%w: %q", errBadResponse, line)
		}
		p.chunked = bytes.Contains(bytes.ToLower(head), []byte("\r\ntransfer-encoding: chunked"))
		p.inSize = p.chunked
		b = p.head[i+4:]
		p.headDone = true
		p.head = nil
	}
	if !p.chunked {
		p.body(b)
		return nil
	}
	for len(b) > 0 {
		switch {
		case p.skipCRLF > 0:
			p.skipCRLF--
			b = b[1:]
			if p.skipCRLF == 0 {
				p.inSize, p.size, p.sizeExt = true, 0, false
			}
		case p.inSize:
			c := b[0]
			b = b[1:]
			switch {
			case c == '\n':
				if p.size == 0 {
					return io.EOF // the last chunk: the response is over
				}
				p.inSize, p.chunkLeft = false, p.size
			case p.sizeExt:
			case '0' <= c && c <= '9':
				p.size = p.size<<4 | int(c-'0')
			case 'a' <= c && c <= 'f':
				p.size = p.size<<4 | int(c-'a'+10)
			case 'A' <= c && c <= 'F':
				p.size = p.size<<4 | int(c-'A'+10)
			default:
				p.sizeExt = true // ';' extensions or the CR
			}
		default:
			n := min(p.chunkLeft, len(b))
			p.body(b[:n])
			b = b[n:]
			if p.chunkLeft -= n; p.chunkLeft == 0 {
				p.skipCRLF = 2
			}
		}
	}
	return nil
}

// body splits the event stream into lines.
func (p *parser) body(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.line = append(p.line, b...)
			return
		}
		if len(p.line) > 0 {
			p.line = append(p.line, b[:i]...)
			p.handleLine(p.line)
			p.line = p.line[:0]
		} else {
			p.handleLine(b[:i])
		}
		b = b[i+1:]
	}
}

func (p *parser) handleLine(line []byte) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		p.dispatch()
		return
	}
	v, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return // id, event, retry, comments: nothing the measurements need
	}
	v = bytes.TrimPrefix(v, []byte(" "))
	if p.haveData {
		return // a second data line of the same event
	}
	p.haveData = true
	p.kind = 0
	switch {
	case len(v) >= 22 && v[0] == 'T':
		// "T<phase><19-digit Unix ns> <index> <padding>", see server.go.
		ts, err1 := strconv.ParseInt(string(v[2:21]), 10, 64)
		end := bytes.IndexByte(v[22:], ' ')
		if end < 0 {
			end = len(v) - 22
		}
		idx, err2 := strconv.ParseInt(string(v[22:22+end]), 10, 64)
		if err1 == nil && err2 == nil && v[1] >= '0' && v[1] <= '9' {
			p.kind, p.phase, p.ts, p.idx = 'T', int(v[1]-'0'), ts, idx
		}
	case len(v) > 0 && v[0] == 'S':
		p.kind = 'S'
	}
}

func (p *parser) dispatch() {
	if !p.haveData {
		return
	}
	p.haveData = false
	cn := p.cn
	switch p.kind {
	case 'T':
		us := max(p.now-p.ts, 0) / 1e3
		cn.lat[p.phase] = append(cn.lat[p.phase], uint32(min(us, 1<<32-1)))
		if e := p.expectIdx[p.phase]; e >= 0 && p.idx != e {
			cn.outOfOrd++
		}
		p.expectIdx[p.phase] = p.idx + 1
		cn.count[p.phase].Add(1)
		cn.lastRecv[p.phase].Store(p.now)
	case 'S':
		cn.syncs.Add(1)
	default:
		cn.other++
	}
}

// dialAll opens n connections with a few dials at a time, the listen backlog being finite;
// with srcs, from each of those source addresses in turn.
func dialAll(ctx context.Context, addr string, n int, srcs []net.IP, read bool, readBuf int) ([]*conn, error) {
	conns := make([]*conn, n)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, 32)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var src net.IP
			if len(srcs) > 0 {
				src = srcs[i%len(srcs)]
			}
			c, err := dial(ctx, addr, src, read, readBuf)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

// closeAll resets every connection and waits (at most 10s) for the readers to stop.
func closeAll(conns []*conn) {
	for _, c := range conns {
		if c != nil {
			c.close()
		}
	}
	timeout := time.After(10 * time.Second)
	for _, c := range conns {
		if c == nil {
			continue
		}
		select {
		case <-c.done:
		case <-timeout:
			return
		}
	}
}

// received returns how many measured events of phase the connections received in all.
func received(conns []*conn, phase int) int64 {
	var n int64
	for _, c := range conns {
		n += c.count[phase].Load()
	}
	return n
}

// portsPerSource is how many connections the load side opens from one source address when it
// spreads them: a socket bound to an address before it connects takes an ephemeral port of
// its own on that address (28,232 in Linux's default range), whoever else uses them.
const portsPerSource = 5000

// maxSources bounds the source addresses: 127.0.0.2 to 127.0.0.251.
const maxSources = 250

// sources returns the source addresses for n connections to a server on 127.0.0.1: nil (the
// kernel's choice) for at most portsPerSource, else 127.0.0.2, 127.0.0.3, ... with at most
// portsPerSource each. Linux routes all of 127.0.0.0/8 to the loopback interface.
func sources(n int) []net.IP {
	if n <= portsPerSource {
		return nil
	}
	k := (n + portsPerSource - 1) / portsPerSource
	srcs := make([]net.IP, k)
	for i := range srcs {
		srcs[i] = net.IPv4(127, 0, 0, byte(2+i))
	}
	return srcs
}
