package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sse"
	"sse/internal/interop/browser"
	"sse/internal/ssetest"
)

// screenshotPath returns where TestChatBrowser writes its picture of the chat: the PNG file
// that the SSE_SCREENSHOT environment variable names, from the repository's root unless the
// path is absolute, or "" if it is unset. The README's picture is docs/chat.png, which only a
// deliberate SSE_SCREENSHOT=docs/chat.png replaces:
//
//	SSE_SCREENSHOT=/tmp/chat.png go test ./examples/chat -run TestChatBrowser -count=1
func screenshotPath() (string, error) {
	path := os.Getenv("SSE_SCREENSHOT")
	switch {
	case path == "":
		return "", nil
	case !strings.EqualFold(filepath.Ext(path), ".png"):
		return "", fmt.Errorf("SSE_SCREENSHOT=%q: want the path of the PNG file to write, such as /tmp/chat.png", path)
	case filepath.IsAbs(path):
		return path, nil
	}
	// Tests run in the package's directory.
	return filepath.Join("..", "..", path), nil
}

func TestScreenshotPath(t *testing.T) {
	tests := []struct {
		env, want string
		err       bool
	}{
		{"", "", false},
		{"/tmp/chat.png", "/tmp/chat.png", false},
		{"docs/chat.png", filepath.Join("..", "..", "docs", "chat.png"), false},
		{"1", "", true},
		{"/tmp/chat", "", true},
	}
	for _, tt := range tests {
		t.Setenv("SSE_SCREENSHOT", tt.env)
		got, err := screenshotPath()
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("SSE_SCREENSHOT=%q: screenshotPath() = %q, %v; want %q, error %v", tt.env, got, err, tt.want, tt.err)
		}
	}
}

// TestChatBrowser opens the chat in two pages of one room, which talk; then it cuts one page's
// connection, the other says more, and the first must show what was said while it was away,
// once each, without a reload.
func TestChatBrowser(t *testing.T) {
	shot, err := screenshotPath()
	if err != nil {
		t.Fatal(err)
	}
	// A short retry delay, for a quick reconnection; the proxy holds it until the test is ready.
	ts := start(t, sse.WithRetry(100*time.Millisecond))
	// Bob's page goes through a proxy, so that the test can cut its connection alone.
	proxy := ssetest.NewProxy(t, ts.Listener.Addr().String())
	br := browser.Start(t)
	ann := br.Open("ann", ts.URL+"/")
	bob := br.Open("bob", proxy.URL()+"/")
	for _, p := range []*browser.Page{ann, bob} {
		// Once a page sees its stream open, it receives every message said afterwards.
		waitState(p, "open")
	}

	say(ann, "ann", "Hello, is anyone here?")
	say(bob, "bob", "Hi ann! <b>Tags</b> stay text.")
	intro := "Messages said from now on appear here."
	talk := []string{intro, "ann: Hello, is anyone here?", "bob: Hi ann! <b>Tags</b> stay text."}
	checkList(t, ann, talk)
	checkList(t, bob, talk)
	// Each page is listed under the name it said something with.
	waitHere(ann, "ann, bob")
	waitHere(bob, "ann, bob")

	// A reload would reset this, and show none of the messages said before it.
	bob.Eval("window.notReloaded = true", nil)
	events := proxy.URL() + "/rooms/lobby/events"
	// The page's EventSource reports the lost connection, and Chromium logs the failed request.
	bob.Allow(func(problem string) bool { return strings.Contains(problem, events) })
	proxy.Pause()
	proxy.Cut()
	waitState(bob, "reconnecting")
	waitHere(ann, "ann") // the server saw bob's stream end
	say(ann, "ann", "bob, are you there?")
	say(ann, "ann", "Never mind, I'll wait.")
	away := []string{"ann: bob, are you there?", "ann: Never mind, I'll wait."}
	checkList(t, ann, append(slices.Clone(talk), away...))
	if got := list(bob); !slices.Equal(got, talk) {
		t.Fatalf("while cut off, bob's page shows %q, want %q", got, talk)
	}

	proxy.Resume()
	waitState(bob, "open")
	// Back in the list, under the name it had.
	waitHere(ann, "ann, bob")
	say(bob, "bob", "Back! I saw both.")
	// Had anything been shown twice, it would come before this last message.
	back := "bob: Back! I saw both."
	checkList(t, ann, slices.Concat(talk, away, []string{back}))
	checkList(t, bob, slices.Concat(talk, []string{"Reconnected: messages said while you were away follow."}, away, []string{back}))
	var notReloaded bool
	bob.Eval("window.notReloaded === true", &notReloaded)
	if !notReloaded {
		t.Error("bob's page was reloaded")
	}
	if s := ts.b.Stats(); s.Replays != 1 {
		t.Errorf("Stats().Replays = %d, want 1: the page should have resumed once, from its last message", s.Replays)
	}

	if shot != "" {
		writeScreenshot(t, shot, ann.Screenshot(), bob.Screenshot())
	}
}

// say sends text as name from page p, as a user would: typing, then pressing Enter. It waits
// until p shows the message, so that messages said one after the other arrive in that order.
func say(p *browser.Page, name, text string) {
	p.Fill("#name", name)
	p.Fill("#text", text)
	p.Press("#text", "Enter")
	p.Wait("the page to show its own message", fmt.Sprintf("%s.at(-1) === %q", listJS, name+": "+text), nil)
}

// waitHere waits until page p lists names as the room's.
func waitHere(p *browser.Page, names string) {
	p.Wait("the room to list "+names, fmt.Sprintf(`document.getElementById("here").textContent === %q`, names), nil)
}

// waitState waits until page p says its stream is state.
func waitState(p *browser.Page, state string) {
	p.Wait("the stream to be "+state, fmt.Sprintf(`document.getElementById("state").textContent === %q`, state), nil)
}

// listJS is what a page's list shows: each message as "name: text", each note as its text,
// without the times.
const listJS = `[...document.querySelectorAll("#messages li")].map(li =>
	[...li.childNodes].filter(n => n.nodeName !== "TIME").map(n => n.textContent).join(""))`

// list returns what page p's list shows.
func list(p *browser.Page) []string {
	var got []string
	p.Eval(listJS, &got)
	return got
}

// checkList waits until page p's list is as long as want, and checks that it equals want.
func checkList(t *testing.T, p *browser.Page, want []string) {
	t.Helper()
	var got []string
	p.Wait(fmt.Sprintf("%d lines in the list", len(want)),
		fmt.Sprintf("(() => { const l = %s; return l.length >= %d && l })()", listJS, len(want)), &got)
	if !slices.Equal(got, want) {
		t.Fatalf("the page shows %q, want %q", got, want)
	}
}

// writeScreenshot writes the two PNG screenshots side by side to path.
func writeScreenshot(t *testing.T, path string, left, right []byte) {
	t.Helper()
	l, err := png.Decode(bytes.NewReader(left))
	if err != nil {
		t.Fatal(err)
	}
	r, err := png.Decode(bytes.NewReader(right))
	if err != nil {
		t.Fatal(err)
	}
	const gap = 4
	lb, rb := l.Bounds(), r.Bounds()
	img := image.NewRGBA(image.Rect(0, 0, lb.Dx()+gap+rb.Dx(), max(lb.Dy(), rb.Dy())))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.Gray{0x99}), image.Point{}, draw.Src)
	draw.Draw(img, lb.Sub(lb.Min), l, lb.Min, draw.Src)
	draw.Draw(img, rb.Sub(rb.Min).Add(image.Pt(lb.Dx()+gap, 0)), r, rb.Min, draw.Src)
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, buf.Len())
}
