package auth_test

import (
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/auth"
)

var (
	secret = []byte("0123456789abcdef0123456789abcdef")
	now    = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
)

func sign(t *testing.T, m jwt.SigningMethod, claims jwt.MapClaims, key any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	v := auth.NewVerifier(secret, func() time.Time { return now })
	exp := now.Add(time.Hour).Unix()
	b64 := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"valid HS256", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp}, secret), nil},
		{"valid HS512", sign(t, jwt.SigningMethodHS512, jwt.MapClaims{"sub": "u1", "exp": exp}, secret), nil},
		{"expired", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": now.Add(-time.Minute).Unix()}, secret), auth.ErrExpired},
		{"expired within leeway", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": now.Add(-10 * time.Second).Unix()}, secret), nil},
		{"no exp", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1"}, secret), auth.ErrInvalid},
		{"no sub", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"exp": exp}, secret), auth.ErrInvalid},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "nbf": now.Add(time.Hour).Unix()}, secret), auth.ErrInvalid},
		{"issued in the future", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "iat": now.Add(time.Hour).Unix()}, secret), auth.ErrInvalid},
		{"bad signature", sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp}, []byte("another-secret-another-secret-!!")), auth.ErrInvalid},
		{"alg none", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64([]byte(`{"sub":"u1","exp":9999999999}`)) + ".", auth.ErrInvalid},
		{"RS256 header", b64([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + b64([]byte(`{"sub":"u1","exp":9999999999}`)) + ".c2ln", auth.ErrInvalid},
		{"garbage", "not.a.jwt", auth.ErrMalformed},
		{"empty", "", auth.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil && c.Subject != "u1" {
				t.Errorf("subject: got %q, want u1", c.Subject)
			}
			if err != nil && tt.token != "" && strings.Contains(err.Error(), tt.token[len(tt.token)/2:]) {
				t.Errorf("error %q contains part of the token", err)
			}
		})
	}
}

func TestMintRoundTrip(t *testing.T) {
	v := auth.NewVerifier(secret, func() time.Time { return now })
	tok, err := v.Mint("demo", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil || c.Subject != "demo" || !c.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Errorf("got %+v %v, want sub demo expiring %v", c, err, now.Add(time.Hour))
	}
	s1, _ := auth.RandomSecret()
	s2, _ := auth.RandomSecret()
	if len(s1) != 32 || string(s1) == string(s2) {
		t.Errorf("RandomSecret: got %d bytes, equal=%v; want 32 distinct bytes", len(s1), string(s1) == string(s2))
	}
}

func TestFromRequest(t *testing.T) {
	tests := []struct {
		name, header, query, want string
		err                       error
	}{
		{"bearer header", "Bearer abc", "", "abc", nil},
		{"lower-case scheme", "bearer abc", "", "abc", nil},
		{"query fallback", "", "token=q1", "q1", nil},
		{"header wins", "Bearer h1", "token=q1", "h1", nil},
		{"basic scheme", "Basic dXNlcg==", "", "", auth.ErrMalformed},
		{"empty bearer", "Bearer ", "", "", auth.ErrMalformed},
		{"nothing", "", "", "", auth.ErrMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/ws/quotes?"+tt.query, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			got, err := auth.FromRequest(r)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}
