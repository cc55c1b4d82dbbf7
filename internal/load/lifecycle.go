package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The churn and close scenarios: what a stream costs to open and end, and how soon the
// server notices that a client went away.

// A snapshot is what churn compares with its baseline.
type snapshot struct {
	fds        int // descriptors the server process has open
	goroutines int
	streams    int64 // serverStats.Streams
	libClients int
}

func (s *server) snapshot(ctx context.Context) (snapshot, error) {
	st, err := s.stats(ctx, false)
	if err != nil {
		return snapshot{}, err
	}
	fds, err := openFiles(s.pid)
	if err != nil {
		return snapshot{}, err
	}
	return snapshot{fds: fds, goroutines: st.Goroutines, streams: st.Streams, libClients: st.LibClients}, nil
}

var errNoResponse = errors.New("no response within 5 s")

// abortOne opens a stream on addr, waits for the first bytes of the response (so the server
// has begun serving it), and resets the connection.
func abortOne(ctx context.Context, addr string, buf []byte) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	defer func() {
		tc.SetLinger(0) // a reset, and no TIME_WAIT on either side
		tc.Close()
	}()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(tc, request); err != nil {
		return err
	}
	n, err := tc.Read(buf)
	if n > 0 {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errNoResponse
	}
	return err
}

// runChurn: see the scenario's title.
func runChurn(ctx context.Context, s *server) row {
	const (
		total   = 20000
		workers = 8
		limit   = 40 * time.Second // for the churn itself; the budget bounds it too
		settle  = 5 * time.Second  // how long to wait for the server to be back to its baseline
	)
	var r row
	// Warm up: a few streams first start what a library starts once and keeps (our Broker
	// starts its pollers, with a goroutine and two descriptors each, at the first stream it
	// takes over), which is not what churn measures.
	buf := make([]byte, 512)
	for range 10 {
		if err := abortOne(ctx, s.addr, buf); err != nil && !errors.Is(err, errNoResponse) {
			r.notes = append(r.notes, "warm-up: "+err.Error())
			return r
		}
	}
	if err := waitStreams(ctx, s, 0, 5*time.Second); err != nil {
		r.notes = append(r.notes, "warm-up: "+err.Error())
		return r
	}
	// Let the server finish the warm-up's work, so that the baseline does not count it.
	time.Sleep(200 * time.Millisecond)
	base, err := s.snapshot(ctx)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	cpu0, _ := cpuTime(s.pid)
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var (
		next, done, noResp atomic.Int64
		mu                 sync.Mutex
		errs               int
		firstErr           error
		wg                 sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			buf := make([]byte, 512)
			for cctx.Err() == nil && next.Add(1) <= total {
				switch err := abortOne(cctx, s.addr, buf); {
				case err == nil:
					done.Add(1)
				case errors.Is(err, errNoResponse):
					noResp.Add(1)
				default:
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	end := time.Now()

	// Back to the baseline: each measure on its own, then all three.
	const notYet = time.Duration(-1)
	back := [3]time.Duration{notYet, notYet, notYet} // fds, goroutines, streams
	var cpuEnd time.Duration
	var at1s, last snapshot
	took1s := false
	for {
		snap, err := s.snapshot(ctx)
		el := time.Since(end)
		if err != nil {
			r.notes = append(r.notes, err.Error())
			break
		}
		last = snap
		for i, ok := range []bool{snap.fds <= base.fds, snap.goroutines <= base.goroutines, snap.streams <= base.streams} {
			if ok && back[i] == notYet {
				back[i] = el
			}
		}
		all := back[0] != notYet && back[1] != notYet && back[2] != notYet
		if cpuEnd == 0 && (all || el >= time.Second) {
			// The server's CPU time until it was back to its baseline, or for a second at most.
			cpuEnd, _ = cpuTime(s.pid)
		}
		if !took1s && el >= time.Second {
			at1s, took1s = snap, true
		}
		if all || el > settle || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cpuEnd == 0 {
		cpuEnd, _ = cpuTime(s.pid)
	}
	wall := end.Sub(start)
	n := done.Load()
	backStr := func(d time.Duration) string {
		switch {
		case d == notYet:
			return fmt.Sprintf("NOT within %v", settle)
		case d < 10*time.Millisecond:
			return "at once"
		}
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	}
	cpuStr := "-"
	if n > 0 {
		cpu := float64(cpuEnd-cpu0) / 1e3 / float64(n)
		cpuStr = fmt.Sprintf("%.0f", cpu)
		r.set("cpu", cpu)
	}
	r.cells = []string{
		fmt.Sprint(n), fmt.Sprintf("%.0f", float64(n)/wall.Seconds()), cpuStr,
		backStr(back[0]), backStr(back[1]), backStr(back[2]),
	}
	r.notes = append(r.notes, fmt.Sprintf("baseline: %d fds, %d goroutines, %d clients", base.fds, base.goroutines, base.streams))
	if n+noResp.Load()+int64(errs) < total {
		r.notes = append(r.notes, fmt.Sprintf("STOPPED after %v: %d of %d connections tried", limit, n+noResp.Load()+int64(errs), total))
	}
	if k := noResp.Load(); k > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d connections had no response within 5 s (reset all the same)", k))
	}
	if errs > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d connections failed, the first: %v", errs, firstErr))
	}
	if took1s && (back[0] == notYet || back[0] > time.Second || back[1] == notYet || back[1] > time.Second || back[2] == notYet || back[2] > time.Second) {
		r.notes = append(r.notes, fmt.Sprintf("1 s after the last reset: fds %+d, goroutines %+d, clients %+d over the baseline",
			at1s.fds-base.fds, at1s.goroutines-base.goroutines, at1s.streams-base.streams))
	}
	if base.libClients >= 0 && last.libClients != base.libClients {
		r.notes = append(r.notes, fmt.Sprintf("the library counts %d clients at the end, %d before", last.libClients, base.libClients))
	}
	return r
}

// runClose: see the scenario's title.
func runClose(ctx context.Context, s *server) row {
	const trials = 100
	var r row
	st0, err := s.stats(ctx, false)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	base := st0.Streams
	var all, fin, rst []uint32 // µs from the client's close until the server counted one stream less
	var polls []time.Duration  // each /stats round trip: the resolution of the measure
	for i := 0; i < trials && ctx.Err() == nil; i++ {
		c, err := dial(ctx, s.addr, nil, true, 4<<10)
		if err != nil {
			r.notes = append(r.notes, "dial: "+err.Error())
			break
		}
		if err := waitStreamsFast(ctx, s, base+1, 5*time.Second); err != nil {
			c.close()
			r.notes = append(r.notes, err.Error())
			break
		}
		// Let the response's first bytes arrive and be read: a socket closed with bytes
		// unread sends a reset, not the FIN this trial means to send.
		time.Sleep(20 * time.Millisecond)
		reset := i%2 == 1
		t0 := time.Now()
		if reset {
			c.close()
		} else {
			c.c.Close()
		}
		var dt time.Duration
		for {
			p0 := time.Now()
			st, err := s.stats(ctx, false)
			polls = append(polls, time.Since(p0))
			if err == nil && st.Streams <= base {
				dt = time.Since(t0)
				break
			}
			if time.Since(t0) > 5*time.Second || ctx.Err() != nil {
				dt = -1
				break
			}
		}
		<-c.done
		if dt < 0 {
			r.notes = append(r.notes, fmt.Sprintf("a closed client still counted after 5 s (trial %d)", i))
			break
		}
		us := uint32(min(dt.Microseconds(), 1<<32-1))
		all = append(all, us)
		if reset {
			rst = append(rst, us)
		} else {
			fin = append(fin, us)
		}
	}
	for _, l := range [][]uint32{all, fin, rst} {
		slices.Sort(l)
	}
	pair := func(l []uint32) string {
		if len(l) == 0 {
			return "-"
		}
		return pct(l, 0.5) + " / " + pct(l, 1)
	}
	r.cells = []string{fmt.Sprint(len(all)), pct(all, 0.5), pct(all, 0.99), pct(all, 1), pair(fin), pair(rst)}
	r.setPct("p50", all, 0.5)
	r.setPct("p99", all, 0.99)
	if len(polls) > 0 {
		slices.Sort(polls)
		r.notes = append(r.notes, fmt.Sprintf("one /stats poll took %.2f ms (median of %d), %.2f ms at most",
			float64(polls[len(polls)/2])/1e6, len(polls), float64(polls[len(polls)-1])/1e6))
	}
	return r
}

// waitStreamsFast waits until the server serves n streams, polling without a pause.
func waitStreamsFast(ctx context.Context, s *server, n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.stats(ctx, false)
		if err != nil {
			return err
		}
		if st.Streams == n {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d of %d streams served after %v", st.Streams, n, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}
