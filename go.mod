module sse

go 1.26
