package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// minRSABits refuses RSA keys too short to be trusted for signatures.
const minRSABits = 2048

// asymmetricMethods are the algorithms a JWK Set may verify: each key then
// narrows them by its type and curve, and by its alg when it has one.
// HMAC is left out: a shared secret published at a URL is not secret.
var asymmetricMethods = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512", "EdDSA",
}

// parsePublicKey reads the first key of a PEM file: a PKIX "PUBLIC KEY",
// a PKCS #1 "RSA PUBLIC KEY", or a "CERTIFICATE" whose key is used (its
// validity dates and chain are not checked: the file is trusted config).
// Blocks of other types, such as "EC PARAMETERS", are skipped.
func parsePublicKey(data []byte) (any, error) {
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		switch {
		case block.Type == "PUBLIC KEY":
			return x509.ParsePKIXPublicKey(block.Bytes)
		case block.Type == "RSA PUBLIC KEY":
			return x509.ParsePKCS1PublicKey(block.Bytes)
		case block.Type == "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, err
			}
			return cert.PublicKey, nil
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			// The server only verifies: it must not hold the signing key.
			return nil, errors.New("holds a private key, want the public key only")
		}
	}
	return nil, errors.New(`no "PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE" PEM block`)
}

// methodsFor returns the algorithms key may verify, each key type and
// curve allowing only its own, or an error for a key this server does not
// support.
func methodsFor(key any) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits, want at least %d", k.N.BitLen(), minRSABits)
		}
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		if m := ecdsaMethod(k.Curve); m != nil {
			return []string{m.Alg()}, nil
		}
		return nil, errors.New("ECDSA curve not supported, want P-256, P-384 or P-521")
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	default:
		return nil, errors.New("key type not supported, want RSA, ECDSA or Ed25519")
	}
}

// ecdsaMethod is the one algorithm of a curve: ES256 signs only on P-256
// (RFC 7518 section 3.4), and so on.
func ecdsaMethod(c elliptic.Curve) *jwt.SigningMethodECDSA {
	switch c {
	case elliptic.P256():
		return jwt.SigningMethodES256
	case elliptic.P384():
		return jwt.SigningMethodES384
	case elliptic.P521():
		return jwt.SigningMethodES512
	}
	return nil
}

// fits reports whether token method m may be verified with key: the
// type check behind every keyfunc, so that no key is ever used with
// another family's algorithm (an RSA key's bytes as an HMAC secret), nor
// an RSA key from a JWK Set that is too short.
func fits(m jwt.SigningMethod, key any) bool {
	switch k := key.(type) {
	case []byte:
		_, ok := m.(*jwt.SigningMethodHMAC)
		return ok && len(k) > 0
	case *rsa.PublicKey:
		switch m.(type) {
		case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
			return k.N.BitLen() >= minRSABits
		}
		return false
	case *ecdsa.PublicKey:
		want := ecdsaMethod(k.Curve)
		return want != nil && m.Alg() == want.Alg()
	case ed25519.PublicKey:
		_, ok := m.(*jwt.SigningMethodEd25519)
		return ok
	default:
		return false
	}
}
