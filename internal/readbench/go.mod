module sse/internal/readbench

go 1.26

require (
	github.com/tmaxmax/go-sse v0.11.0
	sse v0.0.0-00010101000000-000000000000
)

replace sse => ../..
