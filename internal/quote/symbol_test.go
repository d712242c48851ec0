package quote_test

import (
	"slices"
	"testing"

	"github.com/tickstream/tickstream/internal/quote"
)

func TestValidSymbol(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"AAPL", true}, {"BRK.B", true}, {"BTC/USD", true}, {"ES=F", true}, {"^GSPC", true},
		{"EUR/USD:FX", true}, {"A~B", true}, {"V", true}, {"X12345678901234567890123456789012", false},
		{"", false}, {"aapl", false}, {"../ETC", false}, {"A..B", false}, {"A/", false},
		{"<SCRIPT>", false}, {"A B", false}, {"A\x00", false}, {"A\nB", false}, {".A", false}, {"^.A", false},
	}
	for _, tt := range tests {
		if got := quote.ValidSymbol(tt.in); got != tt.want {
			t.Errorf("ValidSymbol(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"AAPL,GOOGL", []string{"AAPL", "GOOGL"}},
		{" aapl , Aapl,,msft ", []string{"AAPL", "MSFT"}},
		{"", []string{}},
		{",,", []string{}},
		{"btc/usd", []string{"BTC/USD"}},
	}
	for _, tt := range tests {
		if got := quote.ParseList(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("ParseList(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEscapePointer(t *testing.T) {
	tests := []struct{ in, want string }{
		{"AAPL", "AAPL"}, {"BTC/USD", "BTC~1USD"}, {"A~B", "A~0B"}, {"~/", "~0~1"}, {"A/~1", "A~1~01"},
	}
	for _, tt := range tests {
		if got := quote.EscapePointer(tt.in); got != tt.want {
			t.Errorf("EscapePointer(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}
