// Command load compares the server side of SSE libraries under load: this module's sse
// Broker, github.com/r3labs/sse/v2, github.com/tmaxmax/go-sse and
// github.com/alexandrevicenzi/go-sse, with bare net/http handlers as the floor for idle
// connections. See README.md.
//
// For each scenario and library it starts a server process (this binary with -serve) and
// drives it from this process over raw HTTP/1.1 connections on 127.0.0.1.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var allLibs = []string{"sse", "sse-hijack", "floor", "r3labs", "tmaxmax", "alexandrevicenzi", "bare", "bare-retry"}

func main() {
	serveLib := flag.String("serve", "", "run as the server process for `library` (used by the load process)")
	scenarioName := flag.String("scenario", "", "with -serve: the scenario to set the library up for")
	cpuprofile := flag.String("cpuprofile", "", "write CPU profiles of the server processes (from the first measured publish to the end) into `dir`, one per scenario and library; with -serve, the file")
	redisAddr := flag.String("redis", "", "with -serve: serve from a redisbroker node on the Redis at `addr` (used by the cluster scenario)")
	scenarios := flag.String("scenarios", "fanout,rate,steady,idle,idle-max,slow,churn,close,cluster", "comma-separated `list` of scenarios")
	idleN := flag.Int("idle-n", 0, "connections in idle-max (default: the hard limit on open files, less a margin)")
	libs := flag.String("libs", strings.Join(allLibs, ","), "comma-separated `list` of libraries")
	budget := flag.Duration("budget", 60*time.Second, "the most one scenario may take for one library")
	rounds := flag.Int("rounds", 1, "run each scenario `n` times, the libraries in turn each time, and sum the ratios up over the rounds")
	flag.Parse()
	log.SetFlags(0)

	if *serveLib != "" {
		serve(*serveLib, *scenarioName, *cpuprofile, *redisAddr)
		return
	}

	raiseFileLimit()
	if *cpuprofile != "" {
		if err := os.MkdirAll(*cpuprofile, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	var libList []string
	for l := range strings.SplitSeq(*libs, ",") {
		if !slices.Contains(allLibs, l) {
			log.Fatalf("unknown library %q; have %s", l, strings.Join(allLibs, ","))
		}
		libList = append(libList, l)
	}
	fmt.Printf("load: GOMAXPROCS=%s, %d CPUs, open files limit %d (each process)\n",
		envOr("GOMAXPROCS", "default"), numCPU(), fileLimit())
	n, why := *idleN, "-idle-n"
	if n <= 0 {
		hard := hardFileLimit()
		n = int(min(hard-min(hard, idleMaxMargin), maxSources*portsPerSource))
		why = fmt.Sprintf("the hard limit on open files, %d, less %d", hard, idleMaxMargin)
	}
	if slices.Contains(strings.Split(*scenarios, ","), "idle-max") &&
		(n <= 0 || uint64(n)+idleMaxMargin > fileLimit() || n > maxSources*portsPerSource) {
		log.Fatalf("idle-max: %d connections: more than the open files limit %d allows with a margin of %d, or than %d source addresses carry",
			n, fileLimit(), idleMaxMargin, maxSources)
	}
	scenarioByName["idle-max"] = idleMax(n, why)
	for sc := range strings.SplitSeq(*scenarios, ",") {
		s, ok := scenarioByName[sc]
		if !ok {
			log.Fatalf("unknown scenario %q", sc)
		}
		n := max(*rounds, 1)
		if s.cluster != nil {
			n = 1
		}
		var tables []*table
		for round := range n {
			t := &table{title: s.title, header: s.header, compare: s.compare}
			if n > 1 {
				t.title += fmt.Sprintf(" (round %d of %d)", round+1, n)
			}
			order := libList
			if round%2 == 1 {
				// Every other round the other way round, so that what changes over a run
				// (the machine's other work, its clock) favours no library.
				order = slices.Clone(libList)
				slices.Reverse(order)
			}
			runTable(t, s, sc, order, *cpuprofile, *budget)
			if len(t.rows) == 0 {
				log.Printf("%s: none of the libraries takes part", sc)
				break
			}
			t.print(os.Stdout)
			tables = append(tables, t)
		}
		if len(tables) > 1 {
			printRounds(os.Stdout, tables)
		}
	}
}

// runTable runs scenario s, named sc, against each library in turn, into t.
func runTable(t *table, s scenario, sc string, libList []string, cpuprofile string, budget time.Duration) {
	for _, lib := range libList {
		if s.cluster != nil {
			if lib != "sse" && lib != "sse-hijack" {
				continue // the Redis module is this module's
			}
			for _, c := range s.cluster {
				log.Printf("%s/%s %s: start", sc, lib, c.name)
				t.add(runCluster(c, lib, cpuprofile, budget))
			}
			continue
		}
		if s.skip != nil {
			if why := s.skip(lib); why != "" {
				log.Printf("%s/%s: skipped: %s", sc, lib, why)
				continue
			}
		}
		profile := ""
		if cpuprofile != "" {
			profile = filepath.Join(cpuprofile, sc+"-"+lib+".prof")
		}
		log.Printf("%s/%s: start", sc, lib)
		t.add(runOne(s, lib, sc, profile, budget))
	}
}

// runOne runs one scenario against one library's server, within budget.
func runOne(s scenario, lib, sc, profile string, budget time.Duration) row {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	srv, err := startServer(ctx, lib, sc, profile)
	if err != nil {
		return row{lib: lib, notes: []string{"server did not start: " + err.Error()}}
	}
	defer srv.stop()
	r := s.run(ctx, srv)
	r.lib, r.config = lib, srv.config
	if ctx.Err() != nil {
		r.notes = append(r.notes, fmt.Sprintf("UNFINISHED: the %v budget ran out", budget))
	}
	log.Printf("%s/%s: done in %.1fs", sc, lib, time.Since(start).Seconds())
	return r
}

// server is a running server process.
type server struct {
	lib     string
	cmd     *exec.Cmd
	pid     int
	addr    string
	config  string
	ctl     *http.Client
	profile string // where the server writes its CPU profile, if anywhere
}

// startServer starts a server process for lib set up for scenario sc, with extra arguments.
func startServer(ctx context.Context, lib, sc, profile string, extra ...string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-serve", lib, "-scenario", sc}
	if profile != "" {
		args = append(args, "-cpuprofile", profile)
	}
	args = append(args, extra...)
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{lib: lib, cmd: cmd, pid: cmd.Process.Pid, ctl: &http.Client{}, profile: profile}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, out)
	}()
	timeout := time.After(10 * time.Second)
	for s.addr == "" || s.config == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				s.stop()
				return nil, fmt.Errorf("server exited")
			}
			if a, ok := strings.CutPrefix(l, "LISTEN "); ok {
				s.addr = a
			} else if c, ok := strings.CutPrefix(l, "CONFIG "); ok {
				s.config = c
			}
		case <-timeout:
			s.stop()
			return nil, fmt.Errorf("no address after 10s")
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		}
	}
	go func() {
		for range lines {
		}
	}()
	return s, nil
}

// stop ends the server: SIGTERM (it writes its profile and exits), then SIGKILL after 5s.
func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		s.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

func (s *server) get(ctx context.Context, method, path string, q url.Values, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.addr+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := s.ctl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// stats returns the server's counters; with gc, after a garbage collection that returns
// free memory to the OS.
func (s *server) stats(ctx context.Context, gc bool) (serverStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	q := url.Values{}
	if gc {
		q.Set("gc", "1")
	}
	var st serverStats
	err := s.get(ctx, http.MethodGet, "/stats", q, &st)
	return st, err
}

// publish asks the server to publish n events of size bytes in phase, at rate per second
// (0: as fast as the library's publish returns), and to answer after at most timeout.
func (s *server) publish(ctx context.Context, n, size int, rate float64, phase int, sync bool, timeout time.Duration) (publishResult, error) {
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(dl)-2*time.Second), time.Second)
	}
	q := url.Values{
		"n":       {strconv.Itoa(n)},
		"size":    {strconv.Itoa(size)},
		"rate":    {strconv.FormatFloat(rate, 'f', -1, 64)},
		"phase":   {strconv.Itoa(phase)},
		"timeout": {timeout.String()},
	}
	if sync {
		q.Set("kind", "sync")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	var res publishResult
	err := s.get(ctx, http.MethodPost, "/publish", q, &res)
	return res, err
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
