package main

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

const (
	aaplJSON = `{"symbol":"AAPL","name":"Apple Inc.","type":"STOCK","current_price":175.5,"base_price":175.5,"change":0,"change_percent":0,"last_updated":"2025-01-02T03:04:05.000Z","volume":52000000,"market_cap":2750000000000}`
	btcJSON  = `{"symbol":"BTC/USD","name":"Bitcoin","type":"STOCK","current_price":100,"base_price":100,"change":0,"change_percent":0,"last_updated":"2025-01-02T03:04:05.000Z","volume":1}`
	snapshot = `[{"op":"add","path":"/quotes","value":{}},{"op":"add","path":"/quotes/AAPL","value":` + aaplJSON + `},{"op":"add","path":"/quotes/BTC~1USD","value":` + btcJSON + `}]`
)

func ops(t *testing.T, s string) []operation {
	t.Helper()
	var out []operation
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		t.Fatalf("ops %s: %v", s, err)
	}
	return out
}

// snapshotDoc is a document after the snapshot above.
func snapshotDoc(t *testing.T) *document {
	t.Helper()
	var d document
	updates, err := d.apply(ops(t, snapshot), nil)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if len(updates) != 0 {
		t.Fatalf("snapshot updates: got %v, want none", updates)
	}
	return &d
}

func TestApply(t *testing.T) {
	tests := []struct {
		name        string
		ops         string
		check       func(t *testing.T, d *document)
		wantUpdates []string
	}{
		{
			name: "replace fields",
			ops: `[{"op":"replace","path":"/quotes/AAPL/current_price","value":176.25},` +
				`{"op":"replace","path":"/quotes/AAPL/change","value":0.75},` +
				`{"op":"replace","path":"/quotes/AAPL/change_percent","value":0.43},` +
				`{"op":"replace","path":"/quotes/AAPL/last_updated","value":"2025-01-02T03:04:06.123Z"}]`,
			check: func(t *testing.T, d *document) {
				q := d.quotes["AAPL"]
				if q.CurrentPrice != 176.25 || q.Change != 0.75 || q.ChangePercent != 0.43 || q.LastUpdated != "2025-01-02T03:04:06.123Z" {
					t.Errorf("got %+v", *q)
				}
			},
			wantUpdates: []string{"2025-01-02T03:04:06.123Z"},
		},
		{
			name: "replace a whole quote at an escaped path",
			ops:  `[{"op":"replace","path":"/quotes/BTC~1USD","value":` + strings.Replace(btcJSON, `"current_price":100`, `"current_price":101.5`, 1) + `}]`,
			check: func(t *testing.T, d *document) {
				if got := d.quotes["BTC/USD"].CurrentPrice; got != 101.5 {
					t.Errorf("current_price: got %v, want 101.5", got)
				}
			},
			wantUpdates: []string{"2025-01-02T03:04:05.000Z"},
		},
		{
			name: "remove a quote",
			ops:  `[{"op":"remove","path":"/quotes/AAPL"}]`,
			check: func(t *testing.T, d *document) {
				if _, ok := d.quotes["AAPL"]; ok || len(d.quotes) != 1 {
					t.Errorf("got %v, want only BTC/USD", d.quotes)
				}
			},
		},
		{
			name: "add a quote later is not an update",
			ops:  `[{"op":"add","path":"/quotes/A~0B","value":` + strings.Replace(btcJSON, "BTC/USD", "A~B", 1) + `}]`,
			check: func(t *testing.T, d *document) {
				if d.quotes["A~B"] == nil {
					t.Errorf("A~B missing from %v", d.quotes)
				}
			},
		},
		{
			name: "remove and add market_cap",
			ops:  `[{"op":"remove","path":"/quotes/AAPL/market_cap"},{"op":"add","path":"/quotes/BTC~1USD/market_cap","value":5}]`,
			check: func(t *testing.T, d *document) {
				if d.quotes["AAPL"].MarketCap != nil {
					t.Errorf("AAPL market_cap: got %v, want absent", *d.quotes["AAPL"].MarketCap)
				}
				if mc := d.quotes["BTC/USD"].MarketCap; mc == nil || *mc != 5 {
					t.Errorf("BTC/USD market_cap: got %v, want 5", mc)
				}
			},
		},
		{
			name: "string with escapes",
			ops:  `[{"op":"replace","path":"/quotes/AAPL/name","value":"Apple \"Inc.\" \u00e9"}]`,
			check: func(t *testing.T, d *document) {
				if got, want := d.quotes["AAPL"].Name, `Apple "Inc." é`; got != want {
					t.Errorf("name: got %q, want %q", got, want)
				}
			},
		},
		{
			name: "remove /quotes",
			ops:  `[{"op":"remove","path":"/quotes"}]`,
			check: func(t *testing.T, d *document) {
				if d.quotes != nil {
					t.Errorf("got %v, want no quotes", d.quotes)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotDoc(t)
			updates, err := d.apply(ops(t, tt.ops), nil)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			tt.check(t, d)
			if !slices.Equal(updates, tt.wantUpdates) {
				t.Errorf("updates: got %v, want %v", updates, tt.wantUpdates)
			}
		})
	}
}

func TestApplyErrors(t *testing.T) {
	tests := []struct {
		name, ops string
	}{
		{"unknown op", `[{"op":"move","from":"/quotes/AAPL","path":"/quotes/X"}]`},
		{"test op", `[{"op":"test","path":"/quotes/AAPL/volume","value":1}]`},
		{"path outside /quotes", `[{"op":"add","path":"/other","value":1}]`},
		{"path sharing the prefix", `[{"op":"add","path":"/quotesX","value":{}}]`},
		{"root path", `[{"op":"replace","path":"","value":{}}]`},
		{"path too deep", `[{"op":"replace","path":"/quotes/AAPL/volume/x","value":1}]`},
		{"empty field", `[{"op":"replace","path":"/quotes/AAPL/","value":1}]`},
		{"empty symbol", `[{"op":"add","path":"/quotes/","value":{}}]`},
		{"unknown field", `[{"op":"replace","path":"/quotes/AAPL/bid","value":1}]`},
		{"bad escape", `[{"op":"replace","path":"/quotes/BTC~2USD/volume","value":1}]`},
		{"trailing tilde", `[{"op":"replace","path":"/quotes/BTC~/volume","value":1}]`},
		{"replace absent quote", `[{"op":"replace","path":"/quotes/MSFT","value":` + aaplJSON + `}]`},
		{"remove absent quote", `[{"op":"remove","path":"/quotes/MSFT"}]`},
		{"field of absent quote", `[{"op":"replace","path":"/quotes/MSFT/volume","value":1}]`},
		{"remove required field", `[{"op":"remove","path":"/quotes/AAPL/current_price"}]`},
		{"replace absent market_cap", `[{"op":"replace","path":"/quotes/BTC~1USD/market_cap","value":1}]`},
		{"number as string", `[{"op":"replace","path":"/quotes/AAPL/current_price","value":"1"}]`},
		{"string as number", `[{"op":"replace","path":"/quotes/AAPL/last_updated","value":12}]`},
		{"quote not an object", `[{"op":"replace","path":"/quotes/AAPL","value":[1]}]`},
		{"quotes not an object", `[{"op":"add","path":"/quotes","value":3}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := snapshotDoc(t)
			if _, err := d.apply(ops(t, tt.ops), nil); err == nil {
				t.Errorf("apply %s: got no error, want one", tt.ops)
			}
		})
	}
}

// TestApplyNonJSONNumber feeds a value encoding/json would reject before
// the applier sees it, as a hand-written server might send.
func TestApplyNonJSONNumber(t *testing.T) {
	for _, v := range []string{"0x10", "Inf", "NaN", "1_0"} {
		d := snapshotDoc(t)
		op := []operation{{Op: "replace", Path: "/quotes/AAPL/current_price", Value: json.RawMessage(v)}}
		if _, err := d.apply(op, nil); err == nil {
			t.Errorf("value %s: got no error, want one", v)
		}
	}
}

func TestApplyBeforeQuotes(t *testing.T) {
	var d document
	if _, err := d.apply(ops(t, `[{"op":"add","path":"/quotes/AAPL","value":`+aaplJSON+`}]`), nil); err == nil {
		t.Error("add /quotes/AAPL before /quotes: got no error, want one")
	}
}

func TestUnsupportedIsMarked(t *testing.T) {
	d := snapshotDoc(t)
	_, err := d.apply(ops(t, `[{"op":"copy","from":"/quotes/AAPL","path":"/quotes/X"}]`), nil)
	if !errors.Is(err, errUnsupported) {
		t.Errorf("got %v, want errUnsupported", err)
	}
}

func TestUnescapeToken(t *testing.T) {
	tests := []struct{ in, want string }{
		{"AAPL", "AAPL"},
		{"BTC~1USD", "BTC/USD"},
		{"A~0B", "A~B"},
		{"~01", "~1"},
		{"~10", "/0"},
	}
	for _, tt := range tests {
		got, err := unescapeToken(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("unescapeToken(%q): got %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestIsJSONNumber(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"0", true}, {"-0", true}, {"12.5", true}, {"1e9", true}, {"1.5E-3", true}, {"2750000000000", true},
		{"", false}, {"-", false}, {"01", false}, {"1.", false}, {".5", false}, {"1e", false},
		{"Inf", false}, {"NaN", false}, {"0x1p4", false}, {"1_000", false}, {`"1"`, false},
	}
	for _, tt := range tests {
		if got := isJSONNumber([]byte(tt.in)); got != tt.want {
			t.Errorf("isJSONNumber(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestQuoteDiff(t *testing.T) {
	var a, b quoteDoc
	if err := json.Unmarshal([]byte(aaplJSON), &a); err != nil {
		t.Fatal(err)
	}
	b = a
	if !a.equal(&b) || a.diff(&b) != "" {
		t.Errorf("equal quotes: got equal=%v diff=%q", a.equal(&b), a.diff(&b))
	}
	b.CurrentPrice = 176
	if a.equal(&b) {
		t.Error("different prices: got equal")
	}
	if got, want := a.diff(&b), "current_price: got 175.5, want 176"; got != want {
		t.Errorf("diff: got %q, want %q", got, want)
	}
	b = a
	b.MarketCap = nil
	if a.equal(&b) {
		t.Error("market_cap present and absent: got equal")
	}
}

func TestHandleSeqAndTypes(t *testing.T) {
	st := newStats()
	s := &slot{id: 7, symbols: []string{"AAPL", "BTC/USD"}, shard: st.shard(7)}
	msg := func(seq int, ops string) []byte {
		return []byte(`{"type":"quotes_patch","seq":` + strconv.Itoa(seq) + `,"operations":` + ops + `}`)
	}
	update := `[{"op":"replace","path":"/quotes/AAPL/last_updated","value":"2025-01-02T03:04:06.000Z"}]`
	steps := []struct {
		name        string
		typ         websocket.MessageType
		data        []byte
		wantErrs    int
		wantUpdates int
	}{
		{"snapshot", websocket.MessageText, msg(1, snapshot), 0, 0},
		{"update", websocket.MessageText, msg(2, update), 0, 1},
		{"seq gap", websocket.MessageText, msg(4, update), 1, 1},
		{"next after the gap", websocket.MessageText, msg(5, update), 0, 1},
		{"pong", websocket.MessageText, []byte(`{"type":"pong"}`), 0, 0},
		{"error message", websocket.MessageText, []byte(`{"type":"error","code":"bad_json"}`), 1, 0},
		{"unknown type", websocket.MessageText, []byte(`{"type":"news"}`), 1, 0},
		{"not JSON", websocket.MessageText, []byte(`{"type":`), 1, 0},
		{"binary", websocket.MessageBinary, []byte(`{}`), 1, 0},
		{"unsupported op", websocket.MessageText, msg(6, `[{"op":"move","path":"/quotes/X","from":"/quotes/AAPL"}]`), 1, 0},
		{"empty patch", websocket.MessageText, msg(7, `[]`), 1, 0},
	}
	for _, step := range steps {
		updates, errs := s.handle(step.typ, step.data, &serverMessage{}, nil, st)
		if errs != step.wantErrs || len(updates) != step.wantUpdates {
			t.Errorf("%s: got %d errors, %d updates, want %d, %d", step.name, errs, len(updates), step.wantErrs, step.wantUpdates)
		}
	}
}

func TestSnapshotMustStartWithQuotes(t *testing.T) {
	st := newStats()
	s := &slot{id: 1, shard: st.shard(1)}
	data := []byte(`{"type":"quotes_patch","seq":1,"operations":[{"op":"add","path":"/quotes/AAPL","value":` + aaplJSON + `}]}`)
	if _, errs := s.handle(websocket.MessageText, data, &serverMessage{}, nil, st); errs == 0 {
		t.Error("snapshot without add /quotes: got no error, want one")
	}
}

// BenchmarkHandle measures the reader's per-message work on the usual
// message: four field replaces of one symbol.
func BenchmarkHandle(b *testing.B) {
	st := newStats()
	s := &slot{id: 1, shard: st.shard(1)}
	var m serverMessage
	if _, errs := s.handle(websocket.MessageText, []byte(`{"type":"quotes_patch","seq":1,"operations":`+snapshot+`}`), &m, nil, st); errs != 0 {
		b.Fatal("snapshot failed")
	}
	var updates []string
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		data := []byte(`{"type":"quotes_patch","seq":` + strconv.Itoa(i+2) + `,"operations":[` +
			`{"op":"replace","path":"/quotes/AAPL/current_price","value":176.25},` +
			`{"op":"replace","path":"/quotes/AAPL/change","value":0.75},` +
			`{"op":"replace","path":"/quotes/AAPL/change_percent","value":0.43},` +
			`{"op":"replace","path":"/quotes/AAPL/last_updated","value":"2025-01-02T03:04:06.123Z"}]}`)
		var errs int
		updates, errs = s.handle(websocket.MessageText, data, &m, updates[:0], st)
		if errs != 0 {
			b.Fatal("update failed")
		}
	}
}
