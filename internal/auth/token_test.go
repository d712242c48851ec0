package auth_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/auth"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	testNow    = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
)

func clock() time.Time { return testNow }

// sign returns claims signed with method and key.
func sign(t *testing.T, method jwt.SigningMethod, claims jwt.MapClaims, key any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// handMade joins a header and payload, base64url-encoded, with sig: tokens
// no library would sign.
func handMade(header, payload, sig string) string {
	b64 := base64.RawURLEncoding.EncodeToString
	return b64([]byte(header)) + "." + b64([]byte(payload)) + "." + sig
}

// assertNoTokenIn fails when err's text holds the token or any of its
// segments.
func assertNoTokenIn(t *testing.T, err error, token string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, part := range append(strings.Split(token, "."), token) {
		if len(part) >= 4 && strings.Contains(err.Error(), part) {
			t.Errorf("got error %q, want it without the token part %q", err, part)
		}
	}
}

func TestVerify(t *testing.T) {
	exp := testNow.Add(time.Hour).Unix()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// An RS256-labelled token whose "signature" is an HMAC with our secret:
	// the algorithm confusion attack on servers that take alg from the token.
	confused := func() string {
		unsigned := handMade(`{"alg":"RS256","typ":"JWT"}`, `{"sub":"u1","exp":9999999999}`, "")
		unsigned = strings.TrimSuffix(unsigned, ".")
		sig, err := jwt.SigningMethodHS256.Sign(unsigned, testSecret)
		if err != nil {
			t.Fatal(err)
		}
		return unsigned + "." + base64.RawURLEncoding.EncodeToString(sig)
	}()

	tests := []struct {
		name  string
		token string
		want  error // nil: accepted with sub "u1"
	}{
		{"valid HS256", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp}, testSecret), nil},
		{"valid HS384", sign(t, jwt.SigningMethodHS384, jwt.MapClaims{"sub": "u1", "exp": exp}, testSecret), nil},
		{"valid HS512", sign(t, jwt.SigningMethodHS512, jwt.MapClaims{"sub": "u1", "exp": exp}, testSecret), nil},
		{"expired", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-time.Minute).Unix()}, testSecret), auth.ErrExpired},
		{"expired just beyond leeway", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-31 * time.Second).Unix()}, testSecret), auth.ErrExpired},
		{"expired within leeway", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-10 * time.Second).Unix()}, testSecret), nil},
		{"missing exp", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1"}, testSecret), auth.ErrInvalid},
		{"missing sub", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"exp": exp}, testSecret), auth.ErrInvalid},
		{"empty sub", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "", "exp": exp}, testSecret), auth.ErrInvalid},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "nbf": testNow.Add(time.Hour).Unix()}, testSecret), auth.ErrInvalid},
		{"issued in the future", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "iat": testNow.Add(time.Hour).Unix()}, testSecret), auth.ErrInvalid},
		{"bad signature", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp}, []byte("another-secret-another-secret-!!")), auth.ErrInvalid},
		{"bad signature on an expired token", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-time.Hour).Unix()}, []byte("another-secret-another-secret-!!")), auth.ErrInvalid},
		{"alg none", handMade(`{"alg":"none","typ":"JWT"}`, `{"sub":"u1","exp":9999999999}`, ""), auth.ErrInvalid},
		{"alg none signed by the library", sign(t, jwt.SigningMethodNone, jwt.MapClaims{"sub": "u1", "exp": exp}, jwt.UnsafeAllowNoneSignatureType), auth.ErrInvalid},
		{"RS256 signed", sign(t, jwt.SigningMethodRS256, jwt.MapClaims{"sub": "u1", "exp": exp}, rsaKey), auth.ErrInvalid},
		{"RS256 label on an HMAC signature", confused, auth.ErrInvalid},
		{"unknown alg", handMade(`{"alg":"HS999","typ":"JWT"}`, `{"sub":"u1","exp":9999999999}`, "c2lnbmF0dXJl"), auth.ErrInvalid},
		{"no alg", handMade(`{"typ":"JWT"}`, `{"sub":"u1","exp":9999999999}`, "c2lnbmF0dXJl"), auth.ErrInvalid},
		{"garbage", "not-a-jwt-at-all", auth.ErrMalformed},
		{"three garbage segments", "not.a.jwt", auth.ErrMalformed},
		{"two segments", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9", auth.ErrMalformed},
		{"payload not JSON", handMade(`{"alg":"HS256","typ":"JWT"}`, `sub=u1`, "c2lnbmF0dXJl"), auth.ErrMalformed},
		{"exp not a number", handMade(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"u1","exp":"tomorrow"}`, "c2lnbmF0dXJl"), auth.ErrMalformed},
		{"empty", "", auth.ErrMalformed},
	}
	v := auth.NewVerifier(testSecret, clock)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				if c.Subject != "u1" {
					t.Errorf("Subject: got %q, want %q", c.Subject, "u1")
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if !reflect.DeepEqual(c, auth.Claims{}) {
				t.Errorf("claims: got %+v, want zero", c)
			}
			assertNoTokenIn(t, err, tt.token)
			if strings.Contains(err.Error(), "RS256") || strings.Contains(err.Error(), "HS999") {
				t.Errorf("got %q, want no algorithm taken from the token", err)
			}
		})
	}
}

func TestVerifySentinelsDistinct(t *testing.T) {
	all := []error{auth.ErrMissing, auth.ErrMalformed, auth.ErrInvalid, auth.ErrExpired}
	for i, a := range all {
		for j, b := range all {
			if got := errors.Is(a, b); got != (i == j) {
				t.Errorf("errors.Is(%v, %v): got %v, want %v", a, b, got, i == j)
			}
		}
	}
}

func TestVerifyEmptySecret(t *testing.T) {
	token := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()}, []byte{})
	_, err := auth.NewVerifier(nil, clock).Verify(token)
	if !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("got %v, want %v", err, auth.ErrInvalid)
	}
}

func TestVerifierCopiesSecret(t *testing.T) {
	secret := bytes.Clone(testSecret)
	v := auth.NewVerifier(secret, clock)
	token := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()}, testSecret)
	secret[0] ^= 0xff
	if _, err := v.Verify(token); err != nil {
		t.Errorf("after the caller changed its slice: got %v, want no error", err)
	}
}

func TestVerifyRealClock(t *testing.T) {
	v := auth.NewVerifier(testSecret, nil)
	token := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}, testSecret)
	if _, err := v.Verify(token); err != nil {
		t.Errorf("got %v, want no error", err)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	v := auth.NewVerifier(testSecret, clock)
	good := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()}, testSecret)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := v.Verify(good); err != nil {
					t.Errorf("got %v, want no error", err)
					return
				}
				if _, err := v.Verify("garbage"); !errors.Is(err, auth.ErrMalformed) {
					t.Errorf("got %v, want %v", err, auth.ErrMalformed)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestMint(t *testing.T) {
	v := auth.NewVerifier(testSecret, clock)
	tests := []struct {
		name       string
		subject    string
		ttl        time.Duration
		mintErr    bool
		wantVerify error
	}{
		{"one hour", "demo", time.Hour, false, nil},
		{"negative ttl mints an expired token", "demo", -time.Hour, false, auth.ErrExpired},
		{"empty subject", "", time.Hour, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, err := v.Mint(tt.subject, tt.ttl)
			if (err != nil) != tt.mintErr {
				t.Fatalf("Mint: got error %v, want error %v", err, tt.mintErr)
			}
			if tt.mintErr {
				return
			}
			c, err := v.Verify(token)
			if !errors.Is(err, tt.wantVerify) {
				t.Fatalf("Verify: got %v, want %v", err, tt.wantVerify)
			}
			if err != nil {
				return
			}
			if want := (auth.Claims{Subject: tt.subject, ExpiresAt: testNow.Add(tt.ttl)}); !c.ExpiresAt.Equal(want.ExpiresAt) || c.Subject != want.Subject {
				t.Errorf("got %+v, want %+v", c, want)
			}
			parsed, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			if got := parsed.Method.Alg(); got != "HS256" {
				t.Errorf("alg: got %s, want HS256", got)
			}
			iat, err := parsed.Claims.GetIssuedAt()
			if err != nil || iat == nil || !iat.Equal(testNow) {
				t.Errorf("iat: got %v (%v), want %v", iat, err, testNow)
			}
		})
	}
	if _, err := auth.NewVerifier(nil, clock).Mint("demo", time.Hour); err == nil {
		t.Error("Mint with no secret: got no error, want one")
	}
}

func TestRandomSecret(t *testing.T) {
	s1, err := auth.RandomSecret()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := auth.RandomSecret()
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 32 || len(s2) != 32 {
		t.Errorf("got %d and %d bytes, want 32", len(s1), len(s2))
	}
	if bytes.Equal(s1, s2) {
		t.Error("got two equal secrets, want distinct ones")
	}
}

func TestFromRequest(t *testing.T) {
	tests := []struct {
		name    string
		headers []string // Authorization values
		query   string
		want    string
		err     error
	}{
		{"bearer header", []string{"Bearer abc"}, "", "abc", nil},
		{"lower-case scheme", []string{"bearer abc"}, "", "abc", nil},
		{"upper-case scheme", []string{"BEARER abc"}, "", "abc", nil},
		{"extra spaces", []string{"Bearer   abc "}, "", "abc", nil},
		{"query fallback", nil, "token=q1", "q1", nil},
		{"header wins over query", []string{"Bearer h1"}, "token=q1", "h1", nil},
		{"basic scheme", []string{"Basic dXNlcg=="}, "", "", auth.ErrMalformed},
		{"basic scheme with a query token", []string{"Basic dXNlcg=="}, "token=q1", "", auth.ErrMalformed},
		{"empty bearer", []string{"Bearer "}, "", "", auth.ErrMalformed},
		{"bearer alone", []string{"Bearer"}, "", "", auth.ErrMalformed},
		{"token without scheme", []string{"abc.def.ghi"}, "", "", auth.ErrMalformed},
		{"empty header", []string{""}, "", "", auth.ErrMalformed},
		{"two headers", []string{"Bearer a1", "Bearer a2"}, "", "", auth.ErrMalformed},
		{"empty query token", nil, "token=", "", auth.ErrMissing},
		{"nothing", nil, "", "", auth.ErrMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/ws/quotes?"+tt.query, nil)
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, err := auth.FromRequest(r)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
			for _, h := range tt.headers {
				assertNoTokenIn(t, err, strings.TrimPrefix(h, "Basic "))
			}
		})
	}
}

// refusalTexts are every error text Verify may return: fixed strings, so
// that no byte of a token can reach a log line or a client.
var refusalTexts = map[string]bool{
	"malformed token": true,
	"token expired":   true,
	"invalid token":   true,
	"invalid token: bad signature or algorithm not allowed":           true,
	"invalid token: cannot be verified (unknown algorithm or no key)": true,
	"invalid token: wrong issuer":                                     true,
	"invalid token: wrong audience":                                   true,
	"invalid token: exp claim missing":                                true,
	"invalid token: iss claim missing":                                true,
	"invalid token: aud claim missing":                                true,
	"invalid token: sub claim missing":                                true,
	"invalid token: not valid yet":                                    true,
	"invalid token: issued in the future":                             true,
	`invalid token: symbols claim must be "*" or a list of symbols`:   true,
	"invalid token: symbols claim lists more than 10000 symbols":      true,
}

// FuzzVerify feeds Verify what a client could send: it must not panic,
// and must refuse with a sentinel and a fixed text.
func FuzzVerify(f *testing.F) {
	exp := testNow.Add(time.Hour).Unix()
	good, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "symbols": []string{"AAPL"}}).SignedString(testSecret)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		good, "", "a.b.c", "not-a-jwt",
		handMade(`{"alg":"none"}`, `{"sub":"u1","exp":9999999999}`, ""),
		handMade(`{"alg":"HS256"}`, `{"sub":"u1","exp":9999999999,"symbols":{"a":1}}`, "c2ln"),
		handMade(`{"alg":"RS256","kid":"x"}`, `{"sub":"u1","exp":"soon"}`, "c2ln"),
	} {
		f.Add(s)
	}
	v := newVerifierF(f, auth.Options{Secret: testSecret, Leeway: auth.Leeway})
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err == nil {
			if c.Subject == "" {
				t.Errorf("accepted %q with no subject", token)
			}
			return
		}
		if !refusalTexts[err.Error()] {
			t.Errorf("got error text %q, want one of the fixed refusals", err)
		}
		if !errors.Is(err, auth.ErrMalformed) && !errors.Is(err, auth.ErrInvalid) && !errors.Is(err, auth.ErrExpired) {
			t.Errorf("got %v, want a sentinel", err)
		}
	})
}

// newVerifierF is newVerifier for a fuzz target.
func newVerifierF(f *testing.F, o auth.Options) *auth.Verifier {
	f.Helper()
	o.Now = clock
	v, err := auth.New(f.Context(), o)
	if err != nil {
		f.Fatal(err)
	}
	return v
}

// BenchmarkVerify measures the check every handshake pays, per key type:
// the parser and its options are built once per Verifier, not per call.
func BenchmarkVerify(b *testing.B) {
	k := keys(b)
	ecPEM, _ := pkixPEM(b, &k.ec256.PublicKey)
	rsaPEM, _ := pkixPEM(b, &k.rsa.PublicKey)
	edPEM, _ := pkixPEM(b, k.ed.Public())
	claims := jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()}
	cases := []struct {
		name   string
		o      auth.Options
		method jwt.SigningMethod
		key    any
	}{
		{"HS256", auth.Options{Secret: testSecret}, jwt.SigningMethodHS256, testSecret},
		{"RS256", auth.Options{PublicKeyPEM: rsaPEM}, jwt.SigningMethodRS256, k.rsa},
		{"ES256", auth.Options{PublicKeyPEM: ecPEM}, jwt.SigningMethodES256, k.ec256},
		{"EdDSA", auth.Options{PublicKeyPEM: edPEM}, jwt.SigningMethodEdDSA, k.ed},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			v := newVerifier(b, bc.o)
			token, err := jwt.NewWithClaims(bc.method, claims).SignedString(bc.key)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
