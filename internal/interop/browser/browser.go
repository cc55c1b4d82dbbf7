// Package browser drives headless Chromium for tests that load real pages: the examples'
// tests open their pages in it, type and click as a user would, and read what the pages show.
//
// It runs driver.mjs with Node.js, which drives Debian's Chromium through playwright-core from
// internal/interop's npm packages:
//
//	apt-get install -y chromium
//	npm ci --prefix internal/interop
//
// Without them, Start skips the test, saying what to install; with SSE_INTEROP=require (as CI
// sets it) it fails the test instead, so that a skip never passes for a pass.
//
// A page that shows a problem fails the test: an uncaught exception, a console error, a request
// that fails or is answered with a status of 400 or more, or an error event of any EventSource
// (a stream that could not be opened, or one that was lost). A test that cuts a connection on
// purpose says which problems it expects, with Page.Allow.
package browser

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sse/internal/ssetest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const chromiumPath = "/usr/bin/chromium" // Debian's; the tests never download a browser

// timeout bounds every command and every wait for a page. Generous, because the browser shares
// the CPU with the race detector; a passing run waits far less.
const timeout = 15 * time.Second

// startTimeout bounds the start of the browser.
const startTimeout = time.Minute

// A Browser is one headless Chromium, driven for one test. Its methods and its pages' methods
// must be called from the test's goroutine.
type Browser struct {
	t      testing.TB
	stdin  io.WriteCloser
	stderr syncBuffer
	exited chan struct{} // closed once the driver has exited and its output is read
	seq    int           // the last command sent

	mu       sync.Mutex // guards the fields below
	answers  map[int]answer
	problems []problem
	allowed  []func(page, problem string) bool // by page, in the order Allow was called
	changed  chan struct{}                     // closed and replaced when answers or problems grow, or the driver exits
	waitErr  error
}

type answer struct {
	Value json.RawMessage
	Error string
}

type problem struct{ page, message string }

// A Page is one tab of the browser.
type Page struct {
	b    *Browser
	name string
}

// Start starts Chromium for t; it is closed when t ends, after which the test fails if any page
// showed a problem that was not allowed. Start skips t if Chromium or the npm packages are
// missing, or fails it under SSE_INTEROP=require.
func Start(t testing.TB) *Browser {
	t.Helper()
	dir := require(t)
	// The context bounds the whole process; a test that ran this long has hung.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, "node", filepath.Join(dir, "driver.mjs"), t.TempDir())
	// On SIGTERM Playwright closes the browser it launched; SIGKILL would orphan it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	b := &Browser{t: t, exited: make(chan struct{}), answers: make(map[int]answer), changed: make(chan struct{})}
	cmd.Stderr = &b.stderr
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
		t.Fatalf("start the browser: %v", err)
	}
	b.stdin = stdin
	go b.read(stdout, cmd)
	t.Cleanup(func() {
		defer cancel()
		b.close()
	})
	// Starting Chromium takes a second on an idle machine, and much longer on a loaded one:
	// wait for it here, so that timeout bounds only the commands.
	b.do(map[string]any{"op": "started"}, startTimeout)
	return b
}

// require returns the directory of driver.mjs if the browser can run, and otherwise skips t, or
// fails it under SSE_INTEROP=require: CI installs everything, and there a skip must not pass for
// a pass.
func require(t testing.TB) string {
	t.Helper()
	dir := driverDir(t)
	if need := missing(dir); need != "" {
		if os.Getenv("SSE_INTEROP") == "require" {
			t.Fatalf("browser unavailable and SSE_INTEROP=require; install %s", need)
		}
		t.Skipf("browser unavailable; install %s (set SSE_INTEROP=require to fail instead)", need)
	}
	return dir
}

// driverDir returns the directory of driver.mjs, found from the test's directory (any package
// of the module) by way of the module's root.
func driverDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(ssetest.ModuleRoot(t), "internal", "interop", "browser")
	// Looking at the script also tells go test's cache that the result depends on it.
	if _, err := os.Stat(filepath.Join(dir, "driver.mjs")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// missing returns what has to be installed before the browser can run, or "" if nothing.
func missing(dir string) string {
	var need []string
	if major, err := nodeVersion(); err != nil || major < 20 {
		need = append(need, "Node.js 20 or newer as node on PATH (and npm)")
	}
	// driver.mjs imports playwright-core from internal/interop/node_modules, its parent's.
	if _, err := os.Stat(filepath.Join(dir, "..", "node_modules", "playwright-core", "package.json")); err != nil {
		need = append(need, "the npm packages: npm ci --prefix internal/interop")
	} else if _, err := os.Stat(filepath.Join(dir, "..", "package-lock.json")); err != nil {
		need = append(need, "internal/interop/package-lock.json") // read for the test cache's sake
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		need = append(need, "Chromium at "+chromiumPath+": apt-get install -y chromium")
	}
	return strings.Join(need, "; ")
}

// nodeVersion returns the major version of the node on PATH.
var nodeVersion = sync.OnceValues(func() (int, error) {
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		return 0, err
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _, _ := strings.Cut(v, ".")
	return strconv.Atoi(major)
})

// read collects the driver's output until it exits; it owns the process's stdout and Wait.
func (b *Browser) read(stdout io.Reader, cmd *exec.Cmd) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 64<<20) // a screenshot is one line
	for sc.Scan() {
		var r struct {
			Seq     int             `json:"seq"`
			Value   json.RawMessage `json:"value"`
			Error   string          `json:"error"`
			Problem string          `json:"problem"`
			Page    string          `json:"page"`
		}
		b.mu.Lock()
		switch err := json.Unmarshal(sc.Bytes(), &r); {
		case err != nil:
			b.problems = append(b.problems, problem{"", fmt.Sprintf("driver wrote %q: %v", sc.Text(), err)})
		case r.Seq != 0:
			b.answers[r.Seq] = answer{r.Value, r.Error}
		default:
			b.problems = append(b.problems, problem{r.Page, r.Problem})
		}
		b.broadcast()
		b.mu.Unlock()
	}
	err := cmd.Wait()
	b.mu.Lock()
	b.waitErr = err
	b.broadcast()
	b.mu.Unlock()
	close(b.exited)
}

// broadcast wakes whoever waits for the driver. b.mu must be held.
func (b *Browser) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// close closes the driver's stdin, which makes it close the browser and exit, waits for that,
// and fails the test on any problem a page showed.
func (b *Browser) close() {
	t := b.t
	t.Helper()
	b.stdin.Close()
	select {
	case <-b.exited:
	case <-time.After(30 * time.Second): // cmd's context and WaitDelay end it soon after
		t.Errorf("the browser did not exit")
		<-b.exited
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waitErr != nil {
		t.Errorf("browser driver: %v\nstderr:\n%s", b.waitErr, b.stderr.String())
	}
	if p := b.unexpected(); p != "" {
		t.Errorf("%s", p)
	}
}

// unexpected describes the problems that no Allow covers, or returns "". b.mu must be held.
func (b *Browser) unexpected() string {
	var lines []string
	for _, p := range b.problems {
		ok := false
		for _, allow := range b.allowed {
			if allow(p.page, p.message) {
				ok = true
				break
			}
		}
		if !ok {
			lines = append(lines, fmt.Sprintf("\tpage %s: %s", p.page, p.message))
		}
	}
	if lines == nil {
		return ""
	}
	return "the browser showed problems:\n" + strings.Join(lines, "\n")
}

// do sends the driver a command and returns the value it answers with. It fails the test if the
// command fails, if it takes longer than limit, or if a page has shown a problem by then.
func (b *Browser) do(cmd map[string]any, limit time.Duration) json.RawMessage {
	b.t.Helper()
	v, err := b.call(cmd, limit)
	if err != nil {
		b.t.Fatal(err)
	}
	return v
}

// call is do, returning the error the driver answers with instead of failing the test.
func (b *Browser) call(cmd map[string]any, limit time.Duration) (json.RawMessage, error) {
	t := b.t
	t.Helper()
	b.seq++
	seq := b.seq
	cmd["seq"] = seq
	line, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.stdin.Write(append(line, '\n')); err != nil {
		t.Fatalf("browser driver: %v", err)
	}
	what := string(line)
	if len(what) > 200 {
		what = what[:200] + "…"
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		b.mu.Lock()
		a, answered := b.answers[seq]
		delete(b.answers, seq)
		problems := b.unexpected()
		changed := b.changed
		b.mu.Unlock()
		switch {
		case problems != "":
			t.Fatalf("%s\n(during %s)", problems, what)
		case answered && a.Error != "":
			return nil, fmt.Errorf("browser: %s: %s", what, a.Error)
		case answered:
			return a.Value, nil
		}
		select {
		case <-changed:
		case <-b.exited:
			t.Fatalf("the browser exited during %s\nstderr:\n%s", what, b.stderr.String())
		case <-timer.C:
			t.Fatalf("browser: no answer to %s after %v", what, limit)
		}
	}
}

// Open opens a new page (a tab) named name, loads url in it and waits for it to load. The name
// appears in failure messages.
func (b *Browser) Open(name, url string) *Page {
	b.t.Helper()
	b.do(map[string]any{"op": "goto", "page": name, "url": url}, timeout)
	return &Page{b, name}
}

// Allow accepts the problems of p for which allow returns true, from now on, instead of failing
// the test with them: a test that cuts a page's connection expects its EventSource to report it.
func (p *Page) Allow(allow func(problem string) bool) {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	p.b.allowed = append(p.b.allowed, func(page, problem string) bool {
		return page == p.name && allow(problem)
	})
}

// Problems returns every problem p has shown so far, allowed or not.
func (p *Page) Problems() []string {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	var out []string
	for _, pr := range p.b.problems {
		if pr.page == p.name {
			out = append(out, pr.message)
		}
	}
	return out
}

// Fill types value into the input that selector (a CSS selector) finds, replacing its text.
func (p *Page) Fill(selector, value string) {
	p.b.t.Helper()
	p.b.do(map[string]any{"op": "fill", "page": p.name, "selector": selector, "value": value}, timeout)
}

// Press presses key (such as "Enter") in the element that selector finds.
func (p *Page) Press(selector, key string) {
	p.b.t.Helper()
	p.b.do(map[string]any{"op": "press", "page": p.name, "selector": selector, "key": key}, timeout)
}

// Eval evaluates the JavaScript expression expr in the page and stores its value, which must
// be JSON, in the value pointed to by v (if v is not nil).
func (p *Page) Eval(expr string, v any) {
	p.b.t.Helper()
	p.unmarshal(expr, p.b.do(map[string]any{"op": "eval", "page": p.name, "expr": expr}, timeout), v)
}

// Wait waits until the JavaScript expression expr is truthy in the page, and stores its value
// as Eval does. After 15 seconds it fails the test, saying that it was waiting for what and
// showing the page's text.
func (p *Page) Wait(what, expr string, v any) {
	p.b.t.Helper()
	cmd := map[string]any{"op": "wait", "page": p.name, "expr": expr, "timeout": timeout.Milliseconds()}
	// The driver gives up first, so that its answer, not the Go side's timeout, ends the wait.
	raw, err := p.b.call(cmd, timeout+5*time.Second)
	if err != nil {
		var text string
		p.Eval("document.body.innerText", &text)
		p.b.t.Fatalf("page %s: waiting for %s: %v\nthe page shows:\n%s", p.name, what, err, text)
	}
	p.unmarshal(expr, raw, v)
}

// Text returns the text of the element that selector finds, or fails the test if there is none.
func (p *Page) Text(selector string) string {
	p.b.t.Helper()
	var s *string
	p.Eval(fmt.Sprintf("document.querySelector(%s)?.textContent ?? null", jsString(selector)), &s)
	if s == nil {
		p.b.t.Fatalf("page %s: no element %s", p.name, selector)
	}
	return *s
}

// Screenshot returns a PNG image of what the page shows.
func (p *Page) Screenshot() []byte {
	p.b.t.Helper()
	var s string
	p.unmarshal("screenshot", p.b.do(map[string]any{"op": "screenshot", "page": p.name}, timeout), &s)
	img, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		p.b.t.Fatalf("screenshot: %v", err)
	}
	return img
}

func (p *Page) unmarshal(what string, raw json.RawMessage, v any) {
	p.b.t.Helper()
	if v == nil {
		return
	}
	if err := json.Unmarshal(raw, v); err != nil {
		p.b.t.Fatalf("page %s: %s = %s: %v", p.name, what, raw, err)
	}
}

// jsString returns s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// syncBuffer is a strings.Builder that the exec package's copying goroutine and the test can share.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
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
