package sse

import "time"

// Heartbeats: one timer for the whole Broker, which ticks four times an interval while any
// client is connected. A group that nothing woke for a whole interval (four ticks) is woken
// with a heartbeat, which each of its clients writes as a comment line.
//
// Every client of a group writes whenever its group is woken by Publish, so the time since its
// group's last wake-up bounds the time since the client last wrote. Counting whole ticks, a
// group woken just after a tick is heartbeat four ticks later, one interval; a group woken just
// before a tick, three ticks and a bit later. So an idle stream goes at most one interval
// without a byte, plus the time the tick takes to reach it, and never 1.25 intervals; a client
// that joined a group late may get a heartbeat earlier than it needs one, which costs two bytes.

// ticksPerBeat is how many ticks an interval has.
const ticksPerBeat = 4

var heartbeat = []byte(":\n")

// tickBatch is how many groups a tick looks at before it lets go of Broker.mu for a moment.
const tickBatch = 256

// tick counts a tick, wakes every group that was not woken for a whole interval, with a
// heartbeat, and starts the next tick.
//
// It looks only at the groups due at this tick: each group is in the list of the tick four
// ticks after the one it was last woken at, as far as the list knows (Broker.due). A group
// woken since it was put there is moved to the list of its new time when its list comes up,
// so that Publish does nothing for it; each group is looked at once an interval, or twice if
// it was moved. Between batches of groups, the tick lets go of Broker.mu, so that it holds up
// a Publish for a batch's time, however many groups are due.
func (b *Broker) tick() {
	began := time.Now()
	b.mu.Lock()
	if b.stats.clients.Load() == 0 || b.closed {
		b.mu.Unlock()
		return
	}
	now := b.ticks.Add(1)
	k := int(now % ticksPerBeat)
	var waiting []chan struct{}
	// From the end, so that a group that leaves the list (moved here, or gone while the lock
	// was let go) is replaced by one looked at already, or by one that joined and is due only
	// an interval from now.
	for i, n := len(b.due[k])-1, 1; i >= 0; i, n = i-1, n+1 {
		if n%tickBatch == 0 {
			b.mu.Unlock()
			wake(waiting) // as Publish does
			waiting = waiting[:0]
			b.kickPollers()
			if b.tickHook != nil {
				b.tickHook()
			}
			b.mu.Lock()
			if b.closed || b.stats.clients.Load() == 0 || b.ticks.Load() != now {
				// Shut down; or every client left, so every group is gone (and a client that
				// came since started the next tick, which b.ticks may show already).
				b.mu.Unlock()
				return
			}
			if i >= len(b.due[k]) {
				i = len(b.due[k])
				continue // groups left while the lock was let go
			}
		}
		g := b.due[k][i]
		if now-g.active < ticksPerBeat {
			// Woken since it was put here: due four ticks after that, which is the next tick
			// of this list only if it was woken at this one.
			if at := int(g.active % ticksPerBeat); at != k {
				b.undue(g)
				b.dueAt(g, at)
			}
			continue
		}
		g.active = now
		g.beats.Add(1) // before the wake-up, so that a client woken sees it (see client.next)
		if ch := g.take(); ch != nil {
			waiting = append(waiting, ch)
		}
	}
	// The next tick is due a tick after this one began, not after it ended.
	b.beatTimer.Reset(max(b.tickEvery()-time.Since(began), 0))
	b.mu.Unlock()
	wake(waiting)
	b.kickPollers()
}

// dueAt puts g in the list of the ticks k (modulo ticksPerBeat). Broker.mu must be held.
func (b *Broker) dueAt(g *group, k int) {
	g.due, g.dueIdx = k, len(b.due[k])
	b.due[k] = append(b.due[k], g)
}

// undue takes g out of its list of ticks. Broker.mu must be held.
func (b *Broker) undue(g *group) {
	list := b.due[g.due]
	last := list[len(list)-1]
	list[g.dueIdx] = last
	last.dueIdx = g.dueIdx
	list[len(list)-1] = nil
	b.due[g.due] = list[:len(list)-1]
}

// tickEvery returns the time between ticks.
func (b *Broker) tickEvery() time.Duration {
	return max(b.opts.heartbeat/ticksPerBeat, time.Microsecond)
}
