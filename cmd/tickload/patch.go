package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// quoteDoc is one quote of a connection's document. Numbers are kept as
// the float64 that encoding/json (and strconv.ParseFloat) parse, so that the
// document compares exactly with the REST answer.
type quoteDoc struct {
	Symbol        string   `json:"symbol"`
	Name          string   `json:"name"`
	Type          string   `json:"type"`
	CurrentPrice  float64  `json:"current_price"`
	BasePrice     float64  `json:"base_price"`
	Change        float64  `json:"change"`
	ChangePercent float64  `json:"change_percent"`
	LastUpdated   string   `json:"last_updated"`
	Volume        float64  `json:"volume"`
	MarketCap     *float64 `json:"market_cap,omitempty"`
}

// operation is one RFC 6902 operation as the server sends it.
type operation struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

// serverMessage is every field of the server messages tickload reads.
type serverMessage struct {
	Type       string      `json:"type"`
	Seq        uint64      `json:"seq"`
	Operations []operation `json:"operations"`
}

// document is the JSON document {"quotes":{SYM: quote}} one connection
// builds from its patches. quotes is nil until the snapshot's add /quotes.
type document struct {
	quotes map[string]*quoteDoc
}

// errUnsupported marks an operation outside the shapes the server sends.
var errUnsupported = errors.New("unsupported operation")

// apply applies ops in order. For every operation that sets a whole quote
// with replace, or a quote's last_updated, it appends the new last_updated
// to updates: those are the symbol updates whose latency is measured
// (adds are snapshots of a symbol, not updates). On error the document may
// hold the operations before the failing one, as with any non-atomic
// applier; the caller counts the error and the final check reports the
// document if it stayed wrong.
func (d *document) apply(ops []operation, updates []string) ([]string, error) {
	for i := range ops {
		var err error
		if updates, err = d.applyOne(&ops[i], updates); err != nil {
			return updates, fmt.Errorf("operation %d (%s %s): %w", i, ops[i].Op, ops[i].Path, err)
		}
	}
	return updates, nil
}

func (d *document) applyOne(op *operation, updates []string) ([]string, error) {
	if op.Op != "add" && op.Op != "replace" && op.Op != "remove" {
		return updates, errUnsupported
	}
	symbol, field, depth, err := splitPath(op.Path)
	if err != nil {
		return updates, err
	}
	switch depth {
	case 1:
		return updates, d.setAll(op)
	case 2:
		return d.setQuote(op, symbol, updates)
	default:
		return d.setField(op, symbol, field, updates)
	}
}

// setAll handles /quotes itself.
func (d *document) setAll(op *operation) error {
	switch {
	case op.Op == "remove":
		if d.quotes == nil {
			return errors.New("/quotes is absent")
		}
		d.quotes = nil
		return nil
	case op.Op == "replace" && d.quotes == nil:
		return errors.New("replace of absent /quotes")
	}
	var quotes map[string]*quoteDoc
	if err := json.Unmarshal(op.Value, &quotes); err != nil || quotes == nil {
		return fmt.Errorf("value is not an object of quotes: %s", clip(op.Value))
	}
	d.quotes = quotes
	return nil
}

// setQuote handles /quotes/SYM.
func (d *document) setQuote(op *operation, symbol string, updates []string) ([]string, error) {
	if d.quotes == nil {
		return updates, errors.New("/quotes is absent")
	}
	_, exists := d.quotes[symbol]
	if op.Op != "add" && !exists {
		return updates, fmt.Errorf("%s of absent quote %s", op.Op, symbol)
	}
	if op.Op == "remove" {
		delete(d.quotes, symbol)
		return updates, nil
	}
	q := new(quoteDoc)
	if err := decodeQuote(op.Value, q); err != nil {
		return updates, fmt.Errorf("value is not a quote: %s: %w", clip(op.Value), err)
	}
	d.quotes[symbol] = q
	if op.Op == "replace" {
		updates = append(updates, q.LastUpdated)
	}
	return updates, nil
}

// setField handles /quotes/SYM/field. Only market_cap, which is optional,
// can be removed or added where it was absent.
func (d *document) setField(op *operation, symbol, field string, updates []string) ([]string, error) {
	q := d.quotes[symbol] // nil map reads are fine
	if q == nil {
		return updates, fmt.Errorf("quote %s is absent", symbol)
	}
	if field == "market_cap" {
		switch {
		case op.Op == "remove" && q.MarketCap == nil, op.Op == "replace" && q.MarketCap == nil:
			return updates, fmt.Errorf("%s of absent field market_cap", op.Op)
		case op.Op == "remove":
			q.MarketCap = nil
			return updates, nil
		}
		v, err := parseNumber(op.Value)
		if err != nil {
			return updates, err
		}
		q.MarketCap = &v
		return updates, nil
	}
	if op.Op == "remove" {
		return updates, fmt.Errorf("remove of required field %s: %w", field, errUnsupported)
	}
	var num *float64
	var str *string
	switch field {
	case "current_price":
		num = &q.CurrentPrice
	case "base_price":
		num = &q.BasePrice
	case "change":
		num = &q.Change
	case "change_percent":
		num = &q.ChangePercent
	case "volume":
		num = &q.Volume
	case "symbol":
		str = &q.Symbol
	case "name":
		str = &q.Name
	case "type":
		str = &q.Type
	case "last_updated":
		str = &q.LastUpdated
	default:
		return updates, fmt.Errorf("unknown field %q: %w", field, errUnsupported)
	}
	var err error
	if num != nil {
		*num, err = parseNumber(op.Value)
		return updates, err
	}
	if *str, err = parseString(op.Value); err != nil {
		return updates, err
	}
	if field == "last_updated" {
		updates = append(updates, q.LastUpdated)
	}
	return updates, nil
}

// splitPath parses /quotes, /quotes/SYM or /quotes/SYM/field (depth 1, 2,
// 3) and unescapes the symbol per RFC 6901.
func splitPath(path string) (symbol, field string, depth int, err error) {
	rest, ok := strings.CutPrefix(path, "/quotes")
	switch {
	case !ok:
		return "", "", 0, fmt.Errorf("path outside /quotes: %w", errUnsupported)
	case rest == "":
		return "", "", 1, nil
	case rest[0] != '/':
		return "", "", 0, fmt.Errorf("path outside /quotes: %w", errUnsupported)
	}
	rest = rest[1:]
	raw, field, hasField := strings.Cut(rest, "/")
	if hasField && (field == "" || strings.Contains(field, "/")) {
		return "", "", 0, fmt.Errorf("path too deep: %w", errUnsupported)
	}
	if symbol, err = unescapeToken(raw); err != nil {
		return "", "", 0, err
	}
	if symbol == "" {
		return "", "", 0, fmt.Errorf("empty symbol: %w", errUnsupported)
	}
	if hasField {
		return symbol, field, 3, nil
	}
	return symbol, "", 2, nil
}

// unescapeToken turns ~1 into / and ~0 into ~ (RFC 6901); any other ~ is an
// error.
func unescapeToken(s string) (string, error) {
	if !strings.Contains(s, "~") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '~' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) || (s[i+1] != '0' && s[i+1] != '1') {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		if s[i+1] == '0' {
			b.WriteByte('~')
		} else {
			b.WriteByte('/')
		}
		i++
	}
	return b.String(), nil
}

// parseNumber parses a JSON number. It checks the JSON grammar first, as
// strconv.ParseFloat alone would accept Inf, NaN and hex; the value is the
// float64 encoding/json would produce.
func parseNumber(raw []byte) (float64, error) {
	if !isJSONNumber(raw) {
		return 0, fmt.Errorf("value %s is not a number", clip(raw))
	}
	return strconv.ParseFloat(string(raw), 64)
}

func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// parseString decodes a JSON string (not null: a field value must be one).
func parseString(raw []byte) (string, error) {
	s := scanner{b: raw}
	var out string
	if s.peek() != '"' || s.stringValue(&out) != nil || s.end() != nil {
		return "", fmt.Errorf("value %s is not a string", clip(raw))
	}
	return out, nil
}

// clip shortens a value for an error message.
func clip(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// equal reports whether q and o hold the same values; diff says where they
// differ. equal is the one the final check calls for every symbol.
func (q *quoteDoc) equal(o *quoteDoc) bool {
	sameCap := (q.MarketCap == nil) == (o.MarketCap == nil) &&
		(q.MarketCap == nil || *q.MarketCap == *o.MarketCap)
	return sameCap && q.Symbol == o.Symbol && q.Name == o.Name && q.Type == o.Type &&
		q.CurrentPrice == o.CurrentPrice && q.BasePrice == o.BasePrice &&
		q.Change == o.Change && q.ChangePercent == o.ChangePercent &&
		q.LastUpdated == o.LastUpdated && q.Volume == o.Volume
}

// diff returns the first field in which got differs from want, described
// for a person, or "" when they are equal.
func (got *quoteDoc) diff(want *quoteDoc) string {
	type field struct {
		name      string
		got, want any
	}
	capOf := func(q *quoteDoc) any {
		if q.MarketCap == nil {
			return "absent"
		}
		return *q.MarketCap
	}
	for _, f := range []field{
		{"symbol", got.Symbol, want.Symbol},
		{"name", got.Name, want.Name},
		{"type", got.Type, want.Type},
		{"current_price", got.CurrentPrice, want.CurrentPrice},
		{"base_price", got.BasePrice, want.BasePrice},
		{"change", got.Change, want.Change},
		{"change_percent", got.ChangePercent, want.ChangePercent},
		{"last_updated", got.LastUpdated, want.LastUpdated},
		{"volume", got.Volume, want.Volume},
		{"market_cap", capOf(got), capOf(want)},
	} {
		if f.got != f.want {
			return fmt.Sprintf("%s: got %v, want %v", f.name, f.got, f.want)
		}
	}
	return ""
}
