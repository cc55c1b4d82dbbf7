package redisbroker

// Keys and WithBlock are for the tests.
var (
	Keys      = keys
	WithBlock = withBlock
)
