package sse

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// The handler driver: the stream's own handler goroutine, the one net/http runs the request
// on, waits for its group's wake-ups and writes.

// stream writes the client's events until its stream ends, and returns why, as ServeEvents.
func (b *Broker) stream(ctx context.Context, s *flushWriter, c *client, start string, missed bool) error {
	if err := s.write(preamble(b.opts.retry, start, missed)); err != nil {
		return b.writeError(err)
	}
	var wake <-chan struct{}
	for {
		out, end := c.next(b)
		if len(out) == 0 && end == nil {
			if wake == nil {
				// Whatever happens from now on closes wake; what happened before, next sees.
				wake = c.g.waiter()
				continue
			}
			select {
			case <-wake:
				wake = nil
				continue
			case <-ctx.Done():
				end = contextEnded(ctx)
				if end == nil {
					return nil
				}
				out = b.goodbye() // the client is still there
			}
		}
		wake = nil
		err := s.write(out...)
		if end != nil {
			return end
		}
		if err != nil {
			return b.writeError(err)
		}
		c.wrote(b)
	}
}

// contextEnded returns why a stream ends when its request's context is done: nil if the
// client went away (net/http then cancels the context, with no other cause), or else an error
// wrapping the context's cause, a deadline that middleware set, say.
func contextEnded(ctx context.Context) error {
	cause := context.Cause(ctx)
	if cause == context.Canceled {
		return nil
	}
	return fmt.Errorf("sse: the request's context ended before the client left: %w", cause)
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
