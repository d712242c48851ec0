package broker

import (
	"context"
	"sync"

	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

// Memory is the single-instance broker (BROKER=memory): the simulator moves
// the symbols the local hub has subscribers for, and each tick is applied
// to the store and published to the hub at once.
type Memory struct {
	hub *hub.Hub

	mu      sync.Mutex     // serialises Publish; guards updated
	updated []*quote.Entry // reused by Publish
}

// NewMemory returns a broker that publishes to h.
func NewMemory(h *hub.Hub) *Memory { return &Memory{hub: h} }

// Movable appends the entries with at least one local subscriber.
func (m *Memory) Movable(dst []*quote.Entry) []*quote.Entry { return m.hub.Active(dst) }

// Publish sets each tick's quote and publishes those that changed as one
// batch.
func (m *Memory) Publish(ticks []feed.Tick) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updated = applyTicks(m.hub, ticks, m.updated[:0])
	n := len(m.updated)
	clear(m.updated)
	return n
}

// applyTicks sets each tick's quote, publishes the changed entries to h as
// one batch and returns them appended to buf.
func applyTicks(h *hub.Hub, ticks []feed.Tick, buf []*quote.Entry) []*quote.Entry {
	for _, t := range ticks {
		if _, changed := t.Entry.Set(t.Price, t.At); changed {
			buf = append(buf, t.Entry)
		}
	}
	if len(buf) > 0 {
		h.Publish(buf)
	}
	return buf
}

// Prepare does nothing: the local store is the market.
func (m *Memory) Prepare([]*quote.Entry) {}

// Run waits for ctx: the memory broker has no background work.
func (m *Memory) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Status is always up and leading: this instance is the whole market.
func (m *Memory) Status() Status { return Status{Up: true, Leader: true} }
