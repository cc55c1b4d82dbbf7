// Chat is a multi-room chat: each room is a Broker topic, messages are POSTed as forms and
// published as JSON, and every open page receives them as Server-Sent Events.
//
//	go run ./examples/chat
//
// A dropped connection needs no reload: the page's EventSource reconnects by itself with the ID
// of the last message it saw, and the Broker replays the messages said since.
//
// With -redis, several chat processes share their rooms through a Redis server (see the
// redisbroker module): a message said on one reaches the pages of all, and a page resumes on
// whichever process it reconnects to.
//
//	go build -o /tmp/chat ./examples/chat
//	/tmp/chat -addr 127.0.0.1:8091 -redis 127.0.0.1:6379 &
//	/tmp/chat -addr 127.0.0.1:8092 -redis 127.0.0.1:6379 &
package main

import (
	"context"
	_ "embed"
	"encoding/json"
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

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/redisbroker"
)

//go:embed index.html
var page []byte

// defaultAddr is where the example listens unless -addr says otherwise. Each example has a
// port of its own, so that they can run side by side.
const defaultAddr = "127.0.0.1:8080"

// Limits on a message, which every room keeps the last 256 of in memory.
const (
	maxRoomLen = 32
	maxNameLen = 32
	maxTextLen = 2000
	maxForm    = 8 << 10 // bytes of request body
)

func main() {
	addr := flag.String("addr", defaultAddr, "address to listen on")
	redisAddr := flag.String("redis", "", "host:port of a Redis server through which chat processes share their rooms (default: this process alone)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("chat: ")
	if err := run(*addr, *redisAddr); err != nil {
		log.Fatal(err)
	}
}

// broker is what the chat needs of a Broker: an sse.Broker, or a redisbroker.Broker shared
// with other processes.
type broker interface {
	ServeEvents(w http.ResponseWriter, r *http.Request, topics ...string) error
	Publish(ev sse.Event, topics ...string) (id string, err error)
	Shutdown(ctx context.Context) error
}

// run serves the chat on addr until the process is interrupted or terminated, sharing its
// rooms through the Redis server at redisAddr unless it is empty.
func run(addr, redisAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Each room keeps its last 256 messages for pages that reconnect; presence learns from the
	// broker when a page's stream ends.
	p := newPresence()
	var b broker
	if redisAddr == "" {
		b = sse.NewBroker(sse.WithHistory(256), p.option())
	} else {
		rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
		defer rdb.Close()
		startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// New returns once this process has read the rooms' recent messages from Redis.
		rb, err := redisbroker.New(startCtx, rdb, "chat", redisbroker.WithBrokerOptions(sse.WithHistory(256), p.option()))
		cancel()
		if err != nil {
			return err
		}
		b = rb
		fmt.Printf("chat: sharing rooms through Redis at %s\n", redisAddr)
	}
	p.b = b

	// Listen before printing, so that the address printed is the one served, port 0 included.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("chat: open http://%s/\n", ln.Addr())
	srv := &http.Server{Handler: newServer(b, p), ReadHeaderTimeout: 10 * time.Second}
	// Streams never end on their own, so http.Server.Shutdown would wait for them forever.
	srv.RegisterOnShutdown(func() { b.Shutdown(context.Background()) })

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
	p.depart() // while Publish still works
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Wait for the broker too (the one RegisterOnShutdown started ends at once): a Redis
	// broker must stop using its client before the deferred Close.
	return b.Shutdown(shutdownCtx)
}

// message is the data of every "message" event, as JSON.
type message struct {
	Name string    `json:"name"`
	Text string    `json:"text"`
	Time time.Time `json:"time"`
}

// newServer returns the chat's handler: the page at /, each room's stream at
// /rooms/{room}/events (with ?page=ID, the page is listed in the room: see presence), and
// POST /rooms/{room}/messages to say something in a room.
func newServer(b broker, p *presence) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET /rooms/{room}/events", func(w http.ResponseWriter, r *http.Request) {
		room := r.PathValue("room")
		if !validRoom(room) {
			// Refuse before ServeEvents starts the stream. An EventSource does not retry
			// after a 400, which is right: the name will not become valid.
			http.Error(w, "bad room name", http.StatusBadRequest)
			return
		}
		if page := r.URL.Query().Get("page"); page != "" {
			if !validPage(page) {
				http.Error(w, "bad page ID", http.StatusBadRequest)
				return
			}
			p.serve(w, r, room, page)
			return
		}
		b.ServeEvents(w, r, topic(room))
	})
	mux.HandleFunc("POST /rooms/{room}/messages", func(w http.ResponseWriter, r *http.Request) {
		room := r.PathValue("room")
		if !validRoom(room) {
			http.Error(w, "bad room name", http.StatusBadRequest)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		m := message{Name: r.PostFormValue("name"), Text: r.PostFormValue("text"), Time: time.Now()}
		switch {
		case m.Text == "":
			http.Error(w, "empty text", http.StatusBadRequest)
			return
		case len(m.Text) > maxTextLen:
			http.Error(w, "text too long", http.StatusBadRequest)
			return
		case len(m.Name) > maxNameLen:
			http.Error(w, "name too long", http.StatusBadRequest)
			return
		case m.Name == "":
			m.Name = "anonymous"
		}
		// encoding/json turns invalid UTF-8 into U+FFFD, so Publish never refuses the data.
		data, err := json.Marshal(m)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if _, err := b.Publish(sse.Event{Type: "message", Data: string(data)}, topic(room)); err != nil {
			if errors.Is(err, sse.ErrClosed) {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
			} else {
				// Redis could not be reached: the message may or may not have gone out.
				log.Printf("publish: %v", err)
				http.Error(w, "cannot send now", http.StatusServiceUnavailable)
			}
			return
		}
		if names, changed := p.rename(room, r.PostFormValue("page"), m.Name); changed {
			p.publish(room, names)
		}
		// 204 leaves the page where it is, even when a plain form is submitted without script.
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// topic returns the Broker topic of a room. The prefix keeps rooms apart from any other topic
// the program might add.
func topic(room string) string { return "room:" + room }

// validRoom reports whether name is a room name: 1 to 32 ASCII letters, digits, '-' or '_'.
// The path segment is unescaped by then, so "a%2Fb" is refused as "a/b".
func validRoom(name string) bool {
	if name == "" || len(name) > maxRoomLen {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
