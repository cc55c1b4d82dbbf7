// Package interop tests the sse package against real clients: headless Chromium's native
// EventSource, driven through playwright-core, and the npm eventsource package, each run by
// Node.js as a subprocess of the test. It has no code of its own, only tests; its subpackage
// browser drives Chromium for the examples' tests.
//
// The clients need Node.js 20 or newer, the npm packages pinned in package-lock.json, and
// Debian's Chromium:
//
//	apt-get install -y chromium
//	npm ci --prefix internal/interop
//	go test -race ./internal/interop/
//
// Without them the tests skip, saying what to install; with SSE_INTEROP=require (as CI sets
// it) they fail instead, so that a skip never passes for a pass.
package interop
