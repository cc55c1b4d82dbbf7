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

// tick counts a tick, wakes every group that was not woken for a whole interval, with a
// heartbeat, and starts the next tick.
func (b *Broker) tick() {
	b.mu.Lock()
	if b.stats.clients.Load() == 0 || b.closed {
		b.mu.Unlock()
		return
	}
	now := b.ticks.Add(1)
	var waiting []chan struct{}
	for _, g := range b.groups {
		if now-g.active < ticksPerBeat {
			continue
		}
		g.active = now
		g.beats.Add(1) // before the wake-up, so that a client woken sees it (see client.next)
		if ch := g.take(); ch != nil {
			waiting = append(waiting, ch)
		}
	}
	b.beatTimer.Reset(b.tickEvery())
	b.mu.Unlock()
	wake(waiting) // as Publish does
	b.kickPollers()
}

// tickEvery returns the time between ticks.
func (b *Broker) tickEvery() time.Duration {
	return max(b.opts.heartbeat/ticksPerBeat, time.Microsecond)
}
