package main

import "sse"

// hijackOption is sse.WithHijack, which the core does not have yet: until it does, it is nil
// and the sse-hijack library refuses to start (its rows say the server did not start). Once
// the core has the option, this file sets it, or the callers use sse.WithHijack directly.
var hijackOption func() sse.Option
