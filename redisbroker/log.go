package redisbroker

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"sse"
)

// publishScript numbers events and adds them to the log, in one step so that the order of
// numbers is the order of the log. KEYS: meta, log. ARGV: an epoch for a log that begins, the
// log's MAXLEN, the number of events, a token unique to the call, then for each event the
// number of its fields and those fields and their values. It returns {epoch, the number of
// the last event}; the events are numbered in the order given.
//
// The meta hash keeps the token and the answer of the last call: a call sent again with the
// same token (go-redis sends a command again when its connection fails before the answer
// came) gets the same answer and adds nothing, so that no event is added twice.
//
// One call adds a batch of events: Redis's cost per script call (a few microseconds) is then
// shared by the batch, and each event costs little more than its XADD.
//
// The meta hash is the log's memory of itself: if it is gone (Redis lost its data), what is
// left of the log is not the log any more, so a new epoch begins, which every reader notices.
var publishScript = redis.NewScript(`
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and redis.call('HGET', KEYS[1], 'tok') == ARGV[4] then
	return {epoch, tonumber(redis.call('HGET', KEYS[1], 'toklast'))}
end
if not epoch then
	epoch = ARGV[1]
	redis.call('DEL', KEYS[2])
	redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local count = tonumber(ARGV[3])
local last = redis.call('HINCRBY', KEYS[1], 'seq', count)
redis.call('HSET', KEYS[1], 'tok', ARGV[4], 'toklast', last)
local seq = last - count
local i = 5
while i <= #ARGV do
	local n = tonumber(ARGV[i])
	seq = seq + 1
	redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', epoch, 's', seq, unpack(ARGV, i + 1, i + 2 * n))
	i = i + 1 + 2 * n
end
return {epoch, last}
`)

// beginScript returns where the log is, beginning it if it has no epoch: for a reader that
// found no entries to start from. KEYS: meta, log. ARGV: an epoch for a log that begins. It
// returns {epoch, the number of the last event, how many entries the log holds}.
var beginScript = redis.NewScript(`
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
	epoch = ARGV[1]
	redis.call('DEL', KEYS[2])
	redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'seq')), redis.call('XLEN', KEYS[2])}
`)

// renewScript begins a new epoch in place of one whose numbers went back. KEYS: meta, log.
// ARGV: the epoch that went back, a new one. It returns the epoch now current: the new one, or
// one that another reader began first.
var renewScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
	redis.call('DEL', KEYS[2])
	redis.call('HDEL', KEYS[1], 'tok', 'toklast')
	redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', 0)
	return ARGV[2]
end
return redis.call('HGET', KEYS[1], 'epoch')
`)

// The fields of a log entry. e and s are the epoch and number, t the topics, y, d, i and r
// the event's Type, Data, ID and Retry (in nanoseconds); empty ones are left out.
const (
	fieldEpoch  = "e"
	fieldSeq    = "s"
	fieldTopics = "t"
	fieldType   = "y"
	fieldData   = "d"
	fieldID     = "i"
	fieldRetry  = "r"
)

// appendEvent appends to the script's ARGV ev published to topics: the number of its fields,
// then those fields and their values.
func appendEvent(args []any, ev sse.Event, topics []string) []any {
	at := len(args)
	args = append(args, 0)
	if len(topics) > 0 {
		args = append(args, fieldTopics, encodeTopics(topics))
	}
	if ev.Type != "" {
		args = append(args, fieldType, ev.Type)
	}
	args = append(args, fieldData, ev.Data)
	if ev.ID != "" {
		args = append(args, fieldID, ev.ID)
	}
	if ev.Retry != 0 {
		args = append(args, fieldRetry, int64(ev.Retry))
	}
	args[at] = (len(args) - at - 1) / 2
	return args
}

// encodeTopics writes each name preceded by its length and a colon, so that any bytes a name
// holds are kept apart.
func encodeTopics(topics []string) string {
	var s strings.Builder
	for _, t := range topics {
		s.WriteString(strconv.Itoa(len(t)))
		s.WriteByte(':')
		s.WriteString(t)
	}
	return s.String()
}

// decodeTopics reverses encodeTopics.
func decodeTopics(s string) ([]string, error) {
	var topics []string
	for s != "" {
		n, rest, ok := strings.Cut(s, ":")
		l, err := strconv.Atoi(n)
		if !ok || err != nil || l < 0 || l > len(rest) {
			return nil, fmt.Errorf("%w: topics %q", errEntry, s)
		}
		topics = append(topics, rest[:l])
		s = rest[l:]
	}
	return topics, nil
}

// entry is one event of the log, as read back.
type entry struct {
	epoch  string
	seq    uint64
	ev     sse.Event
	topics []string
}

// decodeEntry reads a log entry that publishScript wrote.
func decodeEntry(m redis.XMessage) (entry, error) {
	var e entry
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	e.epoch = str(fieldEpoch)
	seq, err := strconv.ParseUint(str(fieldSeq), 10, 64)
	if e.epoch == "" || err != nil || seq == 0 {
		return e, fmt.Errorf("%w %s: no epoch or number", errEntry, m.ID)
	}
	e.seq = seq
	if e.topics, err = decodeTopics(str(fieldTopics)); err != nil {
		return e, err
	}
	e.ev = sse.Event{Type: str(fieldType), Data: str(fieldData), ID: str(fieldID)}
	if r := str(fieldRetry); r != "" {
		ns, err := strconv.ParseInt(r, 10, 64)
		if err != nil {
			return e, fmt.Errorf("%w %s: retry %q", errEntry, m.ID, r)
		}
		e.ev.Retry = time.Duration(ns)
	}
	return e, nil
}
