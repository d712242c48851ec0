package quote

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Store holds every instrument and its current quote. The set of
// instruments is fixed when the store is made, so lookups take no lock.
type Store struct {
	entries  []*Entry
	bySymbol map[string]*Entry
}

// Entry is one instrument in the store with its current quote and the JSON
// pieces that never change (name, paths), encoded once at start-up.
type Entry struct {
	Instrument
	// Index is the entry's position in Store.Entries, so other packages
	// can keep per-symbol state in slices instead of maps.
	Index int

	keyJSON   []byte    // "SYM"
	pathJSON  []byte    // "/quotes/SYM", escaped per RFC 6901, as a JSON string
	fieldPath [4][]byte // "/quotes/SYM/current_price", ... as JSON strings
	jsonHead  []byte    // {"symbol":...,"type":...,"current_price":
	jsonBase  []byte    // ,"base_price":B,"change":
	jsonTail  []byte    // ,"volume":N,"market_cap":M}

	mu  sync.Mutex // serialises writers; readers use cur without it
	cur atomic.Pointer[Quote]
}

// the fields an update can change, in the order of fieldPath.
var dynamicFields = [4]string{"current_price", "change", "change_percent", "last_updated"}

// NewStore makes a store whose every instrument starts at its base price,
// last updated at start.
func NewStore(instruments []Instrument, start time.Time) (*Store, error) {
	s := &Store{bySymbol: make(map[string]*Entry, len(instruments))}
	for _, in := range instruments {
		if err := in.Validate(); err != nil {
			return nil, err
		}
		if _, dup := s.bySymbol[in.Symbol]; dup {
			return nil, fmt.Errorf("symbol %s listed twice", in.Symbol)
		}
		e := newEntry(in, len(s.entries))
		e.cur.Store(newQuote(e, nil, in.BasePrice, start))
		s.entries = append(s.entries, e)
		s.bySymbol[in.Symbol] = e
	}
	return s, nil
}

func newEntry(in Instrument, index int) *Entry {
	e := &Entry{Instrument: in, Index: index}
	e.keyJSON = jsonString(in.Symbol)
	path := "/quotes/" + EscapePointer(in.Symbol)
	e.pathJSON = jsonString(path)
	for i, f := range dynamicFields {
		e.fieldPath[i] = jsonString(path + "/" + f)
	}
	e.jsonHead = fmt.Appendf(nil, `{"symbol":%s,"name":%s,"type":%s,"current_price":`,
		e.keyJSON, jsonString(in.Name), jsonString(in.Type))
	e.jsonBase = appendFloat([]byte(`,"base_price":`), in.BasePrice)
	e.jsonBase = append(e.jsonBase, `,"change":`...)
	e.jsonTail = strconv.AppendInt([]byte(`,"volume":`), in.Volume, 10)
	if in.MarketCap != 0 {
		e.jsonTail = strconv.AppendInt(append(e.jsonTail, `,"market_cap":`...), in.MarketCap, 10)
	}
	e.jsonTail = append(e.jsonTail, '}')
	return e
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}

// Lookup returns the entry for an upper-case symbol.
func (s *Store) Lookup(symbol string) (*Entry, bool) {
	e, ok := s.bySymbol[symbol]
	return e, ok
}

// Entries returns every entry in index order. The slice is shared: do not
// modify it.
func (s *Store) Entries() []*Entry { return s.entries }

// Latest returns the entry's current quote.
func (e *Entry) Latest() *Quote { return e.cur.Load() }

// Set makes the quote at price, computed at at, the current one and returns
// it. It reports false, and changes nothing, when neither the rounded price
// nor the millisecond of at differs from the current quote.
func (e *Entry) Set(price float64, at time.Time) (*Quote, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	prev := e.cur.Load()
	if Round2(price) == prev.CurrentPrice && at.UTC().Truncate(time.Millisecond).Equal(prev.LastUpdated) {
		return prev, false
	}
	q := newQuote(e, prev, price, at)
	e.cur.Store(q)
	return q, true
}

// AppendKey appends the symbol as a JSON string, for object keys.
func (e *Entry) AppendKey(b []byte) []byte { return append(b, e.keyJSON...) }

// AppendAdd appends {"op":"add","path":"/quotes/SYM","value":{...}} for q.
func (e *Entry) AppendAdd(b []byte, q *Quote) []byte { return e.appendOp(b, "add", q.JSON) }

// AppendRemove appends {"op":"remove","path":"/quotes/SYM"}.
func (e *Entry) AppendRemove(b []byte) []byte {
	b = append(b, `{"op":"remove","path":`...)
	b = append(b, e.pathJSON...)
	return append(b, '}')
}

func (e *Entry) appendOp(b []byte, op string, value []byte) []byte {
	b = append(b, `{"op":"`...)
	b = append(b, op...)
	b = append(b, `","path":`...)
	b = append(b, e.pathJSON...)
	b = append(b, `,"value":`...)
	b = append(b, value...)
	return append(b, '}')
}

func (e *Entry) appendJSON(b []byte, q *Quote) []byte {
	b = append(b, e.jsonHead...)
	b = appendFloat(b, q.CurrentPrice)
	b = append(b, e.jsonBase...)
	b = appendFloat(b, q.Change)
	b = append(b, `,"change_percent":`...)
	b = appendFloat(b, q.ChangePercent)
	b = append(b, `,"last_updated":`...)
	b = appendTime(b, q.LastUpdated)
	return append(b, e.jsonTail...)
}

// appendDiff appends one replace per field that differs between prev and q.
func (e *Entry) appendDiff(b []byte, prev, q *Quote) []byte {
	n := 0
	field := func(i int) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `{"op":"replace","path":`...)
		b = append(b, e.fieldPath[i]...)
		b = append(b, `,"value":`...)
	}
	if q.CurrentPrice != prev.CurrentPrice {
		field(0)
		b = appendFloat(b, q.CurrentPrice)
		b = append(b, '}')
	}
	if q.Change != prev.Change {
		field(1)
		b = appendFloat(b, q.Change)
		b = append(b, '}')
	}
	if q.ChangePercent != prev.ChangePercent {
		field(2)
		b = appendFloat(b, q.ChangePercent)
		b = append(b, '}')
	}
	if !q.LastUpdated.Equal(prev.LastUpdated) {
		field(3)
		b = appendTime(b, q.LastUpdated)
		b = append(b, '}')
	}
	return b
}
