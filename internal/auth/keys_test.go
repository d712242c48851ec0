package auth_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tickstream/tickstream/internal/auth"
)

// testKeys are generated once per test binary: RSA generation is slow
// under the race detector.
type testKeys struct {
	rsa, rsaOther     *rsa.PrivateKey
	rsaSmall          *rsa.PrivateKey // 1024 bits: too short to trust
	ec256, ec256Other *ecdsa.PrivateKey
	ec384             *ecdsa.PrivateKey
	ed, edOther       ed25519.PrivateKey
}

var keysOnce = sync.OnceValues(func() (*testKeys, error) {
	var k testKeys
	var errs [8]error
	k.rsa, errs[0] = rsa.GenerateKey(rand.Reader, 2048)
	k.rsaOther, errs[1] = rsa.GenerateKey(rand.Reader, 2048)
	k.ec256, errs[2] = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ec256Other, errs[3] = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ec384, errs[4] = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, k.ed, errs[5] = ed25519.GenerateKey(rand.Reader)
	_, k.edOther, errs[6] = ed25519.GenerateKey(rand.Reader)
	k.rsaSmall, errs[7] = rsa.GenerateKey(rand.Reader, 1024)
	return &k, errors.Join(errs[:]...)
})

func keys(t testing.TB) *testKeys {
	t.Helper()
	k, err := keysOnce()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pkixPEM returns pub as a PEM "PUBLIC KEY" block, and its DER bytes.
func pkixPEM(t testing.TB, pub any) (pemBytes, der []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), der
}

// certPEM returns a self-signed certificate for key as a PEM "CERTIFICATE".
func certPEM(t testing.TB, key *rsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer.test"},
		NotBefore:    testNow.Add(-time.Hour),
		NotAfter:     testNow.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// newVerifier returns New(o) with the test clock, failing the test on error.
func newVerifier(t testing.TB, o auth.Options) *auth.Verifier {
	t.Helper()
	if o.Now == nil {
		o.Now = clock
	}
	v, err := auth.New(t.Context(), o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return v
}

func TestNewPublicKeys(t *testing.T) {
	k := keys(t)
	exp := testNow.Add(time.Hour).Unix()
	claims := jwt.MapClaims{"sub": "u1", "exp": exp}
	rsaPEM, rsaDER := pkixPEM(t, &k.rsa.PublicKey)
	ec256PEM, _ := pkixPEM(t, &k.ec256.PublicKey)
	ec384PEM, _ := pkixPEM(t, &k.ec384.PublicKey)
	edPEM, _ := pkixPEM(t, k.ed.Public())
	pkcs1PEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})
	// Key files often carry EC PARAMETERS or a comment block first.
	withParams := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8}}), ec256PEM...)

	vRSA := newVerifier(t, auth.Options{PublicKeyPEM: rsaPEM})
	vPKCS1 := newVerifier(t, auth.Options{PublicKeyPEM: pkcs1PEM})
	vCert := newVerifier(t, auth.Options{PublicKeyPEM: certPEM(t, k.rsa)})
	vEC256 := newVerifier(t, auth.Options{PublicKeyPEM: ec256PEM})
	vEC256Params := newVerifier(t, auth.Options{PublicKeyPEM: withParams})
	vEC384 := newVerifier(t, auth.Options{PublicKeyPEM: ec384PEM})
	vEd := newVerifier(t, auth.Options{PublicKeyPEM: edPEM})
	vHMAC := newVerifier(t, auth.Options{Secret: testSecret})

	none := sign(t, jwt.SigningMethodNone, claims, jwt.UnsafeAllowNoneSignatureType)
	tests := []struct {
		name  string
		v     *auth.Verifier
		token string
		want  error // nil: accepted with sub "u1"
	}{
		{"RS256", vRSA, sign(t, jwt.SigningMethodRS256, claims, k.rsa), nil},
		{"RS384", vRSA, sign(t, jwt.SigningMethodRS384, claims, k.rsa), nil},
		{"RS512", vRSA, sign(t, jwt.SigningMethodRS512, claims, k.rsa), nil},
		{"PS256", vRSA, sign(t, jwt.SigningMethodPS256, claims, k.rsa), nil},
		{"RS256, RSA PUBLIC KEY file", vPKCS1, sign(t, jwt.SigningMethodRS256, claims, k.rsa), nil},
		{"RS256, CERTIFICATE file", vCert, sign(t, jwt.SigningMethodRS256, claims, k.rsa), nil},
		{"ES256", vEC256, sign(t, jwt.SigningMethodES256, claims, k.ec256), nil},
		{"ES256, EC PARAMETERS block first", vEC256Params, sign(t, jwt.SigningMethodES256, claims, k.ec256), nil},
		{"ES384", vEC384, sign(t, jwt.SigningMethodES384, claims, k.ec384), nil},
		{"EdDSA", vEd, sign(t, jwt.SigningMethodEdDSA, claims, k.ed), nil},
		{"HS256 secret", vHMAC, sign(t, jwt.SigningMethodHS256, claims, testSecret), nil},
		{"HS384 secret", vHMAC, sign(t, jwt.SigningMethodHS384, claims, testSecret), nil},
		{"HS512 secret", vHMAC, sign(t, jwt.SigningMethodHS512, claims, testSecret), nil},

		{"RS256 wrong key", vRSA, sign(t, jwt.SigningMethodRS256, claims, k.rsaOther), auth.ErrInvalid},
		{"ES256 wrong key", vEC256, sign(t, jwt.SigningMethodES256, claims, k.ec256Other), auth.ErrInvalid},
		{"EdDSA wrong key", vEd, sign(t, jwt.SigningMethodEdDSA, claims, k.edOther), auth.ErrInvalid},
		{"alg none to RSA", vRSA, none, auth.ErrInvalid},
		{"alg none to ECDSA", vEC256, none, auth.ErrInvalid},
		{"alg none to Ed25519", vEd, none, auth.ErrInvalid},
		{"alg none to secret", vHMAC, none, auth.ErrInvalid},
		{"HS256 keyed with the RSA PEM", vRSA, sign(t, jwt.SigningMethodHS256, claims, rsaPEM), auth.ErrInvalid},
		{"HS256 keyed with the RSA DER", vRSA, sign(t, jwt.SigningMethodHS256, claims, rsaDER), auth.ErrInvalid},
		{"HS256 keyed with the RSA PKCS1 PEM", vPKCS1, sign(t, jwt.SigningMethodHS256, claims, pkcs1PEM), auth.ErrInvalid},
		{"HS256 keyed with the EC PEM", vEC256, sign(t, jwt.SigningMethodHS256, claims, ec256PEM), auth.ErrInvalid},
		{"HS256 keyed with the Ed25519 PEM", vEd, sign(t, jwt.SigningMethodHS256, claims, edPEM), auth.ErrInvalid},
		{"RS256 to a secret", vHMAC, sign(t, jwt.SigningMethodRS256, claims, k.rsa), auth.ErrInvalid},
		{"ES384 to a P-256 key", vEC256, sign(t, jwt.SigningMethodES384, claims, k.ec384), auth.ErrInvalid},
		{"ES256 to a P-384 key", vEC384, sign(t, jwt.SigningMethodES256, claims, k.ec256), auth.ErrInvalid},
		{"ES256 to an RSA key", vRSA, sign(t, jwt.SigningMethodES256, claims, k.ec256), auth.ErrInvalid},
		{"EdDSA to an RSA key", vRSA, sign(t, jwt.SigningMethodEdDSA, claims, k.ed), auth.ErrInvalid},
		{"RS256 to an Ed25519 key", vEd, sign(t, jwt.SigningMethodRS256, claims, k.rsa), auth.ErrInvalid},
		{"RS256 expired", vRSA, sign(t, jwt.SigningMethodRS256, jwt.MapClaims{"sub": "u1", "exp": testNow.Add(-time.Hour).Unix()}, k.rsa), auth.ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.v.Verify(tt.token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == nil && c.Subject != "u1" {
				t.Errorf("Subject: got %q, want %q", c.Subject, "u1")
			}
			assertNoTokenIn(t, err, tt.token)
		})
	}
}

func TestNewPublicKeyFileErrors(t *testing.T) {
	k := keys(t)
	smallPEM, _ := pkixPEM(t, &k.rsaSmall.PublicKey)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224PEM, _ := pkixPEM(t, &p224.PublicKey)
	privDER, err := x509.MarshalPKCS8PrivateKey(k.ec256)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pem  []byte
		want string // in the error, after JWT_PUBLIC_KEY_FILE
	}{
		{"not PEM", []byte("ssh-ed25519 AAAA"), "no \"PUBLIC KEY\""},
		{"private key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), "private key"},
		{"RSA private key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.rsa)}), "private key"},
		{"corrupt public key", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}), "asn1"},
		{"RSA key of 1024 bits", smallPEM, "1024 bits"},
		{"P-224 key", p224PEM, "curve not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := auth.New(t.Context(), auth.Options{PublicKeyPEM: tt.pem})
			if err == nil {
				t.Fatalf("got verifier %v, want an error", v)
			}
			if !strings.HasPrefix(err.Error(), "JWT_PUBLIC_KEY_FILE: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want JWT_PUBLIC_KEY_FILE: ...%s...", err, tt.want)
			}
		})
	}
}

func TestNewKeySources(t *testing.T) {
	rsaPEM, _ := pkixPEM(t, &keys(t).rsa.PublicKey)
	tests := []struct {
		name string
		o    auth.Options
		want string
	}{
		{"none", auth.Options{}, "none is set"},
		{"empty secret is none", auth.Options{Secret: []byte{}}, "none is set"},
		{"secret and key file", auth.Options{Secret: testSecret, PublicKeyPEM: rsaPEM}, "JWT_SECRET and JWT_PUBLIC_KEY_FILE are both set"},
		{"secret and JWKS", auth.Options{Secret: testSecret, JWKSURL: "http://127.0.0.1:1/jwks"}, "JWT_SECRET and JWT_JWKS_URL are both set"},
		{"all three", auth.Options{Secret: testSecret, PublicKeyPEM: rsaPEM, JWKSURL: "http://127.0.0.1:1/jwks"}, "are all set"},
		{"negative leeway", auth.Options{Secret: testSecret, Leeway: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := auth.New(t.Context(), tt.o)
			if err == nil {
				t.Fatal("got no error, want one")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
			if tt.want != "negative" {
				for _, env := range []string{"JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_JWKS_URL"} {
					if !strings.Contains(err.Error(), env) {
						t.Errorf("got %q, want it to name %s", err, env)
					}
				}
			}
			if strings.Contains(err.Error(), string(testSecret)) {
				t.Errorf("got %q, want no secret in it", err)
			}
		})
	}
}
