package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The reader decodes every message with this small scanner instead of
// encoding/json: reflection-based decoding took about half of tickload's
// CPU at 20,000 messages per second, and a load generator that runs out of
// CPU measures its own queueing instead of the server. On the usual
// 1.3 KB message the scanner takes 3.8µs and 21 allocations against
// encoding/json's 16µs and 75 (BenchmarkDecode); a 1,000-connection run
// went from 0.89 to 0.49 CPU cores.
// It decodes exactly what encoding/json would into serverMessage and
// quoteDoc (keys matched case-insensitively, unknown keys skipped, null
// leaving a field alone) and is at least as strict about syntax;
// FuzzDecodeMessage checks both against encoding/json. Rare shapes (a
// string with escapes, the whole /quotes object) still go through
// encoding/json.

// maxDepth bounds nesting in skipped values, as encoding/json does.
const maxDepth = 10000

var errSyntax = errors.New("invalid JSON")

// scanner walks one JSON text.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte, or 0 at the end.
func (s *scanner) peek() byte {
	s.space()
	if s.i == len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *scanner) consume(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) syntax(what string) error {
	return fmt.Errorf("%w: %s at byte %d", errSyntax, what, s.i)
}

// str reads a string and returns its raw content between the quotes and
// whether that content is plain (no escapes, valid UTF-8), so that it can
// be used as is.
func (s *scanner) str() (raw []byte, plain bool, err error) {
	if s.peek() != '"' {
		return nil, false, s.syntax("want a string")
	}
	s.i++
	start := s.i
	escaped, high := false, false
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, !escaped && (!high || utf8.Valid(raw)), nil
		case c < 0x20:
			return nil, false, s.syntax("control character in string")
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return nil, false, s.syntax("unterminated escape")
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) || !isHex4(s.b[s.i+2:s.i+6]) {
					return nil, false, s.syntax(`bad \u escape`)
				}
				s.i += 6
			default:
				return nil, false, s.syntax("bad escape")
			}
		default:
			high = high || c >= utf8.RuneSelf
			s.i++
		}
	}
	return nil, false, s.syntax("unterminated string")
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// stringValue reads a string value into *dst; null leaves *dst alone.
func (s *scanner) stringValue(dst *string) error {
	if s.literal("null") {
		return nil
	}
	start := s.i
	raw, plain, err := s.str()
	if err != nil {
		return err
	}
	if plain {
		*dst = string(raw)
		return nil
	}
	return json.Unmarshal(s.b[start:s.i], dst)
}

// number reads a number's text.
func (s *scanner) number() ([]byte, error) {
	s.space()
	start := s.i
	for s.i < len(s.b) && strings.IndexByte("+-0123456789.eE", s.b[s.i]) >= 0 {
		s.i++
	}
	if !isJSONNumber(s.b[start:s.i]) {
		return nil, s.syntax("want a number")
	}
	return s.b[start:s.i], nil
}

// floatValue reads a number into *dst; null leaves *dst alone.
func (s *scanner) floatValue(dst *float64) error {
	if s.literal("null") {
		return nil
	}
	raw, err := s.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return fmt.Errorf("number %s: %w", raw, err)
	}
	*dst = v
	return nil
}

// literal consumes word (true, false, null) if it comes next.
func (s *scanner) literal(word string) bool {
	s.space()
	if bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		s.i += len(word)
		return true
	}
	return false
}

// skip reads any value and returns its raw text.
func (s *scanner) skip(depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, s.syntax("too deep")
	}
	c := s.peek()
	start := s.i
	switch {
	case c == '"':
		_, _, err := s.str()
		return s.b[start:s.i], err
	case c == '{':
		s.i++
		for first := true; !s.consume('}'); first = false {
			if !first && !s.consume(',') {
				return nil, s.syntax("want , or }")
			}
			if _, _, err := s.str(); err != nil {
				return nil, err
			}
			if !s.consume(':') {
				return nil, s.syntax("want :")
			}
			if _, err := s.skip(depth + 1); err != nil {
				return nil, err
			}
		}
	case c == '[':
		s.i++
		for first := true; !s.consume(']'); first = false {
			if !first && !s.consume(',') {
				return nil, s.syntax("want , or ]")
			}
			if _, err := s.skip(depth + 1); err != nil {
				return nil, err
			}
		}
	case c == 't' || c == 'f' || c == 'n':
		if !s.literal("true") && !s.literal("false") && !s.literal("null") {
			return nil, s.syntax("bad literal")
		}
	default:
		if _, err := s.number(); err != nil {
			return nil, err
		}
	}
	return s.b[start:s.i], nil
}

// object reads an object, calling field for each key with the scanner
// positioned at the value; field must consume the value. A key with
// escapes is decoded first.
func (s *scanner) object(field func(key []byte) error) error {
	if !s.consume('{') {
		return s.syntax("want an object")
	}
	for first := true; !s.consume('}'); first = false {
		if !first && !s.consume(',') {
			return s.syntax("want , or }")
		}
		start := s.i
		key, plain, err := s.str()
		if err != nil {
			return err
		}
		if !plain {
			var k string
			if err := json.Unmarshal(s.b[start:s.i], &k); err != nil {
				return err
			}
			key = []byte(k)
		}
		if !s.consume(':') {
			return s.syntax("want :")
		}
		if err := field(key); err != nil {
			return err
		}
	}
	return nil
}

// end checks that nothing but white space follows the value.
func (s *scanner) end() error {
	if s.space(); s.i != len(s.b) {
		return s.syntax("data after the value")
	}
	return nil
}

// The keys each object type decodes.
var (
	messageKeys   = []string{"type", "seq", "operations"}
	operationKeys = []string{"op", "path", "value"}
	quoteKeys     = []string{"symbol", "name", "type", "current_price", "base_price", "change",
		"change_percent", "last_updated", "volume", "market_cap"}
)

// match returns the name in names that k selects as encoding/json
// matches field names: exactly, or else ignoring case. It returns "" for
// a key to skip.
func match(k []byte, names []string) string {
	for _, n := range names {
		if string(k) == n {
			return n
		}
	}
	for _, n := range names {
		if bytes.EqualFold(k, []byte(n)) {
			return n
		}
	}
	return ""
}

// decodeMessage decodes data into m, reusing m's operations slice. Values
// of operations point into data.
func decodeMessage(data []byte, m *serverMessage) error {
	*m = serverMessage{Operations: m.Operations[:0]}
	s := scanner{b: data}
	err := s.object(func(k []byte) error {
		switch match(k, messageKeys) {
		case "type":
			return s.stringValue(&m.Type)
		case "seq":
			if s.literal("null") {
				return nil
			}
			raw, err := s.number()
			if err != nil {
				return err
			}
			if m.Seq, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
				return fmt.Errorf("seq %s: %w", raw, err)
			}
			return nil
		case "operations":
			return s.operations(m)
		}
		_, err := s.skip(1)
		return err
	})
	if err != nil {
		return err
	}
	return s.end()
}

// operations reads the operations array; null empties it, as
// encoding/json sets a nil slice.
func (s *scanner) operations(m *serverMessage) error {
	m.Operations = m.Operations[:0]
	if s.literal("null") {
		return nil
	}
	if !s.consume('[') {
		return s.syntax("want an array of operations")
	}
	for first := true; !s.consume(']'); first = false {
		if !first && !s.consume(',') {
			return s.syntax("want , or ]")
		}
		m.Operations = append(m.Operations, operation{})
		op := &m.Operations[len(m.Operations)-1]
		if s.literal("null") {
			continue
		}
		err := s.object(func(k []byte) error {
			switch match(k, operationKeys) {
			case "op":
				return s.opValue(&op.Op)
			case "path":
				return s.stringValue(&op.Path)
			case "value":
				raw, err := s.skip(1)
				op.Value = raw
				return err
			}
			_, err := s.skip(1)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// opValue reads an op name; the usual ones are constants, not a new
// string per operation.
func (s *scanner) opValue(dst *string) error {
	start := s.i
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '"' {
		if raw, plain, err := s.str(); err == nil && plain {
			switch string(raw) {
			case "add":
				*dst = "add"
				return nil
			case "replace":
				*dst = "replace"
				return nil
			case "remove":
				*dst = "remove"
				return nil
			}
		}
		s.i = start
	}
	return s.stringValue(dst)
}

// decodeQuote decodes a quote object as encoding/json would into quoteDoc,
// except that null is an error: it is no quote.
func decodeQuote(raw []byte, q *quoteDoc) error {
	s := scanner{b: raw}
	err := s.object(func(k []byte) error {
		switch match(k, quoteKeys) {
		case "symbol":
			return s.stringValue(&q.Symbol)
		case "name":
			return s.stringValue(&q.Name)
		case "type":
			return s.stringValue(&q.Type)
		case "last_updated":
			return s.stringValue(&q.LastUpdated)
		case "current_price":
			return s.floatValue(&q.CurrentPrice)
		case "base_price":
			return s.floatValue(&q.BasePrice)
		case "change":
			return s.floatValue(&q.Change)
		case "change_percent":
			return s.floatValue(&q.ChangePercent)
		case "volume":
			return s.floatValue(&q.Volume)
		case "market_cap":
			if s.literal("null") {
				q.MarketCap = nil
				return nil
			}
			var v float64
			if err := s.floatValue(&v); err != nil {
				return err
			}
			q.MarketCap = &v
			return nil
		}
		_, err := s.skip(1)
		return err
	})
	if err != nil {
		return err
	}
	return s.end()
}
