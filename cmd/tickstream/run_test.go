package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/config"
)

func TestHandshakeRejections(t *testing.T) {
	s := startServer(t, map[string]string{"WS_MAX_SYMBOLS": "3"})
	valid := s.validToken()
	tests := []struct {
		name     string
		query    string
		header   http.Header
		upgrade  bool // send the WebSocket upgrade headers
		status   int
		wantCode string
	}{
		{"no token", "?symbols=AAPL", nil, true, 401, "missing_token"},
		{"garbage token", "?symbols=AAPL", hdr("Bearer not-a-jwt"), true, 401, "malformed_token"},
		{"basic scheme", "?symbols=AAPL", hdr("Basic dXNlcjpwYXNz"), true, 401, "malformed_token"},
		{"bad signature", "?symbols=AAPL", hdr("Bearer " + s.token(jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()}, "another-secret-of-at-least-32-bytes!!")), true, 401, "invalid_token"},
		{"expired", "?symbols=AAPL", hdr("Bearer " + s.token(jwt.MapClaims{"sub": "x", "exp": time.Now().Add(-time.Hour).Unix()}, "")), true, 401, "token_expired"},
		{"no exp", "?symbols=AAPL", hdr("Bearer " + s.token(jwt.MapClaims{"sub": "x"}, "")), true, 401, "invalid_token"},
		{"no sub", "?symbols=AAPL", hdr("Bearer " + s.token(jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}, "")), true, 401, "invalid_token"},
		{"bad query token", "?symbols=AAPL&token=abc", nil, true, 401, "malformed_token"},
		{"not a websocket request", "?symbols=AAPL", hdr("Bearer " + valid), false, 400, "not_websocket"},
		{"symbols present but empty", "?symbols=", hdr("Bearer " + valid), true, 400, "no_valid_symbols"},
		{"only unknown symbols", "?symbols=NOPE,ZZZ", hdr("Bearer " + valid), true, 400, "no_valid_symbols"},
		{"too many symbols", "?symbols=AAPL,MSFT,GOOGL,NOPE", hdr("Bearer " + valid), true, 400, "too_many_symbols"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, code, _ := handshake(t, s.addr, tt.query, tt.header, tt.upgrade)
			if status != tt.status || code != tt.wantCode {
				t.Errorf("got %d %q, want %d %q", status, code, tt.status, tt.wantCode)
			}
		})
	}
	t.Run("duplicates count once", func(t *testing.T) {
		w := s.dial("?symbols=aapl,AAPL,msft,MSFT,googl")
		m, _ := w.next()
		if got := len(w.quotes()); got != 3 || m.Seq != 1 {
			t.Errorf("got %d quotes in seq %d, want 3 in seq 1", got, m.Seq)
		}
	})
}

func hdr(auth string) http.Header { return http.Header{"Authorization": {auth}} }

// handshake sends a raw handshake and returns the status, the error code of
// the JSON body and the response headers.
func handshake(t *testing.T, addr, query string, h http.Header, upgrade bool) (int, string, http.Header) {
	t.Helper()
	return handshakeVia(t, http.DefaultClient, addr, query, h, upgrade)
}

// handshakeVia is handshake through client (to set its source address).
func handshakeVia(t *testing.T, client *http.Client, addr, query string, h http.Header, upgrade bool) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/ws/quotes"+query, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp.StatusCode, "", resp.Header
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil || body.Error.Code == "" || body.Error.Message == "" {
		t.Errorf("body %q is not {\"error\":{\"code\",\"message\"}}", b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", ct)
	}
	return resp.StatusCode, body.Error.Code, resp.Header
}

func TestConnectionLimit(t *testing.T) {
	s := startServer(t, map[string]string{"WS_MAX_CONNECTIONS": "1"})
	w := s.dial("?symbols=AAPL")
	w.next()
	status, code, h := handshake(t, s.addr, "?symbols=AAPL", hdr("Bearer "+s.validToken()), true)
	if status != 503 || code != "server_full" {
		t.Errorf("second connection: got %d %q, want 503 server_full", status, code)
	}
	if h.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	w.c.Close(websocket.StatusNormalClosure, "")
	// The slot frees once the server has seen the close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _, _ := handshake(t, s.addr, "?symbols=AAPL", hdr("Bearer "+s.validToken()), true)
		if status == http.StatusSwitchingProtocols {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after close: last status %d", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSnapshotThenUpdates(t *testing.T) {
	s := startServer(t, nil)
	w := s.dial("?symbols=AAPL,googl,NOPE,%20msft%20")
	m, _ := w.next()
	if m.Type != "quotes_patch" || m.Seq != 1 {
		t.Fatalf("first message: got %s seq %d, want quotes_patch seq 1", m.Type, m.Seq)
	}
	if got := string(m.Operations[0]); got != `{"op":"add","path":"/quotes","value":{}}` {
		t.Errorf("first operation: got %s", got)
	}
	if !slices.Equal(m.InvalidSymbols, []string{"NOPE"}) {
		t.Errorf("invalid_symbols: got %q, want [NOPE]", m.InvalidSymbols)
	}
	if got := len(m.Operations); got != 4 {
		t.Errorf("snapshot operations: got %d, want 4", got)
	}
	for i := 0; i < 10; i++ {
		m, data := w.next()
		if m.Type != "quotes_patch" || m.InvalidSymbols != nil {
			t.Fatalf("update: got %s", data)
		}
		for _, op := range m.Operations {
			var o struct{ Op, Path string }
			json.Unmarshal(op, &o)
			if o.Op != "replace" || !strings.HasPrefix(o.Path, "/quotes/") {
				t.Errorf("update operation: got %s, want a replace under /quotes/", op)
			}
		}
	}
	checkConverges(t, s, w, []string{"AAPL", "GOOGL", "MSFT"})
}

// checkConverges compares the client's document with /v1/quotes at equal
// last_updated, reading more of the stream until every symbol matched once.
func checkConverges(t *testing.T, s *testServer, w *wsClient, symbols []string) {
	t.Helper()
	pending := map[string]bool{}
	for _, sym := range symbols {
		pending[sym] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(pending) > 0 && time.Now().Before(deadline) {
		var rest struct{ Quotes map[string]map[string]any }
		s.get("/v1/quotes?symbols="+url.QueryEscape(strings.Join(symbols, ",")), &rest)
		doc := w.quotes()
		if len(doc) != len(symbols) {
			t.Fatalf("document holds %d quotes, want %d: %v", len(doc), len(symbols), doc)
		}
		behind := false
		for sym := range pending {
			got, want := doc[sym], rest.Quotes[sym]
			switch gl, wl := got["last_updated"].(string), want["last_updated"].(string); {
			case gl == wl:
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s at %s:\n got %v\nwant %v", sym, gl, got, want)
				}
				delete(pending, sym)
			case gl < wl:
				behind = true
			}
		}
		if behind {
			w.next()
		}
	}
	if len(pending) > 0 {
		t.Errorf("never matched /v1/quotes at the same last_updated: %v", pending)
	}
}

func TestSubscribeUnsubscribe(t *testing.T) {
	s := startServer(t, map[string]string{"WS_MAX_SYMBOLS": "3"})
	w := s.dial("")
	m, data := w.next()
	if m.Seq != 1 || len(m.Operations) != 1 || m.InvalidSymbols == nil || len(m.InvalidSymbols) != 0 {
		t.Fatalf("snapshot without symbols: got %s", data)
	}

	w.send(`{"type":"subscribe","id":"s1","symbols":["aapl","MSFT","nope","MSFT"]}`)
	m, data = w.next()
	if m.Type != "subscribed" || string(m.ID) != `"s1"` || !slices.Equal(m.Symbols, []string{"AAPL", "MSFT"}) || !slices.Equal(m.Invalid, []string{"NOPE"}) {
		t.Fatalf("ack: got %s", data)
	}
	m, data = w.next()
	if m.Type != "quotes_patch" || len(m.Operations) != 2 || !strings.Contains(string(m.Operations[0]), `"op":"add","path":"/quotes/AAPL"`) {
		t.Fatalf("patch after subscribe: got %s", data)
	}

	w.send(`{"type":"subscribe","id":2,"symbols":["GOOGL","TSLA"]}`)
	m = w.nextOf("error")
	if m.Code != "too_many_symbols" || string(m.ID) != "2" {
		t.Errorf("over the limit: got code %q id %s, want too_many_symbols id 2", m.Code, m.ID)
	}

	w.send(`{"type":"unsubscribe","id":"u1","symbols":["AAPL"]}`)
	m = w.nextOf("subscribed")
	if !slices.Equal(m.Symbols, []string{"MSFT"}) || string(m.ID) != `"u1"` {
		t.Errorf("unsubscribe ack: got symbols %v id %s, want [MSFT] \"u1\"", m.Symbols, m.ID)
	}
	for {
		w.next()
		if _, ok := w.quotes()["AAPL"]; !ok {
			break
		}
	}
	checkConverges(t, s, w, []string{"MSFT"})
}

func TestErrorsKeepConnectionOpen(t *testing.T) {
	s := startServer(t, nil)
	w := s.dial("?symbols=AAPL")
	tests := []struct {
		send, code, id string
	}{
		{`not json`, "bad_json", ""},
		{`{"type":"subscribe","symbols":"AAPL"}`, "bad_json", ""},
		{`{"type":"dance","id":"d1"}`, "unknown_type", `"d1"`},
		{`{"id":"x"}`, "bad_request", `"x"`},
		{`{"type":"subscribe","id":"e"}`, "bad_request", `"e"`},
		{`{"type":"ping","id":{"a":1}}`, "bad_request", ""},
	}
	for _, tt := range tests {
		w.send(tt.send)
		m := w.nextOf("error")
		if m.Code != tt.code || string(m.ID) != tt.id || m.Message == "" {
			t.Errorf("%s: got code %q id %q message %q, want code %q id %q", tt.send, m.Code, m.ID, m.Message, tt.code, tt.id)
		}
	}
	w.send(`{"type":"ping","id":7}`)
	if m := w.nextOf("pong"); string(m.ID) != "7" {
		t.Errorf("pong id: got %s, want 7", m.ID)
	}
	w.nextOf("quotes_patch")
}

func TestEscapedSymbols(t *testing.T) {
	csv := "symbol,name,type,base_price,volume,market_cap\n" +
		"BTC/USD,Bitcoin in dollars,ETF,65000,100,0\n" +
		"BRK.B,Berkshire Hathaway Inc. Class B,STOCK,410.5,3000000,880000000000\n" +
		"A~B,Tilde & Co,STOCK,10,1,1\n"
	file := filepath.Join(t.TempDir(), "instruments.csv")
	if err := os.WriteFile(file, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, map[string]string{"INSTRUMENTS_FILE": file, "SIM_UPDATE": "all"})
	w := s.dial("?symbols=" + url.QueryEscape("btc/usd,BRK.B,a~b"))
	m, _ := w.next()
	joined := string(bytes.Join(rawOps(m), []byte{}))
	for _, p := range []string{`"/quotes/BTC~1USD"`, `"/quotes/BRK.B"`, `"/quotes/A~0B"`} {
		if !strings.Contains(joined, p) {
			t.Errorf("snapshot has no path %s: %s", p, joined)
		}
	}
	w.next()
	checkConverges(t, s, w, []string{"BTC/USD", "BRK.B", "A~B"})
}

func rawOps(m message) [][]byte {
	out := make([][]byte, len(m.Operations))
	for i, o := range m.Operations {
		out[i] = o
	}
	return out
}

func TestRESTEndpoints(t *testing.T) {
	s := startServer(t, nil)
	var inst struct {
		Instruments []struct{ Symbol, Type string }
	}
	if code := s.get("/v1/instruments", &inst); code != 200 || len(inst.Instruments) != 20 || inst.Instruments[0].Symbol != "AAPL" {
		t.Errorf("/v1/instruments: got %d with %d instruments", code, len(inst.Instruments))
	}
	var all struct{ Quotes map[string]any }
	if code := s.get("/v1/quotes", &all); code != 200 || len(all.Quotes) != 20 {
		t.Errorf("/v1/quotes: got %d with %d quotes, want 200 with 20", code, len(all.Quotes))
	}
	var some struct {
		Quotes         map[string]any
		InvalidSymbols []string `json:"invalid_symbols"`
	}
	s.get("/v1/quotes?symbols=aapl,nope", &some)
	if len(some.Quotes) != 1 || some.Quotes["AAPL"] == nil || !slices.Equal(some.InvalidSymbols, []string{"NOPE"}) {
		t.Errorf("/v1/quotes?symbols=aapl,nope: got %+v", some)
	}
	for _, path := range []string{"/v1/quotes", "/v1/instruments"} {
		resp, err := http.Get("http://" + s.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s without token: got %d, want 401", path, resp.StatusCode)
		}
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/nope": 404} {
		resp, err := http.Get("http://" + s.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: got %d, want %d", path, resp.StatusCode, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), "tickstream_connections") {
			t.Errorf("/metrics lacks tickstream_connections")
		}
	}
}

// TestShutdown: clients get 1001, new handshakes and /readyz get 503 while
// a client that ignores the close holds the drain open, and run returns nil.
func TestShutdown(t *testing.T) {
	s := startServer(t, nil)
	w := s.dial("?symbols=AAPL")
	w.next()
	stuck := rawDial(t, s, "?symbols=AAPL") // never answers the close frame
	defer stuck.Close()

	s.cancel()
	if got := w.closeCode(); got != websocket.StatusGoingAway {
		t.Errorf("close code: got %d, want 1001", got)
	}
	resp, err := http.Get("http://" + s.addr + "/readyz")
	if err != nil {
		t.Fatalf("readyz during drain: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("readyz during drain: got %d, want 503", resp.StatusCode)
	}
	if status, code, h := handshake(t, s.addr, "?symbols=AAPL", hdr("Bearer "+s.validToken()), true); status != 503 || code != "shutting_down" || h.Get("Retry-After") == "" {
		t.Errorf("handshake during drain: got %d %q Retry-After %q, want 503 shutting_down with Retry-After", status, code, h.Get("Retry-After"))
	}
	if err := s.wait(10 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestInvalidConfig(t *testing.T) {
	tests := []struct{ env, value string }{
		{"PRICE_UPDATE_INTERVAL", "soon"},
		{"WS_MAX_CONNECTIONS", "-1"},
		{"SIM_UPDATE", "some"},
		{"JWT_SECRET", "short"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(context.Background(), []string{"tickstream"}, func(k string) string {
				if k == tt.env {
					return tt.value
				}
				return ""
			}, io.Discard, &stderr)
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Var != tt.env {
				t.Fatalf("got %v, want a *config.Error naming %s", err, tt.env)
			}
			if tt.env == "JWT_SECRET" && strings.Contains(err.Error(), tt.value) {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
	err := run(context.Background(), []string{"tickstream", "-h"}, func(string) string { return "" }, io.Discard, io.Discard)
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: got %v, want flag.ErrHelp", err)
	}
}

func TestDevModePrintsWorkingToken(t *testing.T) {
	s := startServer(t, map[string]string{"JWT_SECRET": ""})
	out := s.stdout.String()
	var token string
	for _, f := range strings.Fields(out) {
		if strings.Count(f, ".") == 2 && strings.HasPrefix(f, "eyJ") {
			token = f
			break
		}
	}
	if token == "" {
		t.Fatalf("no demo token printed:\n%s", out)
	}
	s.mu.Lock()
	s.tokens = append(s.tokens, token)
	s.mu.Unlock()
	if !strings.Contains(out, "ws://") || !strings.Contains(out, "curl ") {
		t.Errorf("banner lacks the ws:// URL or the curl line:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, s.wsURL("?symbols=AAPL&token="+token), nil)
	if err != nil {
		t.Fatalf("dial with the demo token: %v", err)
	}
	defer c.CloseNow()
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"seq":1`) {
		t.Errorf("first message: %s %v", data, err)
	}
	if strings.Contains(s.logs.String(), token[len(token)-20:]) {
		t.Error("the demo token appears in the logs")
	}
}

// TestConformance applies the stream with an RFC 6902 library from both
// starting documents the protocol allows, across subscribe and unsubscribe,
// and compares with /v1/quotes at the same last_updated.
func TestConformance(t *testing.T) {
	s := startServer(t, map[string]string{"SIM_UPDATE": "all", "PRICE_UPDATE_INTERVAL": "20ms"})
	for _, start := range []string{`{}`, `{"quotes":{}}`} {
		t.Run(start, func(t *testing.T) {
			w := s.dial("?symbols=AAPL,MSFT,SPY")
			w.doc = []byte(start)
			for range 5 {
				w.next()
			}
			w.send(`{"type":"subscribe","symbols":["TSLA","QQQ"]}`)
			w.nextOf("subscribed")
			w.send(`{"type":"unsubscribe","symbols":["MSFT"]}`)
			w.nextOf("subscribed")
			for range 5 {
				w.next()
			}
			checkConverges(t, s, w, []string{"AAPL", "SPY", "TSLA", "QQQ"})
		})
	}
}

// TestNoLeakAfterChurn opens and closes connections in every way they end
// and checks goroutines return to where they were.
func TestNoLeakAfterChurn(t *testing.T) {
	s := startServer(t, map[string]string{"LOG_LEVEL": "info"})
	s.dial("?symbols=AAPL").next() // warm up: the feed, pools, keep-alives
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	for i := range 60 {
		w := s.dial("?symbols=AAPL,MSFT")
		w.next()
		switch i % 3 {
		case 0:
			w.c.Close(websocket.StatusNormalClosure, "")
		case 1:
			w.c.CloseNow() // TCP close, no close frame
		case 2:
			w.c.Write(context.Background(), websocket.MessageBinary, []byte{1}) // server closes 1003
			w.closeCode()
			w.c.CloseNow()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var m struct{ Quotes map[string]any }
		s.get("/v1/quotes?symbols=AAPL", &m) // a request, so idle HTTP keep-alives settle
		http.DefaultClient.CloseIdleConnections()
		after := runtime.NumGoroutine()
		if after <= before+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d before, %d after churn\n%s", before, after, buf[:n])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCompression runs the conformance check over permessage-deflate with
// and without context takeover, client messages compressed too, and checks
// that WS_COMPRESSION=off declines the offer.
func TestCompression(t *testing.T) {
	s := startServer(t, map[string]string{"SIM_UPDATE": "all", "PRICE_UPDATE_INTERVAL": "20ms"})
	tests := []struct {
		mode websocket.CompressionMode
		want string
	}{
		{websocket.CompressionContextTakeover, "permessage-deflate;client_no_context_takeover"},
		{websocket.CompressionNoContextTakeover, "permessage-deflate;server_no_context_takeover;client_no_context_takeover"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			w := s.dialWith("?symbols=AAPL,MSFT,SPY,BTC", tt.mode)
			if w.extensions != tt.want {
				t.Errorf("Sec-WebSocket-Extensions: got %q, want %q", w.extensions, tt.want)
			}
			for range 20 {
				w.next()
			}
			// Over 512 bytes, so the client compresses it.
			w.send(`{"type":"subscribe","symbols":["TSLA"` + strings.Repeat(`,"TSLA"`, 100) + `]}`)
			w.nextOf("subscribed")
			for range 20 {
				w.next()
			}
			checkConverges(t, s, w, []string{"AAPL", "MSFT", "SPY", "TSLA"})
		})
	}
	t.Run("off", func(t *testing.T) {
		off := startServer(t, map[string]string{"WS_COMPRESSION": "off"})
		w := off.dialWith("?symbols=AAPL", websocket.CompressionContextTakeover)
		if w.extensions != "" {
			t.Errorf("Sec-WebSocket-Extensions: got %q, want none", w.extensions)
		}
		w.next()
	})
}

// TestSnapshotHoldsEverySymbol: ticks that move some of a new connection's
// symbols while the handshake's symbols are being subscribed must not make
// a snapshot that lacks the rest.
func TestSnapshotHoldsEverySymbol(t *testing.T) {
	s := startServer(t, map[string]string{"SYNTHETIC_SYMBOLS": "100", "PRICE_UPDATE_INTERVAL": "10ms", "SIM_UPDATE": "all"})
	syms := make([]string, 100)
	for i := range syms {
		syms[i] = fmt.Sprintf("SYN%05d", i+1)
	}
	query := "?symbols=" + strings.Join(syms, ",")
	s.dial(query).next() // keeps every symbol moving
	for range 30 {
		w := s.dial(query)
		m, _ := w.next()
		if len(m.Operations) != len(syms)+1 {
			t.Fatalf("snapshot has %d operations, want add /quotes and %d quotes", len(m.Operations), len(syms))
		}
		w.c.CloseNow()
	}
}
