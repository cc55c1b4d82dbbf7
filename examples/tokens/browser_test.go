package main

import (
	"strings"
	"testing"
	"time"

	"sse/internal/interop/browser"
)

// TestTokensBrowser asks the tokens page a question and checks that the reply appears word by
// word, as it is streamed, and then that the page says it is done.
func TestTokensBrowser(t *testing.T) {
	ts := start(t, newServer(&replier{delay: 20 * time.Millisecond}))
	br := browser.Start(t)
	p := br.Open("tokens", ts.URL+"/")
	// Record each text the reply shows, with the state beside it, as the page changes it.
	p.Eval(`const reply = document.getElementById("reply"), state = document.getElementById("state");
		window.shown = [];
		new MutationObserver(() => shown.push([reply.textContent, state.textContent]))
			.observe(reply, {childList: true, characterData: true, subtree: true})`, nil)

	q := "Why stream, & how?" // the page must escape the & in the URL
	p.Fill("#q", q)
	p.Press("#q", "Enter")
	p.Wait("the reply to be done", `document.getElementById("state").textContent === "done"`, nil)
	var shown [][2]string
	p.Eval("shown", &shown)

	want := strings.Join(answer(q), " ")
	if got := p.Text("#reply"); got != want {
		t.Fatalf("the reply shows %q, want %q", got, want)
	}
	// Each text shown on the way is the start of the reply, a few more words each time.
	partial, last := 0, ""
	for _, s := range shown {
		text, state := s[0], s[1]
		switch {
		case text == "" || text == last:
			continue
		case text == want:
		case !strings.HasPrefix(want, text+" ") || !strings.HasPrefix(text, last):
			t.Fatalf("the reply showed %q after %q, want more words of %q", text, last, want)
		case state != "typing…":
			t.Errorf("the page says %q while the reply shows %q, want typing…", state, text)
		default:
			partial++
		}
		last = text
	}
	t.Logf("%d partial replies shown, of %d words", partial, len(answer(q)))
	if last != want || partial < 5 {
		t.Errorf("the page showed %d partial replies and then %q, want several and then the whole reply", partial, last)
	}
}

// TestTokensBrowserRefused asks a question the server refuses: within the page's limit of 1000
// characters, but over the server's of 1000 bytes.
func TestTokensBrowserRefused(t *testing.T) {
	ts := start(t, newServer(&replier{}))
	br := browser.Start(t)
	p := br.Open("tokens", ts.URL+"/")
	// EventSource fails on the 400, and Chromium logs it: what the test is after.
	p.Allow(func(problem string) bool { return strings.Contains(problem, ts.URL+"/reply?q=") })
	p.Fill("#q", strings.Repeat("é", 600))
	p.Press("#q", "Enter")
	p.Wait("the page to give up", `document.getElementById("state").textContent !== "typing…"`, nil)
	if got, want := p.Text("#state"), "the server refused the question"; got != want {
		t.Errorf("the page says %q, want %q", got, want)
	}
	if got := p.Text("#reply"); got != "" {
		t.Errorf("the reply shows %q, want nothing", got)
	}
}
