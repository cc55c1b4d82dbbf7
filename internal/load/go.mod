module sse/internal/load

go 1.26

require (
	github.com/alexandrevicenzi/go-sse v1.6.0
	github.com/r3labs/sse/v2 v2.10.0
	github.com/tmaxmax/go-sse v0.11.0
	sse v0.0.0-00010101000000-000000000000
)

require (
	golang.org/x/net v0.0.0-20191116160921-f9c825593386 // indirect
	gopkg.in/cenkalti/backoff.v1 v1.1.0 // indirect
)

replace sse => ../..
