// Package auth verifies the JSON Web Tokens clients present and, in
// development mode, mints the demo token. Errors never contain any part of
// a token.
package auth

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Why a token was refused. Each maps to a 401 with its own error code.
var (
	ErrMissing   = errors.New("missing token")
	ErrMalformed = errors.New("malformed token")
	ErrInvalid   = errors.New("invalid token")
	ErrExpired   = errors.New("token expired")
)

// Leeway is the clock skew tolerated on exp, nbf and iat.
const Leeway = 30 * time.Second

// Claims is what a verified token tells the server.
type Claims struct {
	Subject   string // the user id
	ExpiresAt time.Time
}

// Verifier checks HS256/384/512 tokens against one shared secret.
type Verifier struct {
	secret []byte
	now    func() time.Time
	parser *jwt.Parser
}

// NewVerifier returns a verifier for secret. now is the clock (nil means
// time.Now), so tests can move it.
func NewVerifier(secret []byte, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	return &Verifier{
		secret: secret,
		now:    now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"HS256", "HS384", "HS512"}),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(Leeway),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(now),
		),
	}
}

// Verify checks token's signature, algorithm and times and returns its
// claims. The error is one of ErrMalformed, ErrExpired or ErrInvalid.
func (v *Verifier) Verify(token string) (Claims, error) {
	var rc jwt.RegisteredClaims
	_, err := v.parser.ParseWithClaims(token, &rc, func(*jwt.Token) (any, error) { return v.secret, nil })
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenMalformed):
		return Claims{}, ErrMalformed
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, ErrExpired
	default:
		return Claims{}, ErrInvalid
	}
	if rc.Subject == "" {
		return Claims{}, fmt.Errorf("%w: sub is required", ErrInvalid)
	}
	return Claims{Subject: rc.Subject, ExpiresAt: rc.ExpiresAt.Time}, nil
}

// Mint signs an HS256 token for subject that expires after ttl.
func (v *Verifier) Mint(subject string, ttl time.Duration) (string, error) {
	now := v.now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   subject,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	})
	s, err := t.SignedString(v.secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// RandomSecret returns 32 random bytes: the development-mode secret.
func RandomSecret() ([]byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("random secret: %w", err)
	}
	return b, nil
}

// FromRequest returns the token of "Authorization: Bearer <t>" or, when no
// Authorization header is sent, of the query parameter token (for clients,
// such as browsers' WebSocket, that cannot set headers).
func FromRequest(r *http.Request) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		token = strings.TrimSpace(token)
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return "", ErrMalformed
		}
		return token, nil
	}
	if t := r.URL.Query().Get("token"); t != "" {
		return t, nil
	}
	return "", ErrMissing
}
