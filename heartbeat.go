package sse

var heartbeat = []byte(":\n")

// tick counts a heartbeat and wakes every client, and starts the next interval.
func (b *Broker) tick() {
	b.mu.Lock()
	if b.stats.clients.Load() == 0 || b.closed {
		b.mu.Unlock()
		return
	}
	b.beats.Add(1)
	waiting := make([]chan struct{}, 0, len(b.groups))
	for _, g := range b.groups {
		if ch := g.take(); ch != nil {
			waiting = append(waiting, ch)
		}
	}
	b.beatTimer.Reset(b.opts.heartbeat)
	b.mu.Unlock()
	wake(waiting) // as Publish does
}
