//go:build !linux

package main

import "errors"

// newFloor would start the load tool's epoll floor (floor_linux.go); epoll is Linux's.
func newFloor() (library, error) { return nil, errors.New("floor: Linux only (epoll)") }
