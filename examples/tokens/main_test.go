package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"sse/internal/spec"
	"sse/internal/ssetest"
)

func TestTokens(t *testing.T) {
	ts := start(t, newServer(&replier{}))
	tests := []struct {
		name, rawQuery string
		question       string // as the answer echoes it, ending with one punctuation mark
	}{
		{"question mark", "q=why+stream%3F", "why stream?"},
		{"full stop", "q=Tell+me+about+streams.", "Tell me about streams."},
		{"exclamation mark", "q=Stream%21", "Stream!"},
		{"no mark", "q=streams", "streams."},
		{"line breaks", "q=one%0Atwo%0D%0Athree", "one two three."},
		{"invalid UTF-8", "q=caf%E9", "caf\uFFFD."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ssetest.Subscribe(t, ts, "/reply?"+tt.rawQuery, "")
			var words []string
			for {
				ev, err := d.Next()
				if err != nil {
					t.Fatalf("after %q: reading the stream: %v, want a done event", words, err)
				}
				if ev.Type == "done" {
					break
				}
				if ev.Type != "message" {
					t.Fatalf("after %q: event %+v, want a message", words, ev)
				}
				words = append(words, ev.Data)
			}
			want := strings.Fields("You asked: " + tt.question + " " + cannedAnswer)
			if !slices.Equal(words, want) {
				t.Errorf("words = %q, want %q", words, want)
			}
			if ev, err := d.Next(); err != io.EOF {
				t.Errorf("after done: Next() = %+v, %v, want the stream to end", ev, err)
			}
		})
	}
}

// TestTokensClientGoesAway checks that a reply stops as soon as its client leaves, rather
// than going on generating for nobody.
func TestTokensClientGoesAway(t *testing.T) {
	h := newServer(&replier{delay: time.Hour})
	done := make(chan struct{})
	ts := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reply" {
			defer close(done)
		}
		h.ServeHTTP(w, r)
	}))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/reply?q=hello", nil)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ev, err := spec.NewDecoder(resp.Body).Next(); err != nil || ev.Data != "You" {
		t.Fatalf("first event = %+v, %v, want the first word", ev, err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the reply went on after its client left")
	}
}

func TestTokensBadQuestion(t *testing.T) {
	ts := start(t, newServer(&replier{}))
	for _, query := range []string{"", "q=", "q=+%0A+", "q=" + strings.Repeat("x", maxQuestion+1)} {
		resp, err := ts.Client().Get(ts.URL + "/reply?" + query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /reply?%.20s: status %d, want 400", query, resp.StatusCode)
		}
	}
}

func TestTokensPage(t *testing.T) {
	ssetest.CheckPage(t, start(t, newServer(&replier{})), `addEventListener("done"`)
}

// start serves h on a test server, and checks at the end of the test that every goroutine it
// started has ended.
func start(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	ssetest.CheckGoroutines(t)
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}
