"""Token verification cost per handshake, by key type: ``python bench/auth_verify.py``.

Each figure is the median, over ``--runs`` runs, of the mean time of one
``TokenVerifier.verify`` (parse, signature, claims) in a timeit loop of ``--number`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from functools import partial
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.task import Clock

from quoted.server.auth import TokenVerifier

SECRET = b"bench-secret-that-is-at-least-32-bytes-long"


def cases() -> list[tuple[str, TokenVerifier, str]]:
    clock = Clock()
    clock.advance(time.time())
    claims = {"sub": "bench", "exp": int(clock.seconds()) + 3600, "symbols": ["AAPL", "MSFT"]}
    out = [("HS256", TokenVerifier(clock, secret=SECRET), jwt.encode(claims, SECRET, "HS256"))]
    keys: list[tuple[str, Any]] = [
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ]
    for alg, key in keys:
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out.append((alg, TokenVerifier(clock, public_key_pem=pem), jwt.encode(claims, key, alg)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'algorithm':<10} {'µs/verify (median)':>20} {'min':>8} {'max':>8}")
    for alg, verifier, token in cases():
        assert verifier.verify(token).subject == "bench"
        runs = timeit.repeat(partial(verifier.verify, token), number=args.number, repeat=args.runs)
        per = [r / args.number * 1e6 for r in runs]
        print(f"{alg:<10} {statistics.median(per):>20.1f} {min(per):>8.1f} {max(per):>8.1f}")


if __name__ == "__main__":
    main()
