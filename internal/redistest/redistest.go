// Package redistest runs redis-server processes for tests: each on a free port of 127.0.0.1,
// with its files in a directory of the test's, stopped when the test ends. It never touches a
// Redis the machine runs already.
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sse/internal/ssetest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a redis-server process of a test's own. Its methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd // guarded by mu; nil while stopped
}

// Start starts a redis-server with extra arguments (such as "--appendonly", "yes"; by default
// it neither saves nor logs appends), and stops it when the test ends. Without redis-server
// on the PATH, the test is skipped, or fails in CI (CI=true) or when SSE_INTEROP=require, so
// that a skip never passes there.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SSE_INTEROP") == "require" || os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required: %v", err)
		}
		t.Skipf("redis-server not found (apt-get install redis-server): %v", err)
	}
	s := &Server{t: t, bin: bin, port: ssetest.FreePort(t), dir: t.TempDir(), args: extra}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// Addr returns the server's address, host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Restart starts the server again after Kill, on the same port and with the same directory
// (and so the same data, if it persists any), and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
	}
	cmd := exec.Command(s.bin, append(args, s.args...)...)
	log, err := os.Create(fmt.Sprintf("%s/redis-%d.log", s.dir, time.Now().UnixNano()))
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := Ping(s.Addr())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s does not answer: %v", s.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server at once, as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Signal sends sig to the server: syscall.SIGSTOP makes it hang, SIGCONT go on.
func (s *Server) Signal(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Signal(sig)
	}
}

// Do runs one command on the server and returns its reply: a bulk string's content, or the
// first line of any other reply, such as "+OK", ":42" or "$-1" (nil).
func (s *Server) Do(args ...string) string {
	s.t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c, "$%d\r\n%s\r\n", len(a), a)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("%v: %v", args, err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if n, err := strconv.Atoi(strings.TrimPrefix(line, "$")); strings.HasPrefix(line, "$") && err == nil && n >= 0 {
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			s.t.Fatalf("%v: %v", args, err)
		}
		return string(buf[:n])
	}
	return line
}

// Ping reports whether a Redis server answers PING at addr.
func Ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: %q", line)
	}
	return nil
}
