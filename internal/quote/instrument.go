// Package quote holds the instruments the server knows and the current quote
// of each: immutable, versioned values whose JSON is encoded once per update
// and shared by every reader (snapshots, REST, the fan-out writers).
package quote

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Instrument types, as the original service spelled them.
const (
	TypeStock = "STOCK"
	TypeETF   = "ETF"
)

// Instrument is the static description of a tradable symbol.
type Instrument struct {
	Symbol    string  `json:"symbol"`
	Name      string  `json:"name"`
	Type      string  `json:"type"`
	BasePrice float64 `json:"base_price"`
	Volume    int64   `json:"volume"`
	MarketCap int64   `json:"market_cap,omitempty"`
}

// Validate reports why an instrument cannot be served, or nil.
func (in Instrument) Validate() error {
	switch {
	case !ValidSymbol(in.Symbol):
		return fmt.Errorf("symbol %q: %w", in.Symbol, ErrBadSymbol)
	case in.Name == "":
		return fmt.Errorf("symbol %s: empty name", in.Symbol)
	case in.Type != TypeStock && in.Type != TypeETF:
		return fmt.Errorf("symbol %s: type %q is not %s or %s", in.Symbol, in.Type, TypeStock, TypeETF)
	case !(in.BasePrice >= 1) || in.BasePrice > 1e12:
		return fmt.Errorf("symbol %s: base_price %v must be between 1 and 1e12", in.Symbol, in.BasePrice)
	case in.Volume < 0 || in.MarketCap < 0:
		return fmt.Errorf("symbol %s: volume and market_cap must not be negative", in.Symbol)
	}
	return nil
}

// Builtin returns the 20 instruments the server serves when no
// INSTRUMENTS_FILE is given. Volumes and market caps are illustrative.
func Builtin() []Instrument {
	return []Instrument{
		{"AAPL", "Apple Inc.", TypeStock, 175.50, 52_000_000, 2_750_000_000_000},
		{"MSFT", "Microsoft Corporation", TypeStock, 420.25, 21_000_000, 3_120_000_000_000},
		{"GOOGL", "Alphabet Inc.", TypeStock, 140.80, 25_000_000, 1_760_000_000_000},
		{"AMZN", "Amazon.com Inc.", TypeStock, 155.30, 38_000_000, 1_610_000_000_000},
		{"TSLA", "Tesla Inc.", TypeStock, 248.75, 98_000_000, 790_000_000_000},
		{"NVDA", "NVIDIA Corporation", TypeStock, 875.20, 41_000_000, 2_160_000_000_000},
		{"META", "Meta Platforms Inc.", TypeStock, 485.60, 15_000_000, 1_240_000_000_000},
		{"NFLX", "Netflix Inc.", TypeStock, 485.90, 4_000_000, 210_000_000_000},
		{"JPM", "JPMorgan Chase & Co.", TypeStock, 185.40, 9_000_000, 535_000_000_000},
		{"V", "Visa Inc.", TypeStock, 275.80, 6_000_000, 565_000_000_000},
		{"SPY", "SPDR S&P 500 ETF Trust", TypeETF, 485.20, 75_000_000, 0},
		{"QQQ", "Invesco QQQ Trust", TypeETF, 395.75, 42_000_000, 0},
		{"VTI", "Vanguard Total Stock Market ETF", TypeETF, 245.30, 3_500_000, 0},
		{"IWM", "iShares Russell 2000 ETF", TypeETF, 195.85, 28_000_000, 0},
		{"EFA", "iShares MSCI EAFE ETF", TypeETF, 78.90, 17_000_000, 0},
		{"GLD", "SPDR Gold Shares", TypeETF, 185.45, 8_000_000, 0},
		{"TLT", "iShares 20+ Year Treasury Bond ETF", TypeETF, 92.30, 36_000_000, 0},
		{"VNQ", "Vanguard Real Estate ETF", TypeETF, 85.75, 4_500_000, 0},
		{"XLF", "Financial Select Sector SPDR Fund", TypeETF, 38.20, 40_000_000, 0},
		{"XLK", "Technology Select Sector SPDR Fund", TypeETF, 195.60, 7_000_000, 0},
	}
}

// Synthetic returns n generated instruments SYN00001, SYN00002, ... for load
// tests. Prices and volumes are deterministic so runs are comparable.
func Synthetic(n int) []Instrument {
	out := make([]Instrument, n)
	for i := range out {
		k := i + 1
		out[i] = Instrument{
			Symbol:    fmt.Sprintf("SYN%05d", k),
			Name:      fmt.Sprintf("Synthetic Instrument %d", k),
			Type:      TypeStock,
			BasePrice: float64(10 + (k*7919)%990),
			Volume:    int64(100_000 + (k*104_729)%9_900_000),
		}
	}
	return out
}

var csvHeader = []string{"symbol", "name", "type", "base_price", "volume", "market_cap"}

// ReadCSV reads instruments from CSV with the header
// symbol,name,type,base_price,volume,market_cap. Symbols and types are
// upper-cased; every row is validated and errors name the line.
func ReadCSV(r io.Reader) ([]Instrument, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = len(csvHeader)
	cr.TrimLeadingSpace = true
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	for i, h := range head {
		if strings.TrimSpace(strings.ToLower(h)) != csvHeader[i] {
			return nil, fmt.Errorf("header: got %q, want %q", strings.Join(head, ","), strings.Join(csvHeader, ","))
		}
	}
	var out []Instrument
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		line, _ := cr.FieldPos(0)
		in, err := parseRecord(rec)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, in)
	}
	if len(out) == 0 {
		return nil, errors.New("no instruments")
	}
	return out, nil
}

func parseRecord(rec []string) (Instrument, error) {
	in := Instrument{
		Symbol: strings.ToUpper(strings.TrimSpace(rec[0])),
		Name:   strings.TrimSpace(rec[1]),
		Type:   strings.ToUpper(strings.TrimSpace(rec[2])),
	}
	var err error
	if in.BasePrice, err = strconv.ParseFloat(strings.TrimSpace(rec[3]), 64); err != nil {
		return in, fmt.Errorf("base_price: %w", err)
	}
	if in.Volume, err = parseInt(rec[4]); err != nil {
		return in, fmt.Errorf("volume: %w", err)
	}
	if in.MarketCap, err = parseInt(rec[5]); err != nil {
		return in, fmt.Errorf("market_cap: %w", err)
	}
	return in, in.Validate()
}

func parseInt(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	return strconv.ParseInt(s, 10, 64)
}
