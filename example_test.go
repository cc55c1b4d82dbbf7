package sse_test

import (
	"bufio"
	"context"
	"expvar"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"sse"
)

func ExampleEncoder() {
	enc := sse.NewEncoder(os.Stdout)
	enc.Encode(sse.Event{ID: "1", Type: "greeting", Data: "hello\nworld"})
	enc.Comment("keep-alive")
	enc.Encode(sse.Event{Data: "", Retry: 5 * time.Second})
	// Output:
	// event: greeting
	// data: hello
	// data: world
	// id: 1
	//
	// : keep-alive
	// retry: 5000
	// data:
}

func ExampleEncoder_Encode_refused() {
	enc := sse.NewEncoder(os.Stdout)
	err := enc.Encode(sse.Event{ID: "line\nbreak", Data: "x"})
	fmt.Println(err)
	// Output:
	// sse: invalid ID: contains a line break
}

func ExampleEvent_MarshalText() {
	b, _ := sse.Event{Type: "update", Data: "a\r\nb"}.MarshalText()
	fmt.Printf("%q\n", b)
	// Output:
	// "event: update\ndata: a\ndata: b\n\n"
}

// Example shows a Broker behind a real server: a client connects, an event is published, and
// the client reads it off the wire.
func Example() {
	b := sse.NewBroker()
	mux := http.NewServeMux()
	mux.Handle("/events", b.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer b.Shutdown(context.Background()) // before srv.Close, which waits for open streams

	resp, err := http.Get(srv.URL + "/events")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	for b.Stats().Clients == 0 {
		time.Sleep(time.Millisecond) // a client receives what is published once it is connected
	}
	b.Publish(sse.Event{ID: "1", Type: "tick", Data: "42"})

	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		line := lines.Text()
		if strings.HasPrefix(line, "event:") || strings.HasPrefix(line, "data:") {
			fmt.Println(line)
		}
		if line == "data: 42" {
			break
		}
	}
	// Output:
	// event: tick
	// data: 42
}

// ExampleBroker_ServeEvents chooses a stream's topics per request, and refuses requests with an
// ordinary error response before any stream starts.
func ExampleBroker_ServeEvents() {
	b := sse.NewBroker()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{user}/events", func(w http.ResponseWriter, r *http.Request) {
		user := r.PathValue("user")
		if r.Header.Get("Authorization") != "Bearer "+user { // stand-in for real authentication
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		b.ServeEvents(w, r, "user:"+user, "announcements")
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer b.Shutdown(context.Background())

	resp, err := http.Get(srv.URL + "/users/ada/events")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	// Output:
	// 401 Unauthorized
}

// ExampleNewStream streams one reply word by word, with no Broker.
func ExampleNewStream() {
	handler := func(w http.ResponseWriter, r *http.Request) {
		stream, err := sse.NewStream(w, r)
		if err != nil {
			return
		}
		for _, word := range strings.Fields("a reply, word by word") {
			if stream.Send(sse.Event{Data: word}) != nil {
				return // the client has gone
			}
		}
		stream.Send(sse.Event{Type: "done"})
	}
	srv := httptest.NewServer(http.HandlerFunc(handler))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
	// Output:
	// data: a
	//
	// data: reply,
	//
	// data: word
	//
	// data: by
	//
	// data: word
	//
	// event: done
	// data:
}

// ExampleBroker_Stats publishes a Broker's counters with expvar, at /debug/vars.
func ExampleBroker_Stats() {
	b := sse.NewBroker()
	defer b.Shutdown(context.Background())
	expvar.Publish("sse", expvar.Func(func() any { return b.Stats() }))

	b.Publish(sse.Event{Data: "x"})
	fmt.Println(expvar.Get("sse"))
	// Output:
	// {"Clients":0,"Published":1,"Delivered":0,"SlowDisconnects":0,"Replays":0,"UnknownReplays":0,"Refused":0,"Hijacked":0}
}

// ExampleBroker_Shutdown wires a Broker into an http.Server's shutdown, which would otherwise
// wait for event streams that never end on their own.
func ExampleBroker_Shutdown() {
	b := sse.NewBroker()
	srv := &http.Server{Handler: b.Handler()}
	srv.RegisterOnShutdown(func() { b.Shutdown(context.Background()) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)

	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	for b.Stats().Clients == 0 {
		time.Sleep(time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("server shutdown:", srv.Shutdown(ctx))
	_, err = b.Publish(sse.Event{Data: "too late"})
	fmt.Println("publish:", err)
	// Output:
	// server shutdown: <nil>
	// publish: sse: broker shut down
}
