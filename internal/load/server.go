package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	alex "github.com/alexandrevicenzi/go-sse"
	r3 "github.com/r3labs/sse/v2"
	"github.com/redis/go-redis/v9"
	tmax "github.com/tmaxmax/go-sse"

	"sse"
	"sse/redisbroker"
)

// A library is one SSE library's server side, set up for a scenario.
type library interface {
	handler() http.Handler
	// publish sends one event whose data is data to every client. data is reused after
	// the call, so a library that keeps it gets its own copy: each library makes exactly one
	// copy per event, as its caller would have to.
	publish(data []byte) error
	// clients returns the library's own count of subscribed clients, or -1 if it keeps none
	// that can be read.
	clients() int
	// config describes the setup, for the report.
	config() string
}

// A streamCounter is a library that counts the streams it serves itself. Libraries that take
// a stream's connection over from net/http (sse-hijack, floor) serve it after the handler has
// returned, so the handlers running do not count their streams; the others serve each stream
// inside its handler.
type streamCounter interface {
	streams() int64
}

// Buffer sizes given to the libraries that have a knob, per scenario: the history our
// Broker keeps is also how far behind a client may fall, so peers get the same depth of
// buffering where they let us choose.
func depth(scenario string) int {
	switch scenario {
	case "fanout":
		return 8192 // a 5,000-event burst fits
	case "slow":
		return 32768 // a 20,000-event burst fits
	case "cluster-B":
		return 16384 // over a second at 10,000 events/s, as rate's 1024 is at 1,000/s
	}
	return 1024 // rate: one second at 1,000 events/s; idle: the default
}

func newLibrary(name, scenario, redisAddr string) (library, error) {
	if redisAddr != "" {
		if name != "sse" && name != "sse-hijack" {
			return nil, fmt.Errorf("%s: no Redis module", name)
		}
		return newRedisNode(scenario, redisAddr, name == "sse-hijack")
	}
	switch name {
	case "sse":
		return newOurs(scenario, false)
	case "sse-hijack":
		return newOurs(scenario, true)
	case "floor":
		return newFloor()
	case "r3labs":
		return newR3labs(scenario), nil
	case "tmaxmax":
		return &tmaxmaxLib{s: &tmax.Server{}}, nil
	case "alexandrevicenzi":
		// A nil Logger discards; the default Options would log every message to stdout.
		return &alexLib{s: alex.NewServer(&alex.Options{})}, nil
	case "bare":
		return bareLib{}, nil
	case "bare-retry":
		return bareLib{retry: true}, nil
	}
	return nil, fmt.Errorf("unknown library %q", name)
}

// ours is this module's Broker; with hijack, under sse.WithHijack().
type ours struct {
	b   *sse.Broker
	cfg string
}

func newOurs(scenario string, hijack bool) (*ours, error) {
	var opts []sse.Option
	var cfg []string
	if hijack {
		opts = append(opts, sse.WithHijack())
		cfg = append(cfg, "WithHijack()")
	}
	if n := depth(scenario); n != 1024 {
		opts = append(opts, sse.WithHistory(n))
		cfg = append(cfg, fmt.Sprintf("WithHistory(%d)", n))
	}
	if scenario == "slow" {
		opts = append(opts, sse.WithWriteTimeout(2*time.Second))
		cfg = append(cfg, "WithWriteTimeout(2s)")
	}
	if len(cfg) == 0 || len(cfg) == 1 && hijack {
		cfg = append(cfg, "defaults (history 1024, write timeout 10s, heartbeat 15s)")
	}
	return &ours{b: sse.NewBroker(opts...), cfg: "sse.NewBroker(" + strings.Join(cfg, ", ") + ")"}, nil
}

func (o *ours) handler() http.Handler { return o.b.Handler() }
func (o *ours) publish(data []byte) error {
	_, err := o.b.Publish(sse.Event{Data: string(data)})
	return err
}
func (o *ours) clients() int   { return int(o.b.Stats().Clients) }
func (o *ours) streams() int64 { return o.b.Stats().Clients }
func (o *ours) config() string { return o.cfg }

// redisNode is one process's node of a stream shared through Redis: this module's
// redisbroker.Broker on namespace "load".
type redisNode struct {
	b   *redisbroker.Broker
	cfg string
}

func newRedisNode(scenario, addr string, hijack bool) (*redisNode, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	var opts []redisbroker.Option
	cfg := []string{`redis.NewClient(&redis.Options{Addr: ...})`, `"load"`}
	var bopts []sse.Option
	var bcfg []string
	if hijack {
		bopts = append(bopts, sse.WithHijack())
		bcfg = append(bcfg, "sse.WithHijack()")
	}
	if n := depth(scenario); n != 1024 {
		bopts = append(bopts, sse.WithHistory(n))
		bcfg = append(bcfg, fmt.Sprintf("sse.WithHistory(%d)", n))
	}
	if len(bopts) > 0 {
		opts = append(opts, redisbroker.WithBrokerOptions(bopts...))
		cfg = append(cfg, "WithBrokerOptions("+strings.Join(bcfg, ", ")+")")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := redisbroker.New(ctx, rdb, "load", opts...)
	if err != nil {
		return nil, err
	}
	return &redisNode{b: b, cfg: "redisbroker.New(" + strings.Join(cfg, ", ") + ")"}, nil
}

func (n *redisNode) handler() http.Handler { return n.b.Handler() }
func (n *redisNode) publish(data []byte) error {
	_, err := n.b.Publish(sse.Event{Data: string(data)})
	return err
}
func (n *redisNode) clients() int   { return int(n.b.Stats().Clients) }
func (n *redisNode) streams() int64 { return n.b.Stats().Clients }
func (n *redisNode) config() string { return n.cfg }

// r3labsLib is github.com/r3labs/sse/v2.
type r3labsLib struct {
	s     *r3.Server
	subs  atomic.Int64
	depth int
}

func newR3labs(scenario string) *r3labsLib {
	l := &r3labsLib{s: r3.New(), depth: depth(scenario)}
	// AutoReplay (on by default) keeps every event forever and replays the whole log to
	// each new subscriber: not a live fan-out, and memory without bound. Off, as a
	// deployment that cares about either would have it.
	l.s.AutoReplay = false
	l.s.BufferSize = l.depth
	l.s.OnSubscribe = func(string, *r3.Subscriber) { l.subs.Add(1) }
	l.s.OnUnsubscribe = func(string, *r3.Subscriber) { l.subs.Add(-1) }
	l.s.CreateStream("events")
	return l
}

func (l *r3labsLib) handler() http.Handler {
	// r3labs picks the stream from the query; the load side asks every library for /events.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(r.Context())
		u := *r.URL
		u.RawQuery = "stream=events"
		r.URL = &u
		l.s.ServeHTTP(w, r)
	})
}
func (l *r3labsLib) publish(data []byte) error {
	l.s.Publish("events", &r3.Event{Data: bytes.Clone(data)})
	return nil
}
func (l *r3labsLib) clients() int { return int(l.subs.Load()) }
func (l *r3labsLib) config() string {
	return fmt.Sprintf("r3.New(); AutoReplay=false; BufferSize=%d (per-subscriber channel fixed at 64)", l.depth)
}

// tmaxmaxLib is github.com/tmaxmax/go-sse with its default provider, Joe.
type tmaxmaxLib struct{ s *tmax.Server }

func (l *tmaxmaxLib) handler() http.Handler { return l.s }
func (l *tmaxmaxLib) publish(data []byte) error {
	m := &tmax.Message{}
	m.AppendData(string(data))
	return l.s.Publish(m)
}
func (l *tmaxmaxLib) clients() int { return -1 }
func (l *tmaxmaxLib) config() string {
	return "&sse.Server{} (default provider Joe, no Replayer; no buffer knob: Publish waits for Joe's writes)"
}

// alexLib is github.com/alexandrevicenzi/go-sse.
type alexLib struct{ s *alex.Server }

func (l *alexLib) handler() http.Handler { return l.s }
func (l *alexLib) publish(data []byte) error {
	l.s.SendMessage("/events", alex.SimpleMessage(string(data)))
	return nil
}
func (l *alexLib) clients() int { return l.s.ClientCount() }
func (l *alexLib) config() string {
	return "NewServer(&Options{}) (channel = path; unbuffered per-client channels, no knob)"
}

// bareLib is the floor for idle connections: net/http with the event-stream headers flushed,
// waiting for the client to go, and nothing else. With retry, it also writes the retry line
// that every stream of our Broker starts with. The first body bytes cost about 2 KiB of RSS
// per connection with no change in heap or stacks (by all signs net/http's 2 KiB response
// buffer, allocated either way, becoming resident), so this is the floor for a stream that
// has sent anything at all.
type bareLib struct{ retry bool }

func (l bareLib) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		if l.retry {
			io.WriteString(w, "retry: 3000\n\n")
		}
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
}
func (bareLib) publish([]byte) error { return errors.New("bare: nothing to publish") }
func (bareLib) clients() int         { return -1 }
func (l bareLib) config() string {
	if l.retry {
		return "net/http handler: headers, \"retry: 3000\\n\\n\", flush, wait for r.Context().Done()"
	}
	return "net/http handler: headers, flush, wait for r.Context().Done()"
}

// serve runs the server process for one library and scenario until it is signalled.
func serve(libName, scenario, cpuprofile, redisAddr string) {
	raiseFileLimit()
	lib, err := newLibrary(libName, scenario, redisAddr)
	if err != nil {
		log.Fatal(err)
	}
	var handlers atomic.Int64 // /events handlers running
	var prof profiler
	prof.path = cpuprofile

	mux := http.NewServeMux()
	h := lib.handler()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Add(-1)
		h.ServeHTTP(w, r)
	})
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, _ := strconv.Atoi(q.Get("n"))
		size, _ := strconv.Atoi(q.Get("size"))
		rate, _ := strconv.ParseFloat(q.Get("rate"), 64)
		phase, _ := strconv.Atoi(q.Get("phase"))
		timeout, _ := time.ParseDuration(q.Get("timeout"))
		sync := q.Get("kind") == "sync"
		if n <= 0 || phase < 0 || phase >= maxPhases || timeout <= 0 {
			http.Error(w, "bad parameters", http.StatusBadRequest)
			return
		}
		if !sync {
			prof.start()
		}
		res := publishAll(lib, n, size, rate, phase, sync, timeout)
		json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") != "" {
			// Return what is garbage to the OS so that RSS counts what is in use.
			runtime.GC()
			debug.FreeOSMemory()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := serverStats{
			Goroutines: runtime.NumGoroutine(),
			Handlers:   handlers.Load(),
			Streams:    handlers.Load(),
			LibClients: lib.clients(),
			HeapInuse:  ms.HeapInuse,
			StackInuse: ms.StackInuse,
			// All the memory the runtime holds from the OS, less what it has given back.
			RuntimeSys: ms.Sys - ms.HeapReleased,
		}
		if sc, ok := lib.(streamCounter); ok {
			st.Streams = sc.streams()
		}
		if c, ok := lib.(interface{ cuts() int64 }); ok {
			st.Cut = c.cuts()
		}
		switch l := lib.(type) {
		case *ours:
			s := l.b.Stats()
			st.SSE = &s
		case *redisNode:
			s := l.b.Stats()
			st.SSE = &s
		}
		json.NewEncoder(w).Encode(st)
	})

	mux.HandleFunc("POST /heapprofile", func(w http.ResponseWriter, r *http.Request) {
		// What the open connections hold, for the idle scenario, which publishes nothing.
		if cpuprofile == "" {
			http.Error(w, "no -cpuprofile", http.StatusBadRequest)
			return
		}
		runtime.GC()
		f, err := os.Create(strings.TrimSuffix(cpuprofile, ".prof") + ".heap.prof")
		if err == nil {
			err = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write([]byte("{}"))
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	fmt.Printf("CONFIG %s\n", lib.config())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-sig
		// The publisher may be stuck inside a library for good: just write the profile and go.
		prof.stop()
		os.Exit(0)
	}()
	srv := &http.Server{Handler: mux, ErrorLog: log.New(discard{}, "", 0)}
	log.Fatal(srv.Serve(ln))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

type serverStats struct {
	Goroutines int
	Handlers   int64 // /events handlers running
	Streams    int64 // streams served: the library's own count where it has one (see streamCounter), else Handlers
	LibClients int   // the library's own count, -1 if none
	Cut        int64 `json:",omitempty"` // floor: sockets cut because a write would have blocked
	HeapInuse  uint64
	StackInuse uint64
	RuntimeSys uint64
	SSE        *sse.Stats `json:",omitempty"`
}

type publishResult struct {
	Published  int64 // events published (Publish returned) before the result was sent
	StartNs    int64 // Unix ns when the first Publish began
	EndNs      int64 // Unix ns when the last returned; 0 if unfinished
	AnsweredNs int64 // Unix ns when the result was sent
	Finished   bool
	Err        string `json:",omitempty"`
}

// publishAll publishes n events, at rate per second if rate > 0 or else as fast as publish
// returns, and reports after at most timeout: a library may block its publisher for good, in
// which case the goroutine is left behind and the result says how far it got.
func publishAll(lib library, n, size int, rate float64, phase int, sync bool, timeout time.Duration) publishResult {
	var count atomic.Int64
	var res publishResult
	start := time.Now()
	res.StartNs = start.UnixNano()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 0, max(size, 64))
		var interval time.Duration
		if rate > 0 {
			interval = time.Duration(float64(time.Second) / rate)
		}
		for i := range n {
			if interval > 0 {
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
			}
			buf = eventData(buf[:0], sync, phase, i, size)
			if err := lib.publish(buf); err != nil {
				done <- err
				return
			}
			count.Add(1)
		}
		done <- nil
	}()
	select {
	case err := <-done:
		res.EndNs = time.Now().UnixNano()
		res.Finished = err == nil
		if err != nil {
			res.Err = err.Error()
		}
	case <-time.After(timeout):
	}
	res.Published = count.Load()
	res.AnsweredNs = time.Now().UnixNano()
	return res
}

// eventData appends the data of one event: "T<phase><Unix ns, 19 digits> <index> " padded
// with x to size bytes for a measured event, "S<index>" for a sync event. The time is taken
// last, just before the event is handed to the library.
func eventData(b []byte, sync bool, phase, i, size int) []byte {
	if sync {
		return strconv.AppendInt(append(b, 'S'), int64(i), 10)
	}
	b = append(b, 'T', byte('0'+phase))
	tsAt := len(b)
	b = append(b, "0000000000000000000 "...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, ' ')
	if len(b) < size {
		b = append(b, padding[:size-len(b)]...)
	}
	var tsBuf [20]byte
	ts := strconv.AppendInt(tsBuf[:0], time.Now().UnixNano(), 10)
	copy(b[tsAt+19-len(ts):], ts)
	return b
}

// profiler writes a CPU profile from the first measured publish until the process ends, and
// then mutex and block profiles beside it (NAME.mutex.prof, NAME.block.prof).
type profiler struct {
	path    string
	mu      sync.Mutex
	f       *os.File
	stopped bool
}

func (p *profiler) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.path == "" || p.f != nil || p.stopped {
		return
	}
	f, err := os.Create(p.path)
	if err != nil {
		log.Print(err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Print(err)
		f.Close()
		return
	}
	p.f = f
	// Where the goroutines wait, too: a publisher that is slow without using the CPU is
	// waiting for a lock or a channel.
	runtime.SetMutexProfileFraction(10)
	runtime.SetBlockProfileRate(int(10 * time.Microsecond))
}

func (p *profiler) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.f != nil {
		pprof.StopCPUProfile()
		p.f.Close()
		p.f = nil
		for _, name := range []string{"mutex", "block"} {
			if f, err := os.Create(strings.TrimSuffix(p.path, ".prof") + "." + name + ".prof"); err == nil {
				pprof.Lookup(name).WriteTo(f, 0)
				f.Close()
			}
		}
	}
}

var padding = strings.Repeat("x", 1<<20)
