package middleware

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"sse"
)

// BenchmarkStreamMemory measures the heap that open streams hold, behind each compressing
// middleware and behind none: 200 streams, each sent its preamble and two events of about
// 1 KiB of JSON, then the live heap after a GC, less the heap before they opened, per stream;
// and the bytes the second event took on the wire. The clients are in
// the same process but read the raw bytes without decompressing, so that their share is the
// same in every case: what a compressor adds is the difference from "none".
//
//	go test -run '^$' -bench StreamMemory -benchtime 5x ./internal/middleware
func BenchmarkStreamMemory(b *testing.B) {
	const streams = 200
	for _, c := range compressions(b) {
		if c.encoding == "" && c.name != "none" {
			continue
		}
		b.Run(c.name, func(b *testing.B) {
			br := sse.NewBroker()
			ts := serve(b, br, c.wrap, false)
			tr := ts.Client().Transport.(*http.Transport).Clone()
			tr.DisableCompression = true
			hc := &http.Client{Transport: tr}

			buf := make([]byte, 64<<10)
			var perStream, wire float64
			b.ReportAllocs()
			for b.Loop() {
				before := liveHeap()
				ctx, cancel := context.WithCancel(b.Context())
				bodies := make([]interface{ Read([]byte) (int, error) }, 0, streams)
				var closers []func() error
				for range streams {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL, nil)
					req.Header.Set("Accept-Encoding", c.acceptEncoding)
					resp, err := hc.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					if got := resp.Header.Get("Content-Encoding"); got != c.encoding {
						b.Fatalf("Content-Encoding %q, want %q", got, c.encoding)
					}
					closers = append(closers, resp.Body.Close)
					bodies = append(bodies, resp.Body)
					// The preamble, flushed at once: the compressor has started.
					if n, err := resp.Body.Read(buf); n == 0 {
						b.Fatalf("reading the preamble: %v", err)
					}
				}
				waitClients(b, br, streams)
				// Two events, so that a compressor that keeps the stream's history has some:
				// the bytes of the second measure what compression saves.
				for i := range 2 {
					if _, err := br.Publish(sse.Event{Data: jsonEvent(i)}); err != nil {
						b.Fatal(err)
					}
					for _, body := range bodies {
						n, err := body.Read(buf)
						if n == 0 {
							b.Fatalf("reading the event: %v", err)
						}
						if i == 1 {
							wire += float64(n) / streams
						}
					}
				}
				perStream += float64(liveHeap()-before) / streams

				cancel()
				for _, close := range closers {
					close()
				}
				waitClients(b, br, 0)
				tr.CloseIdleConnections()
			}
			b.ReportMetric(perStream/float64(b.N), "heap-B/stream")
			b.ReportMetric(wire/float64(b.N), "wire-B/event")
		})
	}
}

// jsonEvent returns the i-th event's data: about 1 KiB of JSON, as an app would send, the
// same keys each time and other values.
func jsonEvent(i int) string {
	var b strings.Builder
	b.WriteString(`{"items":[`)
	for j := range 16 {
		if j > 0 {
			b.WriteByte(',')
		}
		n := (i*7919 + j*104729) % 100000
		fmt.Fprintf(&b, `{"id":%d,"user":"user-%d","price":%d.%02d,"status":"open"}`, n, n%977, n%5000, n%100)
	}
	b.WriteString(`]}`)
	return b.String()
}

// liveHeap returns the bytes of live heap objects, after a collection. The second collection
// empties the sync.Pools (compressors, buffers) the first moved to their victim caches.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
