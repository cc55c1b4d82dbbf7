package sse

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// stream writes the client's events until its stream ends, and returns why, as ServeEvents.
func (b *Broker) stream(ctx context.Context, s *flushWriter, c *client, start string, missed bool) error {
	if err := s.write(preamble(b.opts.retry, start, missed)); err != nil {
		return b.writeError(err)
	}
	closing := false
	for {
		frames, wake, lost := c.next(b)
		// Append counts a break before it adds the first event after it: a client that
		// read that event sees the break too, and does not skip what was lost.
		if b.breaks.Load() != c.breaks {
			clear(frames)
			return ErrEventsLost
		}
		if lost {
			b.stats.slow.Add(1)
			return ErrSlowClient
		}
		if len(frames) > 0 {
			err := s.write(frames...)
			clear(frames) // let the history drop them
			if err != nil {
				return b.writeError(err)
			}
			b.stats.delivered.Add(int64(len(frames)))
			c.sent += len(frames)
			c.idle = false
			continue
		}
		if closing {
			s.write(appendRetry(nil, b.retryLater()))
			return ErrClosed
		}
		// Publish, heartbeat ticks and Shutdown all wake the group.
		select {
		case <-wake:
		case <-ctx.Done():
			return nil
		}
		if n := b.beats.Load(); n != c.beats {
			c.beats = n
			if c.idle {
				if err := s.write(heartbeat); err != nil {
					return b.writeError(err)
				}
			}
			c.idle = true
		}
		// Send what was published before Shutdown first: Publish accepts nothing more, so
		// this ends.
		closing = b.isClosed()
	}
}

// writeError returns why a failed write ends a stream: the client was too slow if the write
// timed out, and otherwise it went away (nil).
func (b *Broker) writeError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		b.stats.slow.Add(1)
		return fmt.Errorf("%w: write timed out: %w", ErrSlowClient, err)
	}
	return nil
}
