package auth_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/auth"
)

const (
	testIssuer   = "https://issuer.test/"
	testAudience = "tickstream"
)

func TestNewRegisteredClaims(t *testing.T) {
	at := func(d time.Duration) int64 { return testNow.Add(d).Unix() }
	good := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "u1", "exp": at(time.Hour), "iss": testIssuer, "aud": testAudience}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
				continue
			}
			c[k] = v
		}
		return c
	}
	tests := []struct {
		name   string
		claims jwt.MapClaims
		want   error  // nil: accepted
		reason string // in the error text
	}{
		{"right iss and aud", good(nil), nil, ""},
		{"aud list holding ours", good(jwt.MapClaims{"aud": []string{"other", testAudience}}), nil, ""},
		{"expired within leeway", good(jwt.MapClaims{"exp": at(-10 * time.Second)}), nil, ""},
		{"nbf within leeway", good(jwt.MapClaims{"nbf": at(10 * time.Second)}), nil, ""},
		{"iat within leeway", good(jwt.MapClaims{"iat": at(10 * time.Second)}), nil, ""},
		{"expired beyond leeway", good(jwt.MapClaims{"exp": at(-31 * time.Second)}), auth.ErrExpired, ""},
		{"nbf beyond leeway", good(jwt.MapClaims{"nbf": at(31 * time.Second)}), auth.ErrInvalid, "not valid yet"},
		{"iat in the future", good(jwt.MapClaims{"iat": at(time.Hour)}), auth.ErrInvalid, "issued in the future"},
		{"missing exp", good(jwt.MapClaims{"exp": nil}), auth.ErrInvalid, "exp claim missing"},
		{"missing sub", good(jwt.MapClaims{"sub": nil}), auth.ErrInvalid, "sub claim missing"},
		{"wrong iss", good(jwt.MapClaims{"iss": "https://evil.test/"}), auth.ErrInvalid, "wrong issuer"},
		{"iss differing in case", good(jwt.MapClaims{"iss": strings.ToUpper(testIssuer)}), auth.ErrInvalid, "wrong issuer"},
		{"missing iss", good(jwt.MapClaims{"iss": nil}), auth.ErrInvalid, "iss claim missing"},
		{"wrong aud", good(jwt.MapClaims{"aud": "evil-audience"}), auth.ErrInvalid, "wrong audience"},
		{"aud list without ours", good(jwt.MapClaims{"aud": []string{"evil-audience", "other"}}), auth.ErrInvalid, "wrong audience"},
		{"missing aud", good(jwt.MapClaims{"aud": nil}), auth.ErrInvalid, "aud claim missing"},
		{"wrong iss on an expired token", good(jwt.MapClaims{"iss": "https://evil.test/", "exp": at(-time.Hour)}), auth.ErrInvalid, "wrong issuer"},
	}
	v := newVerifier(t, auth.Options{Secret: testSecret, Issuer: testIssuer, Audience: testAudience, Leeway: auth.Leeway})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := sign(t, jwt.SigningMethodHS256, tt.claims, testSecret)
			c, err := v.Verify(token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil {
				if c.Subject != "u1" {
					t.Errorf("Subject: got %q, want u1", c.Subject)
				}
				return
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("got %q, want the reason %q", err, tt.reason)
			}
			assertNoTokenIn(t, err, token)
			for _, leak := range []string{"evil", testIssuer, testAudience} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("got %q, want no claim value %q in it", err, leak)
				}
			}
		})
	}
}

func TestNewLeeway(t *testing.T) {
	token := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-time.Second).Unix()}, testSecret)
	tests := []struct {
		leeway time.Duration
		want   error
	}{
		{0, auth.ErrExpired},
		{2 * time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.leeway.String(), func(t *testing.T) {
			v := newVerifier(t, auth.Options{Secret: testSecret, Leeway: tt.leeway})
			if _, err := v.Verify(token); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("expired 1s ago: got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewMint(t *testing.T) {
	v := newVerifier(t, auth.Options{Secret: testSecret, Issuer: testIssuer, Audience: testAudience})
	token, err := v.Mint("demo", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(token); err != nil || c.Subject != "demo" || !c.AllSymbols {
		t.Errorf("Verify(Mint): got %+v, %v; want subject demo, all symbols", c, err)
	}
	rsaPEM, _ := pkixPEM(t, &keys(t).rsa.PublicKey)
	if _, err := newVerifier(t, auth.Options{PublicKeyPEM: rsaPEM}).Mint("demo", time.Hour); err == nil {
		t.Error("Mint with a public key: got no error, want one")
	}
}

func TestSymbolsClaim(t *testing.T) {
	tooMany := make([]string, auth.MaxSymbols+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("S%d", i)
	}
	tests := []struct {
		name    string
		symbols any // absent when nil
		absent  bool
		all     bool
		want    []string
		err     string // in the ErrInvalid text; empty: accepted
	}{
		{name: "absent", absent: true, all: true},
		{name: "star", symbols: "*", all: true},
		{name: "list normalised", symbols: []any{"msft", " aapl ", "AAPL", "brk.b", "Msft"}, want: []string{"AAPL", "BRK.B", "MSFT"}},
		{name: "empty list allows none", symbols: []any{}, want: []string{}},
		{name: "list at the cap", symbols: tooMany[:auth.MaxSymbols], want: nil},
		{name: "list over the cap", symbols: tooMany, err: "more than 10000"},
		{name: "null", symbols: jsonNull{}, err: `must be "*" or a list`},
		{name: "empty string", symbols: "", err: `must be "*" or a list`},
		{name: "one symbol as a string", symbols: "AAPL", err: `must be "*" or a list`},
		{name: "star with spaces", symbols: " * ", err: `must be "*" or a list`},
		{name: "number", symbols: 5, err: `must be "*" or a list`},
		{name: "bool", symbols: true, err: `must be "*" or a list`},
		{name: "object", symbols: map[string]any{"AAPL": true}, err: `must be "*" or a list`},
		{name: "number in the list", symbols: []any{"AAPL", 5}, err: `must be "*" or a list`},
		{name: "list in the list", symbols: []any{"AAPL", []any{"MSFT"}}, err: `must be "*" or a list`},
		{name: "null in the list", symbols: []any{"AAPL", nil}, err: `must be "*" or a list`},
		{name: "blank in the list", symbols: []any{"AAPL", "  "}, err: `must be "*" or a list`},
		{name: "star in the list", symbols: []any{"*"}, err: `must be "*" or a list`},
	}
	v := auth.NewVerifier(testSecret, clock)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims := jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix()}
			if !tt.absent {
				claims["symbols"] = tt.symbols
			}
			c, err := v.Verify(sign(t, jwt.SigningMethodHS256, claims, testSecret))
			if tt.err != "" {
				if !errors.Is(err, auth.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want %v with %q", err, auth.ErrInvalid, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if c.AllSymbols != tt.all {
				t.Errorf("AllSymbols: got %v, want %v", c.AllSymbols, tt.all)
			}
			if tt.want != nil && !reflect.DeepEqual(c.Symbols, tt.want) {
				t.Errorf("Symbols: got %q, want %q", c.Symbols, tt.want)
			}
			if tt.all && c.Symbols != nil {
				t.Errorf("Symbols: got %q, want nil when all are allowed", c.Symbols)
			}
		})
	}
}

// jsonNull marshals as JSON null, which a nil any in MapClaims would too
// but the table uses nil for "absent".
type jsonNull struct{}

func (jsonNull) MarshalJSON() ([]byte, error) { return []byte("null"), nil }

func TestClaimsAllows(t *testing.T) {
	v := auth.NewVerifier(testSecret, clock)
	list := []any{"msft", "aapl", "BRK.B"}
	verified, err := v.Verify(sign(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix(), "symbols": list}, testSecret))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		c      auth.Claims
		symbol string
		want   bool
	}{
		{"verified list, first", verified, "AAPL", true},
		{"verified list, last", verified, "MSFT", true},
		{"verified list, with a dot", verified, "BRK.B", true},
		{"verified list, absent", verified, "GOOG", false},
		{"verified list, lower case is not normalised", verified, "aapl", false},
		{"all", auth.Claims{AllSymbols: true}, "GOOG", true},
		{"zero Claims allows none", auth.Claims{}, "AAPL", false},
		{"built by hand, unsorted", auth.Claims{Symbols: []string{"MSFT", "AAPL"}}, "AAPL", true},
		{"built by hand, absent", auth.Claims{Symbols: []string{"MSFT", "AAPL"}}, "GOOG", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.Allows(tt.symbol); got != tt.want {
				t.Errorf("Allows(%q): got %v, want %v", tt.symbol, got, tt.want)
			}
		})
	}
}

// BenchmarkAllows measures the per-subscribe check against a list at the
// cap: binary search keeps it at a few dozen comparisons.
func BenchmarkAllows(b *testing.B) {
	list := make([]any, auth.MaxSymbols)
	for i := range list {
		list[i] = fmt.Sprintf("S%05d", i)
	}
	v := auth.NewVerifier(testSecret, clock)
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(time.Hour).Unix(), "symbols": list}).SignedString(testSecret)
	if err != nil {
		b.Fatal(err)
	}
	c, err := v.Verify(token)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !c.Allows("S09999") {
			b.Fatal("S09999 not allowed")
		}
	}
}
