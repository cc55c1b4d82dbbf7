package readbench

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
	"unsafe"

	tmaxmax "github.com/tmaxmax/go-sse"

	"sse"
)

// sizes are the data sizes of the events decoded: a token of an LLM's answer with its JSON
// wrapping, and a larger document.
var sizes = []int{64, 4096}

// eventsPerStream is how many events each stream holds; a decoder is made for each stream.
const eventsPerStream = 1000

// stream returns eventsPerStream events of size bytes of data, each with a type and an ID, as
// a Broker sends them.
func stream(tb testing.TB, size int) []byte {
	var b bytes.Buffer
	enc := sse.NewEncoder(&b)
	data := strings.Repeat("x", size)
	for i := range eventsPerStream {
		if err := enc.Encode(sse.Event{ID: strconv.Itoa(i), Type: "delta", Data: data}); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

// decoders decode a stream into events, calling f with each event's type and data until it
// returns false.
var decoders = []struct {
	name   string
	decode func(r io.Reader, f func(typ, data string) bool) error
}{
	{"sse", func(r io.Reader, f func(typ, data string) bool) error {
		d := sse.NewDecoder(r)
		for {
			ev, err := d.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if !f(ev.Type, ev.Data) {
				return nil
			}
		}
	}},
	{"sse.Read", func(r io.Reader, f func(typ, data string) bool) error {
		for ev, err := range sse.Read(r) {
			if err != nil {
				return err
			}
			if !f(ev.Type, ev.Data) {
				break
			}
		}
		return nil
	}},
	{"tmaxmax", func(r io.Reader, f func(typ, data string) bool) error {
		for ev, err := range tmaxmax.Read(r, nil) {
			if err != nil {
				return err
			}
			if !f(ev.Type, ev.Data) {
				break
			}
		}
		return nil
	}},
	{"scanner", func(r io.Reader, f func(typ, data string) bool) error {
		d := NewScannerDecoder(r)
		for d.Next() {
			ev := d.Current()
			// The SDKs hand the data, with its final LF, to encoding/json as []byte; it is not
			// converted to a string here either.
			if !f(ev.Type, unsafeString(ev.Data)) {
				break
			}
		}
		return d.Err()
	}},
	// Not a decoder: a bound (see floor.go).
	{"floor", func(r io.Reader, f func(typ, data string) bool) error {
		d := NewFloorDecoder(r)
		for {
			ev, err := d.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if !f(ev.Type, ev.Data) {
				return nil
			}
		}
	}},
}

// TestDecodersAgree checks that every decoder reads the benchmark's streams as the same events,
// whether they come in reads of 8 KiB or more, or in reads of half what was asked for.
func TestDecodersAgree(t *testing.T) {
	for _, size := range sizes {
		s := stream(t, size)
		for _, dec := range decoders {
			for _, half := range []bool{false, true} {
				var r io.Reader = bytes.NewReader(s)
				if half {
					r = iotest.HalfReader(r)
				}
				n := 0
				err := dec.decode(r, func(typ, data string) bool {
					data = strings.TrimSuffix(data, "\n") // the scanner keeps the final LF
					if typ != "delta" || data != strings.Repeat("x", size) {
						t.Fatalf("%s (half reads %v): event %d = %q, %q", dec.name, half, n, typ, data)
					}
					n++
					return true
				})
				if err != nil || n != eventsPerStream {
					t.Errorf("%s (half reads %v): %d events, %v; want %d", dec.name, half, n, err, eventsPerStream)
				}
			}
		}
	}
}

// BenchmarkRead decodes events; one op is one event, and each decoder is made afresh for
// each stream of eventsPerStream events.
func BenchmarkRead(b *testing.B) {
	for _, size := range sizes {
		s := stream(b, size)
		for _, dec := range decoders {
			b.Run(fmt.Sprintf("size=%dB/decoder=%s", size, dec.name), func(b *testing.B) {
				b.SetBytes(int64(len(s) / eventsPerStream))
				b.ReportAllocs()
				cpu0, mallocs0 := cpuTime(), mallocs()
				r := bytes.NewReader(s)
				var sink int
				n := 0
				for n < b.N {
					r.Reset(s)
					err := dec.decode(r, func(typ, data string) bool {
						sink += len(data)
						n++
						return n < b.N
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
				// On a shared machine the process's CPU time is steadier than the wall clock.
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/event")
				// allocs/op rounds down; this does not.
				b.ReportMetric(float64(mallocs()-mallocs0)/float64(b.N), "allocs/event")
			})
		}
	}
}

// BenchmarkRatio measures how many times as fast as another decoder sse.Decoder is, the figure
// the targets are stated in, and how many times as fast as the Scanner decoder the bound is,
// which says how far an exact decoder could get. A shared machine's load changes from one
// second to the next, and with it the figures of BenchmarkRead run after one another; here
// each op decodes one stream with each of the two decoders, in turns, so that both run under
// the same load. It reports the other's total time over the decoder's ("ratio"), the median of
// the ops' ratios ("ratio-median"), and the time per event of each in those turns. A turn's
// time holds whatever collection work runs during it, set off by either decoder's garbage: a
// decoder paired with one that makes much more garbage pays for some of it, so that "ratio"
// understates how far ahead the one with less is, and depends on the other decoder. The
// median is moved less by a collection that falls in one turn.
func BenchmarkRatio(b *testing.B) {
	pairs := []struct{ decoder, other string }{
		{"sse", "tmaxmax"},
		{"sse", "scanner"},
		{"sse", "floor"},
		{"floor", "scanner"},
	}
	for _, size := range sizes {
		s := stream(b, size)
		for _, p := range pairs {
			b.Run(fmt.Sprintf("size=%dB/decoder=%s/vs=%s", size, p.decoder, p.other), func(b *testing.B) {
				ours, theirs := decoderNamed(p.decoder), decoderNamed(p.other)
				r := bytes.NewReader(s)
				decode := func(dec func(io.Reader, func(typ, data string) bool) error) time.Duration {
					r.Reset(s)
					start := time.Now()
					if err := dec(r, func(typ, data string) bool { return true }); err != nil {
						b.Fatal(err)
					}
					return time.Since(start)
				}
				var ourTime, theirTime time.Duration
				var ratios []float64
				for i := 0; b.Loop(); i++ {
					var o, t time.Duration
					if i%2 == 0 {
						o, t = decode(ours), decode(theirs)
					} else {
						t, o = decode(theirs), decode(ours)
					}
					ourTime, theirTime = ourTime+o, theirTime+t
					ratios = append(ratios, float64(t)/float64(o))
				}
				slices.Sort(ratios)
				b.ReportMetric(float64(theirTime)/float64(ourTime), "ratio")
				b.ReportMetric(ratios[len(ratios)/2], "ratio-median")
				events := float64(b.N * eventsPerStream)
				b.ReportMetric(float64(ourTime.Nanoseconds())/events, "decoder-ns/event")
				b.ReportMetric(float64(theirTime.Nanoseconds())/events, "other-ns/event")
			})
		}
	}
}

// decoderNamed returns the decoder of decoders named name.
func decoderNamed(name string) func(io.Reader, func(typ, data string) bool) error {
	for _, dec := range decoders {
		if dec.name == name {
			return dec.decode
		}
	}
	panic("no decoder named " + name)
}

// cpuTime returns the CPU time the process has used, user and system, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// unsafeString returns b as a string without copying it.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
