package main

import (
	"bufio"
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sse"
	"sse/internal/ssetest"
)

// TestTail runs tail against a Broker's stream, cuts its connection, and checks that it
// prints every event once, in order, across the reconnection.
func TestTail(t *testing.T) {
	ssetest.CheckGoroutines(t)
	b := sse.NewBroker(sse.WithRetry(time.Millisecond))
	ts := httptest.NewServer(b.Handler())
	t.Cleanup(ts.Close)
	t.Cleanup(func() { b.Shutdown(context.Background()) }) // before ts.Close, which waits for streams

	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	logs := &syncWriter{w: new(strings.Builder)}
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		runErr = run(ctx, ts.URL, "", pw, log.New(logs, "", 0))
		pw.Close()
	})
	defer func() {
		cancel()
		pr.Close()
		wg.Wait()
		if runErr != nil {
			t.Errorf("run: %v", runErr)
		}
	}()
	lines := bufio.NewScanner(pr)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("tail ended before printing %q", want)
		}
		if got := lines.Text(); got != want {
			t.Fatalf("tail printed %q, want %q", got, want)
		}
	}

	waitClients(t, b, 1)
	b.Publish(sse.Event{ID: "1", Type: "tick", Data: "one"})
	expect("tick [1] one")
	b.Publish(sse.Event{ID: "2", Data: "two\nlines"})
	expect("message [2] two")
	expect("\tlines")

	// Cut the stream: tail reconnects with Last-Event-ID 2 and gets what it missed.
	ts.CloseClientConnections()
	b.Publish(sse.Event{ID: "3", Type: "tick", Data: "three"})
	expect("tick [3] three")
	if st := b.Stats(); st.Replays != 1 {
		t.Errorf("the broker counts %d replays, want 1", st.Replays)
	}
	if got := logs.String(); !strings.Contains(got, "reconnecting in") {
		t.Errorf("tail logged %q, want a reconnection", got)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		ev   sse.Event
		want string
	}{
		{sse.Event{Data: "x"}, "message x\n"},
		{sse.Event{Type: "t", ID: "7", Data: "a\nb"}, "t [7] a\n\tb\n"},
		{sse.Event{}, "message \n"},
	}
	for _, tt := range tests {
		if got := format(tt.ev); got != tt.want {
			t.Errorf("format(%+v) = %q, want %q", tt.ev, got, tt.want)
		}
	}
}

// waitClients waits until the Broker has n streams open.
func waitClients(t *testing.T, b *sse.Broker, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); b.Stats().Clients != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients connected, want %d", b.Stats().Clients, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// startExample builds the example called name and runs it as its own process, as a user
// would, on a free port, and returns the address it prints ("NAME: open http://ADDR/"),
// without the final slash. The process is interrupted with the test.
func startExample(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, "sse/examples/"+name).CombinedOutput(); err != nil {
		t.Fatalf("building the %s: %v\n%s", name, err, out)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	first, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the %s's address: %v", name, err)
	}
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(first), name+": open "), "/")
}

// TestTailClock runs the clock example as its own process, as a user would, and tail against
// it: tail prints its ticks as they come.
func TestTailClock(t *testing.T) {
	ssetest.CheckGoroutines(t)
	url := startExample(t, "clock") + "/events"

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() {
		run(ctx, url, "", pw, log.New(io.Discard, "", 0))
		pw.Close()
	})
	defer func() {
		cancel()
		pr.Close()
		wg.Wait()
	}()
	// The clock greets each client with the time it connected, then ticks once a second.
	lines := bufio.NewScanner(pr)
	for _, want := range []string{"connecttime ", "tick [", "tick ["} {
		if !lines.Scan() {
			t.Fatalf("tail ended before printing %q", want)
		}
		if got := lines.Text(); !strings.HasPrefix(got, want) {
			t.Fatalf("tail printed %q, want %q…", got, want)
		}
	}
}

// TestTailChat runs the chat example as its own process and tail against the URL tail's doc
// suggests, on the chat's address: tail prints what is said in the lobby.
func TestTailChat(t *testing.T) {
	ssetest.CheckGoroutines(t)
	suggested := suggestedURL(t)
	addr := startExample(t, "chat")
	url := addr + suggested.Path

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	pr, pw := io.Pipe()
	logs := &syncWriter{w: new(strings.Builder)}
	var wg sync.WaitGroup
	wg.Go(func() {
		pw.CloseWithError(run(ctx, url, "", pw, log.New(logs, "", 0)))
	})
	defer func() {
		cancel()
		pr.Close()
		wg.Wait()
	}()
	// The stream is open once the chat sends its preamble; tail prints nothing for it, so
	// say something until tail prints it.
	lines := make(chan string)
	var runErr error // set before lines is closed
	wg.Go(func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
		runErr = sc.Err() // what run returned
	})
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended (%v; %s) before printing a message", runErr, logs.String())
			}
			if !strings.HasPrefix(line, "message [") || !strings.Contains(line, `"text":"hello from the test"`) {
				t.Fatalf("tail printed %q, want the message said", line)
			}
			return
		case <-tick.C:
			resp, err := http.PostForm(addr+"/rooms/lobby/messages", neturl.Values{"name": {"test"}, "text": {"hello from the test"}})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				t.Fatalf("saying something: %s", resp.Status)
			}
		case <-ctx.Done():
			t.Fatalf("tail printed nothing (%s)", logs.String())
		}
	}
}

// TestExampleAddresses checks that the examples listen on ports of their own by default, so
// that a user who follows the README can run them side by side, and that the URL tail's doc
// suggests is on the chat's.
func TestExampleAddresses(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{"chat", "clock", "tokens"} {
		addr := defaultAddr(t, name)
		if other, ok := seen[addr]; ok {
			t.Errorf("the %s and the %s both listen on %s by default", other, name, addr)
		}
		seen[addr] = name
	}
	if u := suggestedURL(t); seen[u.Host] != "chat" {
		t.Errorf("tail's doc suggests %s, which is not on the chat's default address", u)
	}
}

// defaultAddr returns the value of the defaultAddr constant of the example called name.
func defaultAddr(t *testing.T, name string) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", name, "main.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if len(vs.Names) == 1 && vs.Names[0].Name == "defaultAddr" && len(vs.Values) == 1 {
				if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
					if v, err := strconv.Unquote(lit.Value); err == nil {
						return v
					}
				}
			}
		}
	}
	t.Fatalf("the %s has no string constant defaultAddr", name)
	return ""
}

// suggestedURL returns the URL of the command tail's doc comment suggests.
func suggestedURL(t *testing.T) *neturl.URL {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(f.Doc.Text()) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "go run ./examples/tail "); ok {
			u, err := neturl.Parse(rest)
			if err != nil {
				t.Fatal(err)
			}
			return u
		}
	}
	t.Fatal("tail's doc suggests no command")
	return nil
}
