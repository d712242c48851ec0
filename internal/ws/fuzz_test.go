package ws

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeClientMessage feeds the client message decoder any bytes: it
// never panics, a message it accepts has a type and a safe id, and an
// error's answer is valid JSON that quotes at most 32 bytes of the input.
func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","id":"a","symbols":["AAPL","BTC/USD"]}`,
		`{"type":"unsubscribe","id":7,"symbols":["MSFT"]}`,
		`{"type":"auth","token":"a.b.c"}`,
		`{"type":"ping"}`, `{"type":"ping","id":null}`, `{}`, `[]`, `null`, `"x"`, `{"type":1}`,
		`{"type":"subscribe","symbols":"AAPL"}`, `{"type":"ping","id":{"a":1}}`,
		`{"type":"ping","id":"` + strings.Repeat("x", 70) + `"}`, `{"type":"<script>"}`, "{\"type\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeClientMessage(data)
		if err == nil {
			if m.Type == "" {
				t.Fatalf("accepted %q without a type", data)
			}
		} else {
			var pe *protocolError
			if !errors.As(err, &pe) {
				t.Fatalf("decode %q: got %T, want a *protocolError", data, err)
			}
			b, jerr := json.Marshal(errorMessage{Type: "error", ID: pe.id, Code: pe.code, Message: pe.message})
			if jerr != nil || !json.Valid(b) {
				t.Fatalf("error answer to %q does not encode: %v", data, jerr)
			}
			if len(data) > 40 && utf8.Valid(data) && strings.Contains(pe.message, string(data)) {
				t.Fatalf("error message quotes the input: %q", pe.message)
			}
		}
		if len(m.ID) > 0 && !validID(m.ID) {
			t.Fatalf("decode %q kept id %s, which is not a short string or number", data, m.ID)
		}
	})
}
