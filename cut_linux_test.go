//go:build linux

package sse

import (
	"net"
	"os"
	"strconv"
	"syscall"
)

// cutTaken shuts down the server side of every connection to addr that the process holds,
// found among its descriptors: those the broker took over from net/http, which no longer knows
// them, included. The client sees its connection end, and the broker that holds it sees it go.
func cutTaken(addr net.Addr) {
	want := addr.(*net.TCPAddr)
	des, _ := os.ReadDir("/proc/self/fd")
	for _, de := range des {
		fd, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			continue
		}
		local, ok := sa.(*syscall.SockaddrInet4)
		if !ok || local.Port != want.Port || !net.IP(local.Addr[:]).Equal(want.IP) {
			continue
		}
		if _, err := syscall.Getpeername(fd); err != nil {
			continue // the listener
		}
		syscall.Shutdown(fd, syscall.SHUT_RDWR)
	}
}
