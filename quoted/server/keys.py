"""Verification keys: which PEM keys the server accepts and which algorithms each may verify.

The policy is the key's, never the token's: a shared secret verifies HS256/384/512, an RSA key
(2048 bits or more) RS* and PS*, an ECDSA key only its curve's ES algorithm, an Ed25519 key
EdDSA. Used by the verifier (quoted.server.auth) for a PEM key and by the key-set fetcher
(quoted.server.jwks) for each JWK, so neither imports the other.
"""

from __future__ import annotations

import re
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from quoted.wire.tokens import HMAC_ALGORITHMS

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "PublicKey",
    "algorithms_for",
    "load_public_key",
]

MIN_RSA_BITS: Final = 2048
RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS: Final[dict[str, str]] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

ASYMMETRIC_ALGORITHMS: Final = (*RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA")


_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


def load_public_key(pem: bytes) -> PublicKey:
    """The first key of a PEM file: a PKIX ``PUBLIC KEY``, a PKCS #1 ``RSA PUBLIC KEY`` or a
    ``CERTIFICATE`` (its dates and chain are not checked: the file is trusted config).

    Other blocks (``EC PARAMETERS``) are skipped; a private key is refused, since the server
    only verifies. Raises ValueError with a reason that never quotes the file.
    """
    for match in _PEM_BLOCK.finditer(pem):
        kind = match.group(1).decode("ascii")
        block = match.group(0)
        try:
            if kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key: Any = load_pem_public_key(block)
            elif kind == "CERTIFICATE":
                key = x509.load_pem_x509_certificate(block).public_key()
            elif kind.endswith("PRIVATE KEY"):
                raise ValueError("holds a private key, want the public key only")
            else:
                continue
        except ValueError as exc:
            if "private key" in str(exc):
                raise
            raise ValueError(f"the {kind} PEM block does not parse") from None
        except Exception:  # cryptography's UnsupportedAlgorithm and the like
            raise ValueError(f"the {kind} PEM block holds an unsupported key") from None
        if not isinstance(key, PublicKey):
            raise ValueError("key type not supported, want RSA, ECDSA or Ed25519")
        return key
    raise ValueError('no "PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE" PEM block')


def algorithms_for(key: PublicKey) -> tuple[str, ...]:
    """The algorithms ``key`` may verify; ValueError for a key this server does not support."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits, want at least {MIN_RSA_BITS}")
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError("ECDSA curve not supported, want P-256, P-384 or P-521")
        return (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    raise ValueError("key type not supported, want RSA, ECDSA or Ed25519")
