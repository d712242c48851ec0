// Package hub is the fan-out engine: it indexes which connections want which
// symbols and, when quotes move, marks them dirty on each subscriber and
// wakes its writer. It never blocks on a connection and never queues
// messages: a subscriber's pending set holds at most one mark per symbol,
// and the writer sends whatever is current (conflation).
package hub

import (
	"sync"
	"sync/atomic"

	"github.com/tickstream/tickstream/internal/quote"
)

// Hub maps symbols to their subscribers.
type Hub struct {
	store  *quote.Store
	topics []topic // by quote.Entry.Index

	// gate is held for writing while one batch of updates is marked and for
	// reading while a subscriber collects its changes, so a connection gets
	// all of a tick's changes in one message, never half of them.
	gate    sync.RWMutex
	pubMu   sync.Mutex    // serialises Publish; guards wakeBuf
	wakeBuf []*Subscriber // reused by Publish

	subscriptions atomic.Int64

	// prepare, when set, makes entries current before a subscriber's
	// snapshot is built (see BeforeSubscribe). Set before serving; read
	// without a lock.
	prepare func([]*quote.Entry)
}

type topic struct {
	mu   sync.RWMutex // guards subs and each sub's pos (-1: not in the topic)
	subs []*sub
	n    atomic.Int32 // len(subs), readable without mu
}

// New returns a hub over the instruments of store.
func New(store *quote.Store) *Hub {
	return &Hub{store: store, topics: make([]topic, len(store.Entries()))}
}

// Store returns the quote store the hub serves.
func (h *Hub) Store() *quote.Store { return h.store }

// Active appends to dst the entries that have at least one subscriber.
func (h *Hub) Active(dst []*quote.Entry) []*quote.Entry {
	for i, e := range h.store.Entries() {
		if h.topics[i].n.Load() > 0 {
			dst = append(dst, e)
		}
	}
	return dst
}

// BeforeSubscribe registers f to be called by Subscriber.Subscribe with
// the entries it has just added to their topics, before the subscriber is
// marked for their snapshot. A broker that shares quotes between instances
// uses it to fetch the shared quote of a symbol this instance did not
// follow, so the client's first view is the market's, not a stale local
// one. f may block briefly: it runs on the subscribing connection's
// reader. Call it before any subscriber exists.
func (h *Hub) BeforeSubscribe(f func([]*quote.Entry)) { h.prepare = f }

// Subscribed reports whether e has at least one subscriber.
func (h *Hub) Subscribed(e *quote.Entry) bool { return h.topics[e.Index].n.Load() > 0 }

// Subscriptions returns the number of (connection, symbol) subscriptions.
func (h *Hub) Subscriptions() int64 { return h.subscriptions.Load() }

// Publish marks every subscriber of the updated entries dirty and wakes the
// writers of those that were idle. Call it after the entries' quotes were
// set; all of updated counts as one tick.
func (h *Hub) Publish(updated []*quote.Entry) {
	h.pubMu.Lock()
	defer h.pubMu.Unlock()
	h.gate.Lock()
	wake := h.wakeBuf[:0]
	for _, e := range updated {
		t := &h.topics[e.Index]
		t.mu.RLock()
		for _, sb := range t.subs {
			if sb.s.mark(sb) {
				wake = append(wake, sb.s)
			}
		}
		t.mu.RUnlock()
	}
	h.wakeBuf = wake
	h.gate.Unlock()
	// Wake outside the gate: a woken writer collects under its read side.
	for i, s := range wake {
		s.wake()
		wake[i] = nil
	}
}

// add puts sb in the topic and counts it; a sub already in is left alone.
func (h *Hub) add(t *topic, sb *sub) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sb.pos >= 0 {
		return
	}
	sb.pos = len(t.subs)
	t.subs = append(t.subs, sb)
	t.n.Store(int32(len(t.subs)))
	h.subscriptions.Add(1)
}

// remove takes sb out of the topic; a sub not in it is left alone, so
// Close and Unsubscribe may race.
func (h *Hub) remove(t *topic, sb *sub) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sb.pos < 0 {
		return
	}
	last := len(t.subs) - 1
	moved := t.subs[last]
	t.subs[sb.pos] = moved
	moved.pos = sb.pos
	t.subs[last] = nil
	t.subs = t.subs[:last]
	sb.pos = -1
	t.n.Store(int32(len(t.subs)))
	h.subscriptions.Add(-1)
	if cap(t.subs) > 64 && len(t.subs) < cap(t.subs)/4 {
		t.subs = append([]*sub(nil), t.subs...) // give back memory after a crowd leaves
	}
}
