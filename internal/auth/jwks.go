package auth

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// JWK Set defaults; see Options.
const (
	jwksFetchTimeout       = 10 * time.Second
	jwksRefreshInterval    = time.Hour
	jwksUnknownKIDInterval = 30 * time.Second
)

// signingUses are the JWK "use" values whose keys may verify tokens: a key
// marked "enc" is for encryption only. Most sets leave use out.
var signingUses = []jwkset.USE{jwkset.UseSig, ""}

// newJWKS fetches the JWK Set at o.JWKSURL and returns the keyfunc that
// reads it, refreshed every o.JWKSRefreshInterval and, rate-limited, on
// an unknown kid, until ctx ends.
func newJWKS(ctx context.Context, o Options) (kf keyfunc.Keyfunc, err error) {
	if u, err := url.Parse(o.JWKSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("want an http or https URL")
	}
	// jwkset starts the refresh goroutine before its first fetch: stop it
	// when New fails.
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	cached, err := jwkset.NewStorageFromHTTP(o.JWKSURL, jwkset.HTTPClientStorageOptions{
		Client:              httpClient(o.HTTPClient),
		Ctx:                 ctx,
		HTTPTimeout:         jwksFetchTimeout,
		RefreshErrorHandler: refreshLogger(o.Logger),
		RefreshInterval:     orDefault(o.JWKSRefreshInterval, jwksRefreshInterval),
	})
	if err != nil {
		return nil, fmt.Errorf("fetch JWK Set: %w", err)
	}
	if err := checkUsable(ctx, cached); err != nil {
		return nil, err
	}
	refetch, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{o.JWKSURL: cached},
		// unknownKIDGate does the limiting without making anyone wait;
		// jwkset's limiter would queue every caller behind the next slot.
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
		RateLimitWaitMax:  jwksFetchTimeout, // the deadline of the fetch itself
	})
	if err != nil {
		return nil, fmt.Errorf("JWK Set client: %w", err)
	}
	gate := unknownKIDGate{
		Storage: cached,
		refetch: refetch,
		limit:   rate.NewLimiter(rate.Every(orDefault(o.JWKSUnknownKIDRate, jwksUnknownKIDInterval)), 1),
	}
	return keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: gate, UseWhitelist: signingUses})
}

// unknownKIDGate is the JWK Set storage keyfunc reads. A kid in the cache
// is answered from it; an unknown one fetches the set again when the
// limiter has a token to spare, and is refused at once when not.
type unknownKIDGate struct {
	jwkset.Storage                // the cache: reads never fetch
	refetch        jwkset.Storage // fetches into the cache, then reads
	limit          *rate.Limiter  // spaces the fetches unknown kids cause
}

// KeyRead returns the key with id kid, fetching the set again if it is
// unknown and the limiter allows.
func (g unknownKIDGate) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	jwk, err := g.Storage.KeyRead(ctx, kid)
	if errors.Is(err, jwkset.ErrKeyNotFound) && g.limit.Allow() {
		return g.refetch.KeyRead(ctx, kid)
	}
	return jwk, err
}

// jwksKey is keyFor for a JWK Set: keyfunc picks the key by kid (or all
// keys when there is none) and checks the JWK's alg and use; fits then
// checks that the token's algorithm belongs to the key's type and curve.
// Its errors quote the token's kid and alg, but refusal drops them.
func (v *Verifier) jwksKey(t *jwt.Token) (any, error) {
	got, err := v.jwks.Keyfunc(t)
	if err != nil {
		return nil, err
	}
	set, ok := got.(jwt.VerificationKeySet)
	if !ok {
		if !fits(t.Method, got) {
			return nil, errors.New("algorithm does not fit the key")
		}
		return got, nil
	}
	set.Keys = slices.DeleteFunc(set.Keys, func(k jwt.VerificationKey) bool { return !fits(t.Method, k) })
	if len(set.Keys) == 0 {
		return nil, errors.New("no key fits the algorithm")
	}
	return set, nil
}

// checkUsable fails when the set holds no key that could verify a token,
// so that a wrong URL is found at start rather than at every handshake.
func checkUsable(ctx context.Context, s jwkset.Storage) error {
	jwks, err := s.KeyReadAll(ctx)
	if err != nil {
		return fmt.Errorf("read JWK Set: %w", err)
	}
	for _, j := range jwks {
		if !slices.Contains(signingUses, j.Marshal().USE) {
			continue
		}
		if _, err := methodsFor(publicKey(j.Key())); err == nil {
			return nil
		}
	}
	return fmt.Errorf("none of the JWK Set's %d keys is an RSA (2048 bits or more), ECDSA or Ed25519 signing key", len(jwks))
}

// publicKey returns the public half of key when a set publishes a private
// key, as keyfunc does.
func publicKey(key any) any {
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		return pk.Public()
	}
	return key
}

// httpClient is c, or a client with jwksFetchTimeout when nil.
func httpClient(c *http.Client) *http.Client {
	if c != nil {
		return c
	}
	return &http.Client{Timeout: jwksFetchTimeout}
}

// refreshLogger returns jwkset's handler of failed refreshes: the cached
// keys stay in use, but operators should know the issuer is unreachable.
func refreshLogger(l *slog.Logger) func(context.Context, error) {
	if l == nil {
		return nil
	}
	return func(ctx context.Context, err error) {
		l.WarnContext(ctx, "JWK Set refresh failed; keeping the cached keys", "err", err)
	}
}

// orDefault is d, or def when d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
