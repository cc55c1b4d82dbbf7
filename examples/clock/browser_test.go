package main

import (
	"testing"
	"time"

	"sse"
	"sse/internal/interop/browser"
)

// TestClockBrowser opens the clock's page and checks that it shows when it connected and then
// each tick.
func TestClockBrowser(t *testing.T) {
	ts, b := start(t)
	br := browser.Start(t)
	p := br.Open("clock", ts.URL+"/")
	p.Wait("the stream to open", `document.getElementById("state").textContent === "open"`, nil)
	var connected string
	p.Wait("the connect time", `(() => { const s = document.getElementById("connected").textContent; return s !== "…" && s })()`, &connected)
	if at, err := time.ParseInLocation(time.DateTime, connected, time.Local); err != nil || time.Since(at).Abs() > time.Minute {
		t.Errorf("the page says it connected at %q, want the time now", connected)
	}

	// The page has its connect time before the Broker has it among its clients, which is when
	// it starts receiving ticks.
	waitClients(t, b, 1)
	// Ticks of the format tick publishes, at times the test chooses: each must show.
	for _, tick := range []string{"2025-06-01 09:59:59", "2025-06-01 10:00:00"} {
		if _, err := b.Publish(sse.Event{Type: "tick", Data: tick}, clockTopic); err != nil {
			t.Fatal(err)
		}
		hms := tick[len("2025-06-01 "):]
		p.Wait("the time "+hms, `document.getElementById("time").textContent === "`+hms+`"`, nil)
	}
	if got := p.Text("#connected"); got != connected {
		t.Errorf("after the ticks, the connect time is %q, want %q still", got, connected)
	}
}
