// Package middleware holds tests of sse behind third-party middleware — compression
// (github.com/klauspost/compress/gzhttp, chi's middleware.Compress) and chi's router
// middleware — which the core module, standard library only, cannot import.
package middleware
