// Package auth verifies the JSON Web Tokens clients present and, in
// development mode, mints the demo token. Errors never contain any part of
// a token.
package auth

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Why a token was refused. Each maps to a 401 with its own error code, so
// callers test them with errors.Is: Verify may wrap them with a short
// reason that never quotes the token.
var (
	// ErrMissing: the request carries no token at all.
	ErrMissing = errors.New("missing token")
	// ErrMalformed: not a JWT (segments, base64 or JSON), or an
	// Authorization header that is not "Bearer <token>".
	ErrMalformed = errors.New("malformed token")
	// ErrInvalid: a well-formed JWT that must not be trusted: bad
	// signature, algorithm other than HS256/384/512 (including none), no
	// exp, no sub, not valid yet.
	ErrInvalid = errors.New("invalid token")
	// ErrExpired: correctly signed, but exp is more than Leeway ago. It is
	// its own error so clients know to fetch a fresh token.
	ErrExpired = errors.New("token expired")
)

// Leeway is the clock skew tolerated on exp, nbf and iat, since issuers'
// clocks are not ours.
const Leeway = 30 * time.Second

// Claims is what a verified token tells the server.
type Claims struct {
	Subject   string    // sub: the user id
	ExpiresAt time.Time // exp: after it (plus Leeway) the token is refused
}

// Verifier checks HS256/384/512 tokens against one shared secret. It is a
// struct built by NewVerifier so that asymmetric keys and JWKS can be added
// without changing callers. It is safe for concurrent use.
type Verifier struct {
	secret []byte
	now    func() time.Time
	parser *jwt.Parser
}

// NewVerifier returns a verifier for secret. now is the clock (nil means
// time.Now), so tests can move it. An empty secret verifies nothing:
// every token is ErrInvalid, rather than HMAC with an empty key.
func NewVerifier(secret []byte, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	return &Verifier{
		secret: bytes.Clone(secret), // the caller may reuse its slice
		now:    now,
		parser: jwt.NewParser(
			// Naming the algorithms shuts out "none" and RS/ES tokens
			// presented to an HMAC key (algorithm confusion).
			jwt.WithValidMethods([]string{"HS256", "HS384", "HS512"}),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(Leeway),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(now),
		),
	}
}

// Verify checks token's algorithm, signature, exp (required), nbf, iat and
// sub (required) and returns its claims. errors.Is matches the error with
// ErrMalformed, ErrExpired or ErrInvalid; its text never holds any part of
// the token, so it can be logged and sent to the client.
func (v *Verifier) Verify(token string) (Claims, error) {
	var rc jwt.RegisteredClaims
	if _, err := v.parser.ParseWithClaims(token, &rc, v.key); err != nil {
		return Claims{}, refusal(err)
	}
	if rc.Subject == "" {
		return Claims{}, fmt.Errorf("%w: sub claim missing", ErrInvalid)
	}
	return Claims{Subject: rc.Subject, ExpiresAt: rc.ExpiresAt.Time}, nil
}

// key is the jwt.Keyfunc. The parser has already refused algorithms other than
// HS256/384/512; the type check keeps an HMAC secret from ever being used as
// another algorithm's key should the list grow.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
		return nil, errors.New("not an HMAC algorithm")
	}
	if len(v.secret) == 0 {
		return nil, errors.New("no secret")
	}
	return v.secret, nil
}

// refusal maps a jwt/v5 error onto this package's sentinels with a fixed
// reason. jwt's own messages are dropped: some quote the token's header
// (such as its alg) or bytes of its JSON.
func refusal(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ErrMalformed
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: bad signature or algorithm not allowed", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return fmt.Errorf("%w: cannot be verified (unknown algorithm or no key)", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: exp claim missing", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Errorf("%w: not valid yet", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fmt.Errorf("%w: issued in the future", ErrInvalid)
	default:
		return ErrInvalid
	}
}

// Mint signs an HS256 token for subject with iat now and exp after ttl: the
// development-mode demo token, and tokens for tests. A negative ttl makes
// an already expired token.
func (v *Verifier) Mint(subject string, ttl time.Duration) (string, error) {
	if subject == "" {
		return "", fmt.Errorf("mint token: %w: empty subject", ErrInvalid)
	}
	if len(v.secret) == 0 {
		return "", errors.New("mint token: no secret")
	}
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

// FromRequest returns the token of "Authorization: Bearer <t>" (scheme in
// any case) or, when no Authorization header is sent, of the query
// parameter token, for clients such as browsers' WebSocket that cannot set
// headers. No token is ErrMissing. An Authorization header that is present
// but not one "Bearer <non-empty>" is ErrMalformed, even when the query
// has a token: a client that sent credentials should hear they are wrong.
func FromRequest(r *http.Request) (string, error) {
	if hs := r.Header.Values("Authorization"); len(hs) > 0 {
		if len(hs) > 1 {
			return "", ErrMalformed
		}
		scheme, token, ok := strings.Cut(hs[0], " ")
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
