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
// numbers is the order of the log. KEYS: meta, log, the calling process's key (pubKey).
// ARGV: an epoch for a log that begins, the log's MAXLEN, the number of events, the number of
// the call among the process's calls (from 1, one more each call), the events, encoded one
// after the other by appendEvent, and how long the process's key lives, in milliseconds. It
// returns {epoch, the number of the last event}; the events are numbered in the order given.
//
// The process's key keeps the number and the answer of its last call. A call sent again (go-
// redis sends a command again when its connection fails before the answer came) gets the same
// answer and adds nothing, so that no event is added twice, whatever other processes
// published in between. A process sends one call at a time, but a copy sent again may still
// be on its way when the process, which gave up waiting for it, sends the next: a call
// numbered below the last is refused. The key lives long after go-redis can have sent a call
// again.
//
// One call adds one entry to the log, which holds all the events of the call: the epoch, the
// number of the first, how many there are, and the events as the caller encoded them. Redis's
// cost per call and per entry (a few microseconds each) is then shared by the batch, and
// each event costs it little more than its bytes; each reader reads the events of a call as
// one entry too. MAXLEN therefore counts calls, not events.
//
// The meta hash is the log's memory of itself: if it is gone (Redis lost its data), what is
// left of the log is not the log any more, so a new epoch begins, which every reader notices.
var publishScript = redis.NewScript(beginLua + `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local call = tonumber(ARGV[4])
local prev = redis.call('HMGET', KEYS[3], 'call', 'epoch', 'last')
if prev[1] and call < tonumber(prev[1]) then
	return redis.error_reply('ERR redisbroker: a call sent again after a later one')
end
if epoch and prev[1] and call == tonumber(prev[1]) and prev[2] == epoch then
	return {epoch, tonumber(prev[3])}
end
if not epoch then
	epoch = ARGV[1]
	begin(epoch)
end
local count = tonumber(ARGV[3])
local last = redis.call('HINCRBY', KEYS[1], 'seq', count)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', epoch, 'f', last - count + 1, 'n', count, 'b', ARGV[5])
redis.call('HSET', KEYS[3], 'call', call, 'epoch', epoch, 'last', last)
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {epoch, last}
`)

// beginScript returns where the log is, beginning it if it has no epoch: for a reader that
// found no entries to start from. KEYS: meta, log. ARGV: an epoch for a log that begins. It
// returns {epoch, the number of the last event, how many entries the log holds}.
var beginScript = redis.NewScript(beginLua + `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
	epoch = ARGV[1]
	begin(epoch)
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'seq')), redis.call('XLEN', KEYS[2])}
`)

// renewScript begins a new epoch in place of one whose numbers went back. KEYS: meta, log.
// ARGV: the epoch that went back, a new one. It returns the epoch now current: the new one, or
// one that another reader began first.
var renewScript = redis.NewScript(beginLua + `
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
	begin(ARGV[2])
	return ARGV[2]
end
return redis.call('HGET', KEYS[1], 'epoch')
`)

// epochScript returns where the log is, for a reader that looks at it now and then, and
// begins a new epoch if the Redis that answers is not known to be the one that held the log
// when it was last looked at, and may have lost writes since (see reader.checkEpoch): it
// restarted and does not keep every write, or it is a replica promoted since. KEYS: meta, log.
// ARGV: an epoch for a log that begins, and "1" if Redis keeps every write it takes. It
// returns {epoch, the number of the last event, 1 if it began the epoch, else 0}, with ""
// for an epoch or number the log does not have.
var epochScript = redis.NewScript(beginLua + `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
	return {'', '', 0}
end
local rid = runID()
local began = 0
if rid and redis.call('HGET', KEYS[1], 'rid') ~= rid then
	-- A replica promoted to master may lack the last writes whatever it keeps of them.
	local info = redis.pcall('INFO', 'replication')
	local promoted = type(info) ~= 'string' or string.match(info, 'second_repl_offset:(-?%d+)') ~= '-1'
	if ARGV[2] ~= '1' or promoted then
		epoch = ARGV[1]
		begin(epoch)
		began = 1
	else
		redis.call('HSET', KEYS[1], 'rid', rid)
	end
end
return {epoch, redis.call('HGET', KEYS[1], 'seq'), began}
`)

// sizeScript counts the entries of the log that follow an ID, up to a number of them and
// about a number of bytes (of their IDs, field names and values); it counts an entry that
// would pass the bytes only as the first, so that an entry of any size is read. KEYS: log.
// ARGV: the ID, the most entries, the most bytes. It returns {how many, the ID of the last,
// 1 if it stopped at the number or the bytes (more may follow) else 0}.
//
// No command of Redis bounds its answer by bytes, and entries hold from a few bytes to
// maxBatch events of any size, so the reader asks for entries by the count this script
// gives: a script that returned the entries themselves would cost Redis twice as much, to
// convert them back from Lua. It looks at the log in steps of a few entries, so that those
// it looks at past the bytes are few: a step doubles from one, up to 16, and shrinks to what
// the rest of the bytes holds of entries as big as the biggest so far.
var sizeScript = redis.NewScript(`
local from = '(' .. ARGV[1]
local most, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local n, bytes, biggest, step, last = 0, 0, 1, 1, ''
while true do
	local got = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', step)
	for _, e in ipairs(got) do
		local size = #e[1]
		for _, v in ipairs(e[2]) do
			size = size + #v
		end
		if n > 0 and bytes + size > budget then
			return {n, last, 1}
		end
		n, bytes, last = n + 1, bytes + size, e[1]
		biggest = math.max(biggest, size)
		if n == most then
			return {n, last, 1}
		end
	end
	if #got < step then
		return {n, last, 0}
	end
	from = '(' .. last
	step = math.max(1, math.min(2 * step, 16, most - n, math.floor((budget - bytes) / biggest)))
end
`)

// entrySize returns the bytes of m as sizeScript counts them.
func entrySize(m redis.XMessage) int {
	n := len(m.ID)
	for k, v := range m.Values {
		s, _ := v.(string)
		n += len(k) + len(s)
	}
	return n
}

// beginLua begins the scripts that may begin a log. runID returns the run ID of the Redis
// that runs the script (false if it cannot tell: INFO may be denied), which changes each time
// Redis starts. begin makes epoch the log's, with no events yet, and records which Redis
// holds it. It also deletes the token that versions before pubKey kept in the meta hash, whose
// answer the new epoch makes wrong.
const beginLua = `
local function runID()
	local info = redis.pcall('INFO', 'server')
	return type(info) == 'string' and string.match(info, 'run_id:(%x+)') or false
end
local function begin(epoch)
	redis.call('DEL', KEYS[2])
	redis.call('HDEL', KEYS[1], 'tok', 'toklast', 'rid')
	redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
	local rid = runID()
	if rid then
		redis.call('HSET', KEYS[1], 'rid', rid)
	end
end
`

// The fields of a log entry: e, f and n are the epoch, the number of the first event and how
// many events the entry holds, b the events, encoded by appendEvent.
//
// An entry that a version before batches wrote holds one event: the epoch, s its number, and
// t, y, d, i and r its topics, Type, Data, ID and Retry (in nanoseconds), empty ones left out.
// The reader still reads those, so that a log written before an upgrade stays readable.
const (
	fieldEpoch  = "e"
	fieldFirst  = "f"
	fieldCount  = "n"
	fieldEvents = "b"

	fieldSeq    = "s"
	fieldTopics = "t"
	fieldType   = "y"
	fieldData   = "d"
	fieldID     = "i"
	fieldRetry  = "r"
)

// appendEvent appends to b ev published to topics, as five strings, each preceded by its
// length and a colon: the topics (appendTopics), the Type, the Data, the ID and the Retry in
// nanoseconds ("" for none). A batch's events are encoded one after the other.
func appendEvent(b []byte, ev sse.Event, topics []string) []byte {
	l := 0
	for _, t := range topics {
		l += len(strconv.Itoa(len(t))) + 1 + len(t)
	}
	b = strconv.AppendInt(b, int64(l), 10)
	b = append(b, ':')
	b = appendTopics(b, topics)
	b = appendString(b, ev.Type)
	b = appendString(b, ev.Data)
	b = appendString(b, ev.ID)
	if ev.Retry != 0 {
		r := strconv.FormatInt(int64(ev.Retry), 10)
		b = appendString(b, r)
	} else {
		b = appendString(b, "")
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// cutString reads a string that appendString wrote at the start of s, and returns it and what
// follows.
func cutString(s string) (str, rest string, ok bool) {
	n, rest, ok := strings.Cut(s, ":")
	l, err := strconv.Atoi(n)
	if !ok || err != nil || l < 0 || l > len(rest) {
		return "", s, false
	}
	return rest[:l], rest[l:], true
}

// appendTopics appends each name preceded by its length and a colon, so that any bytes a name
// holds are kept apart.
func appendTopics(b []byte, topics []string) []byte {
	for _, t := range topics {
		b = appendString(b, t)
	}
	return b
}

// decodeTopics reverses appendTopics.
func decodeTopics(s string) ([]string, error) {
	var topics []string
	for s != "" {
		t, rest, ok := cutString(s)
		if !ok {
			return nil, fmt.Errorf("%w: topics %q", errEntry, s)
		}
		// A copy: the sse.Broker keeps the name of a topic it has not seen, and a part of
		// the entry would keep the whole entry in memory.
		topics = append(topics, strings.Clone(t))
		s = rest
	}
	return topics, nil
}

// entry is one entry of the log, as read back: the events of one call of publishScript,
// numbered first, first+1, and so on.
type entry struct {
	epoch string
	first uint64
	evs   []logEvent
}

// logEvent is one event of an entry.
type logEvent struct {
	ev     sse.Event
	topics []string
}

// decodeEntry reads a log entry that publishScript wrote. It holds at least one event.
func decodeEntry(m redis.XMessage) (entry, error) {
	var e entry
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	e.epoch = str(fieldEpoch)
	if _, ok := m.Values[fieldEvents]; !ok {
		return decodeOldEntry(m, e, str)
	}
	first, err := strconv.ParseUint(str(fieldFirst), 10, 64)
	if e.epoch == "" || err != nil || first == 0 {
		return e, fmt.Errorf("%w %s: no epoch or number", errEntry, m.ID)
	}
	e.first = first
	b := str(fieldEvents)
	n, err := strconv.Atoi(str(fieldCount))
	if err != nil || n <= 0 || n > len(b)/len("0:0:0:0:0:") {
		return e, fmt.Errorf("%w %s: count %q", errEntry, m.ID, str(fieldCount))
	}
	e.evs = make([]logEvent, n)
	for i := range e.evs {
		var f [5]string
		for j := range f {
			var ok bool
			if f[j], b, ok = cutString(b); !ok {
				return e, fmt.Errorf("%w %s: event %d of %d cut short", errEntry, m.ID, i+1, n)
			}
		}
		if err := decodeEvent(&e.evs[i], m.ID, f[0], f[1], f[2], f[3], f[4]); err != nil {
			return e, err
		}
	}
	if b != "" {
		return e, fmt.Errorf("%w %s: more than %d events", errEntry, m.ID, n)
	}
	return e, nil
}

// decodeOldEntry reads an entry of one event, as versions before batches wrote them.
func decodeOldEntry(m redis.XMessage, e entry, str func(string) string) (entry, error) {
	seq, err := strconv.ParseUint(str(fieldSeq), 10, 64)
	if e.epoch == "" || err != nil || seq == 0 {
		return e, fmt.Errorf("%w %s: no epoch or number", errEntry, m.ID)
	}
	e.first = seq
	e.evs = make([]logEvent, 1)
	err = decodeEvent(&e.evs[0], m.ID, str(fieldTopics), str(fieldType), str(fieldData), str(fieldID), str(fieldRetry))
	return e, err
}

// decodeEvent fills le with an event's fields as the log holds them.
func decodeEvent(le *logEvent, id, topics, typ, data, evID, retry string) error {
	var err error
	if le.topics, err = decodeTopics(topics); err != nil {
		return err
	}
	// The sse.Broker keeps an event's ID, even an empty one, whose pointer may be into the
	// entry: a copy, so that the history does not keep every entry it holds an event of in
	// memory too. (Type and Data it copies into the event's wire form.)
	le.ev = sse.Event{Type: typ, Data: data, ID: strings.Clone(evID)}
	if retry != "" {
		ns, err := strconv.ParseInt(retry, 10, 64)
		if err != nil {
			return fmt.Errorf("%w %s: retry %q", errEntry, id, retry)
		}
		le.ev.Retry = time.Duration(ns)
	}
	return nil
}
