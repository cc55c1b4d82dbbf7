// Package sse sends Server-Sent Events from a net/http server to browsers' EventSource and
// other clients, following the WHATWG HTML "Server-sent events" section to the letter.
package sse
