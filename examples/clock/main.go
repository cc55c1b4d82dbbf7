// Clock is the classic Server-Sent Events demo: every client sees the server's time tick once
// a second, and is told once, on connecting, when it connected.
//
//	go run ./examples/clock
//
// The ticks go through a Broker, shared by every client. The connect time belongs to one
// connection only, which a Broker topic cannot express; see events for how it is sent.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"sse"
)

//go:embed index.html
var page []byte

// defaultAddr is where the example listens unless -addr says otherwise. Each example has a
// port of its own, so that they can run side by side.
const defaultAddr = "127.0.0.1:8081"

// clockTopic is the topic every tick is published to and every client reads.
const clockTopic = "clock"

func main() {
	addr := flag.String("addr", defaultAddr, "address to listen on")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("clock: ")
	if err := run(*addr); err != nil {
		log.Fatal(err)
	}
}

// run serves the clock on addr until the process is interrupted or terminated.
func run(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Listen before printing, so that the address printed is the one served, port 0 included.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("clock: open http://%s/\n", ln.Addr())

	// Only the latest time matters to a clock: a short history keeps a reconnecting client's
	// replay short.
	b := sse.NewBroker(sse.WithHistory(60))
	srv := &http.Server{Handler: newServer(b), ReadHeaderTimeout: 10 * time.Second}
	// Streams never end on their own, so http.Server.Shutdown would wait for them forever.
	srv.RegisterOnShutdown(func() { b.Shutdown(context.Background()) })

	go tick(ctx, b, time.Second)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stop() // a second interrupt kills the process at once

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newServer returns the clock's handler: the page at / and the event stream at /events.
func newServer(b *sse.Broker) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) { events(b, w, r) })
	return mux
}

// events streams a connecttime event to this client alone, then the shared ticks.
//
// A Broker has no way to send an event to one client: everything it sends is published to a
// topic, and a client that connects without a Last-Event-ID sees only what is published after
// it joined, which happens inside ServeEvents, where the caller cannot reach. So the handler
// starts the response as a one-off Stream, sends the connect time on it, and then hands the
// same response to the Broker, which carries on writing events after it.
func events(b *sse.Broker, w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// A GET pattern also matches HEAD. Refuse it here, before the Stream starts the
		// response, since ServeEvents could then no longer answer with a status of its own.
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s, err := sse.NewStream(w, r)
	if err != nil {
		return
	}
	// The event has no ID, so that the client's Last-Event-ID stays the last tick's, which is
	// what the Broker resumes from when the client reconnects.
	if err := s.Send(sse.Event{Type: "connecttime", Data: now()}); err != nil {
		return
	}
	b.ServeEvents(w, r, clockTopic)
}

// tick publishes the time to every client at each interval, until ctx is done or the broker
// is shut down.
func tick(ctx context.Context, b *sse.Broker, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := b.Publish(sse.Event{Type: "tick", Data: now()}, clockTopic); err != nil {
			return // sse.ErrClosed: the server is shutting down
		}
	}
}

func now() string { return time.Now().Format(time.DateTime) }
