package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/auth"
)

// jwksServer serves a JWK Set that tests can swap, and counts its fetches.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64

	mu     sync.Mutex // guards body and status
	body   []byte
	status int
}

func newJWKSServer(t *testing.T, keys ...jwkset.JWK) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.serve(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, status := s.body, s.status
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// serve makes the server answer with a set of keys from now on.
func (s *jwksServer) serve(t *testing.T, keys ...jwkset.JWK) {
	t.Helper()
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Marshal())
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.answer(http.StatusOK, body)
}

func (s *jwksServer) answer(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

// jwk returns pub, a public key or an HMAC secret, as a JWK with kid, alg
// and use (empty for none).
func jwk(t *testing.T, pub any, kid string, alg jwkset.ALG, use jwkset.USE) jwkset.JWK {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true}, // lets a secret be an "oct" key
		Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg, USE: use},
	})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// signKID signs a valid token for sub u1 with a kid header (none when
// empty).
func signKID(t testing.TB, method jwt.SigningMethod, key any, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()})
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksOptions are Options for s that never refresh on their own during a
// test, so that fetch counts are exact.
func jwksOptions(s *jwksServer) auth.Options {
	return auth.Options{
		JWKSURL:             s.URL + "/.well-known/jwks.json",
		Leeway:              auth.Leeway,
		JWKSRefreshInterval: time.Hour,
		JWKSUnknownKIDRate:  time.Hour,
	}
}

func TestJWKSVerify(t *testing.T) {
	k := keys(t)
	rsaPEM, _ := pkixPEM(t, &k.rsa.PublicKey)
	s := newJWKSServer(t,
		jwk(t, &k.rsa.PublicKey, "r1", jwkset.AlgRS256, jwkset.UseSig),
		jwk(t, &k.ec256.PublicKey, "e1", "", ""),
		jwk(t, &k.ec384.PublicKey, "e2", jwkset.AlgES384, ""),
		jwk(t, k.ed.Public(), "d1", "", ""),
		jwk(t, &k.rsaOther.PublicKey, "enc1", "", jwkset.UseEnc),
		jwk(t, testSecret, "oct1", "", ""),
		jwk(t, &k.rsaSmall.PublicKey, "small", "", ""),
	)
	v := newVerifier(t, jwksOptions(s))
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"RS256 by kid", signKID(t, jwt.SigningMethodRS256, k.rsa, "r1"), nil},
		{"ES256 by kid", signKID(t, jwt.SigningMethodES256, k.ec256, "e1"), nil},
		{"ES384 by kid", signKID(t, jwt.SigningMethodES384, k.ec384, "e2"), nil},
		{"EdDSA by kid", signKID(t, jwt.SigningMethodEdDSA, k.ed, "d1"), nil},
		{"RS256 without kid tries every key", signKID(t, jwt.SigningMethodRS256, k.rsa, ""), nil},
		{"EdDSA without kid tries every key", signKID(t, jwt.SigningMethodEdDSA, k.ed, ""), nil},

		{"RS256 with the kid of an EC key", signKID(t, jwt.SigningMethodRS256, k.rsa, "e1"), auth.ErrInvalid},
		{"PS256 to a JWK whose alg is RS256", signKID(t, jwt.SigningMethodPS256, k.rsa, "r1"), auth.ErrInvalid},
		{"ES384 to a P-256 JWK", signKID(t, jwt.SigningMethodES384, k.ec384, "e1"), auth.ErrInvalid},
		{"RS256 by another key", signKID(t, jwt.SigningMethodRS256, k.rsaOther, "r1"), auth.ErrInvalid},
		{"RS256 by an encryption key", signKID(t, jwt.SigningMethodRS256, k.rsaOther, "enc1"), auth.ErrInvalid},
		{"RS256 without kid by an encryption key", signKID(t, jwt.SigningMethodRS256, k.rsaOther, ""), auth.ErrInvalid},
		{"RS256 by a 1024-bit key", signKID(t, jwt.SigningMethodRS256, k.rsaSmall, "small"), auth.ErrInvalid},
		{"RS256 without kid by a 1024-bit key", signKID(t, jwt.SigningMethodRS256, k.rsaSmall, ""), auth.ErrInvalid},
		{"HS256 with the kid of an oct key", signKID(t, jwt.SigningMethodHS256, testSecret, "oct1"), auth.ErrInvalid},
		{"HS256 keyed with the RSA PEM", signKID(t, jwt.SigningMethodHS256, rsaPEM, "r1"), auth.ErrInvalid},
		{"alg none", signKID(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "r1"), auth.ErrInvalid},
		{"unknown kid", signKID(t, jwt.SigningMethodRS256, k.rsa, "nope"), auth.ErrInvalid},
		{"expired", sign(t, jwt.SigningMethodRS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-time.Hour).Unix()}, k.rsa), auth.ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == nil && c.Subject != "u1" {
				t.Errorf("Subject: got %q, want u1", c.Subject)
			}
			assertNoTokenIn(t, err, tt.token)
			if err != nil && (strings.Contains(err.Error(), "nope") || strings.Contains(err.Error(), "r1")) {
				t.Errorf("got %q, want no kid from the token in it", err)
			}
		})
	}
}

func TestJWKSRotation(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	v := newVerifier(t, jwksOptions(s))
	old := signKID(t, jwt.SigningMethodRS256, k.rsa, "k1")
	if _, err := v.Verify(old); err != nil {
		t.Fatalf("k1 before rotation: got %v, want no error", err)
	}

	s.serve(t, jwk(t, &k.ec256.PublicKey, "k2", "", ""))
	if _, err := v.Verify(signKID(t, jwt.SigningMethodES256, k.ec256, "k2")); err != nil {
		t.Errorf("new kid k2: got %v, want no error (a fetch on the unknown kid)", err)
	}
	if _, err := v.Verify(old); !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("k1 after it left the set: got %v, want %v", err, auth.ErrInvalid)
	}
	if got := s.fetches.Load(); got != 2 {
		t.Errorf("fetches: got %d, want 2 (start, then the unknown kid)", got)
	}
}

func TestJWKSUnknownKIDBurst(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	v := newVerifier(t, jwksOptions(s))
	token := signKID(t, jwt.SigningMethodRS256, k.rsa, "made-up")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 10 {
				if _, err := v.Verify(token); !errors.Is(err, auth.ErrInvalid) {
					t.Errorf("unknown kid: got %v, want %v", err, auth.ErrInvalid)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := s.fetches.Load(); got != 2 {
		t.Errorf("fetches after 200 unknown-kid tokens: got %d, want 2 (start, then one refresh)", got)
	}
	if _, err := v.Verify(signKID(t, jwt.SigningMethodRS256, k.rsa, "k1")); err != nil {
		t.Errorf("known kid during the burst's limit: got %v, want no error", err)
	}
}

func TestJWKSUnknownKIDRate(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	o := jwksOptions(s)
	o.JWKSUnknownKIDRate = 50 * time.Millisecond
	v := newVerifier(t, o)
	token := signKID(t, jwt.SigningMethodRS256, k.rsa, "made-up")
	start := time.Now()
	for time.Since(start) < 300*time.Millisecond {
		if _, err := v.Verify(token); !errors.Is(err, auth.ErrInvalid) {
			t.Fatalf("unknown kid: got %v, want %v", err, auth.ErrInvalid)
		}
	}
	// One at start, one at once, then at most one per 50ms.
	limit := 2 + int64(time.Since(start)/o.JWKSUnknownKIDRate)
	if got := s.fetches.Load(); got < 3 || got > limit {
		t.Errorf("fetches in %v: got %d, want 3 to %d", time.Since(start), got, limit)
	}
}

func TestJWKSPeriodicRefresh(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	o := jwksOptions(s)
	o.JWKSRefreshInterval = 20 * time.Millisecond
	v := newVerifier(t, o)
	// Spend the unknown-kid allowance, so that only the periodic refresh
	// can bring k2 in.
	if _, err := v.Verify(signKID(t, jwt.SigningMethodRS256, k.rsa, "made-up")); !errors.Is(err, auth.ErrInvalid) {
		t.Fatalf("unknown kid: got %v, want %v", err, auth.ErrInvalid)
	}
	s.serve(t, jwk(t, &k.ec256.PublicKey, "k2", "", ""))
	newer := signKID(t, jwt.SigningMethodES256, k.ec256, "k2")
	waitFor(t, "k2 to verify", func() bool { _, err := v.Verify(newer); return err == nil })
	if _, err := v.Verify(signKID(t, jwt.SigningMethodRS256, k.rsa, "k1")); !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("k1 after the refresh dropped it: got %v, want %v", err, auth.ErrInvalid)
	}
}

func TestJWKSRefreshFailureKeepsKeys(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	var logs lockedBuffer
	o := jwksOptions(s)
	o.JWKSRefreshInterval = 20 * time.Millisecond
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	v := newVerifier(t, o)
	s.answer(http.StatusInternalServerError, []byte("down"))
	waitFor(t, "a logged refresh failure", func() bool { return strings.Contains(logs.String(), "JWK Set refresh failed") })
	if _, err := v.Verify(signKID(t, jwt.SigningMethodRS256, k.rsa, "k1")); err != nil {
		t.Errorf("cached k1 while the issuer is down: got %v, want no error", err)
	}
}

func TestJWKSStopsWithContext(t *testing.T) {
	k := keys(t)
	s := newJWKSServer(t, jwk(t, &k.rsa.PublicKey, "k1", "", ""))
	o := jwksOptions(s)
	o.JWKSRefreshInterval = 10 * time.Millisecond
	o.Now = clock
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if _, err := auth.New(ctx, o); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a periodic refresh", func() bool { return s.fetches.Load() >= 2 })
	cancel()
	time.Sleep(20 * time.Millisecond) // a refresh under way may finish
	before := s.fetches.Load()
	time.Sleep(100 * time.Millisecond)
	if got := s.fetches.Load(); got != before {
		t.Errorf("fetches after ctx ended: got %d, want %d", got, before)
	}
}

func TestNewJWKSErrors(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	tests := []struct {
		name   string
		status int
		body   string
		url    string // instead of the test server's
		want   string
	}{
		{name: "server down", url: down.URL, want: "fetch JWK Set"},
		{name: "not a URL", url: "jwks.json", want: "http or https URL"},
		{name: "other scheme", url: "file:///etc/jwks.json", want: "http or https URL"},
		{name: "status 500", status: 500, body: "oops", want: "fetch JWK Set"},
		{name: "not JSON", status: 200, body: "<html>", want: "fetch JWK Set"},
		{name: "no keys", status: 200, body: `{"keys":[]}`, want: "none of the JWK Set's 0 keys"},
		{name: "only a shared secret", status: 200, body: "", want: "none of the JWK Set's 1 keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newJWKSServer(t, jwk(t, testSecret, "oct1", "", ""))
			if tt.body != "" {
				s.answer(tt.status, []byte(tt.body))
			}
			o := jwksOptions(s)
			if tt.url != "" {
				o.JWKSURL = tt.url
			}
			_, err := auth.New(t.Context(), o)
			if err == nil || !strings.HasPrefix(err.Error(), "JWT_JWKS_URL: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want JWT_JWKS_URL: ...%s...", err, tt.want)
			}
		})
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lockedBuffer is a bytes.Buffer that the refresh goroutine and the test
// may use at once.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
