// Package auth verifies the JSON Web Tokens clients present, against a
// shared secret, a public key or a JWK Set, reads the symbols a token
// entitles its holder to and, in development mode, mints the demo token.
// Errors never contain any part of a token.
package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
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
	// signature, an algorithm the configured key does not allow (none
	// always), an unknown key id, no exp, no sub, not valid yet, issued in
	// the future, wrong issuer or audience, a malformed symbols claim.
	ErrInvalid = errors.New("invalid token")
	// ErrExpired: correctly signed, but exp is more than the leeway ago.
	// It is its own error so clients know to fetch a fresh token.
	ErrExpired = errors.New("token expired")
)

// Leeway is the clock skew NewVerifier tolerates on exp, nbf and iat, since
// issuers' clocks are not ours. It is also the usual Options.Leeway.
const Leeway = 30 * time.Second

// hmacMethods are the algorithms a shared secret verifies.
var hmacMethods = []string{"HS256", "HS384", "HS512"}

// Verifier checks tokens against one key source: a shared secret, a public
// key, or a JWK Set fetched over HTTP. It is built once (NewVerifier or
// New) so that each handshake only parses and checks. It is safe for
// concurrent use.
type Verifier struct {
	secret           []byte           // HMAC key, also Mint's; nil for other sources
	issuer, audience string           // required when set; Mint writes them
	key              any              // public key from PEM; nil for other sources
	jwks             keyfunc.Keyfunc  // JWK Set lookup; nil for other sources
	now              func() time.Time // Mint's clock; the parser holds it too
	parser           *jwt.Parser      // built once; its algorithms follow the key
}

// NewVerifier returns a verifier of HS256/384/512 tokens for secret, with
// the default Leeway and no issuer or audience check: development mode and
// tests. now is the clock (nil means time.Now), so tests can move it. An
// empty secret verifies nothing: every token is ErrInvalid, rather than
// HMAC with an empty key.
func NewVerifier(secret []byte, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	return &Verifier{
		secret: bytes.Clone(secret), // the caller may reuse its slice
		now:    now,
		parser: newParser(hmacMethods, Leeway, now, "", ""),
	}
}

// newParser builds the parser every Verify shares. Naming the algorithms
// shuts out "none" and tokens whose algorithm does not belong to the key
// (algorithm confusion); issuer and audience are required when non-empty.
func newParser(methods []string, leeway time.Duration, now func() time.Time, issuer, audience string) *jwt.Parser {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(now),
	}
	if issuer != "" {
		opts = append(opts, jwt.WithIssuer(issuer))
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	return jwt.NewParser(opts...)
}

// tokenClaims is what Verify decodes: the registered claims plus the
// symbols entitlement, kept raw so that its shape can be checked.
type tokenClaims struct {
	jwt.RegisteredClaims
	Symbols json.RawMessage `json:"symbols"`
}

// Verify checks token's algorithm, signature, exp (required), nbf, iat,
// iss and aud (when configured), sub (required) and symbols, and returns
// its claims. errors.Is matches the error with ErrMalformed, ErrExpired or
// ErrInvalid; its text never holds any part of the token, so it can be
// logged and sent to the client.
func (v *Verifier) Verify(token string) (Claims, error) {
	var tc tokenClaims
	if _, err := v.parser.ParseWithClaims(token, &tc, v.keyFor); err != nil {
		return Claims{}, refusal(err, &tc)
	}
	if tc.Subject == "" {
		return Claims{}, fmt.Errorf("%w: sub claim missing", ErrInvalid)
	}
	c := Claims{Subject: tc.Subject, ExpiresAt: tc.ExpiresAt.Time}
	if err := c.setSymbols(tc.Symbols); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// keyFor is the jwt.Keyfunc. The parser has already refused algorithms
// the key source does not allow; the type check keeps a key from ever
// being used with another family's algorithm should that list be wrong.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	switch {
	case v.jwks != nil:
		return v.jwksKey(t)
	case v.key != nil:
		if !fits(t.Method, v.key) {
			return nil, errors.New("algorithm does not fit the key")
		}
		return v.key, nil
	case len(v.secret) == 0:
		return nil, errors.New("no secret")
	case !fits(t.Method, v.secret):
		return nil, errors.New("not an HMAC algorithm")
	default:
		return v.secret, nil
	}
}

// refusal maps a jwt/v5 error onto this package's sentinels with a fixed
// reason. jwt's own messages are dropped: some quote the token's header
// (its alg or kid) or bytes of its JSON. The order matters where jwt joins
// several claim errors: a token from the wrong issuer is ErrInvalid even
// when it has also expired, since a fresh one would not help. tc is read
// only to name a missing claim, which jwt reports after the signature
// was verified.
func refusal(err error, tc *tokenClaims) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ErrMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: bad signature or algorithm not allowed", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return fmt.Errorf("%w: cannot be verified (unknown algorithm or no key)", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return fmt.Errorf("%w: wrong issuer", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return fmt.Errorf("%w: wrong audience", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: %s claim missing", ErrInvalid, missingClaim(tc))
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Errorf("%w: not valid yet", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fmt.Errorf("%w: issued in the future", ErrInvalid)
	default:
		return ErrInvalid
	}
}

// missingClaim names the required claim tc lacks: exp, or else the iss or
// aud that the issuer or audience setting requires.
func missingClaim(tc *tokenClaims) string {
	switch {
	case tc.ExpiresAt == nil:
		return "exp"
	case tc.Issuer == "":
		return "iss"
	default:
		return "aud"
	}
}

// Mint signs an HS256 token for subject with iat now, exp after ttl, and
// the issuer and audience this verifier requires: the development-mode
// demo token, and tokens for tests. It has no symbols claim, so the token
// allows every symbol. A negative ttl makes an already expired token. Only
// a verifier with a secret can mint.
func (v *Verifier) Mint(subject string, ttl time.Duration) (string, error) {
	if subject == "" {
		return "", fmt.Errorf("mint token: %w: empty subject", ErrInvalid)
	}
	if len(v.secret) == 0 {
		return "", errors.New("mint token: no secret")
	}
	now := v.now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer:    v.issuer,
		Audience:  audience(v.audience),
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

// audience is the aud claim Mint writes: none, or the one required.
func audience(aud string) jwt.ClaimStrings {
	if aud == "" {
		return nil
	}
	return jwt.ClaimStrings{aud}
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
