// Tokens streams a reply word by word, the way a chat assistant shows an answer while it is
// still being generated. Each reply is its own stream, for one request, so it uses an
// sse.Stream, with no Broker: nothing is shared, kept or replayed.
//
//	go run ./examples/tokens
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
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"sse"
)

//go:embed index.html
var page []byte

// defaultAddr is where the example listens unless -addr says otherwise. Each example has a
// port of its own, so that they can run side by side.
const defaultAddr = "127.0.0.1:8082"

// maxQuestion is the longest question accepted, in bytes.
const maxQuestion = 1000

func main() {
	addr := flag.String("addr", defaultAddr, "address to listen on")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("tokens: ")
	if err := run(*addr); err != nil {
		log.Fatal(err)
	}
}

// run serves the replies on addr until the process is interrupted or terminated.
func run(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Listen before printing, so that the address printed is the one served, port 0 included.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("tokens: open http://%s/\n", ln.Addr())

	// http.Server.Shutdown waits for replies in progress but does not cancel them; cancelling
	// the context every request's derives from ends them at the next word instead.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           newServer(&replier{delay: 50 * time.Millisecond}),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	srv.RegisterOnShutdown(cancelBase)

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

// newServer returns the handler of the example: the page at / and the replies at /reply.
func newServer(rp *replier) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.Handle("GET /reply", rp)
	return mux
}

// replier answers GET /reply?q=question with one "message" event per word of the answer,
// then an event of type "done", and ends the response.
type replier struct {
	delay time.Duration // before each word but the first, as if it were being generated
}

func (rp *replier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	if q == "" || len(q) > maxQuestion {
		// Before the stream starts: an EventSource gives up on a 400 instead of retrying.
		http.Error(w, "ask a question of 1 to 1000 bytes in q", http.StatusBadRequest)
		return
	}
	s, err := sse.NewStream(w, r)
	if err != nil {
		return
	}
	for i, word := range answer(q) {
		if i > 0 && !sleep(r.Context(), rp.delay) {
			return // the client went away
		}
		// Send fails once the client has gone: stop generating for nobody.
		if err := s.Send(sse.Event{Data: word}); err != nil {
			return
		}
	}
	// A stream that simply ended would make the EventSource reconnect and ask again, so
	// the page closes it when it sees this.
	s.Send(sse.Event{Type: "done"})
}

// answer returns the words of the canned answer to q.
func answer(q string) []string {
	// The question is echoed back, and a Stream refuses invalid UTF-8.
	q = strings.ToValidUTF8(q, "\uFFFD")
	// As a sentence, but without a full stop after a question's own mark.
	if r, _ := utf8.DecodeLastRuneInString(q); !strings.ContainsRune(".?!…", r) {
		q += "."
	}
	return strings.Fields("You asked: " + q + " " + cannedAnswer)
}

const cannedAnswer = `Server-Sent Events send a stream of text events over one long HTTP
response. The browser reads them with EventSource, which reconnects by itself when the
connection drops. Each word of this answer is one event, flushed as soon as it is written.`

// sleep waits for d, and reports whether it did before ctx was done.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
