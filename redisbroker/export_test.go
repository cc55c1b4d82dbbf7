package redisbroker

// Keys, PubKey and WithBlock are for the tests.
var (
	Keys      = keys
	PubKey    = pubKey
	WithBlock = withBlock
)

// PublishScript and AppendEvent let the benchmarks run the publish script without a Broker.
var (
	PublishScript = publishScript
	AppendEvent   = appendEvent
)
