package ssetest

import (
	"strings"
	"time"
)

// Case is an event that must reach every conforming client unchanged, but for Data's line
// breaks, which all arrive as LF.
type Case struct {
	Name  string
	ID    string
	Type  string
	Data  string
	Retry time.Duration
}

// RoundTrip holds the edge cases of the wire format: the encoder tests and the interop tests
// with real clients send each of them.
var RoundTrip = []Case{
	{Name: "empty"},
	{Name: "plain", Data: "hello"},
	{Name: "all fields", ID: "42", Type: "tick", Data: "x", Retry: 1500 * time.Millisecond},
	{Name: "LF", Data: "a\nb"},
	{Name: "CRLF is one break", Data: "a\r\nb"},
	{Name: "lone CR", Data: "a\rb"},
	{Name: "LF CR", Data: "a\n\rb"},
	{Name: "mixed breaks", Data: "1\r\n2\r3\n4\r\r\n5"},
	{Name: "trailing newline", Data: "a\n"},
	{Name: "trailing CRLF", Data: "a\r\n"},
	{Name: "only newlines", Data: "\n\n"},
	{Name: "blank lines inside", Data: "a\n\n\nb"},
	{Name: "leading space", Data: " a"},
	{Name: "leading spaces and tabs", Data: "  \t a\n\tb\n c"},
	{Name: "trailing space", Data: "a "},
	{Name: "lines like fields", Data: "id: x\nevent: y\nretry: 1\ndata: z"},
	{Name: "lines like comments", Data: ": x\n:"},
	{Name: "NUL in data", Data: "a\x00b"},
	{Name: "BOM in data", Data: "\ufeffa"},
	{Name: "BOM alone", Data: "\ufeff"},
	{Name: "line separator", Data: "a\u2028b\u2029c"},
	{Name: "unicode", Data: "日本語 ü 🎉"},
	{Name: "colon in data", Data: "a:b: c"},
	{Name: "type with spaces", Type: " spaced type ", Data: "x"},
	{Name: "type error", Type: "error", Data: "x"},
	{Name: "type message", Type: "message", Data: "x"},
	{Name: "type with NUL", Type: "a\x00b", Data: "x"},
	{Name: "type unicode", Type: "日本", Data: "x"},
	{Name: "id with inner spaces", ID: "a b  c", Data: "x"},
	{Name: "id unicode", ID: "日本-ü", Data: "x"},
	{Name: "id with colon", ID: "a:b", Data: "x"},
	{Name: "id with BOM", ID: "\ufeffa", Data: "x"},
	{Name: "id 256 bytes", ID: strings.Repeat("x", 256), Data: "x"},
	{Name: "id at the cap", ID: strings.Repeat("y", 1024), Data: "x"},
	{Name: "retry 1ms", Data: "x", Retry: time.Millisecond},
	{Name: "retry max", Data: "x", Retry: 2147483647 * time.Millisecond},
	{Name: "retry truncated", Data: "x", Retry: 1500 * time.Microsecond},
	{Name: "large multi-line", Data: strings.Repeat("line of text\n", 1000)},
}
