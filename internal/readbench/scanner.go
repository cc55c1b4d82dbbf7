// Package readbench compares the speed of this module's stream Decoder with other ways Go
// programs read event streams: github.com/tmaxmax/go-sse's Read, and a bufio.Scanner-based
// decoder written the way the OpenAI and Anthropic Go SDKs write theirs, and with a bound on
// what a decoder of the Decoder's shape could do (FloorDecoder). It is a module of its own, so
// that the core module's go.mod stays free of requirements. See README.md.
package readbench

import (
	"bufio"
	"bytes"
	"io"
)

// ScannerEvent is an event as ScannerDecoder returns it.
type ScannerEvent struct {
	Type string
	Data []byte
}

// ScannerDecoder reads events line by line with a bufio.Scanner, as the event stream decoders of
// the OpenAI and Anthropic Go SDKs (their ssestream packages) do: a new buffer for each event's
// data, the line split into field and value at the first colon, one leading space trimmed.
// Like theirs, it ignores id and retry and does not split lines at a lone CR.
type ScannerDecoder struct {
	scn *bufio.Scanner
	evt ScannerEvent
	err error
}

// NewScannerDecoder returns a ScannerDecoder reading r, with the SDKs' 32 MiB token limit.
func NewScannerDecoder(r io.Reader) *ScannerDecoder {
	scn := bufio.NewScanner(r)
	scn.Buffer(nil, bufio.MaxScanTokenSize<<9)
	return &ScannerDecoder{scn: scn}
}

// Next reads the next event, and reports whether there was one.
func (s *ScannerDecoder) Next() bool {
	if s.err != nil {
		return false
	}
	event := ""
	data := bytes.NewBuffer(nil)
	for s.scn.Scan() {
		txt := s.scn.Bytes()
		// Dispatch the event on an empty line.
		if len(txt) == 0 {
			s.evt = ScannerEvent{Type: event, Data: data.Bytes()}
			return true
		}
		// Split a line like "event: bar" into name "event" and value " bar".
		name, value, _ := bytes.Cut(txt, []byte(":"))
		// Consume an optional space after the colon.
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		switch string(name) {
		case "":
			// A line of the form ": something" is a comment.
			continue
		case "event":
			event = string(value)
		case "data":
			data.Write(value) // a bytes.Buffer's writes do not fail
			data.WriteRune('\n')
		}
	}
	if s.scn.Err() != nil {
		s.err = s.scn.Err()
	}
	return false
}

// Current returns the event Next read.
func (s *ScannerDecoder) Current() ScannerEvent { return s.evt }

// Err returns the error that ended reading, if it was not the end of the stream.
func (s *ScannerDecoder) Err() error { return s.err }
