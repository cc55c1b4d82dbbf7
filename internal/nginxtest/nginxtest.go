// Package nginxtest runs nginx processes for tests, in front of the tests' own servers, and
// holds the tests of the nginx recipe that README.md shows (docs/nginx.conf): that streams
// pass unbuffered, that an idle stream outlives a proxy_read_timeout a little above the
// heartbeat interval, that a restarted server's clients resume by Last-Event-ID, and that a
// server down for longer than the retry delay does not end an EventSource or an sse.Client.
//
// Each nginx is Debian's (apt-get install nginx), started as a child of the test on a free
// port of 127.0.0.1, in one process (master_process off) with its files in a directory of the
// test's, and killed when the test ends. It never touches an nginx the machine runs already.
// Without nginx the tests skip; in CI (CI=true) or with SSE_INTEROP=require they fail instead,
// so that a skip never passes for a pass.
package nginxtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sse/internal/ssetest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is an nginx process of a test's own.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	Addr string // host:port it listens on, of 127.0.0.1
}

// New finds nginx and picks a port for it; Start starts it. Without nginx, New skips t, or
// fails it in CI (CI=true) or under SSE_INTEROP=require.
func New(t testing.TB) *Server {
	t.Helper()
	bin := lookNginx()
	if bin == "" {
		if os.Getenv("CI") == "true" || os.Getenv("SSE_INTEROP") == "require" {
			t.Fatal("nginx is required (apt-get install nginx)")
		}
		t.Skip("nginx not found (apt-get install nginx; CI=true fails instead)")
	}
	return &Server{t: t, bin: bin, dir: t.TempDir(), Addr: "127.0.0.1:" + strconv.Itoa(ssetest.FreePort(t))}
}

// lookNginx returns the path of nginx, or "" if there is none: Debian installs it in
// /usr/sbin, which is not on every user's PATH.
func lookNginx() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	return ""
}

// Start starts nginx with httpConf as the content of its http block (upstream and server
// blocks; a server must listen on s.Addr), waits until it accepts connections, and kills it
// when the test ends. If nginx fails, the test fails with its error log.
func (s *Server) Start(httpConf string) {
	t := s.t
	t.Helper()
	// One process, which runs as the user running the test (root included: no worker to
	// switch to another user) and leaves no worker behind when it is killed. Every path that
	// nginx would otherwise take from its build (under /var) is in the test's directory.
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events {
    worker_connections 256;
}
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;

%[2]s
}
`, s.dir, httpConf)
	path := filepath.Join(s.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// -e: the error log until the configuration is read, which would be under /var/log.
	cmd := exec.Command(s.bin, "-p", s.dir+"/", "-c", path, "-e", filepath.Join(s.dir, "error.log"))
	out, err := os.Create(filepath.Join(s.dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("nginx's error log:\n%s", s.ErrorLog())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("nginx exited: %v\n%s\nconfiguration:\n%s", err, s.ErrorLog(), conf)
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not accept connections on %s: %v\n%s", s.Addr, err, s.ErrorLog())
		}
	}
}

// URL returns the server's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.Addr }

// ErrorLog returns what nginx has written to its error log and its standard error so far.
func (s *Server) ErrorLog() string {
	var b strings.Builder
	for _, name := range []string{"stderr", "error.log"} {
		if data, err := os.ReadFile(filepath.Join(s.dir, name)); err == nil {
			b.Write(data)
		}
	}
	return b.String()
}

// Recipe returns the nginx configuration that README.md recommends, from docs/nginx.conf
// (found from the test's directory by way of the module's root), as upstream and server
// blocks for an http block.
func Recipe(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ssetest.ModuleRoot(t), "docs", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// Edit returns conf with old replaced by new, and fails t unless old occurs in conf exactly
// once: a test that adapts the recipe (its ports, a timeout) must notice when the recipe
// changes under it.
func Edit(t testing.TB, conf, old, new string) string {
	t.Helper()
	if n := strings.Count(conf, old); n != 1 {
		t.Fatalf("the nginx configuration has %d of %q, want 1:\n%s", n, old, conf)
	}
	return strings.Replace(conf, old, new, 1)
}
