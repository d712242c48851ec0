package quote_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"

	"github.com/tickstream/tickstream/internal/quote"
)

var t0 = time.Date(2026, 11, 28, 15, 4, 5, 678_900_000, time.UTC)

func newStore(t *testing.T, in ...quote.Instrument) *quote.Store {
	t.Helper()
	s, err := quote.NewStore(in, t0)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

func TestInitialQuoteJSON(t *testing.T) {
	s := newStore(t, quote.Builtin()...)
	tests := []struct {
		symbol string
		want   string
	}{
		{"AAPL", `{"symbol":"AAPL","name":"Apple Inc.","type":"STOCK","current_price":175.5,"base_price":175.5,"change":0,"change_percent":0,"last_updated":"2026-11-28T15:04:05.678Z","volume":52000000,"market_cap":2750000000000}`},
		{"SPY", `{"symbol":"SPY","name":"SPDR S\u0026P 500 ETF Trust","type":"ETF","current_price":485.2,"base_price":485.2,"change":0,"change_percent":0,"last_updated":"2026-11-28T15:04:05.678Z","volume":75000000}`},
	}
	for _, tt := range tests {
		t.Run(tt.symbol, func(t *testing.T) {
			e, ok := s.Lookup(tt.symbol)
			if !ok {
				t.Fatalf("Lookup(%s): not found", tt.symbol)
			}
			if got := string(e.Latest().JSON); got != tt.want {
				t.Errorf("JSON:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestSetRoundsAndVersions(t *testing.T) {
	s := newStore(t, quote.Instrument{Symbol: "X", Name: "X Corp", Type: quote.TypeStock, BasePrice: 100, Volume: 1})
	e, _ := s.Lookup("X")
	q, changed := e.Set(101.23456, t0.Add(time.Second))
	if !changed {
		t.Fatal("Set: got changed=false, want true")
	}
	if q.Version != 2 || q.CurrentPrice != 101.23 || q.Change != 1.23 || q.ChangePercent != 1.23 {
		t.Errorf("got version %d price %v change %v pct %v, want 2 101.23 1.23 1.23", q.Version, q.CurrentPrice, q.Change, q.ChangePercent)
	}
	if _, changed := e.Set(101.231, t0.Add(time.Second+50*time.Microsecond)); changed {
		t.Error("Set with the same cents and millisecond: got changed=true, want false")
	}
	if e.Latest() != q {
		t.Error("Latest: not the quote Set returned")
	}
}

// TestPatchAppliesToPrevious checks, with an RFC 6902 library, that every
// version's Patch turns the previous JSON into its own, and that Replace and
// the add/remove fragments are valid operations.
func TestPatchAppliesToPrevious(t *testing.T) {
	s := newStore(t, quote.Instrument{Symbol: "BTC/USD", Name: `Bitcoin "spot" ~ USD`, Type: quote.TypeStock, BasePrice: 50000, Volume: 5})
	e, _ := s.Lookup("BTC/USD")
	doc := []byte(`{"quotes":{}}`)
	doc = apply(t, doc, string(e.AppendAdd(nil, e.Latest())))
	prices := []float64{50001, 50001, 49000.5, 1, 50000}
	for i, p := range prices {
		q, changed := e.Set(p, t0.Add(time.Duration(i+1)*time.Second))
		if !changed {
			t.Fatalf("Set(%v): not changed", p)
		}
		doc = apply(t, doc, string(q.Patch))
		want := `{"quotes":{"BTC/USD":` + string(q.JSON) + `}}`
		if !jsonpatch.Equal(doc, []byte(want)) {
			t.Fatalf("after version %d:\n got %s\nwant %s", q.Version, doc, want)
		}
		if len(q.Patch) > len(q.Replace) {
			t.Errorf("version %d: Patch is %d bytes, longer than Replace (%d)", q.Version, len(q.Patch), len(q.Replace))
		}
	}
	if !strings.Contains(string(e.Latest().Replace), `"/quotes/BTC~1USD"`) {
		t.Errorf("Replace path not escaped: %s", e.Latest().Replace)
	}
	doc = apply(t, doc, string(e.AppendRemove(nil)))
	if string(doc) != `{"quotes":{}}` {
		t.Errorf("after remove: got %s, want {\"quotes\":{}}", doc)
	}
}

func apply(t *testing.T, doc []byte, ops string) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch([]byte("[" + ops + "]"))
	if err != nil {
		t.Fatalf("decode %s: %v", ops, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply %s: %v", ops, err)
	}
	return out
}

func TestPatchPicksShorterEncoding(t *testing.T) {
	s := newStore(t, quote.Instrument{Symbol: "X", Name: "X", Type: quote.TypeStock, BasePrice: 100, Volume: 1})
	e, _ := s.Lookup("X")
	// Only last_updated changes: one field replace is shorter.
	q, _ := e.Set(100, t0.Add(time.Second))
	var ops []map[string]any
	if err := json.Unmarshal([]byte("["+string(q.Patch)+"]"), &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0]["path"] != "/quotes/X/last_updated" {
		t.Errorf("got %s, want one replace of /quotes/X/last_updated", q.Patch)
	}
}

func TestNewStoreRejects(t *testing.T) {
	good := quote.Instrument{Symbol: "A", Name: "A", Type: quote.TypeStock, BasePrice: 10}
	tests := []struct {
		name string
		in   []quote.Instrument
		want string
	}{
		{"duplicate", []quote.Instrument{good, good}, "listed twice"},
		{"bad symbol", []quote.Instrument{{Symbol: "../ETC", Name: "x", Type: quote.TypeStock, BasePrice: 10}}, "symbol"},
		{"bad type", []quote.Instrument{{Symbol: "B", Name: "x", Type: "BOND", BasePrice: 10}}, "type"},
		{"price below 1", []quote.Instrument{{Symbol: "B", Name: "x", Type: quote.TypeETF, BasePrice: 0.5}}, "base_price"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := quote.NewStore(tt.in, t0)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestReadCSV(t *testing.T) {
	in := "symbol,name,type,base_price,volume,market_cap\n" +
		"brk.b,Berkshire Hathaway Class B,stock,410.5,3000000,880000000000\n" +
		"BTC/USD,\"Bitcoin, in dollars\",ETF,65000,,\n"
	got, err := quote.ReadCSV(strings.NewReader(in))
	if err != nil {
		t.Fatalf("ReadCSV: %v", err)
	}
	want := []quote.Instrument{
		{"BRK.B", "Berkshire Hathaway Class B", quote.TypeStock, 410.5, 3000000, 880000000000},
		{"BTC/USD", "Bitcoin, in dollars", quote.TypeETF, 65000, 0, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d instruments, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{
		"sym,name\nA,B\n",
		"symbol,name,type,base_price,volume,market_cap\nA,A,STOCK,abc,1,1\n",
		"symbol,name,type,base_price,volume,market_cap\n",
	} {
		if _, err := quote.ReadCSV(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadCSV(%q): got nil error, want one", bad)
		}
	}
}
