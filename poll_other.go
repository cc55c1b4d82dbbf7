//go:build !linux

package sse

import "net"

// Elsewhere than on Linux there are no pollers: every stream is served in its handler.

type poller struct{}

func newPollers(*Broker) *pollers         { return nil }
func takeFD(net.Conn) int                 { return -1 }
func (*poller) add(*pstream, uint64) bool { return false }
func (*poller) notify(*pgroup)            {}
func (*poller) stop()                     {}
func (*poller) kick()                     {}
func (*pstream) firstWrite()              {}
func closeFD(int)                         {}
