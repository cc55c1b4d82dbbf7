package sse_test

import (
	"fmt"
	"os"
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
