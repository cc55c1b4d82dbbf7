package middleware

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/klauspost/compress/gzhttp"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"sse"
	"sse/internal/ssetest"
)

// chromiumAcceptEncoding is what Chromium sends with an EventSource's request: gzhttp picks
// zstd for it.
const chromiumAcceptEncoding = "gzip, deflate, br, zstd"

// A compression is a compressing middleware in front of a stream, and what a client asks of
// it.
type compression struct {
	name           string
	wrap           func(http.Handler) http.Handler
	acceptEncoding string
	encoding       string // the Content-Encoding the stream must come with
}

func compressions(tb testing.TB) []compression {
	gz := func(w func(http.Handler) http.HandlerFunc, err error) func(http.Handler) http.Handler {
		if err != nil {
			tb.Fatal(err)
		}
		return func(h http.Handler) http.Handler { return w(h) }
	}
	return []compression{
		{"none", func(h http.Handler) http.Handler { return h }, "gzip", ""},
		{"gzhttp gzip", gz(gzhttp.NewWrapper()), "gzip", "gzip"},
		{"gzhttp zstd", gz(gzhttp.NewWrapper()), chromiumAcceptEncoding, "zstd"},
		// Stateless gzip keeps no compressor between writes; without zstd, which a browser
		// would be given, since it asks for it.
		{"gzhttp stateless gzip", gz(gzhttp.NewWrapper(gzhttp.CompressionLevel(kgzip.StatelessCompression), gzhttp.EnableZstd(false))), chromiumAcceptEncoding, "gzip"},
		// chi compresses only the types it is given; text/event-stream is not among its defaults.
		{"chi Compress(5)", middleware.Compress(5, "text/event-stream"), "gzip", "gzip"},
		{"chi Compress(1)", middleware.Compress(1, "text/event-stream"), "gzip", "gzip"},
		{"chi Compress, default types", middleware.Compress(5), "gzip", ""},
	}
}

// serve serves b's stream behind wrap, over HTTP/2 if h2 is set. Its cleanup shuts b down
// before closing the server, which waits for open streams.
func serve(t testing.TB, b *sse.Broker, wrap func(http.Handler) http.Handler, h2 bool) *httptest.Server {
	ts := httptest.NewUnstartedServer(wrap(b.Handler()))
	if h2 {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	t.Cleanup(func() { b.Shutdown(context.Background()) })
	return ts
}

// open opens the stream at ts, asking for acceptEncoding, and returns the response and a
// reader of its decompressed body. Both end with ctx.
func open(t testing.TB, ctx context.Context, ts *httptest.Server, acceptEncoding string) (*http.Response, io.Reader) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
	req.Header.Set("Accept-Encoding", acceptEncoding)
	// Without the transport's own decompression, which hides Content-Encoding.
	tr := ts.Client().Transport.(*http.Transport).Clone()
	tr.DisableCompression = true
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	switch ce := resp.Header.Get("Content-Encoding"); ce {
	case "":
		return resp, resp.Body
	case "gzip":
		// gzip.NewReader reads the header, which the middleware sent with the first flush.
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatalf("reading the gzip header: %v", err)
		}
		return resp, zr
	case "zstd":
		zr, err := zstd.NewReader(resp.Body, zstd.WithDecoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(zr.Close)
		return resp, zr
	default:
		t.Fatalf("Content-Encoding %q", ce)
		return nil, nil
	}
}

// TestCompressedStream serves a Broker's stream behind compressing middleware that flushes
// (gzhttp; chi's Compress given text/event-stream) and checks that each event arrives,
// decompressed and exact, before the next is published: the middleware's Flush reaches the
// compressor and the connection, so nothing waits in a buffer.
func TestCompressedStream(t *testing.T) {
	big := strings.Repeat("the same words again and again, ", 200) // compresses well
	for _, h2 := range []bool{false, true} {
		for _, c := range compressions(t) {
			t.Run(fmt.Sprintf("%s/h2=%v", c.name, h2), func(t *testing.T) {
				ssetest.CheckGoroutines(t)
				b := sse.NewBroker()
				ts := serve(t, b, c.wrap, h2)
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				resp, body := open(t, ctx, ts, c.acceptEncoding)
				if got := resp.Header.Get("Content-Encoding"); got != c.encoding {
					t.Errorf("Content-Encoding %q, want %q", got, c.encoding)
				}
				if got := resp.Header.Get("Content-Type"); !strings.HasPrefix(got, "text/event-stream") {
					t.Errorf("Content-Type %q, want text/event-stream", got)
				}
				if got := resp.Header.Get("Content-Length"); got != "" {
					t.Errorf("Content-Length %q, want none", got)
				}
				waitClients(t, b, 1)

				d := sse.NewDecoder(body)
				var latencies []time.Duration
				for i := range 20 {
					data := fmt.Sprint("event ", i)
					switch i % 4 {
					case 1:
						data += "\nsecond line"
					case 2:
						data = big
					}
					start := time.Now()
					id, err := b.Publish(sse.Event{Type: "t", Data: data})
					if err != nil {
						t.Fatal(err)
					}
					// Had the middleware held it, this would wait until the context ends.
					ev, err := d.Next()
					if err != nil {
						t.Fatalf("event %d: %v; want it as soon as it is published", i, err)
					}
					latencies = append(latencies, time.Since(start))
					if ev.ID != id || ev.Type != "t" || ev.Data != data {
						t.Fatalf("event %d: %q %q %.40q, want %q t %.40q", i, ev.ID, ev.Type, ev.Data, id, data)
					}
				}
				slices.Sort(latencies)
				t.Logf("from Publish to the decoded event: median %v, max %v", latencies[len(latencies)/2], latencies[len(latencies)-1])

				// The stream ends cleanly at shutdown, compressed stream and all.
				b.Shutdown(context.Background())
				if ev, err := d.Next(); err != io.EOF {
					t.Errorf("after Shutdown: %+v, %v; want the stream to end", ev, err)
				}
			})
		}
	}
}

// TestCompressedStreamClient follows a compressed stream with sse.Client: Go's transport asks
// for gzip by itself and decompresses as the bytes come.
func TestCompressedStreamClient(t *testing.T) {
	for _, c := range compressions(t) {
		if c.encoding != "gzip" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			ssetest.CheckGoroutines(t)
			b := sse.NewBroker()
			var encoding string // the Content-Encoding of the response, once it is done
			ts := serve(t, b, func(h http.Handler) http.Handler {
				h = c.wrap(h)
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					h.ServeHTTP(w, r)
					encoding = w.Header().Get("Content-Encoding")
				})
			}, false)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				waitClients(t, b, 1)
				for i := range 3 {
					b.Publish(sse.Event{Data: fmt.Sprint(i)})
				}
			})
			var got []string
			for ev, err := range (&sse.Client{HTTPClient: ts.Client()}).Events(req) {
				if err != nil {
					t.Fatal(err)
				}
				if got = append(got, ev.Data); len(got) == 3 {
					break
				}
			}
			if strings.Join(got, ",") != "0,1,2" {
				t.Errorf("received %q, want 0, 1, 2", got)
			}
			b.Shutdown(context.Background())
			ts.Close()
			if encoding != "gzip" {
				t.Errorf("the stream went with Content-Encoding %q, want gzip", encoding)
			}
		})
	}
}

// waitClients waits until b has n streams open.
func waitClients(t testing.TB, b *sse.Broker, n int64) {
	for deadline := time.Now().Add(10 * time.Second); b.Stats().Clients != n; {
		if time.Now().After(deadline) {
			t.Errorf("%d clients connected, want %d", b.Stats().Clients, n)
			return
		}
		time.Sleep(time.Millisecond)
	}
}
