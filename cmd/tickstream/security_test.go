package main

// The hostile-input suite: every case is a real request or frame against
// the real server, with the status, error code or close code a client sees.
// While the cases run, a calm client on the same server must keep receiving
// every tick.

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://id.tickstream.test/"
	testAudience = "tickstream"
)

// calmClient reads a stream in the background and fails the test if the
// stream stops, skips a seq or closes while the hostile cases run.
type calmClient struct {
	w       *wsClient
	updates atomic.Int64
	err     atomic.Value // error
	done    chan struct{}
}

func startCalm(t *testing.T, w *wsClient) *calmClient {
	t.Helper()
	c := &calmClient{w: w, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		seq := 0
		for {
			_, data, err := w.c.Read(context.Background())
			if err != nil {
				c.err.Store(err)
				return
			}
			var m message
			if err := json.Unmarshal(data, &m); err != nil || m.Type != "quotes_patch" || m.Seq != seq+1 {
				c.err.Store(fmt.Errorf("calm client got %s after seq %d", data, seq))
				return
			}
			seq = m.Seq
			c.updates.Add(1)
		}
	}()
	return c
}

// check fails the test unless the calm client is still open and got new
// messages since before.
func (c *calmClient) check(t *testing.T, before int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.updates.Load() <= before+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err, _ := c.err.Load().(error); err != nil {
		t.Fatalf("calm client: %v", err)
	}
	if got := c.updates.Load(); got <= before+2 {
		t.Fatalf("calm client: %d messages, want more than %d: its stream stopped", got, before+2)
	}
}

// claims returns valid claims for sub, with iss and aud, valid an hour;
// extra entries are added or, with a nil value, removed.
func claims(sub string, extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"sub": sub, "iss": testIssuer, "aud": testAudience,
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// noneToken is an unsigned token (alg none), as an attacker writes it.
func noneToken(c jwt.MapClaims) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	b, _ := json.Marshal(c)
	return h + "." + enc.EncodeToString(b) + "."
}

type keys struct {
	rsa      *rsa.PrivateKey
	rsaOther *rsa.PrivateKey
	ec       *ecdsa.PrivateKey
	ed       ed25519.PrivateKey
}

func newKeys(t *testing.T) keys {
	t.Helper()
	r1, err1 := rsa.GenerateKey(rand.Reader, 2048)
	r2, err2 := rsa.GenerateKey(rand.Reader, 2048)
	ec, err3 := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, err4 := ed25519.GenerateKey(rand.Reader)
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return keys{rsa: r1, rsaOther: r2, ec: ec, ed: ed}
}

// writePublicPEM writes pub as a PKIX PEM file and returns its path and
// bytes.
func writePublicPEM(t *testing.T, pub crypto.PublicKey) (string, []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, b
}

// handshakeCase is one handshake and what the client must see.
type handshakeCase struct {
	name   string
	query  string
	header http.Header
	status int    // 101 when the upgrade must succeed
	code   string // error code of the JSON body
}

func runHandshakes(t *testing.T, s *testServer, cases []handshakeCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			status, code, h := handshake(t, s.addr, tt.query, tt.header, true)
			if status != tt.status || code != tt.code {
				t.Errorf("got %d %q, want %d %q", status, code, tt.status, tt.code)
			}
			if status == http.StatusTooManyRequests && h.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		})
	}
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func TestHostileHandshakes(t *testing.T) {
	s := startServer(t, map[string]string{"JWT_ISSUER": testIssuer, "JWT_AUDIENCE": testAudience, "WS_MAX_SYMBOLS": "5"})
	k := newKeys(t)
	_, rsaPEM := writePublicPEM(t, &k.rsa.PublicKey)
	ok := func(sub string, extra jwt.MapClaims) string { return s.token(claims(sub, extra), "") }
	calm := startCalm(t, s.dialToken("?symbols=AAPL,MSFT", ok("calm", nil), websocket.CompressionDisabled))
	before := calm.updates.Load()
	now := time.Now()
	withOrigin := func(tok, origin string) http.Header {
		h := bearer(tok)
		h.Set("Origin", origin)
		return h
	}
	cases := []handshakeCase{
		{"valid token", "?symbols=AAPL", bearer(ok("u1", nil)), 101, ""},
		{"forged signature", "?symbols=AAPL", bearer(s.token(claims("u1", nil), "an-attackers-secret-of-32-bytes-or-more")), 401, "invalid_token"},
		{"expired beyond leeway", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()})), 401, "token_expired"},
		{"expired within leeway", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix()})), 101, ""},
		{"not yet valid", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"nbf": now.Add(5 * time.Minute).Unix()})), 401, "invalid_token"},
		{"nbf within leeway", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"nbf": now.Add(10 * time.Second).Unix()})), 101, ""},
		{"issued in the future", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"iat": now.Add(5 * time.Minute).Unix()})), 401, "invalid_token"},
		{"wrong issuer", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"iss": "https://evil.test/"})), 401, "invalid_token"},
		{"no issuer", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"iss": nil})), 401, "invalid_token"},
		{"wrong audience", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"aud": "another-service"})), 401, "invalid_token"},
		{"audience list with ours", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"aud": []string{"other", testAudience}})), 101, ""},
		{"no exp", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"exp": nil})), 401, "invalid_token"},
		{"no sub", "?symbols=AAPL", bearer(ok("", nil)), 401, "invalid_token"},
		{"alg none", "?symbols=AAPL", bearer(noneToken(claims("u1", nil))), 401, "invalid_token"},
		{"RS256 token to an HMAC key", "?symbols=AAPL", bearer(s.signed(jwt.NewWithClaims(jwt.SigningMethodRS256, claims("u1", nil)), k.rsa)), 401, "invalid_token"},
		{"HS256 signed with a public key", "?symbols=AAPL", bearer(s.signed(jwt.NewWithClaims(jwt.SigningMethodHS256, claims("u1", nil)), rsaPEM)), 401, "invalid_token"},
		{"signature cut off", "?symbols=AAPL", bearer(strings.TrimRight(ok("u1", nil), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")), 401, "invalid_token"},
		{"token in the wrong header", "?symbols=AAPL", http.Header{"X-Auth-Token": {ok("u1", nil)}}, 401, "missing_token"},
		{"token in a cookie", "?symbols=AAPL", http.Header{"Cookie": {"token=" + ok("u1", nil)}}, 401, "missing_token"},
		{"Token scheme instead of Bearer", "?symbols=AAPL", http.Header{"Authorization": {"Token " + ok("u1", nil)}}, 401, "malformed_token"},
		{"two Authorization headers", "?symbols=AAPL", http.Header{"Authorization": {"Bearer " + ok("u1", nil), "Bearer " + ok("u2", nil)}}, 401, "malformed_token"},
		{"entitled to none asked", "?symbols=AAPL,MSFT", bearer(ok("u1", jwt.MapClaims{"symbols": []string{"TSLA"}})), 403, "forbidden_symbols"},
		{"entitled to some asked", "?symbols=AAPL,TSLA", bearer(ok("u1", jwt.MapClaims{"symbols": []string{"tsla"}})), 101, ""},
		{"entitled to all", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"symbols": "*"})), 101, ""},
		{"symbols claim of another shape", "?symbols=AAPL", bearer(ok("u1", jwt.MapClaims{"symbols": 42})), 401, "invalid_token"},
		{"foreign Origin", "?symbols=AAPL", withOrigin(ok("u1", nil), "https://evil.example"), 403, "forbidden_origin"},
		{"Origin null", "?symbols=AAPL", withOrigin(ok("u1", nil), "null"), 403, "forbidden_origin"},
		{"same-host Origin", "?symbols=AAPL", withOrigin(ok("u1", nil), "http://"+s.addr), 101, ""},
		{"too many symbols", "?symbols=AAPL,MSFT,GOOGL,AMZN,TSLA,NVDA", bearer(ok("u1", nil)), 400, "too_many_symbols"},
		{"path traversal symbol", "?symbols=../etc/passwd", bearer(ok("u1", nil)), 400, "no_valid_symbols"},
		{"control characters", "?symbols=" + url.QueryEscape("AAPL\x00\r\nX-Injected: 1"), bearer(ok("u1", nil)), 400, "no_valid_symbols"},
		{"markup symbol", "?symbols=" + url.QueryEscape("<script>alert(1)</script>"), bearer(ok("u1", nil)), 400, "no_valid_symbols"},
		{"URL too long", "?symbols=AAPL&pad=" + strings.Repeat("a", 9000), bearer(ok("u1", nil)), 414, "uri_too_long"},
		{"headers too large", "?symbols=AAPL", http.Header{"Authorization": {"Bearer " + ok("u1", nil)}, "X-Pad": {strings.Repeat("a", 20000)}}, 431, "headers_too_large"},
	}
	runHandshakes(t, s, cases)

	t.Run("markup never echoed raw", func(t *testing.T) {
		w := s.dialToken("?symbols=AAPL,"+url.QueryEscape("<script>"), ok("u1", nil), websocket.CompressionDisabled)
		m, raw := w.next()
		if strings.Contains(string(raw), "<script>") || len(m.InvalidSymbols) != 1 || m.InvalidSymbols[0] != "<SCRIPT>" {
			t.Errorf("snapshot %s: want invalid_symbols [\"<SCRIPT>\"] escaped as \\u003c", raw)
		}
	})
	calm.check(t, before)
}

func TestHostileAsymmetricKeys(t *testing.T) {
	k := newKeys(t)
	ecOther, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tests := []struct {
		name    string
		pub     crypto.PublicKey
		method  jwt.SigningMethod
		key     any
		status  int
		errCode string
	}{
		{"RS256 with its key", &k.rsa.PublicKey, jwt.SigningMethodRS256, k.rsa, 101, ""},
		{"RS512 with its key", &k.rsa.PublicKey, jwt.SigningMethodRS512, k.rsa, 101, ""},
		{"RS256 signed by another key", &k.rsa.PublicKey, jwt.SigningMethodRS256, k.rsaOther, 401, "invalid_token"},
		{"ES256 token to an RSA key", &k.rsa.PublicKey, jwt.SigningMethodES256, k.ec, 401, "invalid_token"},
		{"ES256 with its key", &k.ec.PublicKey, jwt.SigningMethodES256, k.ec, 101, ""},
		{"ES384 token to a P-256 key", &k.ec.PublicKey, jwt.SigningMethodES384, ecOther, 401, "invalid_token"},
		{"EdDSA with its key", k.ed.Public(), jwt.SigningMethodEdDSA, k.ed, 101, ""},
		{"RS256 token to an Ed25519 key", k.ed.Public(), jwt.SigningMethodRS256, k.rsa, 401, "invalid_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, pemBytes := writePublicPEM(t, tt.pub)
			s := startServer(t, map[string]string{"JWT_SECRET": "", "JWT_PUBLIC_KEY_FILE": path})
			tok := s.signed(jwt.NewWithClaims(tt.method, claims("u1", nil)), tt.key)
			cases := []handshakeCase{
				{tt.name, "?symbols=AAPL", bearer(tok), tt.status, tt.errCode},
				{"HS256 signed with the public key file (algorithm confusion)", "?symbols=AAPL",
					bearer(s.signed(jwt.NewWithClaims(jwt.SigningMethodHS256, claims("u1", nil)), pemBytes)), 401, "invalid_token"},
				{"alg none", "?symbols=AAPL", bearer(noneToken(claims("u1", nil))), 401, "invalid_token"},
			}
			runHandshakes(t, s, cases)
			if strings.Contains(s.stdout.String(), "Demo token") {
				t.Error("a demo token was printed although a key is configured")
			}
		})
	}
}

// jwksServer serves a JSON Web Key Set that the test can change, and counts
// the fetches.
type jwksServer struct {
	mu      sync.Mutex
	keys    map[string]*rsa.PublicKey
	fetches atomic.Int64
	srv     *http.Server
	url     string
}

func startJWKS(t *testing.T) *jwksServer {
	t.Helper()
	j := &jwksServer{keys: map[string]*rsa.PublicKey{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	j.srv = &http.Server{Handler: http.HandlerFunc(j.serve), ReadHeaderTimeout: time.Second}
	go j.srv.Serve(ln)
	t.Cleanup(func() { j.srv.Close() })
	j.url = "http://" + ln.Addr().String() + "/.well-known/jwks.json"
	return j
}

func (j *jwksServer) set(keys map[string]*rsa.PublicKey) {
	j.mu.Lock()
	j.keys = keys
	j.mu.Unlock()
}

func (j *jwksServer) serve(w http.ResponseWriter, _ *http.Request) {
	j.fetches.Add(1)
	j.mu.Lock()
	defer j.mu.Unlock()
	type jwk struct {
		Kty string `json:"kty"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
		N   string `json:"n"`
		E   string `json:"e"`
	}
	set := struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{}}
	enc := base64.RawURLEncoding
	for kid, k := range j.keys {
		set.Keys = append(set.Keys, jwk{Kty: "RSA", Kid: kid, Alg: "RS256", Use: "sig",
			N: enc.EncodeToString(k.N.Bytes()), E: enc.EncodeToString([]byte{1, 0, 1})})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(set)
}

func TestHostileJWKS(t *testing.T) {
	k := newKeys(t)
	j := startJWKS(t)
	j.set(map[string]*rsa.PublicKey{"key-1": &k.rsa.PublicKey})
	s := startServer(t, map[string]string{"JWT_SECRET": "", "JWT_JWKS_URL": j.url})
	sign := func(kid string, key *rsa.PrivateKey) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims("u1", nil))
		tok.Header["kid"] = kid
		return s.signed(tok, key)
	}
	calm := startCalm(t, s.dialToken("?symbols=AAPL", sign("key-1", k.rsa), websocket.CompressionDisabled))
	before := calm.updates.Load()
	runHandshakes(t, s, []handshakeCase{
		{"known kid", "?symbols=AAPL", bearer(sign("key-1", k.rsa)), 101, ""},
		{"known kid, wrong key", "?symbols=AAPL", bearer(sign("key-1", k.rsaOther)), 401, "invalid_token"},
		{"alg none with a known kid", "?symbols=AAPL", bearer(noneToken(claims("u1", jwt.MapClaims{}))), 401, "invalid_token"},
	})
	// Rotation: the issuer publishes key-2; a token signed with it is
	// accepted without restarting the server.
	j.set(map[string]*rsa.PublicKey{"key-1": &k.rsa.PublicKey, "key-2": &k.rsaOther.PublicKey})
	runHandshakes(t, s, []handshakeCase{
		{"rotated key", "?symbols=AAPL", bearer(sign("key-2", k.rsaOther)), 101, ""},
	})
	// A flood of tokens with unknown kids must not become a flood of
	// fetches: refreshes are rate-limited.
	fetches := j.fetches.Load()
	for i := range 30 {
		status, code, _ := handshake(t, s.addr, "?symbols=AAPL", bearer(sign(fmt.Sprintf("unknown-%d", i), k.rsa)), true)
		if status != 401 || code != "invalid_token" {
			t.Fatalf("unknown kid %d: got %d %q, want 401 invalid_token", i, status, code)
		}
	}
	if got := j.fetches.Load() - fetches; got > 2 {
		t.Errorf("30 unknown kids made %d JWKS fetches, want at most 2", got)
	}
	calm.check(t, before)
}

func TestHostileLimits(t *testing.T) {
	s := startServer(t, map[string]string{"USER_MAX_CONNECTIONS": "2", "WS_HANDSHAKE_RATE_PER_IP": "2", "TRUSTED_PROXIES": "10.0.0.0/8"})
	calm := startCalm(t, s.dialToken("?symbols=AAPL", s.token(jwt.MapClaims{"sub": "calm", "exp": time.Now().Add(time.Hour).Unix()}, ""), websocket.CompressionDisabled))
	before := calm.updates.Load()
	tokenFor := func(sub string) string {
		return s.token(jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix()}, "")
	}
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	}

	t.Run("per-user connections", func(t *testing.T) {
		w1 := s.dialToken("?symbols=AAPL", tokenFor("alice"), websocket.CompressionDisabled)
		w2 := s.dialToken("?symbols=AAPL", tokenFor("alice"), websocket.CompressionDisabled)
		w1.next()
		w2.next()
		status, code, h := handshakeVia(t, from("127.0.0.3"), s.addr, "?symbols=AAPL", bearer(tokenFor("alice")), true)
		if status != 429 || code != "too_many_connections" || h.Get("Retry-After") == "" {
			t.Errorf("third connection of alice: got %d %q Retry-After %q, want 429 too_many_connections with Retry-After", status, code, h.Get("Retry-After"))
		}
		if status, code, _ := handshakeVia(t, from("127.0.0.4"), s.addr, "?symbols=AAPL", bearer(tokenFor("bob")), true); status != 101 {
			t.Errorf("bob while alice is at her limit: got %d %q, want 101", status, code)
		}
		// Closing one of alice's connections frees its slot.
		w1.c.Close(websocket.StatusNormalClosure, "")
		deadline := time.Now().Add(5 * time.Second)
		for {
			status, _, _ := handshakeVia(t, from("127.0.0.7"), s.addr, "?symbols=AAPL", bearer(tokenFor("alice")), true)
			if status == http.StatusSwitchingProtocols {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("alice's slot not freed after a close: last status %d", status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("per-IP handshake rate", func(t *testing.T) {
		c := from("127.0.0.5")
		var got []int
		var last http.Header
		for range 8 {
			status, code, h := handshakeVia(t, c, s.addr, "?symbols=AAPL", bearer(tokenFor("carol")), false)
			got = append(got, status)
			if status == 429 {
				if code != "rate_limited" {
					t.Errorf("429 code: got %q, want rate_limited", code)
				}
				last = h
			}
		}
		if got[0] != 400 || got[len(got)-1] != 429 {
			t.Errorf("8 handshakes at once from one IP (rate 2/s, burst 4): got %v, want 400s (not upgrades) then 429s", got)
		}
		if last.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
		if status, _, _ := handshakeVia(t, from("127.0.0.6"), s.addr, "?symbols=AAPL", bearer(tokenFor("carol")), false); status != 400 {
			t.Errorf("another IP meanwhile: got %d, want 400 (not limited)", status)
		}
		// X-Forwarded-For from a peer that is not a trusted proxy is the
		// client's own claim: it does not escape the limit.
		h := bearer(tokenFor("carol"))
		h.Set("X-Forwarded-For", "203.0.113.9")
		if status, code, _ := handshakeVia(t, c, s.addr, "?symbols=AAPL", h, false); status != 429 {
			t.Errorf("forged X-Forwarded-For: got %d %q, want 429", status, code)
		}
	})
	calm.check(t, before)
}

func TestHostileFrames(t *testing.T) {
	s := startServer(t, map[string]string{"WS_MAX_SYMBOLS": "5"})
	calm := startCalm(t, s.dial("?symbols=AAPL,MSFT"))
	before := calm.updates.Load()
	ctx := context.Background()
	tests := []struct {
		name string
		typ  websocket.MessageType
		data []byte
		want websocket.StatusCode
	}{
		{"binary frame", websocket.MessageBinary, []byte{1, 2, 3}, 1003},
		{"invalid UTF-8", websocket.MessageText, []byte("{\"type\":\"ping\xff\"}"), 1007},
		{"overlong UTF-8 encoding", websocket.MessageText, []byte{0xc0, 0xaf}, 1007},
		{"UTF-16 surrogate", websocket.MessageText, []byte{0xed, 0xa0, 0x80}, 1007},
		{"message over 4 KiB", websocket.MessageText, []byte(`{"type":"ping","pad":"` + strings.Repeat("a", 4200) + `"}`), 1009},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := s.dial("?symbols=AAPL")
			w.next()
			if err := w.c.Write(ctx, tt.typ, tt.data); err != nil {
				t.Fatal(err)
			}
			if got := w.closeCode(); got != tt.want {
				t.Errorf("close code: got %d, want %d", got, tt.want)
			}
		})
	}

	t.Run("message flood", func(t *testing.T) {
		w := s.dial("?symbols=AAPL")
		w.next()
		for i := range 200 {
			if err := w.c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"ping","id":%d}`, i)); err != nil {
				break // closed by the server already
			}
		}
		pongs, limited := 0, 0
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for {
			_, data, err := w.c.Read(rctx)
			if err != nil {
				if got := websocket.CloseStatus(err); got != 4029 {
					t.Errorf("close: got %d (%v), want 4029", got, err)
				}
				break
			}
			var m message
			json.Unmarshal(data, &m)
			switch {
			case m.Type == "pong":
				pongs++
			case m.Type == "error" && m.Code == "rate_limited":
				limited++
			}
		}
		if pongs < 20 || pongs > 30 || limited == 0 {
			t.Errorf("got %d pongs and %d rate_limited errors, want the burst of 20 (plus refill) answered, then rate_limited", pongs, limited)
		}
	})

	t.Run("burst within the limit", func(t *testing.T) {
		w := s.dial("?symbols=AAPL")
		w.next()
		for i := range 15 {
			w.send(fmt.Sprintf(`{"type":"ping","id":%d}`, i))
		}
		for i := range 15 {
			if m := w.nextOf("pong"); string(m.ID) != fmt.Sprint(i) {
				t.Fatalf("pong %d: got id %s", i, m.ID)
			}
		}
	})

	t.Run("odd symbols in a subscribe", func(t *testing.T) {
		w := s.dial("?symbols=AAPL")
		w.next()
		w.send(`{"type":"subscribe","id":"a","symbols":["../etc","<img src=x>","\u0000","MSFT"]}`)
		ack := w.nextOf("subscribed")
		if strings.Join(ack.Invalid, "|") != "../ETC|<IMG SRC=X>|\x00" || strings.Join(ack.Symbols, ",") != "AAPL,MSFT" {
			t.Errorf("ack: got symbols %v invalid %q, want AAPL,MSFT and the three odd ones invalid", ack.Symbols, ack.Invalid)
		}
	})

	t.Run("too many symbols in one subscribe", func(t *testing.T) {
		w := s.dial("?symbols=AAPL")
		w.next()
		w.send(`{"type":"subscribe","id":1,"symbols":["MSFT","GOOGL","AMZN","TSLA","NVDA"]}`)
		if m := w.nextOf("error"); m.Code != "too_many_symbols" {
			t.Errorf("got %q, want too_many_symbols", m.Code)
		}
	})
	calm.check(t, before)
}

func TestHostileEntitlements(t *testing.T) {
	s := startServer(t, nil)
	tok := s.token(jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix(), "symbols": []string{"AAPL", "MSFT"}}, "")
	w := s.dialToken("?symbols=AAPL,TSLA,NOPE", tok, websocket.CompressionDisabled)
	m, _ := w.next()
	if strings.Join(m.Forbidden, ",") != "TSLA" || strings.Join(m.InvalidSymbols, ",") != "NOPE" {
		t.Errorf("snapshot: got forbidden %v invalid %v, want [TSLA] [NOPE]", m.Forbidden, m.InvalidSymbols)
	}
	w.send(`{"type":"subscribe","id":"s","symbols":["MSFT","NVDA"]}`)
	ack := w.nextOf("subscribed")
	if strings.Join(ack.Forbidden, ",") != "NVDA" || strings.Join(ack.Symbols, ",") != "AAPL,MSFT" {
		t.Errorf("ack: got symbols %v forbidden %v, want AAPL,MSFT and NVDA forbidden", ack.Symbols, ack.Forbidden)
	}
	for range 10 {
		w.nextOf("quotes_patch")
		for sym := range w.quotes() {
			if sym != "AAPL" && sym != "MSFT" {
				t.Fatalf("got a quote of %s, which the token does not entitle", sym)
			}
		}
	}
	t.Run("REST", func(t *testing.T) {
		get := func(query string) (int, map[string]any) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+"/v1/quotes"+query, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			json.NewDecoder(resp.Body).Decode(&body)
			return resp.StatusCode, body
		}
		status, body := get("")
		if q, _ := body["quotes"].(map[string]any); status != 200 || len(q) != 2 {
			t.Errorf("all quotes: got %d with %d quotes, want 200 with the 2 entitled", status, len(q))
		}
		if status, body := get("?symbols=TSLA"); status != 403 {
			t.Errorf("forbidden only: got %d %v, want 403", status, body)
		}
	})
}

func TestLiveTokenExpiry(t *testing.T) {
	s := startServer(t, map[string]string{"JWT_LEEWAY": "0s", "PRICE_UPDATE_INTERVAL": "100ms"})
	short := func(sub string, d time.Duration, extra jwt.MapClaims) string {
		c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(d).Unix()}
		for k, v := range extra {
			c[k] = v
		}
		return s.token(c, "")
	}
	calm := startCalm(t, s.dial("?symbols=AAPL"))
	before := calm.updates.Load()

	t.Run("expires without refresh: token_expired then 4001", func(t *testing.T) {
		w := s.dialToken("?symbols=AAPL", short("u1", 2*time.Second, nil), websocket.CompressionDisabled)
		start := time.Now()
		m := w.nextOf("error")
		if m.Code != "token_expired" {
			t.Errorf("got error %q, want token_expired", m.Code)
		}
		if got := w.closeCode(); got != 4001 {
			t.Errorf("close: got %d, want 4001", got)
		}
		if time.Since(start) < time.Second {
			t.Errorf("closed after %v, before the token expired", time.Since(start))
		}
	})

	t.Run("refreshed before exp: stays open", func(t *testing.T) {
		w := s.dialToken("?symbols=AAPL", short("u2", 2*time.Second, nil), websocket.CompressionDisabled)
		w.next()
		w.send(`{"type":"auth","id":"r1","token":"` + short("u2", time.Hour, nil) + `"}`)
		a := w.nextOf("authenticated")
		if string(a.ID) != `"r1"` || a.ExpiresAt == "" {
			t.Errorf("ack: got id %s expires_at %q", a.ID, a.ExpiresAt)
		}
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			w.nextOf("quotes_patch") // fails on an error or a close
		}
	})

	t.Run("refresh refused", func(t *testing.T) {
		w := s.dialToken("?symbols=AAPL", short("u3", 3*time.Second, nil), websocket.CompressionDisabled)
		w.next()
		tests := []struct{ token, code string }{
			{short("someone-else", time.Hour, nil), "subject_mismatch"},
			{short("u3", -time.Hour, nil), "token_expired"},
			{s.token(jwt.MapClaims{"sub": "u3", "exp": time.Now().Add(time.Hour).Unix()}, "an-attackers-secret-of-32-bytes-or-more"), "invalid_token"},
			{"not.a.jwt", "malformed_token"},
		}
		for _, tt := range tests {
			w.send(`{"type":"auth","token":"` + tt.token + `"}`)
			if m := w.nextOf("error"); m.Code != tt.code {
				t.Errorf("got %q, want %q", m.Code, tt.code)
			}
		}
		// The refused tokens changed nothing: the first still expires.
		if m := w.nextOf("error"); m.Code != "token_expired" {
			t.Errorf("got %q, want token_expired", m.Code)
		}
		if got := w.closeCode(); got != 4001 {
			t.Errorf("close: got %d, want 4001", got)
		}
	})

	t.Run("refresh with fewer entitlements removes symbols", func(t *testing.T) {
		w := s.dialToken("?symbols=AAPL,MSFT", short("u4", time.Hour, nil), websocket.CompressionDisabled)
		w.next()
		w.send(`{"type":"auth","token":"` + short("u4", time.Hour, jwt.MapClaims{"symbols": []string{"AAPL"}}) + `"}`)
		a := w.nextOf("authenticated")
		if strings.Join(a.Forbidden, ",") != "MSFT" {
			t.Errorf("authenticated: got forbidden %v, want [MSFT]", a.Forbidden)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(w.quotes()) != 1 && time.Now().Before(deadline) {
			w.nextOf("quotes_patch")
		}
		if _, ok := w.quotes()["AAPL"]; !ok || len(w.quotes()) != 1 {
			t.Errorf("document holds %v, want AAPL only", w.quotes())
		}
	})
	calm.check(t, before)
}

func TestSlowlorisHeaders(t *testing.T) {
	s := startServer(t, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "500ms"})
	nc, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	fmt.Fprintf(nc, "GET /ws/quotes HTTP/1.1\r\nHost: x\r\n")
	// Trickle a header byte at a time; the server must hang up anyway.
	go func() {
		for range 100 {
			if _, err := nc.Write([]byte("X")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = bufio.NewReader(nc).ReadString('\n')
	if err == nil {
		// Go may answer 408 before closing; the next read must end.
		_, err = bufio.NewReader(nc).ReadString(0)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", time.Since(start))
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %v, want about HTTP_READ_HEADER_TIMEOUT (500ms)", d)
	}
}

func TestNativeTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	s := startServer(t, map[string]string{"TLS_CERT_FILE": certFile, "TLS_KEY_FILE": keyFile})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+s.addr+"/ws/quotes?symbols=AAPL", &websocket.DialOptions{
		HTTPClient: client, HTTPHeader: bearer(s.validToken())})
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	defer c.CloseNow()
	w := &wsClient{t: t, c: c, doc: []byte(`{}`)}
	w.next()
	w.nextOf("quotes_patch")
	if _, ok := w.quotes()["AAPL"]; !ok {
		t.Errorf("document %s lacks AAPL", w.doc)
	}

	req, _ := http.NewRequest(http.MethodGet, "https://"+s.addr+"/v1/quotes?symbols=AAPL", nil)
	req.Header.Set("Authorization", "Bearer "+s.validToken())
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("https GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("https GET: got %d, want 200", resp.StatusCode)
	}
	// Plain HTTP to the TLS port gets no quotes.
	if resp, err := http.Get("http://" + s.addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain http to the TLS port answered 200")
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns a
// pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tickstream test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}
