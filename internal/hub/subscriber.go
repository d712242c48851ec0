package hub

import (
	"slices"
	"sync"
	"time"

	"github.com/tickstream/tickstream/internal/quote"
)

// Subscriber is one connection's view of the hub: the symbols it wants, the
// version of each it has sent, and the set of symbols to look at next time
// it writes. Its memory is bounded by its symbol count, however slow the
// connection: a symbol that moves ten times before the writer runs is
// marked once and sent once, at its latest value.
type Subscriber struct {
	hub  *Hub
	wake func()

	mu     sync.Mutex            // guards everything below and each sub's want, sent and dirty
	subs   map[*quote.Entry]*sub // wanted symbols and those whose removal is not yet sent
	want   int                   // how many subs have want set
	dirty  []*sub
	closed bool
}

type sub struct {
	s     *Subscriber
	entry *quote.Entry
	pos   int    // index in the topic's subs; guarded by topic.mu
	want  bool   // the connection is subscribed
	sent  uint64 // version in the client's document; 0 = not in it
	dirty bool   // in s.dirty
}

// Changes counts what one AppendChanges call wrote.
type Changes struct {
	Ops       int       // symbols added, updated or removed
	Conflated uint64    // versions skipped because the connection was behind
	Oldest    time.Time // earliest last_updated among the updates (not adds), for fan-out latency
}

// NewSubscriber registers a connection. wake is called, never under a hub
// lock and never blocking, when the subscriber goes from nothing pending to
// something pending; the connection's writer should then call
// AppendChanges.
func (h *Hub) NewSubscriber(wake func()) *Subscriber {
	return &Subscriber{hub: h, wake: wake, subs: make(map[*quote.Entry]*sub)}
}

// Count returns how many symbols the subscriber wants.
func (s *Subscriber) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.want
}

// Symbols returns the wanted symbols, sorted.
func (s *Subscriber) Symbols() []string {
	s.mu.Lock()
	out := make([]string, 0, s.want)
	for e, sb := range s.subs {
		if sb.want {
			out = append(out, e.Symbol)
		}
	}
	s.mu.Unlock()
	slices.Sort(out)
	return out
}

// Subscribe adds entries to the subscription. The next AppendChanges adds
// each new symbol's current quote to the client's document. It returns how
// many entries were new. Subscribe and Unsubscribe are called by one
// goroutine at a time (the connection's reader); Close may run at any time.
func (s *Subscriber) Subscribe(entries []*quote.Entry) int {
	var added []*sub
	for _, e := range entries {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			break
		}
		sb := s.subs[e]
		if sb == nil {
			sb = &sub{s: s, entry: e, pos: -1}
			s.subs[e] = sb
		}
		if sb.want {
			s.mu.Unlock()
			continue
		}
		sb.want = true
		s.want++
		s.mu.Unlock()
		// Join the topic before marking: a tick published after this
		// point marks sb itself, and the mark below covers the ones before.
		t := &s.hub.topics[e.Index]
		s.hub.add(t, sb)
		if s.isClosed() {
			s.hub.remove(t, sb) // Close ran meanwhile and may have missed sb
			break
		}
		added = append(added, sb)
	}
	if len(added) == 0 {
		return 0
	}
	// The entries are in their topics now, so a broker that drops
	// symbols nobody uses sees them before prepare looks at them.
	if s.hub.prepare != nil {
		es := make([]*quote.Entry, len(added))
		for i, sb := range added {
			es[i] = sb.entry
		}
		s.hub.prepare(es)
	}
	for _, sb := range added {
		if s.mark(sb) {
			s.wake()
		}
	}
	return len(added)
}

// Unsubscribe removes entries from the subscription; the next AppendChanges
// removes those the client holds. It returns how many were subscribed.
func (s *Subscriber) Unsubscribe(entries []*quote.Entry) int {
	removed := 0
	for _, e := range entries {
		s.mu.Lock()
		sb := s.subs[e]
		if s.closed || sb == nil || !sb.want {
			s.mu.Unlock()
			continue
		}
		sb.want = false
		s.want--
		s.mu.Unlock()
		s.hub.remove(&s.hub.topics[e.Index], sb)
		removed++
		if s.mark(sb) {
			s.wake()
		}
	}
	return removed
}

// Close leaves every topic. Later marks and subscribes are ignored. It is
// safe to call twice, and concurrently with Subscribe and Unsubscribe.
func (s *Subscriber) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	var leave []*sub
	for _, sb := range s.subs {
		if sb.want {
			leave = append(leave, sb)
		}
	}
	s.subs, s.dirty, s.want = nil, nil, 0
	s.mu.Unlock()
	for _, sb := range leave {
		s.hub.remove(&s.hub.topics[sb.entry.Index], sb)
	}
}

func (s *Subscriber) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// mark puts sb in the pending set and reports whether the set was empty.
func (s *Subscriber) mark(sb *sub) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || sb.dirty {
		return false
	}
	sb.dirty = true
	s.dirty = append(s.dirty, sb)
	return len(s.dirty) == 1
}

// AppendChanges appends to b, comma-separated, the JSON Patch operations
// that bring the client's document up to date for every pending symbol:
// add for a new symbol, remove for a dropped one, the shared Patch of the
// next version, or the whole-quote Replace when versions were skipped. It
// empties the pending set. The fragments are the quotes' shared bytes: no
// encoding happens here.
func (s *Subscriber) AppendChanges(b []byte) ([]byte, Changes) {
	var c Changes
	s.hub.gate.RLock()
	s.mu.Lock()
	for i, sb := range s.dirty {
		s.dirty[i] = nil
		sb.dirty = false
		b, c = s.appendOne(b, sb, c)
	}
	s.dirty = s.dirty[:0]
	s.mu.Unlock()
	s.hub.gate.RUnlock()
	return b, c
}

// appendOne writes sb's operation; s.mu is held.
func (s *Subscriber) appendOne(b []byte, sb *sub, c Changes) ([]byte, Changes) {
	comma := func() {
		if c.Ops > 0 {
			b = append(b, ',')
		}
		c.Ops++
	}
	e := sb.entry
	if !sb.want {
		if sb.sent > 0 {
			comma()
			b = e.AppendRemove(b)
		}
		delete(s.subs, e)
		return b, c
	}
	q := e.Latest()
	switch {
	case sb.sent == 0:
		comma()
		b = e.AppendAdd(b, q)
	case q.Version == sb.sent:
		return b, c
	case q.Version == sb.sent+1:
		comma()
		b = append(b, q.Patch...)
		c.noteUpdate(q)
	default:
		comma()
		b = append(b, q.Replace...)
		c.Conflated += q.Version - sb.sent - 1
		c.noteUpdate(q)
	}
	sb.sent = q.Version
	return b, c
}

// CountWith returns how many symbols the subscriber would want after
// subscribing to entries as well.
func (s *Subscriber) CountWith(entries []*quote.Entry) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.want
	for _, e := range entries {
		if sb := s.subs[e]; sb == nil || !sb.want {
			n++
		}
	}
	return n
}

func (c *Changes) noteUpdate(q *quote.Quote) {
	if c.Oldest.IsZero() || q.LastUpdated.Before(c.Oldest) {
		c.Oldest = q.LastUpdated
	}
}
