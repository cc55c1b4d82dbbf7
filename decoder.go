package sse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"iter"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"
)

// ErrEventTooLarge is wrapped by the error Next (and Read, and Client.Events) returns when a
// stream holds an event, or a line, larger than the Decoder's MaxEventSize.
var ErrEventTooLarge = errors.New("sse: event too large")

// defaultMaxEventSize is the MaxEventSize of a Decoder that sets none.
const defaultMaxEventSize = 4 << 20

// Decoder reads events from a text/event-stream, exactly as WHATWG HTML §9.2.6 "Interpreting
// an event stream" describes and browsers' EventSource does. It does its own buffering, so it
// may read more from its reader than the events it has returned. Decoder is not safe for
// concurrent use, and must not be copied once used.
type Decoder struct {
	// MaxEventSize bounds the memory a stream can make the Decoder hold: the bytes of the lines
	// of one event (comments aside), and of any one line. A stream that exceeds it makes Next
	// return an error wrapping ErrEventTooLarge. Zero means 4 MiB. Set it before the first
	// call to Next.
	MaxEventSize int

	r   io.Reader
	buf []byte
	// buf[start:end] is read but not yet decoded. buf[start:noLF] holds no LF, with
	// start <= noLF <= end, and buf[start:noCR] no CR (noCR may be below start, and then says
	// nothing), so that no byte is searched for either twice: not the rest of the buffer for
	// the line break a line does not end with, nor a partial line each time more of it is read.
	start, end, noLF, noCR int
	// aliased reports whether strings Next returned are bytes of buf[:end], which must then
	// never be written again: fill reads on after them, or into a new buffer.
	aliased bool
	err     error // the error that ended reading, returned once buf is decoded
	started bool  // the optional leading BOM has been looked for
	afterCR bool  // the last line ended with CR at the end of buf, so that an LF next ends nothing

	// The buffers of WHATWG HTML §9.2.6, kept as bytes until an event is dispatched.
	hasData    bool          // the data buffer is not empty
	data       value         // the data buffer, without its final LF
	typ        value         // the event type buffer
	id         value         // the last event ID buffer, if an id field set it since the last dispatch
	idSet      bool          // an id field set id since the last dispatch
	size       int           // the bytes of the current block's lines, comments aside
	lastSize   int           // the size of the last block
	blockRetry time.Duration // the reconnection time a retry field set in the current block, or -1
	retry      time.Duration // the stream's reconnection time, or -1 until a retry field sets it

	lastID   string // the last event ID string
	lastType string // the Type of the last event, reused by the next one if it is the same

	// Short strings are cut from strs, which holds them in strs[:strsN] (see copyString).
	strs  []byte
	strsN int
}

// A value holds one of the buffers of WHATWG HTML §9.2.6. While it is the value of one line
// that buf still holds, it is buf[from:to], which spares copying it (twice, for a string);
// otherwise, it is a copy.
type value struct {
	from, to int
	inBuf    bool // the value is buf[from:to], not copy
	copy     valueBuf
}

// set makes v buf[from:to].
func (v *value) set(from, to int) { v.from, v.to, v.inBuf = from, to, true }

func (v *value) reset() { v.inBuf, v.copy.n = false, 0 }

// own makes v a copy, if it is bytes of buf.
func (v *value) own(buf []byte) {
	if v.inBuf {
		v.copy.set(buf[v.from:v.to])
		v.inBuf = false
	}
}

// NewDecoder returns a Decoder that reads from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: r, blockRetry: -1, retry: -1}
}

// LastEventID returns the last event ID string now in effect: the value of the last id field
// of a block the stream has ended, whether or not that block dispatched an event. It is what a
// client sends as Last-Event-ID when it reconnects.
func (d *Decoder) LastEventID() string { return d.lastID }

// Next returns the next event the stream dispatches.
//
// The event's ID is the last event ID in effect when it was dispatched (EventSource's
// lastEventId), its Type is "" if the stream named none (EventSource's "message"), and its
// Retry is the reconnection time a retry field set in its block, or zero. Line breaks in the
// data arrive as LF; invalid UTF-8 is replaced by U+FFFD, as a browser does. A block that
// dispatches no event (no data field) still sets the last event ID.
//
// Next returns io.EOF when the stream ends between events. When it ends inside an event or a
// line, that event is discarded, as the spec requires, and Next returns io.ErrUnexpectedEOF.
// Any other error is the reader's, wraps ErrEventTooLarge, or says that the reader misbehaved
// (io.ErrNoProgress after many empty reads). Once Next has returned an error, it returns the
// same error again.
//
// Strings of up to 256 bytes are cut from 4 KiB buffers that several events share. A longer
// Data is, where the stream allows (one data line of valid UTF-8), the very bytes the Decoder
// read it into, not a copy: those bytes are never written again. Either way, a string kept
// keeps the buffer it was cut from (4 KiB, or the read buffer: 8 KiB, or room for 16 events
// like the last, up to 256 KiB). To keep a few strings of a long stream, and not the rest,
// keep clones of them (strings.Clone).
func (d *Decoder) Next() (Event, error) {
	for {
		// The end of the next line. IndexByte is much faster than IndexAny: look for the LF,
		// the usual line end, then for a CR before it only if buf may hold one there (eol).
		// (A function doing this would cost too much to inline, and a call for each line
		// measured a few percent slower on short events.)
		lf := bytes.IndexByte(d.buf[d.noLF:d.end], '\n')
		i := d.noLF + lf
		if lf < 0 || i >= d.noCR {
			i = d.eol(lf)
		}
		if i == d.end {
			if err := d.more(); err != nil {
				return Event{}, err
			}
			continue
		}
		line := d.buf[d.start:i]
		d.start = i + 1
		if d.buf[i] == '\r' {
			// WHATWG HTML §9.2.6: a lone CR ends a line at once, and CRLF is one line break,
			// even when the LF comes in a later read (see more).
			if d.start == d.end {
				d.afterCR = true
			} else if d.buf[d.start] == '\n' {
				d.start++
			}
		}
		// A line that ends in a lone CR may leave an LF that eol found, or the end, further
		// on: what was searched is not searched again.
		d.noLF = max(d.noLF, d.start)
		if len(line) == 0 {
			if d.dispatch() {
				// The event is built here rather than returned by event: a struct result
				// goes through memory, which costs more than decoding a small event.
				typ, data, retry := d.event()
				return Event{ID: d.lastID, Type: typ, Data: data, Retry: retry}, nil
			}
			continue
		}
		if err := d.field(line, i-len(line)); err != nil {
			return Event{}, err
		}
	}
}

// more reads more of the stream when buf holds no whole line, or returns the error that
// ended it. It also skips what can only be told once more is read: the LF of a CRLF split
// between two reads, and a leading BOM.
func (d *Decoder) more() error {
	if d.err != nil {
		return d.fail()
	}
	if d.started { // else buf holds no more than a part of a BOM
		if err := d.checkPartial(); err != nil {
			return err
		}
	}
	d.fill()
	if d.afterCR && d.start < d.end {
		d.afterCR = false
		if d.buf[d.start] == '\n' {
			d.start++
		}
	}
	if !d.started {
		d.skipBOM()
	}
	d.noLF = max(d.noLF, d.start)
	return nil
}

var bom = []byte("\xef\xbb\xbf")

// skipBOM skips one leading byte order mark (WHATWG HTML §9.2.5: the stream is decoded with
// "UTF-8 decode", which strips one), unless it needs more bytes to tell.
func (d *Decoder) skipBOM() {
	b := d.buf[d.start:d.end]
	if len(b) < len(bom) && bytes.HasPrefix(bom, b) && d.err == nil {
		return // no line break yet: more calls again
	}
	d.started = true
	if bytes.HasPrefix(b, bom) {
		d.start += len(bom)
	}
}

// eol returns the index in buf of the first CR or LF in buf[start:end], or end, given lf,
// the result of IndexByte(buf[noLF:end], '\n'), and records in noLF and noCR how far buf is
// now known to hold neither. Next has handled the usual case: an LF before which buf holds no
// CR.
func (d *Decoder) eol(lf int) int {
	if lf < 0 {
		lf = d.end
	} else {
		lf += d.noLF
	}
	d.noLF = lf
	if d.noCR >= lf {
		return lf
	}
	from := max(d.start, d.noCR)
	cr := bytes.IndexByte(d.buf[from:d.end], '\r')
	if cr < 0 {
		d.noCR = d.end
		return lf
	}
	d.noCR = from + cr
	return min(lf, from+cr)
}

// checkPartial returns an error if the line read so far makes the event too large.
func (d *Decoder) checkPartial() error {
	n := d.end - d.start
	if n > 0 && d.buf[d.start] != ':' {
		n += d.size // a comment is not part of the event
	}
	if n > d.max() {
		return d.tooLarge()
	}
	return nil
}

func (d *Decoder) max() int {
	if d.MaxEventSize > 0 {
		return d.MaxEventSize
	}
	return defaultMaxEventSize
}

func (d *Decoder) tooLarge() error {
	d.err = &tooLargeError{d.max()}
	d.start, d.end, d.noLF, d.noCR = 0, 0, 0, 0
	return d.err
}

// tooLargeError wraps ErrEventTooLarge, saying what the limit was.
type tooLargeError struct{ max int }

func (e *tooLargeError) Error() string {
	return ErrEventTooLarge.Error() + ": over " + strconv.Itoa(e.max) + " bytes"
}

func (e *tooLargeError) Unwrap() error { return ErrEventTooLarge }

const (
	minRead = 4 << 10 // the least free space fill reads into
	bufSize = 8 << 10 // the least size of a new buffer
	// A new buffer holds bufEvents events the size of the last, up to maxBufSize, so that
	// moving an event that straddles two buffers costs little.
	bufEvents  = 16
	maxBufSize = 256 << 10
)

// fill reads more of the stream into buf, making room first.
func (d *Decoder) fill() {
	if d.start == d.end && d.end > 0 && !d.aliased {
		// Nothing in buf is needed: read into it from the start.
		d.keep()
		d.start, d.end, d.noLF, d.noCR = 0, 0, 0, 0
		if len(d.buf) > maxBufSize {
			d.buf = nil // a long line's buffer is not kept for the lines after it
		}
	}
	if len(d.buf)-d.end < minRead {
		d.keep()
		n := d.end - d.start
		buf := d.buf
		switch {
		case d.start == 0 || n > len(d.buf)/2:
			buf = newBuffer(2 * len(d.buf)) // the line needs more room
		case d.aliased || d.buf == nil:
			buf = newBuffer(max(min(bufEvents*d.lastSize, maxBufSize), n+minRead))
		} // else move the partial line to the front
		copy(buf, d.buf[d.start:d.end])
		d.noLF -= d.start
		d.noCR -= d.start
		d.buf, d.start, d.end, d.aliased = buf, 0, n, false
	}
	// io.Reader allows reading nothing and no error; bufio.Reader gives up after 100 of those.
	for range 100 {
		n, err := d.r.Read(d.buf[d.end:])
		if n < 0 || n > len(d.buf)-d.end {
			d.err = errors.New("sse: reader returned an invalid count")
			return
		}
		d.end += n
		if err != nil {
			d.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	d.err = io.ErrNoProgress
}

// newBuffer returns a buffer of at least size and bufSize bytes, and as many more as its
// allocation holds anyway.
func newBuffer(size int) []byte {
	b := slices.Grow([]byte(nil), max(size, bufSize))
	return b[:cap(b)]
}

// keep copies the values that are bytes of buf, which fill is about to overwrite or leave.
func (d *Decoder) keep() {
	d.data.own(d.buf)
	d.typ.own(d.buf)
	d.id.own(d.buf)
}

// fail turns the error that ended reading into Next's: an end of stream inside an event or a
// line is unexpected. It discards what is pending, as WHATWG HTML §9.2.6 does at the end.
func (d *Decoder) fail() error {
	if d.err == io.EOF && (d.start < d.end || d.size > 0) {
		d.err = io.ErrUnexpectedEOF
	}
	d.start, d.end, d.noLF, d.noCR = 0, 0, 0, 0
	d.hasData, d.size = false, 0
	d.data.reset()
	d.typ.reset()
	return d.err
}

// field processes one line that is not blank, buf[at:at+len(line)]: a comment or a field.
func (d *Decoder) field(line []byte, at int) error {
	if line[0] == ':' {
		if len(line) > d.max() {
			return d.tooLarge()
		}
		return nil
	}
	if d.size += len(line) + 1; d.size > d.max() {
		return d.tooLarge()
	}
	// The names are compared as bytes, which is the same as comparing the decoded text: they
	// are ASCII, and no invalid UTF-8 sequence decodes to ASCII. The first byte tells which
	// name a line may have, which spares looking for the colon. A value v ends line, which
	// starts at at in buf.
	end := at + len(line)
	switch line[0] {
	case 'd':
		if v, ok := fieldValue(line, "data"); ok {
			if !d.hasData {
				d.hasData = true
				d.data.set(end-len(v), end)
				break
			}
			d.data.own(d.buf)
			d.data.copy.add(lf)
			d.data.copy.add(v)
		}
	case 'e':
		if v, ok := fieldValue(line, "event"); ok {
			d.typ.set(end-len(v), end)
		}
	case 'i':
		if v, ok := fieldValue(line, "id"); ok && bytes.IndexByte(v, 0) < 0 {
			d.id.set(end-len(v), end)
			d.idSet = true
		}
	case 'r':
		if v, ok := fieldValue(line, "retry"); ok {
			if ms, ok := parseRetry(v); ok {
				d.retry, d.blockRetry = ms, ms
			}
		}
	}
	return nil
}

// fieldValue returns the value of the field on line, without the one space that may follow
// the colon, if the field's name is name.
func fieldValue(line []byte, name string) ([]byte, bool) {
	n := len(name)
	if len(line) < n || string(line[:n]) != name || len(line) > n && line[n] != ':' {
		return nil, false
	}
	v := line[min(n+1, len(line)):]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v, true
}

// parseRetry parses a retry field's value: ASCII digits only, a number of milliseconds.
func parseRetry(b []byte) (time.Duration, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var ms uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if ms <= math.MaxInt64/uint64(time.Millisecond) {
			ms = ms*10 + uint64(c-'0')
		}
	}
	if ms > math.MaxInt64/uint64(time.Millisecond) {
		// More than a Duration holds: still a valid, if endless, reconnection time.
		return math.MaxInt64, true
	}
	return time.Duration(ms) * time.Millisecond, true
}

// dispatch runs "dispatch the event" at a blank line, and reports whether there is an event
// to return, which event then makes.
func (d *Decoder) dispatch() bool {
	d.lastSize, d.size = d.size, 0
	// The last event ID buffer is not reset, so that a later event without an id keeps it:
	// the last event ID string changes only when an id field set the buffer.
	if d.idSet {
		d.idSet = false
		if id := d.bytes(&d.id); string(id) != d.lastID {
			// A copy: the ID is kept for the events after, and need not keep buf.
			d.lastID = d.copyString(id)
		}
		d.id.reset()
	}
	if !d.hasData {
		// No data: no event, but the type buffer is reset all the same.
		d.typ.reset()
		d.blockRetry = -1
		return false
	}
	return true
}

// event returns the type, data and retry of the event dispatch found, and empties the
// buffers for the next.
func (d *Decoder) event() (typ, data string, retry time.Duration) {
	if b := d.bytes(&d.typ); len(b) > 0 {
		if string(b) != d.lastType {
			// A copy: the type is kept for the events after, and need not keep buf.
			d.lastType = d.copyString(b)
		}
		typ = d.lastType
	}
	data, retry = d.string(&d.data), max(d.blockRetry, 0)
	d.hasData, d.blockRetry = false, -1
	d.data.reset()
	d.typ.reset()
	if cap(d.data.copy.b) > maxKeptBuffer {
		d.data.copy.b = nil // do not pin one large event's buffer for the life of the stream
	}
	return typ, data, retry
}

// bytes returns the bytes of v.
func (d *Decoder) bytes(v *value) []byte {
	if v.inBuf {
		return d.buf[v.from:v.to]
	}
	return v.copy.bytes()
}

// string returns v as a string, decoded as UTF-8 (see decodeUTF8). A long value in buf is
// not copied: the string is those bytes of buf, which are then never written again. A short
// one is copied, so that buf can be read into again, and so is one in a buffer grown for a
// long line, which a string should not keep.
func (d *Decoder) string(v *value) string {
	if !v.inBuf {
		return d.copyString(v.copy.bytes())
	}
	b := d.buf[v.from:v.to]
	if len(b) <= maxSharedString || len(d.buf) > maxBufSize {
		return d.copyString(b)
	}
	if !isASCII(b) && !utf8.Valid(b) {
		return decodeUTF8(b)
	}
	d.aliased = true
	return unsafe.String(&b[0], len(b))
}

// A valueBuf is a reusable buffer. Its length is kept apart from its slice, so that setting it
// does not write the slice's pointer: a pointer write costs a GC write barrier while a
// collection runs, which, at millions of events a second, is much of the time.
type valueBuf struct {
	b []byte // b[:n] is the value
	n int
}

func (v *valueBuf) bytes() []byte { return v.b[:v.n] }

func (v *valueBuf) set(b []byte) {
	v.n = 0
	v.add(b)
}

func (v *valueBuf) add(b []byte) {
	if cap(v.b)-v.n < len(b) {
		v.b = append(v.b[:v.n], b...)
		v.n = len(v.b)
		return
	}
	v.n += copy(v.b[v.n:cap(v.b)], b)
}

var lf = []byte{'\n'}

// Short strings are cut from a shared buffer of stringChunk bytes, one allocation for many:
// a token of an answer or an ID then costs no allocation of its own. A string kept holds on to
// the chunk it was cut from, at most stringChunk bytes, which the stream's other strings
// share. (Cutting them from the read buffer instead measured no faster, and a string kept
// would keep more.) A copied string longer than maxSharedString has an allocation of its own,
// as has one of invalid UTF-8, which decodeUTF8 makes anew.
const (
	stringChunk     = 4 << 10
	maxSharedString = 256
)

// copyString returns a copy of b, decoded as UTF-8 (see decodeUTF8).
func (d *Decoder) copyString(b []byte) string {
	if len(b) > maxSharedString || !isASCII(b) && !utf8.Valid(b) {
		return decodeUTF8(b)
	}
	if len(b) == 0 {
		return ""
	}
	if len(d.strs)-d.strsN < len(b) {
		// Strings cut earlier keep the old chunk, which is never written again.
		d.strs, d.strsN = make([]byte, stringChunk), 0
	}
	at := d.strsN
	d.strsN += copy(d.strs[at:], b)
	return unsafe.String(&d.strs[at], len(b))
}

// decodeUTF8 decodes b as the WHATWG Encoding standard's "UTF-8 decode" does: each maximal
// subpart of an invalid sequence becomes one U+FFFD. (Go's own conversions replace each
// invalid byte instead.) Decoding each value alone is the same as decoding the whole stream:
// an ASCII line break ends any sequence either way.
func decodeUTF8(b []byte) string {
	if len(b) <= 256 && isASCII(b) || utf8.Valid(b) {
		return string(b)
	}
	s := make([]byte, 0, len(b)+len(b)/2)
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			s = append(s, c)
			i++
			continue
		}
		if r, n := utf8.DecodeRune(b[i:]); r != utf8.RuneError || n > 1 {
			s = append(s, b[i:i+n]...)
			i += n
			continue
		}
		// An invalid sequence: skip the lead byte and the continuation bytes that fit it.
		s = utf8.AppendRune(s, utf8.RuneError)
		i += invalidLen(b[i:])
	}
	return string(s)
}

// isASCII reports whether b is all ASCII. For a short b it is several times faster than
// utf8.Valid, which pays a setup cost for its speed on long inputs.
func isASCII(b []byte) bool {
	const high = 0x8080808080808080
	le := binary.LittleEndian
	for ; len(b) >= 32; b = b[32:] {
		if (le.Uint64(b)|le.Uint64(b[8:])|le.Uint64(b[16:])|le.Uint64(b[24:]))&high != 0 {
			return false
		}
	}
	for ; len(b) >= 8; b = b[8:] {
		if le.Uint64(b)&high != 0 {
			return false
		}
	}
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// invalidLen returns the length of the maximal subpart of an ill-formed sequence at the start
// of b: the lead byte and those continuation bytes that a well-formed sequence could have had.
func invalidLen(b []byte) int {
	lo, hi, need := byte(0x80), byte(0xbf), 0
	switch c := b[0]; {
	case 0xc2 <= c && c <= 0xdf:
		need = 1
	case c == 0xe0:
		lo, need = 0xa0, 2
	case c == 0xed:
		hi, need = 0x9f, 2
	case 0xe1 <= c && c <= 0xef:
		need = 2
	case c == 0xf0:
		lo, need = 0x90, 3
	case c == 0xf4:
		hi, need = 0x8f, 3
	case 0xf1 <= c && c <= 0xf3:
		need = 3
	}
	n := 1
	for ; n <= need && n < len(b) && lo <= b[n] && b[n] <= hi; n++ {
		lo, hi = 0x80, 0xbf
	}
	return n
}

// Read returns an iterator over the events of the stream r, decoded by a Decoder: for a
// response read once, such as an LLM API's answer to a POST. It ends at the end of the
// stream, and yields any other error (io.ErrUnexpectedEOF if the stream ends inside an event)
// once, as its last pair. It does not close r.
func Read(r io.Reader) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		d := NewDecoder(r)
		for {
			ev, err := d.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(Event{}, err)
				return
			}
			if !yield(ev, nil) {
				return
			}
		}
	}
}
