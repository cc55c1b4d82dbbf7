package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/redistest"
	"sse/internal/spec"
	"sse/internal/ssetest"
	"sse/redisbroker"
)

// threeNodes starts three nodes on namespace ns of rs.
func threeNodes(t *testing.T, rs *redistest.Server, ns string, opts ...redisbroker.Option) (a, b, c *node) {
	return startNode(t, rs.Addr(), ns, opts...), startNode(t, rs.Addr(), ns, opts...), startNode(t, rs.Addr(), ns, opts...)
}

// waitAppended waits until every node has read n events from the log in all.
func waitAppended(t *testing.T, n int64, nodes ...*node) {
	t.Helper()
	for _, nd := range nodes {
		waitFor(t, fmt.Sprintf("a node to read %d events", n), func() bool { return nd.b.Stats().Published >= n })
	}
}

// seqOf returns the number an ID of the form epoch-n ends with.
func seqOf(t *testing.T, id string) int {
	t.Helper()
	i := strings.LastIndexByte(id, '-')
	n, err := strconv.Atoi(id[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("ID %q is not epoch-n", id)
	}
	return n
}

// epochOf returns the epoch of an ID of the form epoch-n.
func epochOf(id string) string {
	e, _, _ := strings.Cut(id, "-")
	return e
}

// A publish on any node reaches every client of its topics on every node once, and every node
// delivers them in the same order, to clients of several topics too.
func TestFanOutAcrossNodes(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	nodes := []*node{}
	for range 3 {
		nodes = append(nodes, startNode(t, rs.Addr(), "fanout"))
	}
	topicSets := [][]string{{"a"}, {"b"}, {"a", "b"}}
	type sub struct {
		s   *stream
		set int // index in topicSets
	}
	var subs []sub
	for _, n := range nodes {
		for i, set := range topicSets {
			subs = append(subs, sub{n.open("", false, set...), i})
		}
	}

	// Three publishers at once, one on each node: event k of publisher p has data "p.k" and
	// goes to the topics topicSets[k%3].
	const perPublisher = 21
	var wg sync.WaitGroup
	for p, n := range nodes {
		wg.Go(func() {
			for k := range perPublisher {
				if _, err := n.b.Publish(sse.Event{Data: fmt.Sprintf("%d.%d", p, k)}, topicSets[k%3]...); err != nil {
					t.Errorf("Publish: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	inSet := func(data string, set int) bool {
		_, k, _ := strings.Cut(data, ".")
		n, _ := strconv.Atoi(k)
		switch set {
		case 0:
			return n%3 != 1 // a, or a and b
		case 1:
			return n%3 != 0
		}
		return true
	}
	want := [3]int{} // events per topic set
	for k := range perPublisher {
		for set := range topicSets {
			if inSet("0."+strconv.Itoa(k), set) {
				want[set] += len(nodes)
			}
		}
	}
	got := make([][]string, len(subs)) // "data id" of each event each client received
	for i, sb := range subs {
		next := map[string]int{} // publisher → the k expected next
		for range want[sb.set] {
			ev := sb.s.next()
			if ev.Type != "message" || !inSet(ev.Data, sb.set) {
				t.Fatalf("a client of %v got %s %q", topicSets[sb.set], ev.Type, ev.Data)
			}
			p, k, _ := strings.Cut(ev.Data, ".")
			kn, _ := strconv.Atoi(k)
			for next[p] < perPublisher && !inSet(p+"."+strconv.Itoa(next[p]), sb.set) {
				next[p]++
			}
			if kn != next[p] {
				t.Fatalf("a client of %v got %q, want %s.%d: each publisher's events in order, once", topicSets[sb.set], ev.Data, p, next[p])
			}
			next[p]++
			got[i] = append(got[i], ev.Data+" "+ev.LastEventID)
		}
	}
	// The same order on every node, and for each topic the order of the clients of both.
	for i, sb := range subs {
		both := got[len(topicSets)-1] // the first node's client of a and b
		var want []string
		for _, e := range both {
			if data, _, _ := strings.Cut(e, " "); inSet(data, sb.set) {
				want = append(want, e)
			}
		}
		if !slices.Equal(got[i], want) {
			t.Errorf("client %d (topics %v) got\n%v\nwant\n%v", i, topicSets[sb.set], got[i], want)
		}
	}
}

// A client that saw events up to X on one node and reconnects to another with X receives
// exactly the events after X, then the live ones, while events are being published; the same
// from the ID a stream started with, and from the lastEventId query parameter. And the same ID
// replays the same events on every node.
// The first clients of a namespace with no events yet get IDs of the log: its first event
// reaches them as any other, without disconnecting them, and resumes on another node.
func TestFirstEventOfALog(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a := startNode(t, rs.Addr(), "fresh")
	b := startNode(t, rs.Addr(), "fresh")
	s := a.open("", false)
	start := s.startID()
	s = b.open("", false)
	if id := s.startID(); id != start {
		t.Errorf("start IDs %q and %q, want the same on both nodes", start, id)
	}
	s = a.open("", false)
	waitFor(t, "the client to join", func() bool { return a.b.Stats().Clients == 1 })
	first := a.publish("first")
	if ev := s.next(); ev.Type != "message" || ev.Data != "first" || ev.LastEventID != first {
		t.Errorf("first event: got %+v, want data first, ID %q", ev, first)
	}
	b.open(start, false).expect("first")
}

func TestResumeOnAnotherNode(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	tests := []struct {
		name        string
		query       bool // send the ID as the lastEventId query parameter
		beforeFirst bool // resume from the ID the stream started with
	}{
		{"header", false, false},
		{"query", true, false},
		{"start ID", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, c := threeNodes(t, rs, "resume-"+strings.ReplaceAll(tt.name, " ", "-"))
			for i := 1; i <= 5; i++ {
				a.publish(strconv.Itoa(i))
			}
			waitAppended(t, 5, a, b, c)
			ref := c.open("", false) // sees every event from 6 on

			var x string
			if tt.beforeFirst {
				x = a.open("", false).startID()
			} else {
				s := a.open("", false)
				for i := 6; i <= 10; i++ {
					a.publish(strconv.Itoa(i))
				}
				x = s.expect("6", "7", "8")[2].LastEventID
				s.close()
			}
			from := seqOf(t, x) + 1
			published := 10
			if tt.beforeFirst {
				published = 5
			}
			last := 60
			ids := map[int]string{} // data → ID on the reference stream

			// Publish the rest spread over the nodes while the client resumes.
			done := make(chan struct{})
			go func() {
				defer close(done)
				nodes := []*node{a, b, c}
				for i := published + 1; i <= last; i++ {
					if _, err := nodes[i%3].b.Publish(sse.Event{Data: strconv.Itoa(i)}); err != nil {
						t.Errorf("Publish: %v", err)
						return
					}
				}
			}()
			r := b.open(x, tt.query)
			for _, ev := range r.expect(numbers(from, last)...) {
				if seqOf(t, ev.LastEventID) != mustAtoi(ev.Data) || epochOf(ev.LastEventID) != epochOf(x) {
					t.Fatalf("event %s has ID %q", ev.Data, ev.LastEventID)
				}
			}
			<-done
			for _, ev := range ref.expect(numbers(6, last)...) {
				ids[mustAtoi(ev.Data)] = ev.LastEventID
			}

			// The same ID replays the same events, with the same IDs, on every node.
			for _, n := range []*node{a, b, c} {
				s := n.open(x, tt.query)
				for _, ev := range s.expect(numbers(from, last)...) {
					if ids[mustAtoi(ev.Data)] != ev.LastEventID {
						t.Fatalf("event %s: ID %q, want %q as on the other node", ev.Data, ev.LastEventID, ids[mustAtoi(ev.Data)])
					}
				}
			}
		})
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

// A node that starts reads what the log retains before it serves: it resumes IDs that Redis
// still holds without MissedType, also after it restarts.
func TestNodeStartsAndRestarts(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a := startNode(t, rs.Addr(), "restart")
	var ids []string
	for i := 1; i <= 20; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}

	c := startNode(t, rs.Addr(), "restart")
	// New returns once the node holds the retained log: its first client starts at the end.
	if got := c.b.Stats().Published; got != 20 {
		t.Fatalf("a node that started holds %d events, want 20", got)
	}
	if id := c.open("", false).startID(); id != ids[19] {
		t.Errorf("a stream on a node that started begins at %q, want %q", id, ids[19])
	}
	c.open(ids[9], false).expect(numbers(11, 20)...)

	// The node restarts while events are published.
	c.shutdown(5 * time.Second)
	for i := 21; i <= 30; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}
	c = startNode(t, rs.Addr(), "restart")
	s := c.open(ids[14], false)
	s.expect(numbers(16, 30)...)
	c.publish("31")
	s.expect("31")
}

// Redis restarting with its data: IDs go on, open streams stay open, nobody gets MissedType.
// Redis unreachable: Publish fails within its timeout, streams stay open with heartbeats, and
// once Redis is back, delivery goes on and clients resume by ID.
func TestRedisRestartsWithData(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	a, b := startNode(t, rs.Addr(), "persist"), startNode(t, rs.Addr(), "persist")
	var ids []string
	for i := 1; i <= 5; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}
	waitAppended(t, 5, a, b)
	s := b.open("", false)

	// Redis hangs: Publish gives up at its timeout (1s here).
	rs.Signal(syscall.SIGSTOP)
	began := time.Now()
	_, err := a.b.Publish(sse.Event{Data: "lost?"})
	if took := time.Since(began); err == nil || took > 1500*time.Millisecond {
		t.Errorf("Publish while Redis hangs: %v after %v, want an error within 1s", err, took)
	}
	rs.Signal(syscall.SIGCONT)
	// That event may or may not be in the log: Redis got the command. Start counting after it.
	waitFor(t, "Redis to answer", func() bool { return redistest.Ping(rs.Addr()) == nil })

	rs.Kill()
	began = time.Now()
	_, err = a.b.Publish(sse.Event{Data: "lost"})
	if took := time.Since(began); err == nil || took > 1500*time.Millisecond {
		t.Errorf("Publish while Redis is down: %v after %v, want an error within 1s", err, took)
	}
	beats := s.beats
	time.Sleep(500 * time.Millisecond)
	rs.Restart()

	// Delivery goes on, with the same epoch and the next numbers.
	var id6 string
	waitFor(t, "a publish to succeed", func() bool {
		id, err := a.b.Publish(sse.Event{Data: "6"})
		id6 = id
		return err == nil
	})
	evs := readAfterHang(t, s)
	if evs.Data != "6" || epochOf(evs.LastEventID) != epochOf(ids[0]) || evs.LastEventID != id6 {
		t.Fatalf("after the restart: %q %q, want 6 with ID %q (epoch of %q)", evs.Data, evs.LastEventID, id6, ids[0])
	}
	if s.beats <= beats {
		t.Errorf("no heartbeat while Redis was down")
	}
	a.publish("7")
	s.expect("7")
	// A client resumes from an ID from before the restart, on either node.
	a.open(ids[2], false).expect(append([]string{"4", "5"}, maybeHung(t, a, ids[4])...)...)
	b.open(id6, true).expect("7")
}

// readAfterHang returns the first event of s that is not the one published while Redis hung.
func readAfterHang(t *testing.T, s *stream) spec.Event {
	t.Helper()
	for {
		ev := s.next()
		if ev.Type != "message" {
			t.Fatalf("got %s %q, want a message", ev.Type, ev.Data)
		}
		if ev.Data != "lost?" {
			return ev
		}
	}
}

// maybeHung returns the events that follow the one of ID after: those a client resuming
// from there receives: "6" and "7", after "lost?" if Redis took it while it hung.
func maybeHung(t *testing.T, n *node, after string) []string {
	s := n.open(after, false)
	ev := s.next()
	s.close()
	if ev.Data == "lost?" {
		return []string{"lost?", "6", "7"}
	}
	return []string{"6", "7"}
}

// Redis losing its data (a restart without persistence, or FLUSHALL) begins a new epoch at
// the next Publish: clients are disconnected, those resuming from an old ID get MissedType,
// and live delivery goes on by itself.
func TestRedisLosesData(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"FLUSHALL", "restart"} {
		t.Run(how, func(t *testing.T) {
			rs := redistest.Start(t)
			a, b := startNode(t, rs.Addr(), "lose"), startNode(t, rs.Addr(), "lose")
			for i := 1; i <= 5; i++ {
				a.publish(strconv.Itoa(i))
			}
			waitAppended(t, 5, a, b)
			s := b.open("", false)
			a.publish("6")
			old := s.expect("6")[0].LastEventID
			// Both nodes hold all six before Redis loses them: b's client saw "6", but a
			// reads the log on its own time.
			waitAppended(t, 6, a, b)

			if how == "FLUSHALL" {
				if got := rs.Do("FLUSHALL"); got != "+OK" {
					t.Fatalf("FLUSHALL: %s", got)
				}
			} else {
				rs.Kill()
				rs.Restart()
			}
			var id string
			waitFor(t, "a publish to succeed", func() bool {
				var err error
				id, err = a.b.Publish(sse.Event{Data: "new"})
				return err == nil
			})
			if epochOf(id) == epochOf(old) || seqOf(t, id) != 1 {
				t.Fatalf("first ID after Redis lost its data: %q, want a new epoch and 1 (old: %q)", id, old)
			}
			// The node notices, and ends its streams so that they resume.
			began := time.Now()
			s.expectEnd()
			if took := time.Since(began); took > 3*time.Second {
				t.Errorf("the stream ended %v after the new epoch began", took)
			}
			if err := <-b.ends; !errors.Is(err, sse.ErrEventsLost) {
				t.Errorf("ServeEvents returned %v, want ErrEventsLost", err)
			}
			// Resuming from the old epoch: MissedType, then the new log, then live, on both
			// nodes and at once (no wait for an ID that will never come). (Until a node has
			// read the new epoch, it still resumes old IDs from what it holds, and then
			// disconnects those clients too.)
			waitAppended(t, 7, a, b)
			for _, n := range []*node{b, a} {
				began := time.Now()
				r := n.open(old, false)
				if ev := r.next(); ev.Type != sse.MissedType {
					t.Fatalf("resuming from %q after Redis lost its data: %+v, want %s", old, ev, sse.MissedType)
				}
				if took := time.Since(began); took > time.Second {
					t.Errorf("MissedType took %v", took)
				}
				r.expect("new")
			}
			a.publish("live")
			r := b.open(id, false)
			r.expect("live")
		})
	}
}

// When the log's number goes back (Redis failed over to a replica that had not received the
// last events), the numbers that follow would name other events than clients saw: the nodes
// begin a new epoch, so that those clients get MissedType rather than a silent gap.
func TestLogGoesBack(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a, b := startNode(t, rs.Addr(), "back"), startNode(t, rs.Addr(), "back")
	var ids []string
	for i := 1; i <= 6; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}
	waitAppended(t, 6, a, b)
	s := b.open("", false)
	meta := redisbroker.Keys("back")[0]
	// What a replica that missed events 4 to 6 holds.
	if got := rs.Do("HSET", meta, "seq", "3"); got != ":0" {
		t.Fatalf("HSET: %s", got)
	}
	waitFor(t, "a new epoch", func() bool { return rs.Do("HGET", meta, "epoch") != epochOf(ids[0]) })
	// Every node serves the new epoch before its first event, the one that began it too, so
	// that a client that comes now gets that event rather than a break.
	epoch := rs.Do("HGET", meta, "epoch")
	for _, n := range []*node{a, b} {
		waitFor(t, "the node to serve the new epoch", func() bool { return epochOf(n.open("", false).startID()) == epoch })
	}
	fresh := []*stream{a.open("", false), b.open("", false)}
	waitFor(t, "the clients to join", func() bool { return a.b.Stats().Clients == 1 && b.b.Stats().Clients == 1 })
	id := a.publish("7")
	if epochOf(id) == epochOf(ids[0]) || seqOf(t, id) != 1 {
		t.Fatalf("ID after the log went back: %q, want a new epoch and 1", id)
	}
	for _, f := range fresh {
		f.expect("7")
	}
	s.expectEnd()
	waitAppended(t, 7, a, b)
	r := b.open(ids[5], false)
	if ev := r.next(); ev.Type != sse.MissedType {
		t.Fatalf("resuming from %q after the log went back: %+v, want %s", ids[5], ev, sse.MissedType)
	}
	r.expect("7")
}

// When Redis restarts from a snapshot that lacks its last events, and no process that read
// them is left (one machine rebooted), the next events must not take the numbers of those
// lost: a client that saw them would skip the new ones silently. It gets MissedType: also
// when the snapshot's log is one of a version that did not record which Redis held it, and
// when Redis appends every write but syncs it only every second (which a restart may lose,
// though this one does not).
func TestRestartLosesLastEvents(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		redis []string
		noRID bool
	}{
		{"snapshot", nil, false},
		{"snapshot of an older log", nil, true},
		{"appendfsync everysec", []string{"--appendonly", "yes", "--appendfsync", "everysec"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs := redistest.Start(t, tt.redis...)
			a := startNode(t, rs.Addr(), "reboot")
			for i := 1; i <= 3; i++ {
				a.publish(strconv.Itoa(i))
			}
			waitAppended(t, 3, a)
			if tt.noRID {
				rs.Do("HDEL", redisbroker.Keys("reboot")[0], "rid")
			}
			if got := rs.Do("SAVE"); got != "+OK" { // the last snapshot
				t.Fatalf("SAVE: %s", got)
			}
			loseLastEvents(t, a, "reboot", func() string {
				rs.Kill()
				rs.Restart() // from the snapshot: events 1 to 3
				return rs.Addr()
			})
		})
	}
}

// loseLastEvents has a client of a see events 4 to 6 of ns, then shuts a down and calls lose,
// which makes Redis lose those events and returns the address of the Redis that serves the
// log from then on. A process started there publishes four events, and the client, resuming
// there from the last ID it saw, must get MissedType and then those four.
func loseLastEvents(t *testing.T, a *node, ns string, lose func() (addr string)) {
	t.Helper()
	s := a.open("", false)
	waitFor(t, "the client to join", func() bool { return a.b.Stats().Clients == 1 })
	for i := 4; i <= 6; i++ {
		a.publish(strconv.Itoa(i))
	}
	last := s.expect("4", "5", "6")[2].LastEventID
	s.close()
	a.shutdown(5 * time.Second)
	b := startNode(t, lose(), ns)
	for _, d := range []string{"new4", "new5", "new6", "new7"} {
		b.publish(d)
	}
	r := b.open(last, false)
	if ev := r.next(); ev.Type != sse.MissedType {
		t.Fatalf("resuming from %q, which Redis lost: got %s %q, want %s", last, ev.Type, ev.Data, sse.MissedType)
	}
	r.expect("new4", "new5", "new6", "new7")
}

// A failover to a replica that had not received the last events, once every process that
// read them is gone, is the same: though Redis appends and syncs every write, the replica
// lacks them.
func TestFailoverLosesLastEvents(t *testing.T) {
	t.Parallel()
	always := []string{"--appendonly", "yes", "--appendfsync", "always"}
	primary := redistest.Start(t, append(always, "--repl-diskless-sync-delay", "0")...)
	host, port, _ := net.SplitHostPort(primary.Addr())
	replica := redistest.Start(t, append(always, "--replicaof", host, port)...)
	a := startNode(t, primary.Addr(), "failover")
	for i := 1; i <= 3; i++ {
		a.publish(strconv.Itoa(i))
	}
	waitAppended(t, 3, a)
	meta := redisbroker.Keys("failover")[0]
	waitFor(t, "the replica to hold 3 events", func() bool { return replica.Do("HGET", meta, "seq") == "3" })
	if got := replica.Do("REPLICAOF", "NO", "ONE"); got != "+OK" { // it falls behind, and takes over
		t.Fatalf("REPLICAOF NO ONE: %s", got)
	}
	loseLastEvents(t, a, "failover", func() string {
		primary.Kill()
		return replica.Addr()
	})
}

// Redis may deny the commands that tell a restart (INFO, CONFIG): processes still read and
// publish, and tell what they can.
func TestInfoDenied(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	if got := rs.Do("ACL", "SETUSER", "default", "-info", "-config"); got != "+OK" {
		t.Fatalf("ACL SETUSER: %s", got)
	}
	a, b := startNode(t, rs.Addr(), "denied"), startNode(t, rs.Addr(), "denied")
	a.publish("1")
	waitAppended(t, 1, a, b)
	s := b.open("", false)
	waitFor(t, "the client to join", func() bool { return b.b.Stats().Clients == 1 })
	time.Sleep(500 * time.Millisecond) // the readers look at the epoch a few times
	a.publish("2")
	s.expect("2")
}

// An ID older than what Redis retains gets one MissedType, then what is held, then live
// events; so does a malformed ID, one from another epoch, and one from the future (after
// waiting for it a few seconds).
func TestOldAndBadIDs(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a := startNode(t, rs.Addr(), "old", redisbroker.WithMaxLen(10))
	var ids []string
	for i := 1; i <= 300; i++ {
		ids = append(ids, a.publish(strconv.Itoa(i)))
	}
	epoch := epochOf(ids[0])
	b := startNode(t, rs.Addr(), "old")
	held := int(b.b.Stats().Published)
	if held >= 300 || held < 10 {
		t.Fatalf("the log holds %d events of 300, want about 10 to a few hundred", held)
	}
	first := 300 - held + 1
	tests := []struct {
		name, id string
	}{
		{"trimmed", ids[0]},
		{"just trimmed", ids[first-3]},
		{"malformed", "not-an-id"},
		{"other epoch", "zzzzzz-5"},
		{"from the future", epoch + "-100000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := b.open(tt.id, false)
			if ev := s.next(); ev.Type != sse.MissedType {
				t.Fatalf("resuming from %q: %+v, want %s", tt.id, ev, sse.MissedType)
			}
			s.expect(numbers(first, 300)...)
		})
	}
	// Then live: one stream of those, once the others are done.
	t.Run("live", func(t *testing.T) {
		s := b.open(ids[0], true)
		if ev := s.next(); ev.Type != sse.MissedType {
			t.Fatalf("got %+v, want %s", ev, sse.MissedType)
		}
		s.expect(numbers(first, 300)...)
		a.publish("301")
		s.expect("301")
	})
}

// Shutdown ends within its deadline while the reader is blocked in Redis, and leaves no
// goroutine running; Publish then returns ErrClosed.
func TestShutdownDuringBlockingRead(t *testing.T) {
	checkGoroutines(t)
	rs := redistest.Start(t)
	n := startNode(t, rs.Addr(), "shutdown", redisbroker.WithBlock(10*time.Second))
	n.publish("1")
	s := n.open("", false)
	time.Sleep(100 * time.Millisecond) // the reader is in its 10s read by now
	began := time.Now()
	n.shutdown(time.Second)
	if took := time.Since(began); took > 500*time.Millisecond {
		t.Errorf("Shutdown took %v", took)
	}
	s.expectEnd()
	if _, err := n.b.Publish(sse.Event{}); !errors.Is(err, sse.ErrClosed) {
		t.Errorf("Publish after Shutdown: %v, want ErrClosed", err)
	}
}

// New fails at once when Redis cannot be reached, and leaves nothing running.
func TestNewWithoutRedis(t *testing.T) {
	checkGoroutines(t)
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", ssetest.FreePort(t)), MaxRetries: 1})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if b, err := redisbroker.New(ctx, rdb, "none"); err == nil {
		b.Shutdown(ctx)
		t.Fatal("New without Redis: no error")
	}
	for _, ns := range []string{"", "a{b", "a}b", strings.Repeat("x", 257)} {
		if _, err := redisbroker.New(ctx, rdb, ns); err == nil {
			t.Errorf("New with namespace %q: no error", ns)
		}
	}
}

// Every event reaches clients through Redis exactly as it was published, and an event that
// cannot be represented is refused before it reaches Redis.
func TestEventsRoundTrip(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	a, b := startNode(t, rs.Addr(), "round"), startNode(t, rs.Addr(), "round")
	a.publish("first", "other")
	waitAppended(t, 1, a, b)
	s := b.open("", false, "x")
	for _, c := range ssetest.RoundTrip {
		ev := sse.Event{ID: c.ID, Type: c.Type, Data: c.Data, Retry: c.Retry}
		id, err := a.b.Publish(ev, "x")
		if err != nil {
			t.Fatalf("%s: Publish: %v", c.Name, err)
		}
		got := s.next()
		want := spec.Event{Type: c.Type, Data: strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(c.Data), LastEventID: id}
		if want.Type == "" {
			want.Type = "message"
		}
		if c.ID != "" && id != c.ID {
			t.Errorf("%s: Publish returned ID %q, want %q", c.Name, id, c.ID)
		}
		if got.Type != want.Type || got.Data != want.Data || got.LastEventID != want.LastEventID {
			t.Errorf("%s: got %+v, want %+v", c.Name, got, want)
		}
		if c.Retry != 0 && got.Retry != c.Retry.Milliseconds() {
			t.Errorf("%s: retry %d, want %d", c.Name, got.Retry, c.Retry.Milliseconds())
		}
	}
	for _, ev := range []sse.Event{{Type: "a\nb"}, {Data: "\xff"}, {ID: "a\nb"}, {Retry: -1}} {
		if _, err := a.b.Publish(ev); !errors.Is(err, sse.ErrInvalidEvent) {
			t.Errorf("Publish(%+v): %v, want ErrInvalidEvent", ev, err)
		}
	}
	if got := rs.Do("XLEN", redisbroker.Keys("round")[1]); got != ":"+strconv.Itoa(len(ssetest.RoundTrip)+1) {
		t.Errorf("XLEN = %s, want %d: a refused event reached Redis", got, len(ssetest.RoundTrip)+1)
	}
}

// The keys of a namespace hash to one Redis Cluster slot, so that the publish script may use
// them all on a cluster; Redis in cluster mode says so.
func TestKeysOneSlot(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	for _, ns := range []string{"chat", "a:b", "with space", "ünï", "x"} {
		keys := append(redisbroker.Keys(ns), redisbroker.PubKey(ns, "node"))
		slot := rs.Do("CLUSTER", "KEYSLOT", keys[0])
		if !strings.HasPrefix(slot, ":") {
			t.Fatalf("CLUSTER KEYSLOT: %s", slot)
		}
		for _, k := range keys[1:] {
			if got := rs.Do("CLUSTER", "KEYSLOT", k); got != slot {
				t.Errorf("namespace %q: key %q is in slot %s, %q in %s", ns, keys[0], slot, k, got)
			}
		}
	}
}
