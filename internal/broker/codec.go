package broker

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/tickstream/tickstream/internal/quote"
)

// stamp orders shared quotes: a higher fence (a later leader) wins, then a
// later time. The zero stamp is older than any published quote.
type stamp struct {
	fence uint64
	ms    int64 // last_updated, unix milliseconds
}

func (s stamp) newer(than stamp) bool {
	return s.fence > than.fence || s.fence == than.fence && s.ms > than.ms
}

// shared is one quote as Redis carries it: what every instance needs to
// build byte-identical JSON with quote.Entry.Set (the price, rounded to
// cents, and the millisecond it was computed), and its stamp.
type shared struct {
	stamp
	price float64
}

// encode writes "fence ms price", the payload of a channel message and the
// value of the quotes hash. The price is rounded first and written in its
// shortest form, which parses back to the same float64.
func (s shared) encode() string {
	b := make([]byte, 0, 40)
	b = strconv.AppendUint(b, s.fence, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, s.ms, 10)
	b = append(b, ' ')
	b = strconv.AppendFloat(b, quote.Round2(s.price), 'f', -1, 64)
	return string(b)
}

var errPayload = errors.New("malformed quote payload")

func decode(p string) (shared, error) {
	f, rest, ok1 := strings.Cut(p, " ")
	ms, price, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return shared{}, errPayload
	}
	var s shared
	var err1, err2, err3 error
	s.fence, err1 = strconv.ParseUint(f, 10, 64)
	s.ms, err2 = strconv.ParseInt(ms, 10, 64)
	s.price, err3 = strconv.ParseFloat(price, 64)
	if err := errors.Join(err1, err2, err3); err != nil || !(s.price > 0) {
		return shared{}, errPayload
	}
	return s, nil
}

// at is the quote's time, as Entry.Set wants it.
func (s shared) at() time.Time { return time.UnixMilli(s.ms) }
