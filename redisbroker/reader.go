package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
)

// A reader reads the log into a process's sse.Broker, in order, from one goroutine.
type reader struct {
	client    redis.UniversalClient // link's client, or the caller's if it has no link
	link      *link                 // nil if the caller's client is not a *redis.Client
	core      *sse.Broker
	meta, log string
	block     time.Duration
	logger    *slog.Logger

	// Only the reader's goroutine uses these (and New, before it starts).
	epoch   string    // the epoch of the log being read; "" until one is known
	seq     uint64    // the number of the last event of epoch read
	lastID  string    // the stream ID of the last entry read; "0-0" reads from the start
	checked time.Time // when the epoch was last looked at
	failing bool      // the last attempt failed
	busy    time.Time // when the last read that returned entries began; zero if the last returned none
	behind  bool      // entries may be waiting: the next read takes a page of them rather than block
	// liveCount is how many entries the next read asks for when the reader is not behind:
	// about pageBytes of entries as big as the biggest of the last read, up to maxLiveCount.
	liveCount int
}

// pageSize is how many entries one read of the log returns at most; an entry holds the
// events of one call of the publish script, up to maxBatch.
const pageSize = 1000

// pageBytes is about how many bytes of entries one read of the log returns at most (sizeScript
// takes one entry more only if it is the first). Entries hold from a few bytes to maxBatch
// events of any size, so a count alone bounds nothing: 1,000 entries of 128 events of 4 KiB
// are 500 MiB. A page of pageBytes costs the process a few times that while it is read and
// appended, little next to a history's memory (64 MiB by default), and a round trip, little
// next to the time a MiB takes to go through.
const pageBytes = 1 << 20

// maxLiveCount is how many entries a read of a reader that keeps up with the log asks for at
// most. A read that gets them all leaves the rest to reads by pages.
const maxLiveCount = 8

// readPace is the least time between the starts of two reads of the log while entries keep
// coming: what comes meanwhile is read, appended and written to each client at once, so that
// a busy log costs one read, one wake-up and one write per client for many events rather than
// for each. An event that comes after a quiet spell is read at once, and so is the next page
// after a full one (a backlog). On a machine the writes to clients keep busy, writing
// fewer times shortens the queues more than the wait lengthens the way: with 3 processes
// of 300 clients each at 1,000 events/s on 2 cores, p99 latency was about 100 ms with 5 ms
// and about 50 ms with 10 ms.
const readPace = 10 * time.Millisecond

// catchUp reads what the log retains.
func (r *reader) catchUp(ctx context.Context) error {
	cmd := r.client
	if _, err := r.checkEpoch(ctx, cmd); err != nil {
		return err
	}
	for begun := 0; ; {
		n, _, err := r.readPage(ctx, cmd)
		if err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		if r.seq > 0 || begun == 3 {
			return nil // (after three tries, its first event disconnects the first clients)
		}
		begun++
		// Nothing to append: follow the log from where its numbers are (beginning it if need
		// be), so that the first clients get IDs of the log, which its first event does not
		// break. If entries came meanwhile, read them instead.
		res, err := beginScript.Run(ctx, cmd, []string{r.meta, r.log}, newEpoch()).Slice()
		if err != nil {
			return err
		}
		epoch, _ := res[0].(string)
		seq, _ := res[1].(int64)
		if held, _ := res[2].(int64); held > 0 || epoch == "" {
			if epoch != r.epoch {
				r.follow(epoch)
			}
			continue
		}
		if epoch != r.epoch {
			r.follow(epoch)
		}
		r.seq = uint64(seq)
		return r.core.Follow(epoch, r.seq)
	}
}

// run reads the log until ctx is done, retrying after errors.
func (r *reader) run(ctx context.Context) {
	var backoff time.Duration
	for ctx.Err() == nil {
		err := r.step(ctx)
		if err == nil {
			if r.failing {
				r.failing = false
				r.logf(slog.LevelInfo, "reading the log again", nil)
			}
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if !r.failing {
			r.failing = true
			r.logf(slog.LevelWarn, "cannot read the log; retrying", err)
		}
		r.behind = true // what came meanwhile is read in pages
		backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// step waits for entries for up to the block time and appends them, and looks at the epoch
// when it has not for that long: a log begun anew whose stream IDs do not follow the old
// one's is noticed so.
func (r *reader) step(ctx context.Context) (err error) {
	cmd := r.client
	if time.Since(r.checked) >= r.block {
		if _, err := r.checkEpoch(ctx, cmd); err != nil {
			return err
		}
	}
	if !r.busy.IsZero() {
		if d := readPace - time.Since(r.busy); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
	began := time.Now()
	r.busy = time.Time{}
	var n int
	var full bool
	if r.behind {
		n, full, err = r.readPage(ctx, cmd)
	} else {
		n, full, err = r.readLive(ctx, cmd)
	}
	// Once a read leaves entries behind, the next reads take them in pages, at once, until
	// one takes what is left; then the reader waits for entries again, reading what came
	// meanwhile every readPace at most.
	r.behind = full // (and after an error: see run)
	if n > 0 && !full {
		r.busy = began
	}
	return err
}

// checkEpoch looks at the log's epoch, and reports whether it changed: the log was begun anew
// and is to be read from its start. While the log has no epoch (Redis lost it, and no Publish
// has begun it again), the reader keeps the one it has. If the log's number is behind what
// the reader has read (Redis failed over to a replica that had not received the last events),
// the numbers that follow would name other events than they did: the reader begins a new
// epoch.
//
// The log's number may have gone back with no reader left to see it: Redis restarted from
// a snapshot that lacks its last writes, and every process that read them restarted too (one
// machine rebooted). Only clients still hold the IDs of the events lost, which the next
// events would take. So epochScript begins a new epoch whenever the Redis that holds the log
// is not the one that held it when it was last looked at, unless Redis keeps every write (AOF
// with appendfsync always): no process can tell whether a restart lost writes, and
// MissedType for nothing is better than a silent gap.
func (r *reader) checkEpoch(ctx context.Context, cmd redis.Cmdable) (changed bool, err error) {
	keeps, err := keepsEveryWrite(ctx, cmd)
	if err != nil {
		return false, err
	}
	lossless := "0"
	if keeps {
		lossless = "1"
	}
	res, err := epochScript.Run(ctx, cmd, []string{r.meta, r.log}, newEpoch(), lossless).Slice()
	if err != nil {
		return false, err
	}
	r.checked = time.Now()
	if len(res) != 3 {
		return false, fmt.Errorf("unexpected reply %v", res)
	}
	epoch, _ := res[0].(string)
	seq, _ := res[1].(string)
	if began, _ := res[2].(int64); began == 1 {
		r.logf(slog.LevelWarn, "Redis restarted, and may have lost the last events: beginning a new epoch", nil)
	}
	switch {
	case epoch == "":
		return false, nil
	case epoch != r.epoch:
		changed := r.follow(epoch)
		if seq == "0" {
			// A log begun anew with no event yet: follow it now, so that this process's clients
			// get IDs of it, as those of a process that starts now do.
			if err := r.core.Follow(epoch, 0); err != nil && !errors.Is(err, sse.ErrClosed) {
				return changed, err
			}
		}
		return changed, nil
	}
	if n, err := strconv.ParseUint(seq, 10, 64); err == nil && n < r.seq {
		return r.renew(ctx, cmd)
	}
	return false, nil
}

// keepsEveryWrite reports whether Redis is set to keep every write it takes across a restart
// (AOF with appendfsync always), as far as CONFIG GET tells: a Redis that denies it is taken
// for one that may lose writes. It returns an error if Redis could not be asked (it is down,
// say): the caller must not take that for a denial, since Redis may be back a moment later,
// when the caller compares run IDs, and a restart that lost nothing would begin a new epoch.
func keepsEveryWrite(ctx context.Context, cmd redis.Cmdable) (bool, error) {
	cfg, err := cmd.ConfigGet(ctx, "append*").Result()
	var denied redis.Error
	switch {
	case errors.As(err, &denied):
		return false, nil // an answer of Redis's: not allowed, or not known
	case err != nil:
		return false, err
	}
	return cfg["appendonly"] == "yes" && cfg["appendfsync"] == "always", nil
}

// follow makes the reader read the log of epoch from its start, and reports true.
func (r *reader) follow(epoch string) bool {
	if r.epoch != "" {
		r.logf(slog.LevelInfo, "the log began anew: epoch "+epoch, nil)
	}
	r.epoch = epoch
	r.seq = 0
	r.lastID = "0-0"
	return true
}

// renew begins a new epoch in place of the reader's, whose numbers went back, unless another
// reader has done so already, and follows it at once, as checkEpoch makes the other readers
// do, so that this process's clients too get IDs of it before its first event.
func (r *reader) renew(ctx context.Context, cmd redis.Cmdable) (changed bool, err error) {
	r.logf(slog.LevelWarn, "the log went back: beginning a new epoch", nil)
	epoch, err := renewScript.Run(ctx, cmd, []string{r.meta, r.log}, r.epoch, newEpoch()).Text()
	if err == redis.Nil {
		return false, nil // the log has no epoch now: the next Publish begins one
	}
	if err != nil {
		return false, err
	}
	r.follow(epoch)
	// The log of epoch is read from its start, so that following it from 0 is right even if
	// another reader began it and events came since.
	if err := r.core.Follow(epoch, 0); err != nil && !errors.Is(err, sse.ErrClosed) {
		return true, err
	}
	return true, nil
}

// readLive waits up to the block time for entries after lastID, appends them, and returns
// how many it read, and whether more may have been left: it read as many as it asked for, or
// the log began anew and is to be read from its start. It asks for up to maxLiveCount entries,
// fewer as those it read last were bigger, so that the entries of a log that came while the
// reader appended the last ones take about pageBytes, unless they are much bigger than the
// last ones; the reader reads a backlog in pages (readPage), which bound their bytes.
func (r *reader) readLive(ctx context.Context, cmd redis.Cmdable) (n int, full bool, err error) {
	streams, err := cmd.XRead(ctx, &redis.XReadArgs{
		Streams: []string{r.log, r.lastID},
		Count:   int64(r.liveCount),
		Block:   r.block,
	}).Result()
	if err == redis.Nil {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	asked := r.liveCount
	for _, s := range streams {
		n += len(s.Messages)
		restarted, err := r.apply(ctx, cmd, s.Messages)
		if err != nil || restarted {
			return n, restarted, err
		}
	}
	return n, n >= asked, nil
}

// readPage reads the entries after lastID without waiting, up to pageSize of them and about
// pageBytes, appends them, and returns how many it read, and whether more may follow at once:
// the page was full, or the log began anew and is to be read from its start. sizeScript
// counts how many entries fit, so that Redis sends only those: a read of a count alone holds
// anything from a few bytes to hundreds of MiB, which the process would hold at once.
func (r *reader) readPage(ctx context.Context, cmd redis.Cmdable) (n int, full bool, err error) {
	res, err := sizeScript.Run(ctx, cmd, []string{r.log}, r.lastID, pageSize, pageBytes).Slice()
	if err != nil {
		return 0, false, err
	}
	var count int64
	var last string
	if len(res) == 3 {
		count, _ = res[0].(int64)
		last, _ = res[1].(string)
		more, _ := res[2].(int64)
		full = more == 1
	}
	if count < 0 || (count > 0 && last == "") {
		return 0, false, fmt.Errorf("unexpected reply %v", res)
	}
	if count == 0 {
		return 0, false, nil
	}
	// Up to the last entry counted, so that what came since, which was not counted, is not
	// read; entries that Redis trimmed since are missing, and the reader notices the gap.
	msgs, err := cmd.XRangeN(ctx, r.log, "("+r.lastID, last, count).Result()
	if err != nil {
		return 0, false, err
	}
	restarted, err := r.apply(ctx, cmd, msgs)
	return len(msgs), full || restarted, err
}

// apply appends the events of msgs, entries of the log that follow lastID, in order. It
// reports true if it stopped short because the log began anew: the reader then reads it from
// its start.
func (r *reader) apply(ctx context.Context, cmd redis.Cmdable, msgs []redis.XMessage) (restarted bool, err error) {
	biggest := 0
	defer func() {
		if biggest > 0 {
			r.liveCount = min(max(pageBytes/biggest, 1), maxLiveCount)
		}
	}()
	for _, m := range msgs {
		biggest = max(biggest, entrySize(m))
		e, err := decodeEntry(m)
		if err != nil {
			r.lastID = m.ID
			r.logf(slog.LevelWarn, "skipping an entry", err)
			continue
		}
		if e.epoch != r.epoch {
			// Either the log began anew, or the entry is left from an older one.
			changed, err := r.checkEpoch(ctx, cmd)
			if err != nil || changed {
				return changed, err // read the new log from its start
			}
			r.lastID = m.ID
			continue
		}
		if e.first <= r.seq {
			// A number given twice: the log went back.
			changed, err := r.renew(ctx, cmd)
			if err != nil || changed {
				return changed, err
			}
		}
		r.lastID = m.ID
		published := entryTime(m.ID)
		for i, le := range e.evs {
			r.seq = e.first + uint64(i)
			// The only errors are ErrClosed, after Shutdown, and an event that Publish would
			// have refused, which only another program can have written: its clients will
			// get MissedType, since the numbers no longer follow.
			if err := r.core.Append(e.epoch, r.seq, published, le.ev, le.topics...); err != nil && !errors.Is(err, sse.ErrClosed) {
				r.logf(slog.LevelWarn, "skipping an event", err)
			}
		}
	}
	return false, nil
}

// entryTime returns when Redis added the entry of stream ID id: its first part, in
// milliseconds of Redis's clock. Every process reads the same time for an event, however
// late it reads it, so that each drops it from its history (sse.WithHistoryAge) at the same
// moment, and gives the same answer to a client that resumes from before it. It returns the
// zero Time, which Append takes for now, for an ID not in that form.
func entryTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

func (r *reader) logf(level slog.Level, msg string, err error) {
	if r.logger == nil {
		return
	}
	attrs := []slog.Attr{slog.String("log", r.log)}
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	r.logger.LogAttrs(context.Background(), level, "redisbroker: "+msg, attrs...)
}
