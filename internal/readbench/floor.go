package readbench

import (
	"bytes"
	"io"
	"unsafe"

	"sse"
)

// FloorDecoder is not a decoder: it is a bound on how fast a decoder of sse.Decoder's shape
// could read the benchmark's streams of short events. Like sse.Decoder, it returns events from
// Next, finds each line with one IndexByte, copies the ID and the data into shared chunks and
// keeps the type. It does nothing else: it takes each field's name from its first byte and
// checks neither the line breaks (CR), nor the UTF-8, nor the sizes, nor anything else the
// spec asks. It reads the streams of BenchmarkRead right, and hardly any other. For long
// events it is no bound: it copies the data, where sse.Decoder returns the bytes it read.
type FloorDecoder struct {
	r          io.Reader
	buf        []byte
	start, end int    // buf[start:end] is read but not yet decoded
	chunk      []byte // strings are cut from chunk[:len(chunk)]
	id, typ    string
	data       string
}

// NewFloorDecoder returns a FloorDecoder that reads from r.
func NewFloorDecoder(r io.Reader) *FloorDecoder {
	return &FloorDecoder{r: r, buf: make([]byte, 8<<10)}
}

// Next returns the next event, or the error that ended reading.
func (d *FloorDecoder) Next() (sse.Event, error) {
	for {
		i := bytes.IndexByte(d.buf[d.start:d.end], '\n')
		if i < 0 {
			d.end = copy(d.buf, d.buf[d.start:d.end])
			d.start = 0
			if d.end == len(d.buf) { // a line longer than buf
				d.buf = append(d.buf, make([]byte, len(d.buf))...)
			}
			n, err := d.r.Read(d.buf[d.end:])
			d.end += n
			if err != nil {
				return sse.Event{}, err
			}
			continue
		}
		line := d.buf[d.start : d.start+i]
		d.start += i + 1
		if len(line) == 0 {
			return sse.Event{ID: d.id, Type: d.typ, Data: d.data}, nil
		}
		switch line[0] {
		case 'i': // "id: "
			d.id = d.cut(line[4:])
		case 'e': // "event: "
			if string(line[7:]) != d.typ {
				d.typ = string(line[7:])
			}
		case 'd': // "data: ", copied now: the next read may overwrite buf
			d.data = d.cut(line[6:])
		}
	}
}

// cut returns a copy of b.
func (d *FloorDecoder) cut(b []byte) string {
	if cap(d.chunk)-len(d.chunk) < len(b) {
		d.chunk = make([]byte, 0, 4<<10)
	}
	d.chunk = append(d.chunk, b...)
	return unsafe.String(unsafe.SliceData(d.chunk[len(d.chunk)-len(b):]), len(b))
}
