package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Options configure New. Exactly one of Secret, PublicKeyPEM and JWKSURL
// is set; the accepted algorithms follow from it, so that a token can never
// choose how it is checked.
type Options struct {
	// Secret (JWT_SECRET) verifies HS256, HS384 and HS512 tokens.
	Secret []byte
	// PublicKeyPEM is the content of JWT_PUBLIC_KEY_FILE: a PEM "PUBLIC
	// KEY" (PKIX), "RSA PUBLIC KEY" (PKCS #1) or "CERTIFICATE". An RSA key
	// (2048 bits or more) verifies RS256/384/512 and PS256/384/512, an
	// ECDSA key only the algorithm of its curve (P-256 ES256, P-384 ES384,
	// P-521 ES512), an Ed25519 key EdDSA.
	PublicKeyPEM []byte
	// JWKSURL (JWT_JWKS_URL) is an http or https URL serving a JWK Set. A
	// token's kid picks the key (a token without kid is tried against
	// every key); the key's type, curve and alg, when the JWK has one,
	// limit the algorithm as for PublicKeyPEM. Symmetric ("oct") keys and
	// keys whose use is "enc" verify nothing.
	JWKSURL string

	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Audience, when set, must be one of the token's aud.
	Audience string
	// Leeway is the clock skew tolerated on exp, nbf and iat. Zero
	// tolerates none; config's default is the Leeway constant.
	Leeway time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// HTTPClient fetches the JWK Set; nil means a client with a 10s
	// timeout. Its timeout, if any, applies on top of the 10s each fetch
	// is given.
	HTTPClient *http.Client
	// JWKSRefreshInterval is how often the JWK Set is fetched again, so
	// that retired keys stop verifying; zero means one hour.
	JWKSRefreshInterval time.Duration
	// JWKSUnknownKIDRate is the least time between fetches triggered by a
	// token whose kid is not in the cached set: the issuer's new key is
	// picked up at once, yet a flood of made-up kids costs the issuer at
	// most one request per interval. Tokens that arrive while the limit
	// holds are refused at once rather than kept waiting. Zero means 30s.
	JWKSUnknownKIDRate time.Duration
	// Logger receives JWK Set refresh failures (the cached keys stay in
	// use); nil discards them.
	Logger *slog.Logger
}

// keySources names the environment variables behind the key options, in
// the order New's errors list them.
var keySources = []string{"JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_JWKS_URL"}

// New returns a verifier for the one key source o sets. With JWKSURL it
// fetches the JWK Set before returning and fails if that fetch fails or
// yields no usable key, so a misconfigured server refuses to start rather
// than refuse every client; it then refreshes the set in a goroutine that
// ends with ctx. Errors name the environment variable at fault.
func New(ctx context.Context, o Options) (*Verifier, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	v := &Verifier{now: now, issuer: o.Issuer, audience: o.Audience}
	methods, err := v.setKey(ctx, o)
	if err != nil {
		return nil, err
	}
	v.parser = newParser(methods, o.Leeway, now, o.Issuer, o.Audience)
	return v, nil
}

// check refuses options New cannot honour.
func (o Options) check() error {
	var set []string
	for i, ok := range []bool{len(o.Secret) > 0, len(o.PublicKeyPEM) > 0, o.JWKSURL != ""} {
		if ok {
			set = append(set, keySources[i])
		}
	}
	if len(set) != 1 {
		return fmt.Errorf("set exactly one of %s: %s", strings.Join(keySources, ", "), conflict(set))
	}
	if o.Leeway < 0 || o.JWKSRefreshInterval < 0 || o.JWKSUnknownKIDRate < 0 {
		return errors.New("leeway and JWKS intervals must not be negative")
	}
	return nil
}

// conflict says which key sources are set, when not exactly one.
func conflict(set []string) string {
	switch len(set) {
	case 0:
		return "none is set"
	case 2:
		return strings.Join(set, " and ") + " are both set"
	default:
		return strings.Join(set, ", ") + " are all set"
	}
}

// setKey installs o's key source in v and returns the algorithms it
// verifies.
func (v *Verifier) setKey(ctx context.Context, o Options) ([]string, error) {
	switch {
	case len(o.Secret) > 0:
		v.secret = bytes.Clone(o.Secret) // the caller may reuse its slice
		return hmacMethods, nil
	case len(o.PublicKeyPEM) > 0:
		key, err := parsePublicKey(o.PublicKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("JWT_PUBLIC_KEY_FILE: %w", err)
		}
		methods, err := methodsFor(key)
		if err != nil {
			return nil, fmt.Errorf("JWT_PUBLIC_KEY_FILE: %w", err)
		}
		v.key = key
		return methods, nil
	default:
		kf, err := newJWKS(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("JWT_JWKS_URL: %w", err)
		}
		v.jwks = kf
		return asymmetricMethods, nil
	}
}
