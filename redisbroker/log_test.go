package redisbroker

import (
	"errors"
	"slices"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"sse"
	"sse/internal/ssetest"
)

// The events of a batch read back as they were encoded, each with its topics.
func TestEntryRoundTrip(t *testing.T) {
	topicSets := [][]string{nil, {"a"}, {"", "b:c", "12:x"}, {"ünï", "with space"}}
	var enc []byte
	var want []logEvent
	for i, c := range ssetest.RoundTrip {
		ev := sse.Event{ID: c.ID, Type: c.Type, Data: c.Data, Retry: c.Retry}
		topics := topicSets[i%len(topicSets)]
		enc = appendEvent(enc, ev, topics)
		want = append(want, logEvent{ev: ev, topics: topics})
	}
	m := redis.XMessage{ID: "1-0", Values: map[string]any{
		fieldEpoch: "ep", fieldFirst: "7", fieldCount: strconv.Itoa(len(want)), fieldEvents: string(enc),
	}}
	e, err := decodeEntry(m)
	if err != nil {
		t.Fatal(err)
	}
	if e.epoch != "ep" || e.first != 7 || len(e.evs) != len(want) {
		t.Fatalf("got epoch %q, first %d, %d events; want ep, 7, %d", e.epoch, e.first, len(e.evs), len(want))
	}
	for i, got := range e.evs {
		if got.ev != want[i].ev || !slices.Equal(got.topics, want[i].topics) {
			t.Errorf("%s: got %+v %q, want %+v %q", ssetest.RoundTrip[i].Name, got.ev, got.topics, want[i].ev, want[i].topics)
		}
	}
}

// An entry of one event, as versions before batches wrote them, reads as before.
func TestOldEntry(t *testing.T) {
	m := redis.XMessage{ID: "1-0", Values: map[string]any{
		"e": "ep", "s": "3", "t": "1:a1:b", "y": "tick", "d": "x", "i": "id", "r": "1500000000",
	}}
	e, err := decodeEntry(m)
	if err != nil {
		t.Fatal(err)
	}
	want := sse.Event{Type: "tick", Data: "x", ID: "id", Retry: 1500000000}
	if e.epoch != "ep" || e.first != 3 || len(e.evs) != 1 || e.evs[0].ev != want || !slices.Equal(e.evs[0].topics, []string{"a", "b"}) {
		t.Fatalf("got %+v", e)
	}
}

// An entry that Publish did not write is refused, not read as events.
func TestMalformedEntries(t *testing.T) {
	one := string(appendEvent(nil, sse.Event{Data: "x"}, []string{"a"}))
	for _, vals := range []map[string]any{
		{"foo": "bar"},
		{"e": "ep", "f": "1", "n": "1"},                         // no events
		{"e": "", "f": "1", "n": "1", "b": one},                 // no epoch
		{"e": "ep", "f": "0", "n": "1", "b": one},               // no number
		{"e": "ep", "f": "x", "n": "1", "b": one},               // no number
		{"e": "ep", "f": "1", "n": "2", "b": one},               // fewer events than said
		{"e": "ep", "f": "1", "n": "1", "b": one + one},         // more events than said
		{"e": "ep", "f": "1", "n": "0", "b": ""},                // no event
		{"e": "ep", "f": "1", "n": "1000000", "b": one},         // a count out of bounds
		{"e": "ep", "f": "1", "n": "1", "b": "5:1:a0:1:x0:0:"},  // a length past the end
		{"e": "ep", "f": "1", "n": "1", "b": "3:1:a0:1:x0:1:z"}, // retry not a number
		{"e": "ep", "f": "1", "n": "1", "b": "2:9:0:1:x0:0:"},   // topics cut short
		{"e": "ep", "f": "1", "n": "1", "b": "-1:0:1:x0:0:"},    // a negative length
		{"e": "ep", "f": "1", "n": "1", "b": "x:0:1:x0:0:0:"},   // not a length
		{"e": "ep", "s": "1", "t": "9:a", "d": "x"},             // old, topics cut short
		{"e": "ep", "s": "1", "d": "x", "r": "soon"},            // old, retry not a number
	} {
		if e, err := decodeEntry(redis.XMessage{ID: "1-0", Values: vals}); !errors.Is(err, errEntry) {
			t.Errorf("%v: got %+v, %v; want errEntry", vals, e, err)
		}
	}
}
