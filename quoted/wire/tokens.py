"""Minting tokens: the HMAC-signed JWTs of development mode, tests and the load generator.

Verification is the server's (quoted.server.auth); this is the one piece both sides need.
"""

from __future__ import annotations

import math
from typing import Any, Final

import jwt

__all__ = ["HMAC_ALGORITHMS", "mint_token"]

HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")


def mint_token(
    secret: bytes,
    subject: str,
    *,
    now: float,
    ttl: float,
    symbols: list[str] | None = None,
    algorithm: str = "HS256",
    issuer: str = "",
    audience: str = "",
    scope: str | None = None,
) -> str:
    """An HMAC-signed token for ``subject``: iat ``now``, exp ``now + ttl`` (whole seconds; a
    negative ttl makes an expired token), the ``symbols`` claim when given, ``iss``/``aud``
    when given, and the ``scope`` claim (OAuth's space-separated string, such as
    ``"quotes:publish"`` for the publish API) when given. For the development-mode demo
    token, tests and the load generator."""
    if not subject:
        raise ValueError("mint token: empty subject")
    if not secret:
        raise ValueError("mint token: no secret")
    if algorithm not in HMAC_ALGORITHMS:
        raise ValueError(f"mint token: algorithm must be one of {', '.join(HMAC_ALGORITHMS)}")
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": math.floor(now),
        "exp": math.floor(now + ttl),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if symbols is not None:
        claims["symbols"] = list(symbols)
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm=algorithm)
