package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

type scenario struct {
	title   string
	header  []string
	run     func(ctx context.Context, s *server) row
	cluster []clusterConfig // instead of run: one row per configuration, for sse and sse-hijack only
	// skip says why lib cannot take part, or "" if it can. nil: every library can.
	skip func(lib string) string
	// compare names the row metrics printed under the table as ratios to sse's.
	compare []metric
}

// A metric is one figure of a row, by key, that the ratios under a table compare.
type metric struct{ key, label string }

var (
	deliveryCompare = []metric{{"cpu", "CPU per delivery"}, {"p99", "p99"}, {"rate", "deliveries/s"}}
	idleCompare     = []metric{{"rss", "RSS per stream"}, {"mem", "heap+stack per stream"}}
)

// comparedWith is the library the ratios under a table are to, and compared those they are of.
const comparedWith = "sse"

var compared = []string{"sse-hijack", "floor"}

// needsPublish is the skip of the scenarios that publish: the bare handlers cannot.
func needsPublish(lib string) string {
	if strings.HasPrefix(lib, "bare") {
		return "it cannot publish (the floor for idle connections only)"
	}
	return ""
}

// idleHeader is the header of idle and idle-max.
var idleHeader = []string{"library", "connected", "RSS Δ MiB", "RSS/conn KiB", "heap+stack/conn KiB", "goroutines/conn", "notes"}

// idleMaxMargin is how many descriptors idle-max leaves free in each process, below its hard
// limit, for what is not a stream: the listener, the control connections, the runtime's.
const idleMaxMargin = 256

// idleMax is the idle-max scenario for n connections; why says where n comes from.
func idleMax(n int, why string) scenario {
	return scenario{
		title:  fmt.Sprintf("idle-max: %s connections that receive nothing (%s)", thousands(n), why),
		header: idleHeader,
		run: func(ctx context.Context, s *server) row {
			return runIdle(ctx, s, n)
		},
		compare: idleCompare,
	}
}

var scenarioByName = map[string]scenario{
	"fanout": {
		title:  "fanout: 1,000 clients, 5,000 events of 64 B published as fast as Publish returns",
		header: deliveryHeader,
		run: func(ctx context.Context, s *server) row {
			return runDelivery(ctx, s, 1000, 5000, 64, 0)
		},
		skip:    needsPublish,
		compare: deliveryCompare,
	},
	"rate": {
		title:  "rate: 1,000 clients, 1,000 events/s of 64 B for 5 s",
		header: deliveryHeader,
		run: func(ctx context.Context, s *server) row {
			return runDelivery(ctx, s, 1000, 5000, 64, 1000)
		},
		skip:    needsPublish,
		compare: deliveryCompare,
	},
	"steady": {
		title:  "steady: 1,000 clients, 50 events/s of 64 B for 10 s",
		header: deliveryHeader,
		run: func(ctx context.Context, s *server) row {
			return runDelivery(ctx, s, 1000, 500, 64, 50)
		},
		skip:    needsPublish,
		compare: deliveryCompare,
	},
	"idle": {
		title:  "idle: 10,000 connections that receive nothing",
		header: idleHeader,
		run: func(ctx context.Context, s *server) row {
			return runIdle(ctx, s, 10000)
		},
		compare: idleCompare,
	},
	// "idle-max" is set up by main, which knows the limit.
	"churn": {
		title: "churn: 20,000 connections, each opening a stream and resetting it as soon as the response begins, " +
			"from 8 goroutines; then how soon the server is back to its baseline",
		header: []string{"library", "connections", "conn/s", "srv CPU-µs/conn", "fds back after", "goroutines back after", "clients back after", "notes"},
		run:    runChurn,
		skip: func(lib string) string {
			if lib == "tmaxmax" {
				return "it sends no response until the first event, so the load side cannot tell a stream is open"
			}
			return ""
		},
		compare: []metric{{"cpu", "CPU per connection"}},
	},
	"close": {
		title:   "close: 100 trials, each one client that connects and closes (FIN and reset in turn), until the server counts one client less",
		header:  []string{"library", "trials", "p50 ms", "p99 ms", "max ms", "FIN p50 / max ms", "reset p50 / max ms", "notes"},
		run:     runClose,
		compare: []metric{{"p50", "p50"}, {"p99", "p99"}},
	},
	"cluster": {
		title: "cluster: 3 processes, each a redisbroker node on one namespace of one local redis-server, " +
			"clients spread evenly over them; events of 64 B published at a steady rate for 5 s, spread evenly over the nodes",
		header: clusterHeader,
		cluster: []clusterConfig{
			{name: "A", nodes: 3, clients: 300, events: 5000, rate: 1000},
			{name: "B", nodes: 3, clients: 10, events: 50000, rate: 10000},
		},
	},
	"slow": {
		title: "slow: 100 reading clients, 20,000 events of 1 KiB as fast as Publish returns, " +
			"without (A) and then with (B) one more client that never reads; up to 3 rounds",
		header: []string{"library", "publish A s", "publish B s", "B/A", "slow client gone after", "others delivered/expected", "p99 ms", "RSS MiB", "peak RSS MiB", "notes"},
		run:    runSlow,
		skip: func(lib string) string {
			if lib == "floor" {
				return "it cuts any socket whose write would block: it has no slow-client policy to measure"
			}
			return needsPublish(lib)
		},
	},
}

var deliveryHeader = []string{"library", "delivered/expected", "deliveries/s", "publish s", "srv CPU-s/M deliv", "p50 ms", "p99 ms", "max ms", "RSS MiB", "peak RSS MiB", "goroutines", "notes"}

// row is one library's result in a scenario's table.
type row struct {
	lib     string
	config  string
	cells   []string // all columns but the library and the notes
	notes   []string
	metrics map[string]float64 // figures the ratios under the table compare, by metric key
}

func (r *row) set(key string, v float64) {
	if r.metrics == nil {
		r.metrics = make(map[string]float64)
	}
	r.metrics[key] = v
}

type table struct {
	title   string
	header  []string
	rows    []row
	compare []metric
}

func (t *table) add(r row) { t.rows = append(t.rows, r) }

// print writes the table in Markdown, the library's configuration above it.
func (t *table) print(w io.Writer) {
	fmt.Fprintf(w, "\n## %s\n\n", t.title)
	for _, r := range t.rows {
		fmt.Fprintf(w, "- %s: %s\n", r.lib, r.config)
	}
	fmt.Fprintln(w)
	rows := [][]string{t.header}
	for _, r := range t.rows {
		cells := append([]string{r.lib}, r.cells...)
		for len(cells) < len(t.header)-1 {
			cells = append(cells, "-")
		}
		note := strings.Join(r.notes, "; ")
		if note == "" {
			note = "-"
		}
		rows = append(rows, append(cells, note))
	}
	width := make([]int, len(t.header))
	for _, cells := range rows {
		for i, c := range cells {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 || i == len(cells)-1 {
				b.WriteString(" " + c + pad + " |") // names and notes: left
			} else {
				b.WriteString(" " + pad + c + " |") // numbers: right
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, n := range width {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, cells := range rows[1:] {
		line(cells)
	}
	t.printRatios(w)
}

// printRatios writes, under the table, the compared libraries' metrics as ratios to those
// of comparedWith in the same run, where both rows have them.
func (t *table) printRatios(w io.Writer) {
	var base *row
	for i := range t.rows {
		if t.rows[i].lib == comparedWith {
			base = &t.rows[i]
		}
	}
	if base == nil || len(t.compare) == 0 {
		return
	}
	first := true
	for _, r := range t.rows {
		if !slices.Contains(compared, r.lib) {
			continue
		}
		var parts []string
		for _, m := range t.compare {
			a, okA := r.metrics[m.key]
			b, okB := base.metrics[m.key]
			if okA && okB && b > 0 {
				f := "%s %.2f×"
				if a/b < 0.1 {
					f = "%s %.3f×"
				}
				parts = append(parts, fmt.Sprintf(f, m.label, a/b))
			}
		}
		if len(parts) == 0 {
			continue
		}
		if first {
			fmt.Fprintln(w)
			first = false
		}
		fmt.Fprintf(w, "%s ÷ %s, same run: %s\n", r.lib, comparedWith, strings.Join(parts, ", "))
	}
}

// ratio returns lib's metric key over base's, from the same table, if both rows have it.
func (t *table) ratio(lib, base, key string) (float64, bool) {
	var a, b float64
	var okA, okB bool
	for _, r := range t.rows {
		switch r.lib {
		case lib:
			a, okA = r.metrics[key]
		case base:
			b, okB = r.metrics[key]
		}
	}
	if !okA || !okB || b <= 0 {
		return 0, false
	}
	return a / b, true
}

// ratioPairs are the ratios printRounds sums up: each compared library to comparedWith, and
// the sse-hijack mode to the floor it is measured against.
var ratioPairs = [][2]string{{"sse-hijack", comparedWith}, {"floor", comparedWith}, {"sse-hijack", "floor"}}

// printRounds writes, for tables of the same scenario run in rounds, each ratio of the rounds
// (each from the same round's run) and their median: on a shared, noisy machine one run's
// ratio can be far off, while the libraries of a round share its conditions.
func printRounds(w io.Writer, tables []*table) {
	first := true
	for _, pair := range ratioPairs {
		for _, m := range tables[0].compare {
			var rs []float64
			for _, t := range tables {
				if r, ok := t.ratio(pair[0], pair[1], m.key); ok {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				continue
			}
			if first {
				fmt.Fprintf(w, "\nOver %d rounds, each ratio from one round:\n\n", len(tables))
				first = false
			}
			each := make([]string, len(rs))
			for i, r := range rs {
				each[i] = fmt.Sprintf("%.2f", r)
			}
			sorted := slices.Sorted(slices.Values(rs))
			median := sorted[len(sorted)/2]
			if len(sorted)%2 == 0 {
				median = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
			}
			fmt.Fprintf(w, "- %s ÷ %s, %s: median %.2f×, %.2f–%.2f× (%s)\n",
				pair[0], pair[1], m.label, median, sorted[0], sorted[len(sorted)-1], strings.Join(each, ", "))
		}
	}
}

// connectAndSync connects n reading clients and waits until each has received a sync event,
// which proves it is subscribed (whatever the library does when, or whether, it sends the
// response headers).
func connectAndSync(ctx context.Context, s *server, n, readBuf int) ([]*conn, error) {
	conns, err := connect(ctx, s, n, readBuf)
	if err != nil {
		return nil, err
	}
	if err := awaitSync(ctx, s, conns); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

// connect connects n reading clients and waits until the server serves a stream for each.
func connect(ctx context.Context, s *server, n, readBuf int) ([]*conn, error) {
	conns, err := dialAll(ctx, s.addr, n, nil, true, readBuf)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if err := waitStreams(ctx, s, n, 30*time.Second); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

// awaitSync publishes sync events on s until every one of conns has received one.
func awaitSync(ctx context.Context, s *server, conns []*conn) error {
	for try := 0; ; try++ {
		if _, err := s.publish(ctx, 1, 0, 0, 0, true, 5*time.Second); err != nil {
			return fmt.Errorf("sync publish: %w", err)
		}
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			if synced(conns) == len(conns) {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		if try == 50 || ctx.Err() != nil {
			return fmt.Errorf("%d of %d clients saw a sync event", synced(conns), len(conns))
		}
	}
}

func synced(conns []*conn) int {
	n := 0
	for _, c := range conns {
		if c.syncs.Load() > 0 {
			n++
		}
	}
	return n
}

// waitStreams waits until the server serves n streams (serverStats.Streams: the /events
// handlers running, or the library's own count where the stream outlives its handler).
func waitStreams(ctx context.Context, s *server, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.stats(ctx, false)
		if err != nil {
			return err
		}
		if st.Streams == int64(n) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d of %d streams served after %v", st.Streams, n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// drain waits until the connections have received want events of phase in all, or until
// none arrives for stall, or ctx is done.
func drain(ctx context.Context, conns []*conn, phase int, want int64, stall time.Duration) int64 {
	got, last := int64(0), time.Now()
	for {
		n := received(conns, phase)
		if n >= want {
			return n
		}
		if n != got {
			got, last = n, time.Now()
		}
		if time.Since(last) > stall || ctx.Err() != nil {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lastReceive returns the Unix ns of the last measured event of phase received.
func lastReceive(conns []*conn, phase int) int64 {
	var t int64
	for _, c := range conns {
		t = max(t, c.lastRecv[phase].Load())
	}
	return t
}

// disconnected returns how many of conns the server has closed.
func disconnected(conns []*conn) int {
	n := 0
	for _, c := range conns {
		if c.closed.Load() {
			n++
		}
	}
	return n
}

// latencies merges the latencies of phases (µs); only once the readers have stopped.
func latencies(conns []*conn, phases ...int) []uint32 {
	var all []uint32
	for _, c := range conns {
		for _, p := range phases {
			all = append(all, c.lat[p]...)
		}
	}
	slices.Sort(all)
	return all
}

func pct(sorted []uint32, p float64) string {
	if len(sorted) == 0 {
		return "-"
	}
	i := min(int(p*float64(len(sorted))), len(sorted)-1)
	return ms(sorted[i])
}

func ms(us uint32) string { return fmt.Sprintf("%.1f", float64(us)/1e3) }

// setPct sets metric key of r to the p-th fraction of sorted, in ms, if there is one.
func (r *row) setPct(key string, sorted []uint32, p float64) {
	if len(sorted) > 0 {
		r.set(key, float64(sorted[min(int(p*float64(len(sorted))), len(sorted)-1)])/1e3)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// runDelivery is fanout and rate: clients receive n events of size bytes published at rate
// per second (0: as fast as publish returns).
func runDelivery(ctx context.Context, s *server, clients, n, size int, rate float64) row {
	var r row
	conns, err := connectAndSync(ctx, s, clients, 16<<10)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	defer closeAll(conns)
	d := deliver(ctx, []*server{s}, conns, n, size, rate, s.pid)
	rss, hwm, _ := memory(s.pid)
	st, _ := s.stats(ctx, false)
	closeAll(conns)
	d.finish(conns)

	cpuStr := "-"
	if d.got > 0 {
		cpu := d.cpu[0].Seconds() / float64(d.got) * 1e6
		cpuStr = fmt.Sprintf("%.2f", cpu)
		r.set("cpu", cpu)
	}
	r.setPct("p99", d.lat, 0.99)
	if d.got > 0 && d.end > d.start {
		r.set("rate", float64(d.got)/(float64(d.end-d.start)/1e9))
	}
	r.cells = []string{
		fmt.Sprintf("%d/%d", d.got, d.want), d.rate(), d.publishTime(), cpuStr,
		pct(d.lat, 0.50), pct(d.lat, 0.99), pct(d.lat, 1), mib(rss), mib(hwm), fmt.Sprint(st.Goroutines),
	}
	r.notes = append(r.notes, d.notes...)
	if d.got < d.want {
		r.notes = append(r.notes, fmt.Sprintf("LOST %d deliveries", d.want-d.got))
	}
	if d.lost > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d clients disconnected by the server", d.lost))
	}
	if st.SSE != nil && st.SSE.SlowDisconnects > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d slow disconnects", st.SSE.SlowDisconnects))
	}
	if st.Cut > 0 {
		r.notes = append(r.notes, fmt.Sprintf("the floor cut %d sockets whose write would have blocked", st.Cut))
	}
	r.notes = append(r.notes, takenOver(s, st)...)
	if o := outOfOrder(conns); o > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d events out of order", o))
	}
	if d.writes[0] > 0 {
		r.notes = append(r.notes, fmt.Sprintf("server's write calls: %d, %.1f deliveries each", d.writes[0], float64(d.got)/float64(d.writes[0])))
	}
	r.notes = append(r.notes, fmt.Sprintf("load side used %.1f CPU-s", d.self.Seconds()))
	return r
}

// A delivery is the outcome of n events published over one or more servers, measured on the
// clients.
type delivery struct {
	n          int
	got, want  int64
	start, end int64           // Unix ns: the first publish began; the last event was received
	pubEnd     int64           // Unix ns the last publish ended; 0 if one did not
	err        error           // the first publish that failed
	cpu        []time.Duration // CPU time of each process watched, from before publishing until delivered
	writes     []int64         // write system calls of each process watched, the same span
	self       time.Duration   // the load process's CPU time, the same span
	others     time.Duration   // the CPU time of the machine's other processes, the same span
	wall       time.Duration   // the same span
	lost       int             // clients the server disconnected
	phases     []int
	lat        []uint32 // sorted; set by finish
	notes      []string
}

// deliver publishes n events of size bytes at rate per second in all (0: as fast as publish
// returns), spread evenly over pubs, each publishing its share at once in a phase of its own
// (1, 2, ...), and waits until conns have received every event or delivery stalls for 5 s.
// It measures the CPU time of the processes pids over that span.
func deliver(ctx context.Context, pubs []*server, conns []*conn, n, size int, rate float64, pids ...int) delivery {
	d := delivery{n: n, want: int64(n) * int64(len(conns))}
	cpu0 := make([]time.Duration, len(pids))
	w0 := make([]int64, len(pids))
	for i, pid := range pids {
		cpu0[i], _ = cpuTime(pid)
		w0[i] = writeCalls(pid)
	}
	self0, wall0, busy0 := selfCPU(), time.Now(), machineBusy()
	type result struct {
		res publishResult
		err error
	}
	results := make([]result, len(pubs))
	shares := make([]int, len(pubs))
	var wg sync.WaitGroup
	for k, s := range pubs {
		nk := n / len(pubs)
		if k < n%len(pubs) {
			nk++
		}
		shares[k] = nk
		phase := 1 + k
		d.phases = append(d.phases, phase)
		wg.Go(func() {
			res, err := s.publish(ctx, nk, size, rate*float64(nk)/float64(n), phase, false, 40*time.Second)
			results[k] = result{res, err}
		})
	}
	wg.Wait()
	var published int64
	finished := true
	for _, r := range results {
		if r.err != nil {
			if d.err == nil {
				d.err = r.err
			}
			d.notes = append(d.notes, "publish: "+r.err.Error())
			finished = false
			continue
		}
		if d.start == 0 || r.res.StartNs < d.start {
			d.start = r.res.StartNs
		}
		published += r.res.Published
		if !r.res.Finished {
			finished = false
		}
		d.pubEnd = max(d.pubEnd, r.res.EndNs)
	}
	if !finished {
		d.pubEnd = 0
	}
	for k, p := range d.phases {
		d.got += drain(ctx, conns, p, int64(shares[k])*int64(len(conns)), 5*time.Second)
		d.end = max(d.end, lastReceive(conns, p))
	}
	d.wall, d.self = time.Since(wall0), selfCPU()-self0
	d.others = machineBusy() - busy0 - d.self
	d.cpu = make([]time.Duration, len(pids))
	d.writes = make([]int64, len(pids))
	for i, pid := range pids {
		c, _ := cpuTime(pid)
		d.cpu[i] = c - cpu0[i]
		d.writes[i] = writeCalls(pid) - w0[i]
		d.others -= d.cpu[i]
	}
	d.lost = disconnected(conns)
	if d.err == nil && !finished {
		if budgetOut(ctx) {
			d.notes = append(d.notes, "the budget ran out")
		}
		d.notes = append(d.notes, fmt.Sprintf("PUBLISH UNFINISHED: %d of %d events published when the server answered", published, n))
	}
	return d
}

// finish gathers the latencies, once the readers have stopped.
func (d *delivery) finish(conns []*conn) { d.lat = latencies(conns, d.phases...) }

// rate is deliveries per second, from the first publish to the last event received.
func (d *delivery) rate() string {
	if d.got == 0 || d.end <= d.start {
		return "-"
	}
	return fmt.Sprintf("%.0f", float64(d.got)/(float64(d.end-d.start)/1e9))
}

// publishTime is how long publishing took, from the first publish to the last.
func (d *delivery) publishTime() string {
	switch {
	case d.pubEnd != 0:
		return fmt.Sprintf("%.3f", float64(d.pubEnd-d.start)/1e9)
	case d.err == nil:
		return "unfinished"
	}
	return "-"
}

// budgetOut reports whether the scenario's budget is (all but) spent, which is why a publish
// that answers unfinished may not have been blocked at all.
func budgetOut(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && time.Until(dl) < 5*time.Second
}

func outOfOrder(conns []*conn) (n int64) {
	for _, c := range conns {
		n += c.outOfOrd
	}
	return n
}

// runIdle opens n connections that receive nothing, and measures what they cost the server.
func runIdle(ctx context.Context, s *server, n int) row {
	var r row
	st0, err := s.stats(ctx, true)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	rss0, _, _ := memory(s.pid)
	conns, err := dialAll(ctx, s.addr, n, sources(n), true, 4<<10)
	if err != nil {
		r.notes = append(r.notes, "dial: "+err.Error())
		return r
	}
	defer closeAll(conns)
	if err := waitStreams(ctx, s, n, 30*time.Second); err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	// Let subscriptions that happen after the handler starts (in the libraries' own
	// goroutines) settle.
	time.Sleep(time.Second)
	st1, err := s.stats(ctx, true)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	rss1, _, _ := memory(s.pid)
	if s.profile != "" {
		if err := s.get(ctx, "POST", "/heapprofile", nil, new(struct{})); err != nil {
			r.notes = append(r.notes, "heap profile: "+err.Error())
		}
	}
	dRSS := rss1 - rss0
	dMem := int64(st1.HeapInuse+st1.StackInuse) - int64(st0.HeapInuse+st0.StackInuse)
	r.set("rss", float64(dRSS)/float64(n))
	r.set("mem", float64(dMem)/float64(n))
	r.cells = []string{
		fmt.Sprint(st1.Streams), mib(dRSS),
		fmt.Sprintf("%.2f", float64(dRSS)/float64(n)/1024),
		fmt.Sprintf("%.2f", float64(dMem)/float64(n)/1024),
		fmt.Sprintf("%.2f", float64(st1.Goroutines-st0.Goroutines)/float64(n)),
	}
	perConn := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / float64(n) / 1024 }
	r.notes = append(r.notes, fmt.Sprintf("KiB/conn: heap %.2f, stacks %.2f, all runtime memory %.2f",
		perConn(st0.HeapInuse, st1.HeapInuse), perConn(st0.StackInuse, st1.StackInuse), perConn(st0.RuntimeSys, st1.RuntimeSys)))
	r.notes = append(r.notes, takenOver(s, st1)...)
	if st1.Handlers > 0 && st1.Handlers != st1.Streams {
		// A library that takes streams over from net/http should leave no handler running;
		// one that does is serving those streams in its handlers after all.
		r.notes = append(r.notes, fmt.Sprintf("%d /events handlers still running", st1.Handlers))
	}
	if lc := st1.LibClients; lc >= 0 && lc != n {
		r.notes = append(r.notes, fmt.Sprintf("library counts %d clients", lc))
	}
	if d := disconnected(conns); d > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d connections closed by the server", d))
	}
	return r
}

// runSlow: see the scenario's title.
func runSlow(ctx context.Context, s *server) row {
	const (
		readers = 100
		events  = 20000
		size    = 1024
		rounds  = 3
	)
	var r row
	conns, err := connectAndSync(ctx, s, readers, 64<<10)
	if err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}
	defer closeAll(conns)

	// Warm up: the first burst grows buffers and the heap, which would be charged to A.
	if _, err := s.publish(ctx, 2000, size, 0, 1, false, 20*time.Second); err != nil {
		r.notes = append(r.notes, "warm-up: "+err.Error())
		return r
	}
	drain(ctx, conns, 1, 2000*readers, 5*time.Second)

	var durA, durB, gone []string
	var ratios []string
	var got, want int64
	var phases []int
	phase := 2
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		// A: without the slow client.
		a, err := s.publish(ctx, events, size, 0, phase, false, 20*time.Second)
		phases = append(phases, phase)
		want += events * readers
		got += drain(ctx, conns, phase, events*readers, 5*time.Second)
		phase++
		if err != nil || !a.Finished {
			durA = append(durA, "unfinished")
			if err != nil {
				r.notes = append(r.notes, "publish A: "+err.Error())
			}
			r.notes = append(r.notes, fmt.Sprintf("publish A unfinished after 20s or when the budget ran out, without a slow client: %d of %d published", a.Published, events))
			break
		}
		dA := time.Duration(a.EndNs - a.StartNs)
		durA = append(durA, fmt.Sprintf("%.3f", dA.Seconds()))

		// B: with one more client, which never reads.
		slow, err := dial(ctx, s.addr, nil, false, 0)
		if err != nil {
			r.notes = append(r.notes, "slow client: "+err.Error())
			break
		}
		if err := waitStreams(ctx, s, readers+1, 10*time.Second); err != nil {
			slow.close()
			r.notes = append(r.notes, err.Error())
			break
		}
		waitLibClients(ctx, s, readers+1)
		goneAt := make(chan int64, 1)
		watchCtx, stopWatch := context.WithCancel(ctx)
		go watchGone(watchCtx, s, readers, goneAt)

		b, err := s.publish(ctx, events, size, 0, phase, false, 20*time.Second)
		phases = append(phases, phase)
		want += events * readers
		gotB := drain(ctx, conns, phase, events*readers, 5*time.Second)
		got += gotB
		phase++
		if err != nil || !b.Finished {
			durB = append(durB, "stuck")
			ratios = append(ratios, "∞")
			why := ""
			if err != nil {
				why = " (" + err.Error() + ")"
			}
			if budgetOut(ctx) {
				r.notes = append(r.notes, fmt.Sprintf("publish unfinished when the budget ran out: %d of %d published%s", b.Published, events, why))
			} else {
				r.notes = append(r.notes, fmt.Sprintf("PUBLISHER STOPPED by the client that does not read: %d of %d published, then Publish blocked%s", b.Published, events, why))
			}
			stopWatch()
			slow.close()
			break
		}
		if gotB < events*readers {
			r.notes = append(r.notes, fmt.Sprintf("DELIVERY STOPPED for the readers with the client that does not read: %d of %d in B, though Publish returned", gotB, events*readers))
		}
		dB := time.Duration(b.EndNs - b.StartNs)
		durB = append(durB, fmt.Sprintf("%.3f", dB.Seconds()))
		ratios = append(ratios, fmt.Sprintf("%.2f", dB.Seconds()/dA.Seconds()))
		// The slow client should be dropped within the write timeout of the write that
		// stalls; give it that and more.
		select {
		case t := <-goneAt:
			gone = append(gone, fmt.Sprintf("%.1fs", float64(t-b.StartNs)/1e9))
		case <-time.After(15 * time.Second):
			gone = append(gone, "never")
		case <-ctx.Done():
			gone = append(gone, "?")
		}
		stopWatch()
		slow.close()
		if gone[len(gone)-1] != "never" {
			// Back to the readers alone before the next A.
			if err := waitStreams(ctx, s, readers, 10*time.Second); err != nil {
				r.notes = append(r.notes, err.Error())
				break
			}
		} else {
			r.notes = append(r.notes, "the client that does not read stayed connected")
			break
		}
	}
	rss, hwm, _ := memory(s.pid)
	st, _ := s.stats(ctx, false)
	lost := disconnected(conns)
	closeAll(conns)
	lat := latencies(conns, phases...)
	join := func(s []string) string {
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, " / ")
	}
	if len(gone) == 0 && len(durB) > 0 {
		gone = append(gone, "never")
	}
	r.cells = []string{join(durA), join(durB), join(ratios), join(gone), fmt.Sprintf("%d/%d", got, want), pct(lat, 0.99), mib(rss), mib(hwm)}
	if got < want {
		r.notes = append(r.notes, fmt.Sprintf("readers LOST %d deliveries", want-got))
	}
	if lost > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d readers disconnected by the server", lost))
	}
	if st.SSE != nil {
		r.notes = append(r.notes, fmt.Sprintf("slow disconnects: %d", st.SSE.SlowDisconnects))
	}
	r.notes = append(r.notes, takenOver(s, st)...)
	if o := outOfOrder(conns); o > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d events out of order", o))
	}
	return r
}

// waitLibClients waits (briefly) until a library that counts its clients counts n: the
// handler may run before the library has registered the client with its publisher.
func waitLibClients(ctx context.Context, s *server, n int) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, err := s.stats(ctx, false)
		if err != nil || st.LibClients == n {
			return
		}
		if st.LibClients < 0 {
			// No count to read: give the library's own goroutines a moment.
			time.Sleep(200 * time.Millisecond)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watchGone sends the Unix ns at which the streams the server serves fell to n.
func watchGone(ctx context.Context, s *server, n int, gone chan<- int64) {
	for ctx.Err() == nil {
		st, err := s.stats(ctx, false)
		if err == nil && st.Streams <= int64(n) {
			gone <- time.Now().UnixNano()
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func numCPU() int { return runtime.NumCPU() }

// takenOver notes, for sse-hijack, how many of its streams the Broker's pollers serve
// (Stats().Hijacked): every load connection is plain HTTP/1.1, so all should be, and a row
// whose streams were served in their handlers instead would measure the other mode.
func takenOver(s *server, st serverStats) []string {
	if s.lib != "sse-hijack" || st.SSE == nil {
		return nil
	}
	n := fmt.Sprintf("%d of %d streams taken over", st.SSE.Hijacked, st.SSE.Clients)
	if st.SSE.Hijacked != st.SSE.Clients {
		n = "ONLY " + n
	}
	return []string{n}
}
