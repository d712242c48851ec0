package quote

import (
	"math"
	"strconv"
	"time"
)

// TimeLayout is the format of last_updated: RFC 3339, UTC, milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Quote is one version of an instrument's price. It is immutable once made:
// an update makes a new Quote with a higher Version, so readers never lock.
type Quote struct {
	Entry         *Entry
	CurrentPrice  float64
	Change        float64
	ChangePercent float64
	LastUpdated   time.Time // truncated to the millisecond
	Version       uint64    // 1 for the initial quote, +1 per update

	// JSON is the whole quote object, encoded once for every reader.
	JSON []byte
	// Replace is the operation that replaces the whole quote:
	// {"op":"replace","path":"/quotes/SYM","value":{...}}.
	Replace []byte
	// Patch holds the operations that turn version Version-1 into this
	// one: a replace per changed field, or Replace when that is shorter.
	Patch []byte
}

// Round2 rounds to two decimals: cents for prices, hundredths of a percent.
func Round2(v float64) float64 { return math.Round(v*100) / 100 }

// newQuote computes a quote at price for e; prev is the version it follows
// (nil for the first).
func newQuote(e *Entry, prev *Quote, price float64, at time.Time) *Quote {
	price = Round2(price)
	change := Round2(price - e.BasePrice)
	q := &Quote{
		Entry:         e,
		CurrentPrice:  price,
		Change:        change,
		ChangePercent: Round2(change / e.BasePrice * 100),
		LastUpdated:   at.UTC().Truncate(time.Millisecond),
		Version:       1,
	}
	if prev != nil {
		q.Version = prev.Version + 1
	}
	q.JSON = e.appendJSON(make([]byte, 0, len(e.jsonHead)+len(e.jsonTail)+96), q)
	q.Replace = e.appendOp(make([]byte, 0, len(q.JSON)+len(e.pathJSON)+32), "replace", q.JSON)
	q.Patch = q.Replace
	if prev != nil {
		if diff := e.appendDiff(make([]byte, 0, len(q.Replace)), prev, q); len(diff) < len(q.Replace) {
			q.Patch = diff
		}
	}
	return q
}

func appendFloat(b []byte, v float64) []byte { return strconv.AppendFloat(b, v, 'f', -1, 64) }

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, TimeLayout)
	return append(b, '"')
}
