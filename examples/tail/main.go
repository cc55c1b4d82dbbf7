// Tail prints the events of a stream as they arrive, decoded, and reconnects as a browser's
// EventSource would, resuming with the last event ID it saw.
//
//	go run ./examples/tail http://127.0.0.1:8080/rooms/lobby/events
//
// Try it on the chat example's lobby (go run ./examples/chat, then the command above, and say
// something on the chat's page), or on the clock example's ticks (go run ./examples/clock,
// whose stream is http://127.0.0.1:8081/events). Each event is printed on a line of its own:
// its type, its ID in brackets, and its data, whose further lines are indented. Reconnections
// are reported on standard error. Interrupt it to stop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"sse"
)

func main() {
	lastID := flag.String("last-event-id", "", "resume after the event with this ID")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: tail [-last-event-id ID] URL\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(0)
	log.SetPrefix("tail: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, flag.Arg(0), *lastID, os.Stdout, log.Default()); err != nil {
		log.Fatal(err)
	}
}

// run prints the events of the stream at url to out until ctx is done or the server ends the
// stream for good, and reports reconnections to logger.
func run(ctx context.Context, url, lastID string, out io.Writer, logger *log.Logger) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	c := &sse.Client{
		OnReconnect: func(err error, wait time.Duration) {
			if err == io.EOF {
				err = errors.New("the server ended the stream")
			}
			logger.Printf("%v; reconnecting in %v", err, wait.Round(time.Millisecond))
		},
	}
	for ev, err := range c.Events(req) {
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted
			}
			return err
		}
		if _, err := io.WriteString(out, format(ev)); err != nil {
			return err
		}
	}
	logger.Print("the server said not to reconnect (204 No Content)")
	return nil
}

// format returns ev as one line: "type [id] data", the data's further lines indented.
func format(ev sse.Event) string {
	var b strings.Builder
	if ev.Type == "" {
		b.WriteString("message")
	} else {
		b.WriteString(ev.Type)
	}
	if ev.ID != "" {
		b.WriteString(" [" + ev.ID + "]")
	}
	b.WriteString(" " + strings.ReplaceAll(ev.Data, "\n", "\n\t") + "\n")
	return b.String()
}
