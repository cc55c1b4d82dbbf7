module sse/internal/middleware

go 1.26.0

replace sse => ../..

require (
	github.com/go-chi/chi/v5 v5.5.0
	github.com/klauspost/compress v1.20.5
	sse v0.0.0-00010101000000-000000000000
)
