package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// A message of the usual shape: five symbols moved, four fields each.
var fiveSymbols = func() []byte {
	var ops []string
	for _, sym := range []string{"AAPL", "MSFT", "GOOGL", "BTC~1USD", "SPY"} {
		p := `"/quotes/` + sym
		ops = append(ops,
			`{"op":"replace","path":`+p+`/current_price","value":176.25}`,
			`{"op":"replace","path":`+p+`/change","value":0.75}`,
			`{"op":"replace","path":`+p+`/change_percent","value":0.43}`,
			`{"op":"replace","path":`+p+`/last_updated","value":"2025-01-02T03:04:06.123Z"}`)
	}
	return []byte(`{"type":"quotes_patch","seq":42,"operations":[` + strings.Join(ops, ",") + `]}`)
}()

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want serverMessage
	}{
		{"patch", `{"type":"quotes_patch","seq":2,"operations":[{"op":"replace","path":"/quotes/A~1B/volume","value":5}]}`,
			serverMessage{Type: "quotes_patch", Seq: 2, Operations: []operation{{Op: "replace", Path: "/quotes/A~1B/volume", Value: json.RawMessage("5")}}}},
		{"white space and unknown keys", " {\n\"seq\" : 1 , \"x\":[{},[],null,true,\"s\"], \"operations\" : [ { \"value\" : { \"a\" : [ 1 ] } , \"op\":\"add\" } ] , \"type\":\"quotes_patch\" } ",
			serverMessage{Type: "quotes_patch", Seq: 1, Operations: []operation{{Op: "add", Value: json.RawMessage(`{ "a" : [ 1 ] }`)}}}},
		{"keys in another case", `{"TYPE":"pong","Seq":3}`, serverMessage{Type: "pong", Seq: 3}},
		{"escaped key and value", `{"typ\u0065":"a\"b"}`, serverMessage{Type: `a"b`}},
		{"null fields", `{"type":null,"seq":null,"operations":null}`, serverMessage{}},
		{"null operation", `{"operations":[null]}`, serverMessage{Operations: []operation{{}}}},
		{"other types", `{"type":"subscribed","id":"x","symbols":["A"],"invalid":[]}`, serverMessage{Type: "subscribed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got serverMessage
			if err := decodeMessage([]byte(tt.in), &got); err != nil {
				t.Fatalf("decodeMessage: %v", err)
			}
			if !sameMessage(&got, &tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	for _, in := range []string{
		``, `null`, `[]`, `{`, `{"type":"a"`, `{"type":"a",}`, `{"type" "a"}`, `{"type":1}`,
		`{"seq":-1}`, `{"seq":1.5}`, `{"seq":"1"}`, `{"seq":18446744073709551616}`,
		`{"operations":{}}`, `{"operations":[1]}`, `{"operations":[{"op":1}]}`, `{"operations":[{}`,
		`{"x":tru}`, `{"x":01}`, `{"x":"\x"}`, `{"x":"\u12"}`, "{\"x\":\"\x01\"}", `{} {}`, `{"x":[1,]}`,
	} {
		var m serverMessage
		if err := decodeMessage([]byte(in), &m); err == nil {
			t.Errorf("decodeMessage(%q): got %+v, want an error", in, m)
		}
	}
}

func TestDecodeQuote(t *testing.T) {
	var got, want quoteDoc
	in := `{"symbol":"BTC/USD","name":"Caf\u00e9 \"x\"","type":"STOCK","current_price":1e2,"base_price":99.99,"change":-0.01,` +
		`"change_percent":0,"last_updated":"2025-01-02T03:04:05.000Z","volume":1,"market_cap":null,"extra":{"a":[1]}}`
	if err := decodeQuote([]byte(in), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(in), &want); err != nil {
		t.Fatal(err)
	}
	if !got.equal(&want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{`null`, `[]`, `{"current_price":"1"}`, `{"volume":1e999}`, `{"name":1}`, `{"symbol":"A"} x`} {
		var q quoteDoc
		if err := decodeQuote([]byte(bad), &q); err == nil {
			t.Errorf("decodeQuote(%s): got %+v, want an error", bad, q)
		}
	}
}

func sameMessage(a, b *serverMessage) bool {
	return a.Type == b.Type && a.Seq == b.Seq && slices.EqualFunc(a.Operations, b.Operations, func(x, y operation) bool {
		return x.Op == y.Op && x.Path == y.Path && string(x.Value) == string(y.Value)
	})
}

// FuzzDecodeMessage checks the scanner against encoding/json: whatever it
// accepts, encoding/json accepts and decodes the same.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(fiveSymbols)
	f.Add([]byte(`{"type":"quotes_patch","seq":1,"operations":` + snapshot + `,"invalid_symbols":["X"]}`))
	f.Add([]byte(`{"type":"pong","id":7}`))
	f.Add([]byte(`{"type":"error","id":"a","code":"bad_json","message":"m"}`))
	f.Add([]byte(`{"Type":"x","typ\u0065":null,"operations":[null,{"VALUE":"\ud83d\ude00"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got serverMessage
		if decodeMessage(data, &got) != nil {
			return
		}
		var want serverMessage
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("scanner accepted %q, which encoding/json rejects: %v", data, err)
		}
		if !sameMessage(&got, &want) {
			t.Fatalf("%q: scanner got %+v, encoding/json %+v", data, got, want)
		}
	})
}

// FuzzDecodeQuote does the same for quote objects.
func FuzzDecodeQuote(f *testing.F) {
	f.Add([]byte(aaplJSON))
	f.Add([]byte(btcJSON))
	f.Add([]byte(`{"NAME":"a\u0000b","market_cap":null,"x":[{"y":-0.5e-3}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got quoteDoc
		if decodeQuote(data, &got) != nil {
			return
		}
		var want quoteDoc
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("scanner accepted %q, which encoding/json rejects: %v", data, err)
		}
		if !got.equal(&want) {
			t.Fatalf("%q: scanner got %+v, encoding/json %+v", data, got, want)
		}
	})
}

// BenchmarkDecode compares the scanner with encoding/json on the usual
// message (20 operations, 1.3 KB).
func BenchmarkDecode(b *testing.B) {
	b.Run("scanner", func(b *testing.B) {
		var m serverMessage
		b.SetBytes(int64(len(fiveSymbols)))
		b.ReportAllocs()
		for b.Loop() {
			if err := decodeMessage(fiveSymbols, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(fiveSymbols)))
		b.ReportAllocs()
		for b.Loop() {
			var m serverMessage
			if err := json.Unmarshal(fiveSymbols, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
