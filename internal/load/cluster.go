package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sse/internal/redistest"
)

// A clusterConfig is one row of the cluster scenario: nodes server processes, each with its
// own redisbroker node on one namespace of one redis-server, clients connected to each, and
// events published at rate per second in all, spread evenly over the nodes.
type clusterConfig struct {
	name    string // also the server's scenario, "cluster-" + name
	nodes   int
	clients int // per node
	events  int
	rate    float64
}

var clusterHeader = []string{"config", "delivered/expected", "deliveries/s", "publish s", "redis CPU-µs/event", "nodes CPU-s/M deliv", "p50 ms", "p99 ms", "max ms", "node RSS MiB", "notes"}

// runCluster runs one configuration of the cluster scenario, within budget: it starts a
// redis-server of its own and the nodes, and stops them at the end.
func runCluster(c clusterConfig, lib, profileDir string, budget time.Duration) row {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	r := row{lib: fmt.Sprintf("%s %s: %d×%d, %s/s", lib, c.name, c.nodes, c.clients, thousands(int(c.rate))), config: "not run"}
	defer func() {
		if ctx.Err() != nil {
			r.notes = append(r.notes, fmt.Sprintf("UNFINISHED: the %v budget ran out", budget))
		}
		log.Printf("cluster/%s %s: done in %.1fs", lib, c.name, time.Since(start).Seconds())
	}()
	rs, err := startRedis(ctx)
	if err != nil {
		r.notes = append(r.notes, "redis-server: "+err.Error())
		return r
	}
	defer rs.stop()

	sc := "cluster-" + c.name
	var srvs []*server
	defer func() {
		for _, s := range srvs {
			s.stop()
		}
	}()
	pids := []int{rs.pid}
	for i := range c.nodes {
		profile := ""
		if profileDir != "" {
			profile = filepath.Join(profileDir, fmt.Sprintf("%s-%s-node%d.prof", sc, lib, i))
		}
		s, err := startServer(ctx, lib, sc, profile, "-redis", rs.addr)
		if err != nil {
			r.notes = append(r.notes, fmt.Sprintf("node %d did not start: %v", i, err))
			return r
		}
		srvs = append(srvs, s)
		pids = append(pids, s.pid)
	}
	r.config = fmt.Sprintf("%d processes, each %s; %s", c.nodes, srvs[0].config, rs.version)

	var conns []*conn
	defer func() { closeAll(conns) }()
	for _, s := range srvs {
		cs, err := connect(ctx, s, c.clients, 16<<10)
		if err != nil {
			r.notes = append(r.notes, err.Error())
			return r
		}
		conns = append(conns, cs...)
	}
	// A sync event published on one node reaches the clients of every node through Redis.
	if err := awaitSync(ctx, srvs[0], conns); err != nil {
		r.notes = append(r.notes, err.Error())
		return r
	}

	d := deliver(ctx, srvs, conns, c.events, 64, c.rate, pids...)
	var rss int64
	var slow int64
	for _, s := range srvs {
		m, _, _ := memory(s.pid)
		rss = max(rss, m)
		if st, err := s.stats(ctx, false); err == nil && st.SSE != nil {
			slow += st.SSE.SlowDisconnects
		}
	}
	closeAll(conns)
	d.finish(conns)

	redisStr, nodesStr := "-", "-"
	var nodesCPU time.Duration
	for _, t := range d.cpu[1:] {
		nodesCPU += t
	}
	if d.n > 0 {
		redisStr = fmt.Sprintf("%.1f", d.cpu[0].Seconds()/float64(d.n)*1e6)
	}
	if d.got > 0 {
		nodesStr = fmt.Sprintf("%.2f", nodesCPU.Seconds()/float64(d.got)*1e6)
	}
	r.cells = []string{
		fmt.Sprintf("%d/%d", d.got, d.want), d.rate(), d.publishTime(), redisStr, nodesStr,
		pct(d.lat, 0.50), pct(d.lat, 0.99), pct(d.lat, 1), mib(rss),
	}
	r.notes = append(r.notes, d.notes...)
	if d.got < d.want {
		r.notes = append(r.notes, fmt.Sprintf("LOST %d deliveries", d.want-d.got))
	}
	if d.lost > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d clients disconnected by a node", d.lost))
	}
	if slow > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d slow disconnects", slow))
	}
	if o := outOfOrder(conns); o > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d events out of order", o))
	}
	var each []string
	for _, t := range d.cpu[1:] {
		each = append(each, fmt.Sprintf("%.1f", t.Seconds()))
	}
	var writes int64
	for _, w := range d.writes[1:] {
		writes += w
	}
	if writes > 0 {
		r.notes = append(r.notes, fmt.Sprintf("nodes' write calls: %d, %.1f deliveries each", writes, float64(d.got)/float64(writes)))
	}
	r.notes = append(r.notes, fmt.Sprintf("over %.1f s: redis %.1f CPU-s, nodes %s CPU-s, load side %.1f CPU-s, rest of the machine (other processes, interrupts) %.1f CPU-s",
		d.wall.Seconds(), d.cpu[0].Seconds(), strings.Join(each, "+"), d.self.Seconds(), max(d.others, 0).Seconds()))
	return r
}

// A redisServer is a redis-server process of the load tool's own, on a free port of
// 127.0.0.1, with its files in a temporary directory, saving nothing.
type redisServer struct {
	cmd     *exec.Cmd
	pid     int
	addr    string
	dir     string
	version string
}

func startRedis(ctx context.Context) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("not found on PATH (apt-get install redis-server): cannot run")
	}
	version := "redis-server"
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		// "Redis server v=7.0.15 sha=..."
		for f := range strings.FieldsSeq(string(out)) {
			if v, ok := strings.CutPrefix(f, "v="); ok {
				version += " " + v
			}
		}
	}
	dir, err := os.MkdirTemp("", "load-redis-")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	rs := &redisServer{cmd: cmd, pid: cmd.Process.Pid, addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir,
		version: version + ` (--save "" --appendonly no)`}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := redistest.Ping(rs.addr)
		if err == nil {
			return rs, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			rs.stop()
			return nil, fmt.Errorf("does not answer on %s: %v", rs.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the server and removes its directory.
func (rs *redisServer) stop() {
	rs.cmd.Process.Kill()
	rs.cmd.Wait()
	os.RemoveAll(rs.dir)
}

// thousands writes n with commas: 10,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
