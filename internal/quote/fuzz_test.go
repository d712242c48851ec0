package quote_test

import (
	"strings"
	"testing"

	"github.com/tickstream/tickstream/internal/quote"
)

// FuzzParseList checks the symbol list parser on any query string: every
// symbol it returns is trimmed, upper-case, non-empty and unique, parsing
// its own output again changes nothing, and a symbol that passes
// ValidSymbol has only the documented characters.
func FuzzParseList(f *testing.F) {
	for _, s := range []string{"AAPL,GOOGL", " aapl , AAPL,,msft ", "BTC/USD,BRK.B,A~B", "../etc,<script>", "\x00,\r\n", strings.Repeat("A,", 50)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := quote.ParseList(raw)
		seen := map[string]bool{}
		for _, s := range got {
			switch {
			case s == "":
				t.Fatalf("ParseList(%q) returned an empty symbol", raw)
			case s != strings.TrimSpace(s) || s != strings.ToUpper(s):
				t.Fatalf("ParseList(%q) returned %q, not trimmed and upper-cased", raw, s)
			case strings.Contains(s, ","):
				t.Fatalf("ParseList(%q) returned %q with a comma", raw, s)
			case seen[s]:
				t.Fatalf("ParseList(%q) returned %q twice", raw, s)
			}
			seen[s] = true
			if quote.ValidSymbol(s) && (len(s) > quote.MaxSymbolLen || strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./-_=:^~") != "") {
				t.Fatalf("ValidSymbol(%q) is true for a symbol outside the syntax", s)
			}
		}
		again := quote.ParseList(strings.Join(got, ","))
		if strings.Join(again, ",") != strings.Join(got, ",") {
			t.Fatalf("ParseList is not stable: %q then %q", got, again)
		}
	})
}

// FuzzEscapePointer checks RFC 6901 escaping: the escaped token holds no
// "/" and no "~" other than "~0" and "~1", and unescaping gives the symbol
// back.
func FuzzEscapePointer(f *testing.F) {
	for _, s := range []string{"AAPL", "BTC/USD", "A~B", "~1", "~0/~", "//", "~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := quote.EscapePointer(s)
		if strings.Contains(e, "/") {
			t.Fatalf("EscapePointer(%q) = %q holds a /", s, e)
		}
		for i := range len(e) {
			if e[i] == '~' && (i+1 == len(e) || (e[i+1] != '0' && e[i+1] != '1')) {
				t.Fatalf("EscapePointer(%q) = %q has a bare ~", s, e)
			}
		}
		// RFC 6901 section 4: ~1 first, then ~0.
		back := strings.ReplaceAll(strings.ReplaceAll(e, "~1", "/"), "~0", "~")
		if back != s {
			t.Fatalf("EscapePointer(%q) = %q unescapes to %q", s, e, back)
		}
	})
}
