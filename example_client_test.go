package sse_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"sse"
)

// ExampleDecoder reads a stream event by event: an ID stays in effect until the stream sets
// another, even in a block with no data, which dispatches nothing.
func ExampleDecoder() {
	stream := "id: 1\nevent: greeting\ndata: hello\ndata: world\n\nid: 2\n\n: a comment\ndata: bye\n\n"
	d := sse.NewDecoder(strings.NewReader(stream))
	for {
		ev, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			panic(err)
		}
		fmt.Printf("%q %q %q\n", ev.ID, ev.Type, ev.Data)
	}
	fmt.Println("resume after:", d.LastEventID())
	// Output:
	// "1" "greeting" "hello\nworld"
	// "2" "" "bye"
	// resume after: 2
}

// ExampleRead reads the answer of an LLM-style API: a POST whose response is a stream of
// events, read once to its end.
func ExampleRead() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stream, err := sse.NewStream(w, r)
		if err != nil {
			return
		}
		for _, token := range []string{"Hello", ",", " world"} {
			stream.Send(sse.Event{Type: "delta", Data: `{"text":"` + token + `"}`})
		}
		stream.Send(sse.Event{Type: "done"})
	}))
	defer api.Close()

	resp, err := http.Post(api.URL, "application/json", strings.NewReader(`{"prompt":"greet"}`))
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	for ev, err := range sse.Read(resp.Body) {
		if err != nil {
			fmt.Println("error:", err) // the stream broke off: the answer is incomplete
			return
		}
		fmt.Printf("%s %s\n", ev.Type, ev.Data)
	}
	// Output:
	// delta {"text":"Hello"}
	// delta {"text":","}
	// delta {"text":" world"}
	// done
}

// ExampleClient_Events follows a feed: the Client reconnects when the connection drops and
// resumes after the last event it received, until the context ends or the server answers 204.
func ExampleClient_Events() {
	b := sse.NewBroker()
	srv := httptest.NewServer(b.Handler())
	defer srv.Close()
	defer b.Shutdown(context.Background()) // before srv.Close, which waits for open streams

	go func() {
		for b.Stats().Clients == 0 {
			time.Sleep(time.Millisecond) // a client receives what is published once it is connected
		}
		for _, price := range []string{"101.5", "101.7", "101.6"} {
			b.Publish(sse.Event{Type: "price", Data: price})
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	c := &sse.Client{}
	n := 0
	for ev, err := range c.Events(req) {
		if err != nil {
			fmt.Println("error:", err) // the context ended, or the server refused the stream
			return
		}
		fmt.Println(ev.Type, ev.Data)
		if n++; n == 3 {
			break // closes the connection
		}
	}
	// Output:
	// price 101.5
	// price 101.7
	// price 101.6
}

// ExampleClient_Events_unavailable follows a feed behind a proxy whose backend is restarting:
// the proxy answers 503, which the Client rides out, telling OnReconnect, where EventSource
// would give up.
func ExampleClient_Events_unavailable() {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			http.Error(w, "backend restarting", http.StatusServiceUnavailable)
			return
		}
		stream, err := sse.NewStream(w, r)
		if err != nil {
			return
		}
		stream.Send(sse.Event{Type: "price", Data: "101.5"})
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	c := &sse.Client{
		Retry: 10 * time.Millisecond,
		OnReconnect: func(err error, wait time.Duration) {
			var re *sse.ResponseError
			if errors.As(err, &re) {
				fmt.Println("reconnecting after", re.StatusCode, http.StatusText(re.StatusCode))
			}
		},
	}
	for ev, err := range c.Events(req) {
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println(ev.Type, ev.Data)
		break
	}
	// Output:
	// reconnecting after 503 Service Unavailable
	// price 101.5
}
