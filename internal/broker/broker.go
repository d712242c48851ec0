// Package broker connects the price feed to the hub. Memory is one
// instance: the local simulator's prices go straight to the local hub.
// Redis is many instances serving one market: one of them (the holder of a
// lease in Redis) publishes the prices through Redis Pub/Sub, every
// instance applies what it receives, and the latest quote of each symbol is
// kept in Redis for instances and subscribers that arrive later.
package broker

import (
	"context"

	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/quote"
)

// Broker is what run wires between the feed and the hub: a feed.Market,
// a hook that makes entries current before a client's snapshot, a
// background loop, and a status for /readyz and the metrics.
type Broker interface {
	feed.Market
	// Prepare is called (through hub.Hub.BeforeSubscribe) with the entries
	// a connection is subscribing to, before their snapshot is built, so
	// that it holds the shared quote. It never blocks for long.
	Prepare(entries []*quote.Entry)
	// Run does the broker's background work until ctx ends, then releases
	// what it holds. It returns nil on a normal stop.
	Run(ctx context.Context) error
	// Status reports the broker's state now.
	Status() Status
}

// Status is a broker's state, for /readyz and the metrics.
type Status struct {
	// Up is false while the shared store is unreachable; the instance
	// then serves prices from its own simulator.
	Up bool
	// Leader is true while this instance publishes the prices every
	// instance serves.
	Leader bool
	// Reason says, when Up is false, what is wrong, in a few words.
	Reason string
}

var (
	_ Broker = (*Memory)(nil)
	_ Broker = (*Redis)(nil)
)
