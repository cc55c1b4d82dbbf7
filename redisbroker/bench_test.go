package redisbroker_test

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/redistest"
	"sse/redisbroker"
)

// The cost of a publish through the module, against the cheapest way to put the same entries
// in a Redis stream: XADD, pipelined 100 at a time. Each reports the Redis server's CPU time
// per event (redis-µs/op), from INFO cpu.
//
//	go test -run '^$' -bench . -benchmem ./redisbroker
func BenchmarkPublish(b *testing.B) {
	rs := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: 64})
	defer rdb.Close()
	node, err := redisbroker.New(context.Background(), rdb, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer node.Shutdown(context.Background())
	ev := sse.Event{Type: "tick", Data: strings.Repeat("x", 64)}

	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		cpu := redisCPU(b, rs)
		for b.Loop() {
			if _, err := node.Publish(ev, "a"); err != nil {
				b.Fatal(err)
			}
		}
		reportRedisCPU(b, rs, cpu)
	})
	for _, p := range []int{16, 64} {
		// p goroutines per CPU publishing at once.
		b.Run("parallel="+strconv.Itoa(p), func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(p)
			cpu := redisCPU(b, rs)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := node.Publish(ev, "a"); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRedisCPU(b, rs, cpu)
		})
	}
}

func BenchmarkRawXADD(b *testing.B) {
	rs := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: 64})
	defer rdb.Close()
	ctx := context.Background()
	args := &redis.XAddArgs{
		Stream: "{bench}:raw", MaxLen: 10000, Approx: true,
		Values: []any{"e", "abcdefgh", "s", 1, "t", "1:a", "y", "tick", "d", strings.Repeat("x", 64)},
	}

	b.Run("pipelined", func(b *testing.B) {
		b.ReportAllocs()
		cpu := redisCPU(b, rs)
		pipe := rdb.Pipeline()
		n := 0
		for b.Loop() {
			pipe.XAdd(ctx, args)
			if n++; n == 100 {
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
				n = 0
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && n > 0 {
			b.Fatal(err)
		}
		reportRedisCPU(b, rs, cpu)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		cpu := redisCPU(b, rs)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := rdb.XAdd(ctx, args).Err(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRedisCPU(b, rs, cpu)
	})
}

// BenchmarkScript runs the publish script alone, with batches of 1 to 128 events per call,
// pipelined 100 calls at a time, with no process reading the log: what the script costs
// Redis beside XADD.
func BenchmarkScript(b *testing.B) {
	rs := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	keys := append(redisbroker.Keys("script"), redisbroker.PubKey("script", "bench"))
	if err := redisbroker.PublishScript.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	call := 0 // the process's calls: each numbered above the last, or the script refuses it
	for _, batch := range []int{1, 16, 128} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			var evs []byte
			for range batch {
				evs = redisbroker.AppendEvent(evs, sse.Event{Type: "tick", Data: strings.Repeat("x", 64)}, []string{"a"})
			}
			b.ReportAllocs()
			cpu := redisCPU(b, rs)
			pipe := rdb.Pipeline()
			n, events := 0, 0
			for events < b.N {
				call++
				redisbroker.PublishScript.EvalSha(ctx, pipe, keys, "abcdefgh", 10000, batch, call, evs, 60000)
				events += batch
				if n++; n == 100 {
					if _, err := pipe.Exec(ctx); err != nil {
						b.Fatal(err)
					}
					n = 0
				}
			}
			if _, err := pipe.Exec(ctx); err != nil && n > 0 {
				b.Fatal(err)
			}
			b.ReportMetric(float64(events)/float64(b.N), "events/op")
			reportRedisCPU(b, rs, cpu)
		})
	}
}

// redisCPU returns the CPU time, in seconds, the Redis server has used.
func redisCPU(b *testing.B, rs *redistest.Server) float64 {
	var total float64
	for line := range strings.Lines(rs.Do("INFO", "cpu")) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %q", line)
			}
			total += f
		}
	}
	return total
}

func reportRedisCPU(b *testing.B, rs *redistest.Server, before float64) {
	b.ReportMetric((redisCPU(b, rs)-before)/float64(b.N)*1e6, "redis-µs/op")
}

// BenchmarkStart measures New on a log of 100,000 events: how long a process that starts
// takes to read what the log retains before it serves. The log holds one event per entry
// (each Publish alone) or 100 (publishes at the same time, batched).
func BenchmarkStart(b *testing.B) {
	rs := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	const total = 100000
	for _, batch := range []int{1, 100} {
		ns := "start" + strconv.Itoa(batch)
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			var evs []byte
			for range batch {
				evs = redisbroker.AppendEvent(evs, sse.Event{Type: "tick", Data: strings.Repeat("x", 64)}, []string{"a"})
			}
			pipe := rdb.Pipeline()
			written := rdb.Exists(ctx, redisbroker.Keys(ns)[1]).Val() == 1 // by an earlier run (-count)
			for i := range total / batch {
				if written {
					break
				}
				redisbroker.PublishScript.Eval(ctx, pipe, append(redisbroker.Keys(ns), redisbroker.PubKey(ns, "bench")), "abcdefgh", total, batch, i+1, evs, 60000)
				if i%1000 == 999 || i == total/batch-1 {
					if _, err := pipe.Exec(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			redisBefore, before := redisCPU(b, rs), processCPU()
			for b.Loop() {
				node, err := redisbroker.New(ctx, rdb, ns, redisbroker.WithMaxLen(total))
				if err != nil {
					b.Fatal(err)
				}
				if got := node.Stats().Published; got != total {
					b.Fatalf("read %d events, want %d", got, total)
				}
				node.Shutdown(ctx)
			}
			b.ReportMetric((processCPU()-before)/float64(b.N)*1e3, "cpu-ms/op")
			b.ReportMetric((redisCPU(b, rs)-redisBefore)/float64(b.N)*1e3, "redis-ms/op")
		})
	}
}

// processCPU returns the CPU time, in seconds, this process has used: what a benchmark costs
// however busy the machine is with other work.
func processCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
