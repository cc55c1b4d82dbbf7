package redisbroker_test

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/redistest"
	"sse/redisbroker"
)

// A lostReply proxies TCP connections to Redis; once armed, it forwards the next call of the
// publish script and then cuts that connection before Redis's answer comes back, as a network
// failure would: go-redis then sends the call again on another connection. If between is
// set, it runs after Redis has run the call and before the connection is cut.
type lostReply struct {
	ln      net.Listener
	target  string
	armed   atomic.Bool
	between func()
}

func newLostReply(t *testing.T, target string) *lostReply {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lostReply{ln: ln, target: target}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return p
}

func (p *lostReply) serve(client net.Conn) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer server.Close()
	var cut atomic.Bool
	done := make(chan struct{})
	go func() { // Redis to the client, unless the connection is being cut
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && !cut.Load() {
				client.Write(buf[:n])
			}
			if err != nil {
				client.Close()
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			// A call of the publish script names the process's key; the readers' calls do not.
			script := bytes.Contains(buf[:n], []byte("}:pub:"))
			if script && p.armed.CompareAndSwap(true, false) {
				cut.Store(true)
				server.Write(buf[:n])
				time.Sleep(100 * time.Millisecond) // Redis runs the script; its answer is lost
				if p.between != nil {
					p.between()
				}
				break
			}
			server.Write(buf[:n])
		}
		if err != nil {
			break
		}
	}
	server.Close()
	<-done
}

// A publish whose answer was lost, and which go-redis therefore sent again, adds its event
// once: clients get it once.
func TestPublishSentTwice(t *testing.T) {
	rs := redistest.Start(t)
	p := newLostReply(t, rs.Addr())
	a := startNode(t, p.ln.Addr().String(), "twice")
	a.publish("first")
	s := a.open("", false)
	waitFor(t, "the client to join", func() bool { return a.b.Stats().Clients == 1 })
	p.armed.Store(true)
	if _, err := a.b.Publish(sse.Event{Data: "once"}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	a.publish("after")
	if got := rs.Do("XLEN", redisbroker.Keys("twice")[1]); got != ":3" {
		t.Errorf("XLEN = %s, want 3: one Publish added more than one entry", got)
	}
	s.expect("once", "after")
}

// A publish whose answer was lost adds its event once even when another process published
// between its call and go-redis sending it again.
func TestPublishSentTwiceAfterAnother(t *testing.T) {
	rs := redistest.Start(t)
	p := newLostReply(t, rs.Addr())
	a := startNode(t, p.ln.Addr().String(), "twice2")
	b := startNode(t, rs.Addr(), "twice2")
	a.publish("first")
	s := b.open("", false)
	waitFor(t, "the client to join", func() bool { return b.b.Stats().Clients == 1 })
	p.between = func() { b.publish("other") }
	p.armed.Store(true)
	if _, err := a.b.Publish(sse.Event{Data: "once"}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	a.publish("after")
	if got := rs.Do("XLEN", redisbroker.Keys("twice2")[1]); got != ":4" {
		t.Errorf("XLEN = %s, want 4: one Publish added more than one entry", got)
	}
	s.expect("once", "other", "after")
}

// The publish script tells a process's calls apart by their numbers: the last one sent again
// gets its answer and adds nothing, in the same epoch; one below the last, a copy that
// arrived after the process gave up on it and went on, is refused; in a new epoch, the last
// one, whose events went with the old log, is added again. The process's key expires.
func TestPublishScriptCalls(t *testing.T) {
	rs := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	keys := append(redisbroker.Keys("calls"), redisbroker.PubKey("calls", "p"))
	evs := redisbroker.AppendEvent(nil, sse.Event{Data: "x"}, nil)
	call := func(n int) (string, error) {
		res, err := redisbroker.PublishScript.Run(t.Context(), rdb, keys, "e1", 100, 1, n, evs, 60000).Slice()
		if err != nil {
			return "", err
		}
		return fmt.Sprint(res...), nil
	}
	for _, c := range []struct {
		call     int
		want     string // the answer: epoch and number, or "" for an error
		entries  string // XLEN after it
		newEpoch bool   // begin a new epoch before the call, as renewScript does
	}{
		{1, "e11", ":1", false},
		{2, "e12", ":2", false},
		{2, "e12", ":2", false}, // sent again
		{1, "", ":2", false},    // came late
		{3, "e13", ":3", false},
		{3, "e21", ":1", true}, // sent again into a new log
	} {
		if c.newEpoch {
			rs.Do("DEL", keys[1])
			rs.Do("HSET", keys[0], "epoch", "e2", "seq", "0")
		}
		got, err := call(c.call)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("call %d: %q, %v; want %q", c.call, got, err, c.want)
		}
		if n := rs.Do("XLEN", keys[1]); n != c.entries {
			t.Errorf("call %d: XLEN %s, want %s", c.call, n, c.entries)
		}
	}
	if ttl := rdb.PTTL(t.Context(), keys[2]).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("the process's key expires in %v, want a minute", ttl)
	}
}

// A Publish that gave up while Redis did not answer, before its event was sent, is not
// published later: its error means what it says.
func TestPublishGivenUp(t *testing.T) {
	rs := redistest.Start(t)
	n := startNode(t, rs.Addr(), "givenup", redisbroker.WithPublishTimeout(300*time.Millisecond))
	n.publish("0")
	rs.Signal(syscall.SIGSTOP)
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 20 {
		wg.Go(func() {
			if i > 0 {
				time.Sleep(50 * time.Millisecond) // after the first is on its way to Redis
			}
			if _, err := n.b.Publish(sse.Event{Data: strconv.Itoa(i)}); err == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	rs.Signal(syscall.SIGCONT)
	n.publish("last")
	// "0", what was on its way when Redis stopped (one call of one event), and "last".
	got, _ := strconv.Atoi(rs.Do("XLEN", redisbroker.Keys("givenup")[1])[1:])
	if want := 3 + int(ok.Load()); got > want {
		t.Errorf("XLEN = %d, want at most %d: publishes that failed were published later", got, want)
	}
}

// After Redis lost its data, the start ID a client gets from a process that begins the new
// log resumes on the other processes too.
func TestStartIDAfterFlush(t *testing.T) {
	rs := redistest.Start(t)
	a := startNode(t, rs.Addr(), "flush")
	for i := 1; i <= 3; i++ {
		a.publish(strconv.Itoa(i))
	}
	rs.Do("FLUSHALL")
	c := startNode(t, rs.Addr(), "flush")
	start := c.open("", false).startID()
	// a's reader looks at the log's epoch at least once a second.
	time.Sleep(1500 * time.Millisecond)
	s := a.open(start, false)
	waitFor(t, "the client to join", func() bool { return a.b.Stats().Clients == 1 })
	c.publish("new")
	s.expect("new")
}

// Publishes from many goroutines at once go to Redis in batches, one log entry each: every
// event reaches clients once, in the order of its number, with the ID its Publish returned; a
// node that starts later reads the batches back and resumes from an ID inside one; an entry
// that is not one Publish wrote is skipped.
func TestBatchedPublishes(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a, b := startNode(t, rs.Addr(), "batch"), startNode(t, rs.Addr(), "batch")
	first := a.publish("0")
	s := b.open(first, false)
	waitFor(t, "the client to join", func() bool { return b.b.Stats().Clients == 1 })
	const publishers, each = 50, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]string{} // data → ID
	for p := range publishers {
		wg.Go(func() {
			for k := range each {
				data := strconv.Itoa(p) + "." + strconv.Itoa(k)
				id, err := a.b.Publish(sse.Event{Data: data})
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				mu.Lock()
				ids[data] = id
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	log := redisbroker.Keys("batch")[1]
	// Not an entry Publish writes: skipped by every reader.
	if got := rs.Do("XADD", log, "*", "foo", "bar"); strings.HasPrefix(got, "-") {
		t.Fatalf("XADD: %s", got)
	}
	last := a.publish("last")
	entries, _ := strconv.Atoi(rs.Do("XLEN", log)[1:])
	if entries >= publishers*each {
		t.Logf("%d entries for %d events: no batch formed", entries, publishers*each+2)
	}
	var got []string // IDs in the order received
	for range publishers * each {
		ev := s.next()
		if want, ok := ids[ev.Data]; !ok || ev.LastEventID != want {
			t.Fatalf("got %q with ID %q, want the ID Publish returned, %q", ev.Data, ev.LastEventID, want)
		}
		delete(ids, ev.Data)
		got = append(got, ev.LastEventID)
	}
	s.expect("last")
	for i, id := range got {
		if want := seqOf(t, first) + 1 + i; seqOf(t, id) != want || epochOf(id) != epochOf(first) {
			t.Fatalf("event %d has ID %q, want number %d", i, id, want)
		}
	}
	// A node that starts now reads the batches, and resumes from the middle of one.
	c := startNode(t, rs.Addr(), "batch")
	if got, want := c.b.Stats().Published, int64(publishers*each+2); got != want {
		t.Errorf("a node that starts read %d events, want %d", got, want)
	}
	mid := publishers * each / 2
	r := c.open(got[mid-1], true)
	for _, id := range got[mid:] {
		if ev := r.next(); ev.LastEventID != id {
			t.Fatalf("resuming from %q: got %+v, want ID %q", got[mid-1], ev, id)
		}
	}
	if ev := r.next(); ev.LastEventID != last || ev.Data != "last" {
		t.Fatalf("got %+v, want last", ev)
	}
}
