"""quoted.wire.tokens.mint_token's claims, read back with pyjwt (the server's verifier is
tests/server/test_auth.py's)."""

from __future__ import annotations

import jwt
import pytest

from quoted.wire.tokens import mint_token

SECRET = b"test-secret-that-is-at-least-32-bytes-long!"
NOW = 1_800_000_000.0


def claims(token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    return decoded


@pytest.mark.parametrize("scope", ["quotes:publish", "read quotes:publish"])
def test_scope_claim_when_given(scope: str) -> None:
    token = mint_token(SECRET, "feed", now=NOW, ttl=60, scope=scope)
    assert claims(token) == {"sub": "feed", "iat": int(NOW), "exp": int(NOW) + 60, "scope": scope}


def test_no_scope_claim_by_default() -> None:
    assert "scope" not in claims(mint_token(SECRET, "feed", now=NOW, ttl=60))
