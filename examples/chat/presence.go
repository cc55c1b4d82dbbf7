package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"sse"
)

// presence keeps who is in each room: every page that says which page it is (?page= on its
// stream) is listed, under the name it last said something with ("anonymous" until then).
// Each process lists the pages it serves, and publishes its list to the room's presence topic
// whenever it changes, as a "presence" event {"node": …, "names": […]}; a page shows the
// names of every process's list. A page learns of a stream's end through sse.WithStreamEnd,
// which works whichever way the broker serves the stream.
type presence struct {
	node string // this process, among those that share the rooms
	b    broker // set before the first stream

	mu    sync.Mutex                        // guards rooms and known
	rooms map[string]map[string]*pageStream // room → page ID → its streams
	known names                             // the names of pages seen lately, for those that come back
}

// A pageStream is one page's place in a room: its name, and how many of its streams are open
// (an EventSource that reconnects may open the next before the server sees the last end).
type pageStream struct {
	name    string
	streams int
}

func newPresence() *presence {
	return &presence{
		node:  strconv.FormatUint(rand.Uint64(), 36),
		rooms: make(map[string]map[string]*pageStream),
		known: names{byPage: make(map[string]string)},
	}
}

// option has the broker tell p when a stream ends.
func (p *presence) option() sse.Option { return sse.WithStreamEnd(p.ended) }

// visitor is what a stream's context carries for presence: its room and page.
type visitor struct{ room, page string }

type visitorKey struct{}

// serve streams room to a page that says who it is: it joins the room's list, is greeted with
// the list, then gets the room's messages and every change of the list.
func (p *presence) serve(w http.ResponseWriter, r *http.Request, room, page string) {
	names := p.join(room, page)
	p.publish(room, names) // for the pages there already
	// A greeting of the stream's own, before the broker's events: what changes between the
	// two reaches the page with the next change.
	stream, err := sse.NewStream(w, r)
	if err == nil {
		err = stream.Send(p.event(names))
	}
	if err != nil {
		p.publish(room, p.leave(room, page))
		return
	}
	ctx := context.WithValue(r.Context(), visitorKey{}, visitor{room, page})
	p.b.ServeEvents(w, r.WithContext(ctx), topic(room), presenceTopic(room))
}

// ended is called by the broker once each stream has ended.
func (p *presence) ended(ctx context.Context, _ error) {
	if v, ok := ctx.Value(visitorKey{}).(visitor); ok {
		p.publish(v.room, p.leave(v.room, v.page))
	}
}

func (p *presence) join(room, page string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	pages := p.rooms[room]
	if pages == nil {
		pages = make(map[string]*pageStream)
		p.rooms[room] = pages
	}
	if pages[page] == nil {
		// A page whose stream dropped comes back under the name it had.
		pages[page] = &pageStream{name: p.known.get(page)}
	}
	pages[page].streams++
	return p.names(room)
}

func (p *presence) leave(room, page string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ps := p.rooms[room][page]; ps != nil {
		if ps.streams--; ps.streams == 0 {
			delete(p.rooms[room], page)
		}
	}
	if len(p.rooms[room]) == 0 {
		delete(p.rooms, room)
	}
	return p.names(room)
}

// rename gives page the name it said something with, and reports the room's list if that
// changed it.
func (p *presence) rename(room, page, name string) (names []string, changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.rooms[room][page]
	if ps == nil || ps.name == name {
		return nil, false
	}
	ps.name = name
	p.known.put(page, name)
	return p.names(room), true
}

// names returns the names of room's pages, sorted. p.mu must be held.
func (p *presence) names(room string) []string {
	names := []string{}
	for _, ps := range p.rooms[room] {
		names = append(names, ps.name)
	}
	slices.Sort(names)
	return names
}

// publish tells room's pages the list names. It fails once the broker is shut down, and then
// the pages go too.
func (p *presence) publish(room string, names []string) {
	p.b.Publish(p.event(names), presenceTopic(room))
}

// depart publishes empty lists for every room of this process, so that the pages of other
// processes stop listing its pages when it stops.
func (p *presence) depart() {
	p.mu.Lock()
	rooms := make([]string, 0, len(p.rooms))
	for room := range p.rooms {
		rooms = append(rooms, room)
	}
	p.mu.Unlock()
	for _, room := range rooms {
		p.publish(room, []string{})
	}
}

func (p *presence) event(names []string) sse.Event {
	data, _ := json.Marshal(struct {
		Node  string   `json:"node"`
		Names []string `json:"names"`
	}{p.node, names})
	return sse.Event{Type: "presence", Data: string(data)}
}

// presenceTopic returns the Broker topic of a room's presence lists, apart from its messages
// so that they do not take the messages' place in the history.
func presenceTopic(room string) string { return "presence:" + room }

// validPage reports whether id is a page ID: 1 to 32 ASCII letters and digits.
func validPage(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// names remembers the names of the last maxKnown pages that said something, the first named
// forgotten first, so that memory stays bounded whatever pages come and go.
type names struct {
	byPage map[string]string
	order  [maxKnown]string // the pages in byPage, in a ring
	next   int              // where the next page goes in order
}

const maxKnown = 1024

func (n *names) get(page string) string {
	if name, ok := n.byPage[page]; ok {
		return name
	}
	return "anonymous"
}

func (n *names) put(page, name string) {
	if _, ok := n.byPage[page]; !ok {
		delete(n.byPage, n.order[n.next])
		n.order[n.next] = page
		n.next = (n.next + 1) % maxKnown
	}
	n.byPage[page] = name
}
