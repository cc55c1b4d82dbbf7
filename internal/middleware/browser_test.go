package middleware

import (
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"

	"sse"
	"sse/internal/interop/browser"
)

// TestCompressedStreamBrowser has Chromium's EventSource read a stream behind compressing
// middleware: each event shows in the page before the next is published. Chromium asks for
// zstd too, which gzhttp prefers.
func TestCompressedStreamBrowser(t *testing.T) {
	// The browser package finds its driver from the module's root, this module's parent's.
	t.Chdir("../..")
	for _, c := range compressions(t) {
		// Chromium asks for zstd, so "gzhttp gzip" would be "gzhttp zstd" again.
		if c.encoding == "" || c.name == "gzhttp gzip" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			b := sse.NewBroker()
			var encoding atomic.Value // the stream's Content-Encoding, as sent
			mux := http.NewServeMux()
			mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				fmt.Fprint(w, `<!doctype html><title>compressed</title><link rel="icon" href="data:,"><script>
window.got = [];
const es = new EventSource("/events");
es.onopen = () => { window.opened = true };
es.onmessage = (e) => got.push(e.data);
</script>`)
			})
			mux.Handle("GET /events", c.wrap(b.Handler()))
			ts := serve(t, b, func(http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mux.ServeHTTP(&headerSpy{w, &encoding}, r)
				})
			}, false)
			p := browser.Start(t).Open(c.name, ts.URL+"/")
			p.Wait("the stream to open", "window.opened === true", nil)
			if got, _ := encoding.Load().(string); got != c.encoding {
				t.Errorf("the stream went with Content-Encoding %q, want %q", got, c.encoding)
			}
			var want []string
			for i := range 5 {
				data := fmt.Sprintf(`{"n":%d,"text":"event number %d"}`, i, i)
				want = append(want, data)
				if _, err := b.Publish(sse.Event{Data: data}); err != nil {
					t.Fatal(err)
				}
				// Had the middleware held it, the page would never show it.
				p.Wait(fmt.Sprintf("event %d", i), fmt.Sprintf("got.length >= %d", i+1), nil)
			}
			var got []string
			p.Eval("got", &got)
			if !slices.Equal(got, want) {
				t.Errorf("the page got %q, want %q", got, want)
			}
		})
	}
}

// headerSpy records the Content-Encoding the response is sent with.
type headerSpy struct {
	http.ResponseWriter
	encoding *atomic.Value
}

func (h *headerSpy) WriteHeader(code int) {
	h.encoding.Store(h.Header().Get("Content-Encoding"))
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerSpy) Write(p []byte) (int, error) { return h.ResponseWriter.Write(p) }

func (h *headerSpy) Flush() { http.NewResponseController(h.ResponseWriter).Flush() }

func (h *headerSpy) Unwrap() http.ResponseWriter { return h.ResponseWriter }
