// Package spec reads a text/event-stream the way a browser does: it implements WHATWG HTML
// §9.2.6 "Interpreting an event stream" step by step, with no shortcuts, so that tests can
// check what a conforming client would see.
package spec

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Event is one dispatched event, as a MessageEvent would carry it.
type Event struct {
	Type        string // the event type; "message" when the stream named none
	Data        string
	LastEventID string // the stream's last event ID string at dispatch
	Retry       int64  // the reconnection time (ms) last set since the previous dispatched event, or -1
}

// Decoder reads events from a stream.
type Decoder struct {
	r       *bufio.Reader
	started bool // the optional leading BOM has been looked for
	afterCR bool // the previous line ended with CR, so a following LF ends nothing
	line    []byte

	// The buffers of the algorithm.
	data        strings.Builder
	eventType   string
	idBuffer    string // the last event ID buffer
	lastEventID string // the last event ID string, set from idBuffer on dispatch
	retry       int64  // the reconnection time, -1 until a retry field sets it
	eventRetry  int64  // the reconnection time set since the previous dispatch, or -1

	// OnComment, if set, is called with the text of each comment line (after the colon).
	OnComment func(text string)
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: bufio.NewReader(r), retry: -1, eventRetry: -1}
}

// LastEventID returns the last event ID string: what a client sends as Last-Event-ID when it
// reconnects.
func (d *Decoder) LastEventID() string { return d.lastEventID }

// Retry returns the stream's reconnection time in milliseconds, or -1 if no retry field set it.
func (d *Decoder) Retry() int64 { return d.retry }

// Next returns the next dispatched event. At the end of the stream it returns io.EOF, and an
// event whose block was not terminated by a blank line is discarded, as the spec requires.
func (d *Decoder) Next() (Event, error) {
	for {
		line, err := d.readLine()
		if err != nil {
			return Event{}, err
		}
		if ev, ok := d.processLine(line); ok {
			return ev, nil
		}
	}
}

// readLine returns the next line without its end of line: CRLF, LF or CR.
func (d *Decoder) readLine() (string, error) {
	if !d.started {
		d.started = true
		// §9.2.5: one leading U+FEFF BYTE ORDER MARK is ignored.
		if b, err := d.r.Peek(3); err == nil && bytes.Equal(b, []byte("\xef\xbb\xbf")) {
			d.r.Discard(3)
		}
	}
	d.line = d.line[:0]
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			// A line with no end of line is not a line; the pending data is discarded.
			return "", err
		}
		if d.afterCR {
			d.afterCR = false
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\r':
			d.afterCR = true
			return decodeUTF8(d.line), nil
		case '\n':
			return decodeUTF8(d.line), nil
		}
		d.line = append(d.line, c)
	}
}

// decodeUTF8 decodes b as the WHATWG Encoding standard's "UTF-8 decode" does: each maximal
// subpart of an invalid sequence becomes one U+FFFD. Decoding line by line gives the same result
// as decoding the whole stream, since a line break (ASCII) ends any pending sequence either way.
func decodeUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var s strings.Builder
	var cp rune
	needed, seen := 0, 0
	lower, upper := byte(0x80), byte(0xbf)
	for i := 0; i < len(b); i++ {
		c := b[i]
		if needed == 0 {
			switch {
			case c <= 0x7f:
				s.WriteByte(c)
			case 0xc2 <= c && c <= 0xdf:
				needed, cp = 1, rune(c&0x1f)
			case 0xe0 <= c && c <= 0xef:
				if c == 0xe0 {
					lower = 0xa0
				} else if c == 0xed {
					upper = 0x9f
				}
				needed, cp = 2, rune(c&0xf)
			case 0xf0 <= c && c <= 0xf4:
				if c == 0xf0 {
					lower = 0x90
				} else if c == 0xf4 {
					upper = 0x8f
				}
				needed, cp = 3, rune(c&0x7)
			default:
				s.WriteRune(utf8.RuneError)
			}
			continue
		}
		if c < lower || c > upper {
			// The sequence ends before this byte, which is decoded afresh.
			cp, needed, seen, lower, upper = 0, 0, 0, 0x80, 0xbf
			s.WriteRune(utf8.RuneError)
			i--
			continue
		}
		lower, upper = 0x80, 0xbf
		cp = cp<<6 | rune(c&0x3f)
		if seen++; seen == needed {
			s.WriteRune(cp)
			cp, needed, seen = 0, 0, 0
		}
	}
	if needed != 0 {
		s.WriteRune(utf8.RuneError)
	}
	return s.String()
}

// processLine applies one line, reporting an event if the line dispatched one.
func (d *Decoder) processLine(line string) (Event, bool) {
	if line == "" {
		return d.dispatch()
	}
	if line[0] == ':' {
		if d.OnComment != nil {
			d.OnComment(line[1:])
		}
		return Event{}, false
	}
	field, value, found := strings.Cut(line, ":")
	if found {
		value = strings.TrimPrefix(value, " ")
	}
	switch field {
	case "event":
		d.eventType = value
	case "data":
		d.data.WriteString(value)
		d.data.WriteByte('\n')
	case "id":
		if !strings.ContainsRune(value, 0) {
			d.idBuffer = value
		}
	case "retry":
		if value != "" && strings.Trim(value, "0123456789") == "" {
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				n = 1<<63 - 1 // more digits than fit: still a valid, huge, time
			}
			d.retry, d.eventRetry = n, n
		}
	}
	return Event{}, false
}

// dispatch runs "dispatch the event".
func (d *Decoder) dispatch() (Event, bool) {
	// The last event ID buffer is not reset, so a later event without an id keeps this one.
	d.lastEventID = d.idBuffer
	data := d.data.String()
	typ := d.eventType
	d.data.Reset()
	d.eventType = ""
	if data == "" {
		return Event{}, false
	}
	data = strings.TrimSuffix(data, "\n")
	if typ == "" {
		typ = "message"
	}
	ev := Event{Type: typ, Data: data, LastEventID: d.lastEventID, Retry: d.eventRetry}
	d.eventRetry = -1
	return ev, true
}
