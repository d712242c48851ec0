package auth

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// MaxSymbols caps the symbols claim, so that a token cannot make the
// server hold an arbitrarily large set per connection.
const MaxSymbols = 10_000

// errSymbolsShape is the refusal of a symbols claim of any other shape.
var errSymbolsShape = fmt.Errorf(`%w: symbols claim must be "*" or a list of symbols`, ErrInvalid)

// Claims is what a verified token tells the server.
//
// The symbols claim says which symbols the holder may subscribe to: the
// string "*" for all, or a JSON array of symbols. A token without it
// allows every symbol, as tokens of the service this one replaces have no
// such claim; an empty array allows none. The zero Claims allows none.
type Claims struct {
	Subject   string    // sub: the user id
	ExpiresAt time.Time // exp: after it (plus the leeway) the token is refused

	// AllSymbols is true when the token allows every symbol: a symbols
	// claim of "*", or none at all.
	AllSymbols bool
	// Symbols are the allowed symbols when AllSymbols is false: trimmed,
	// upper-cased, without duplicates, sorted. Nil when AllSymbols.
	Symbols []string

	sorted bool // Symbols came from Verify, so Allows may binary-search
}

// Allows reports whether the holder may subscribe to symbol, which must be
// upper-case already. It is called per subscribe, so a long list from
// Verify is binary-searched; a Claims built by hand is scanned.
func (c Claims) Allows(symbol string) bool {
	if c.AllSymbols {
		return true
	}
	if c.sorted {
		_, ok := slices.BinarySearch(c.Symbols, symbol)
		return ok
	}
	return slices.Contains(c.Symbols, symbol)
}

// setSymbols reads the raw symbols claim (nil when absent) into c.
func (c *Claims) setSymbols(raw json.RawMessage) error {
	if raw == nil {
		c.AllSymbols = true
		return nil
	}
	var all string
	if err := json.Unmarshal(raw, &all); err == nil {
		if all != "*" {
			return errSymbolsShape
		}
		c.AllSymbols = true
		return nil
	}
	var list []string
	if raw[0] != '[' || json.Unmarshal(raw, &list) != nil {
		return errSymbolsShape // null, number, object, or non-strings in the array
	}
	syms, err := normalize(list)
	if err != nil {
		return err
	}
	c.Symbols, c.sorted = syms, true
	return nil
}

// normalize trims, upper-cases, sorts and de-duplicates list. An empty
// entry (JSON null decodes as one) or "*" is a malformed claim: the issuer
// meant something the list cannot say, and guessing could grant too much.
func normalize(list []string) ([]string, error) {
	if len(list) > MaxSymbols {
		return nil, fmt.Errorf("%w: symbols claim lists more than %d symbols", ErrInvalid, MaxSymbols)
	}
	out := make([]string, 0, len(list))
	for _, s := range list {
		s = strings.ToUpper(strings.TrimSpace(s))
		if s == "" || s == "*" {
			return nil, errSymbolsShape
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
