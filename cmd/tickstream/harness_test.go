package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "test-secret-of-at-least-32-bytes-0123456789"

// syncBuffer collects the server's output while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testServer is the real program, started through run on a free port.
type testServer struct {
	t      *testing.T
	addr   string
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
	stdout *syncBuffer

	mu     sync.Mutex
	tokens []string // every token the test made, checked against the logs
	exited bool     // run has returned
}

// startServer runs the server with env on top of test defaults. It stops
// the server at the end of the test and fails it if the logs hold a token.
func startServer(t *testing.T, env map[string]string) *testServer {
	t.Helper()
	vars := map[string]string{
		"HTTP_ADDR":             "127.0.0.1:0",
		"JWT_SECRET":            testSecret,
		"PRICE_UPDATE_INTERVAL": "50ms",
		"LOG_LEVEL":             "debug",
		"SHUTDOWN_TIMEOUT":      "5s",
		// Every test client connects from 127.0.0.1 as "tester"; the
		// security tests set these limits themselves.
		"WS_HANDSHAKE_RATE_PER_IP": "0",
		"USER_MAX_CONNECTIONS":     "100000",
	}
	// CI runs the suite again with TEST_WS_EVENT_LOOP=off, so both ways
	// of reading connections are tested.
	if v := os.Getenv("TEST_WS_EVENT_LOOP"); v != "" {
		vars["WS_EVENT_LOOP"] = v
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{t: t, cancel: cancel, done: make(chan error, 1), logs: &syncBuffer{}, stdout: &syncBuffer{}}
	go func() {
		s.done <- run(ctx, []string{"tickstream"}, func(k string) string { return vars[k] }, s.stdout, s.logs)
	}()
	s.addr = waitListening(t, s)
	t.Cleanup(func() {
		s.stop()
		s.checkLogs()
	})
	return s
}

func waitListening(t *testing.T, s *testServer) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for line := range strings.SplitSeq(s.logs.String(), "\n") {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				return rec.Addr
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("server exited before listening: %v\n%s", err, s.logs)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("server did not listen within 5s:\n%s", s.logs)
	return ""
}

// stop cancels the server and checks that run returns nil.
func (s *testServer) stop() {
	s.cancel()
	if err := s.wait(15 * time.Second); err != nil {
		s.t.Error(err)
	}
}

// wait returns an error unless run has returned nil within d; once run has
// returned, it returns nil at once.
func (s *testServer) wait(d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exited {
		return nil
	}
	select {
	case err := <-s.done:
		s.exited = true
		if err != nil {
			return fmt.Errorf("run returned %v, want nil", err)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("run did not return within %v after cancel", d)
	}
}

func (s *testServer) checkLogs() {
	logs := s.logs.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tok := range s.tokens {
		parts := strings.Split(tok, ".")
		for _, p := range append(parts, tok) {
			if len(p) >= 16 && strings.Contains(logs, p) {
				s.t.Errorf("logs contain a token part %q", p)
			}
		}
	}
}

// token mints an HS256 token signed with key (testSecret when empty).
func (s *testServer) token(claims jwt.MapClaims, key string) string {
	s.t.Helper()
	if key == "" {
		key = testSecret
	}
	return s.signed(jwt.NewWithClaims(jwt.SigningMethodHS256, claims), []byte(key))
}

// signed signs t with key and remembers the token for the log check.
func (s *testServer) signed(t *jwt.Token, key any) string {
	s.t.Helper()
	tok, err := t.SignedString(key)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.tokens = append(s.tokens, tok)
	s.mu.Unlock()
	return tok
}

// validToken is a token for sub "tester" valid for an hour.
func (s *testServer) validToken() string {
	return s.token(jwt.MapClaims{"sub": "tester", "exp": time.Now().Add(time.Hour).Unix()}, "")
}

func (s *testServer) wsURL(query string) string { return "ws://" + s.addr + "/ws/quotes" + query }

// dial opens a WebSocket with the valid token in the Authorization header.
func (s *testServer) dial(query string) *wsClient {
	s.t.Helper()
	return s.dialWith(query, websocket.CompressionDisabled)
}

// dialWith opens a WebSocket offering compression as mode says.
func (s *testServer) dialWith(query string, mode websocket.CompressionMode) *wsClient {
	s.t.Helper()
	return s.dialToken(query, s.validToken(), mode)
}

// dialToken opens a WebSocket with token in the Authorization header.
func (s *testServer) dialToken(query, token string, mode websocket.CompressionMode) *wsClient {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Bearer " + token}}
	c, resp, err := websocket.Dial(ctx, s.wsURL(query), &websocket.DialOptions{HTTPHeader: h, CompressionMode: mode})
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = fmt.Sprintf(" (status %d: %s)", resp.StatusCode, b)
		}
		s.t.Fatalf("dial %s: %v%s", query, err, body)
	}
	c.SetReadLimit(1 << 20)
	wc := &wsClient{t: s.t, c: c, doc: []byte(`{}`), extensions: resp.Header.Get("Sec-WebSocket-Extensions")}
	s.t.Cleanup(func() { c.CloseNow() })
	return wc
}

// get does an authenticated GET and decodes the JSON body into v.
func (s *testServer) get(path string, v any) int {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.validToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			s.t.Fatalf("GET %s: decode: %v", path, err)
		}
	}
	return resp.StatusCode
}

// wsClient keeps the JSON document the stream builds.
type wsClient struct {
	t   *testing.T
	c   *websocket.Conn
	doc []byte
	seq int
	// extensions is the server's Sec-WebSocket-Extensions answer.
	extensions string
}

// message is any server message.
type message struct {
	Type           string            `json:"type"`
	Seq            int               `json:"seq"`
	Operations     []json.RawMessage `json:"operations"`
	InvalidSymbols []string          `json:"invalid_symbols"`
	Forbidden      []string          `json:"forbidden_symbols"`
	ExpiresAt      string            `json:"expires_at"`
	ID             json.RawMessage   `json:"id"`
	Symbols        []string          `json:"symbols"`
	Invalid        []string          `json:"invalid"`
	Code           string            `json:"code"`
	Message        string            `json:"message"`
}

// next reads one message; quotes_patch messages are checked (seq, not
// empty) and applied to the document.
func (w *wsClient) next() (message, []byte) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	typ, data, err := w.c.Read(ctx)
	if err != nil {
		w.t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		w.t.Fatalf("got a %v message, want text", typ)
	}
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		w.t.Fatalf("decode %s: %v", data, err)
	}
	if m.Type == "quotes_patch" {
		w.apply(m, data)
	}
	return m, data
}

func (w *wsClient) apply(m message, data []byte) {
	w.t.Helper()
	if m.Seq != w.seq+1 {
		w.t.Fatalf("seq: got %d, want %d", m.Seq, w.seq+1)
	}
	w.seq = m.Seq
	if len(m.Operations) == 0 {
		w.t.Fatalf("empty quotes_patch: %s", data)
	}
	ops, _ := json.Marshal(m.Operations)
	p, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		w.t.Fatalf("decode patch: %v", err)
	}
	if w.doc, err = p.Apply(w.doc); err != nil {
		w.t.Fatalf("apply %s: %v", ops, err)
	}
}

// nextOf reads until a message of type typ, failing on any other type
// except quotes_patch, which is applied on the way.
func (w *wsClient) nextOf(typ string) message {
	w.t.Helper()
	for {
		m, data := w.next()
		if m.Type == typ {
			return m
		}
		if m.Type != "quotes_patch" {
			w.t.Fatalf("got %s, want a %s message", data, typ)
		}
	}
}

func (w *wsClient) send(s string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

// quotes returns the document's quotes.
func (w *wsClient) quotes() map[string]map[string]any {
	var d struct{ Quotes map[string]map[string]any }
	if err := json.Unmarshal(w.doc, &d); err != nil {
		w.t.Fatalf("document %s: %v", w.doc, err)
	}
	return d.Quotes
}

// closeCode reads until the connection ends and returns its close code.
func (w *wsClient) closeCode() websocket.StatusCode {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := w.c.Read(ctx); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				w.t.Fatal("connection still open after 10s")
			}
			return websocket.CloseStatus(err)
		}
	}
}
