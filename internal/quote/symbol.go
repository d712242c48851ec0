package quote

import (
	"errors"
	"strings"
)

// MaxSymbolLen is the longest symbol the server accepts. Real tickers,
// including option roots and FX pairs such as EUR/USD:FX, are far shorter.
const MaxSymbolLen = 32

// ErrBadSymbol reports a symbol outside the accepted syntax.
var ErrBadSymbol = errors.New("symbol must be 1-32 characters of A-Z 0-9 . / - _ = : ^ ~, start with a letter, digit or ^, end with a letter or digit, and have no two punctuation marks in a row")

// ValidSymbol reports whether s has the syntax of a symbol: upper-case
// letters and digits with the punctuation real tickers use (BRK.B, BTC/USD,
// ES=F, ^GSPC). Paths such as ../etc, markup and control characters fail.
func ValidSymbol(s string) bool {
	if len(s) == 0 || len(s) > MaxSymbolLen {
		return false
	}
	if !isAlnum(s[0]) && s[0] != '^' {
		return false
	}
	if !isAlnum(s[len(s)-1]) {
		return false
	}
	prevPunct := s[0] == '^'
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlnum(c):
			prevPunct = false
		case strings.IndexByte("./-_=:^~", c) >= 0:
			if prevPunct {
				return false
			}
			prevPunct = true
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool { return 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }

// ParseList splits a comma-separated symbol list: entries are trimmed and
// upper-cased, empty entries dropped and duplicates removed, in first-seen
// order.
func ParseList(raw string) []string {
	return Normalize(strings.Split(raw, ","))
}

// Normalize trims, upper-cases and de-duplicates symbols, dropping empty
// ones and keeping the first-seen order.
func Normalize(in []string) []string {
	out := make([]string, 0, len(in))
	seen := make(map[string]struct{}, len(in))
	for _, s := range in {
		s = strings.ToUpper(strings.TrimSpace(s))
		if s == "" {
			continue
		}
		if _, dup := seen[s]; dup {
			continue
		}
		seen[s] = struct{}{}
		out = append(out, s)
	}
	return out
}

// EscapePointer escapes one JSON Pointer reference token as RFC 6901 says:
// "~" becomes "~0" and "/" becomes "~1", so BTC/USD is /quotes/BTC~1USD.
func EscapePointer(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}
