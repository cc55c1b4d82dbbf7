package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A clientKind is one of the real clients the tests drive, each through its own Node script.
type clientKind struct {
	name     string
	script   string
	chromium bool // the script drives /usr/bin/chromium
}

var clientKinds = []clientKind{
	{name: "chromium", script: "chromium.mjs", chromium: true},
	{name: "eventsource", script: "eventsource.mjs"},
}

const chromiumPath = "/usr/bin/chromium" // Debian's; the tests never download a browser

// waitTimeout bounds every wait for a client or the broker. Generous, because two browsers'
// worth of work share the CPU with the race detector, and with whatever else the machine runs
// (15 s was once too short for a browser's first page at a load average of 12); a passing run
// waits far less.
const waitTimeout = 30 * time.Second

// nodeVersion returns the major version of the node on PATH, or an error saying what is wrong.
var nodeVersion = sync.OnceValues(func() (int, error) {
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		return 0, err
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _, _ := strings.Cut(v, ".")
	return strconv.Atoi(major)
})

// missing returns what has to be installed before the tests can drive k, or "" if nothing.
func (k clientKind) missing() string {
	var need []string
	if major, err := nodeVersion(); err != nil || major < 20 {
		need = append(need, "Node.js 20 or newer as node on PATH (and npm)")
	}
	module := "eventsource"
	if k.chromium {
		module = "playwright-core"
	}
	if _, err := os.Stat("node_modules/" + module + "/package.json"); err != nil {
		need = append(need, "the npm packages: npm ci --prefix internal/interop")
	}
	if k.chromium {
		if _, err := os.Stat(chromiumPath); err != nil {
			need = append(need, "Chromium at "+chromiumPath+": apt-get install -y chromium")
		}
	}
	return strings.Join(need, "; ")
}

// requireClient skips the test if k cannot run here, or fails it if SSE_INTEROP=require:
// CI installs every client, and there a skip must not pass for a pass.
func requireClient(t *testing.T, k clientKind) {
	t.Helper()
	need := k.missing()
	if need == "" {
		return
	}
	if os.Getenv("SSE_INTEROP") == "require" {
		t.Fatalf("%s client unavailable and SSE_INTEROP=require; install %s", k.name, need)
	}
	t.Skipf("%s client unavailable; install %s (set SSE_INTEROP=require to fail instead)", k.name, need)
}

// eachClient runs f in a parallel subtest for each client kind, with its client started.
func eachClient(t *testing.T, f func(t *testing.T, c *client)) {
	for _, k := range clientKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			f(t, startClient(t, k))
		})
	}
}

// A record is one line a driver writes: something an EventSource fired, or the end of a command.
type record struct {
	Seq         int    `json:"seq"` // the command a "done" or "fail" record answers
	ID          string `json:"id"`  // the EventSource an "open", "error" or "event" record is about
	Kind        string `json:"kind"`
	Type        string `json:"type"`
	Data        string `json:"data"`
	LastEventID string `json:"lastEventId"`
	ReadyState  int    `json:"readyState"`
	Message     string `json:"message"`

	at time.Time // when the test read it
}

// A client is one running driver process: a Chromium page or a Node process, in which the test
// opens and closes EventSources by name.
type client struct {
	kind   clientKind
	stdin  io.WriteCloser
	stderr syncBuffer
	exited chan struct{} // closed once the process has exited and its output is read
	seq    int           // the last command sent; only the test goroutine sends
	nextES int

	mu      sync.Mutex // guards recs, changed, waitErr
	recs    []record
	changed chan struct{} // closed and replaced when recs grows or the process exits
	waitErr error
}

// startClient starts a driver of kind k; it ends with the test.
func startClient(t *testing.T, k clientKind) *client {
	t.Helper()
	requireClient(t, k)
	// Looking at the scripts also tells go test's cache that the result depends on them.
	for _, f := range []string{k.script, "client.js", "package-lock.json"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{k.script}
	if k.chromium {
		args = append(args, t.TempDir()) // a fresh profile, removed after the browser has exited
	}
	// The context bounds the whole process; a test that ran this long has hung.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, "node", args...)
	// On SIGTERM Playwright closes the browser it launched; SIGKILL would orphan it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	c := &client{kind: k, exited: make(chan struct{}), changed: make(chan struct{})}
	cmd.Stderr = &c.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", k.script, err)
	}
	c.stdin = stdin
	go c.read(stdout, cmd)
	t.Cleanup(func() {
		defer cancel()
		c.exit(t)
	})
	return c
}

// read collects the driver's records until it exits; it owns the process's stdout and Wait.
func (c *client) read(stdout io.Reader, cmd *exec.Cmd) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 16<<20) // one record holds a whole event, and some are large
	for sc.Scan() {
		var r record
		err := json.Unmarshal(sc.Bytes(), &r)
		if err != nil {
			r = record{Kind: "fail", Message: fmt.Sprintf("bad record %q: %v", sc.Text(), err)}
		}
		r.at = time.Now()
		c.mu.Lock()
		c.recs = append(c.recs, r)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	err := cmd.Wait()
	c.mu.Lock()
	c.waitErr = err
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	close(c.exited)
}

// exit closes the driver's stdin, which makes it close its EventSources (and the browser) and
// exit, and waits for that.
func (c *client) exit(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second): // cmd's context and WaitDelay end it soon after
		t.Errorf("%s driver did not exit", c.kind.name)
		<-c.exited
	}
	c.mu.Lock()
	err := c.waitErr
	c.mu.Unlock()
	if err != nil {
		t.Errorf("%s driver: %v\nstderr:\n%s", c.kind.name, err, c.stderr.String())
	}
}

// waitFor waits until cond holds for the records so far, and returns them; it fails the test
// if that takes waitTimeout or the driver exits first.
func (c *client) waitFor(t *testing.T, what string, cond func([]record) bool) []record {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		recs, changed := c.recs, c.changed
		c.mu.Unlock()
		if cond(recs) {
			return recs
		}
		select {
		case <-changed:
		case <-c.exited:
			t.Fatalf("%s driver exited while waiting for %s\nrecords:\n%s\nstderr:\n%s", c.kind.name, what, dump(recs), c.stderr.String())
		case <-timer.C:
			t.Fatalf("%s: timed out after %v waiting for %s\nrecords:\n%s\nstderr:\n%s", c.kind.name, waitTimeout, what, dump(recs), c.stderr.String())
		}
	}
}

// do sends the driver a command and waits until it has been carried out.
func (c *client) do(t *testing.T, cmd map[string]any) {
	t.Helper()
	c.seq++
	seq := c.seq
	cmd["seq"] = seq
	line, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.stdin.Write(append(line, '\n')); err != nil {
		t.Fatalf("%s driver: %v", c.kind.name, err)
	}
	recs := c.waitFor(t, fmt.Sprintf("command %s", line), func(recs []record) bool {
		return slices.ContainsFunc(recs, func(r record) bool { return r.Seq == seq })
	})
	for _, r := range recs {
		if r.Seq == seq && r.Kind == "fail" {
			t.Fatalf("%s driver: command %s: %s", c.kind.name, line, r.Message)
		}
	}
}

// load loads a page of the server at origin, from which EventSources to it are same-origin.
// Outside a browser it does nothing.
func (c *client) load(t *testing.T, origin string) {
	t.Helper()
	c.do(t, map[string]any{"op": "goto", "url": origin + "/"})
}

// open opens an EventSource on url that listens for types besides "open" and "error", and
// returns its name.
func (c *client) open(t *testing.T, url string, types ...string) string {
	t.Helper()
	c.nextES++
	es := "es" + strconv.Itoa(c.nextES)
	if types == nil {
		types = []string{}
	}
	c.do(t, map[string]any{"op": "open", "id": es, "url": url, "types": types})
	return es
}

// close closes the EventSource es.
func (c *client) close(t *testing.T, es string) {
	t.Helper()
	c.do(t, map[string]any{"op": "close", "id": es})
}

// records returns what es has fired so far.
func (c *client) records(es string) []record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return recordsOf(c.recs, es)
}

// waitRecords waits until es has fired n times (open, error and events alike), and returns
// everything it has fired.
func (c *client) waitRecords(t *testing.T, es string, n int) []record {
	t.Helper()
	recs := c.waitFor(t, fmt.Sprintf("%d records from %s", n, es), func(recs []record) bool {
		return len(recordsOf(recs, es)) >= n
	})
	return recordsOf(recs, es)
}

// waitSeen is waitRecords, for comparison.
func (c *client) waitSeen(t *testing.T, es string, n int) []seen {
	t.Helper()
	return seenOf(c.waitRecords(t, es, n))
}

func recordsOf(recs []record, es string) []record {
	var out []record
	for _, r := range recs {
		if r.ID == es {
			out = append(out, r)
		}
	}
	return out
}

func dump(recs []record) string {
	var b strings.Builder
	for _, r := range recs {
		if r.ID != "" {
			fmt.Fprintf(&b, "\t%s: %v\n", r.ID, r.seen())
		} else {
			fmt.Fprintf(&b, "\tcommand %d: %s %s\n", r.Seq, r.Kind, r.Message)
		}
	}
	return b.String()
}

// A seen is one thing an EventSource fired, as the tests compare it.
type seen struct {
	Kind        string // "open", "error" or "event"
	Type        string
	Data        string
	LastEventID string
	ReadyState  int // 0 connecting, 1 open, 2 closed
}

// What an EventSource fires besides events.
var (
	opened = seen{Kind: "open", ReadyState: 1}
	lost   = seen{Kind: "error", ReadyState: 0} // the connection ended; it will reconnect
	failed = seen{Kind: "error", ReadyState: 2} // it gave up for good
)

func (r record) seen() seen {
	return seen{Kind: r.Kind, Type: r.Type, Data: r.Data, LastEventID: r.LastEventID, ReadyState: r.ReadyState}
}

func seenOf(recs []record) []seen {
	out := make([]seen, len(recs))
	for i, r := range recs {
		out[i] = r.seen()
	}
	return out
}

func (s seen) String() string {
	if s.Kind != "event" {
		return fmt.Sprintf("%s (readyState %d)", s.Kind, s.ReadyState)
	}
	return fmt.Sprintf("event type=%q data=%q lastEventId=%q (readyState %d)",
		s.Type, abbrev(s.Data), abbrev(s.LastEventID), s.ReadyState)
}

// abbrev keeps failure messages readable when a value is kilobytes long.
func abbrev(s string) string {
	if len(s) <= 120 {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)…%s", s[:60], len(s), s[len(s)-40:])
}

// checkSeen fails the test unless got equals want.
func checkSeen(t *testing.T, got, want []seen) {
	t.Helper()
	mismatches := 0
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			t.Errorf("record %d: missing, want %v", i, want[i])
		case i >= len(want):
			t.Errorf("record %d: got %v, want nothing more", i, got[i])
		case got[i] != want[i]:
			t.Errorf("record %d: got %v, want %v", i, got[i], want[i])
		default:
			continue
		}
		if mismatches++; mismatches == 5 {
			t.Errorf("(and maybe more; %d records, want %d)", len(got), len(want))
			return
		}
	}
}

// syncBuffer is a bytes.Buffer that the exec package's copying goroutine and the test can share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
