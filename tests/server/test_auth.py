"""Token verification, ported from the Go prototype's token_test, claims_test and keys_test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from quoted.server.auth import (
    MESSAGES,
    Claims,
    TokenError,
    TokenVerifier,
    bearer_token,
)
from quoted.server.config import AuthConfig
from quoted.server.keys import load_public_key
from quoted.wire.tokens import mint_token

NOW = 1_795_000_000.0
SECRET = b"test-secret-" * 6  # 66 bytes: long enough for HS512 without pyjwt warnings
OTHER_SECRET = b"another-secret-" * 5
ISSUER = "https://issuer.test/"
AUDIENCE = "quoted-test"


def clock_at(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def hmac_verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(clock_at(), secret=SECRET, **kwargs)


def sign(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def good(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "u1", "exp": NOW + 3600}
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: str, payload: str, signature: str) -> str:
    return f"{b64(header.encode())}.{b64(payload.encode())}.{signature}"


def hs256_raw(payload: str, key: bytes = SECRET) -> str:
    """An HS256 token over any payload text, which pyjwt's encoder would refuse to write."""
    signing_input = hand_made('{"alg":"HS256","typ":"JWT"}', payload, "")[:-1]
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def refused(verifier: TokenVerifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    err = info.value
    assert_no_leak(err, token)
    return err


def assert_no_leak(err: TokenError, token: str) -> None:
    """No part of the token in anything the error shows."""
    assert err.message == MESSAGES[err.code]
    shown = " ".join([err.message, err.reason, str(err), repr(err), repr(err.args)])
    for part in [token, *token.split(".")]:
        if len(part) >= 4:
            assert part not in shown, (err.code, err.reason)


# --- keys (generated per test session, never files in the repo) ------------------------------


def public_pem(private: Any) -> bytes:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa_other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa_weak": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ec521": ec.generate_private_key(ec.SECP521R1()),
        "ec256k": ec.generate_private_key(ec.SECP256K1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "ed448": ed448.Ed448PrivateKey.generate(),
    }


def key_verifier(private: Any, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(clock_at(), public_key_pem=public_pem(private), **kwargs)


# --- HMAC: the Go TestVerify table -----------------------------------------------------------


def test_valid_hmac_tokens() -> None:
    v = hmac_verifier()
    assert v.algorithms == ("HS256", "HS384", "HS512")
    for alg in ("HS256", "HS384", "HS512"):
        claims = v.verify(sign(good(), alg=alg))
        assert claims == Claims(subject="u1", expires_at=NOW + 3600, symbols=None)


EXPIRED = "token_expired"
INVALID = "invalid_token"
MALFORMED = "malformed_token"

HMAC_REFUSALS: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: sign(good(exp=NOW - 60)), EXPIRED),
    ("expired just beyond leeway", lambda: sign(good(exp=NOW - 31)), EXPIRED),
    ("expired exactly at leeway", lambda: sign(good(exp=NOW - 30)), EXPIRED),
    ("missing exp", lambda: sign(good(exp=None)), INVALID),
    ("null exp", lambda: sign(good(exp=None) | {"exp": None}), INVALID),
    ("missing sub", lambda: sign(good(sub=None)), INVALID),
    ("empty sub", lambda: sign(good(sub="")), INVALID),
    ("not yet valid", lambda: sign(good(nbf=NOW + 3600)), INVALID),
    ("nbf beyond leeway", lambda: sign(good(nbf=NOW + 31)), INVALID),
    ("issued in the future", lambda: sign(good(iat=NOW + 3600)), INVALID),
    ("bad signature", lambda: sign(good(), key=OTHER_SECRET), INVALID),
    (
        "bad signature on an expired token",
        lambda: sign(good(exp=NOW - 3600), OTHER_SECRET),
        INVALID,
    ),
    (
        "alg none",
        lambda: hand_made('{"alg":"none","typ":"JWT"}', '{"sub":"u1","exp":9999999999}', ""),
        INVALID,
    ),
    ("alg none signed by the library", lambda: sign(good(), key=None, alg="none"), INVALID),
    (
        "alg None spelled otherwise",
        lambda: hand_made('{"alg":"None"}', '{"sub":"u1","exp":9999999999}', ""),
        INVALID,
    ),
    (
        "unknown alg",
        lambda: hand_made('{"alg":"HS999"}', '{"sub":"u1","exp":9999999999}', "c2lnbmF0dXJl"),
        INVALID,
    ),
    (
        "no alg",
        lambda: hand_made('{"typ":"JWT"}', '{"sub":"u1","exp":9999999999}', "c2lnbmF0dXJl"),
        INVALID,
    ),
    (
        "alg not a string",
        lambda: hand_made('{"alg":["HS256"]}', '{"sub":"u1","exp":9999999999}', "c2ln"),
        INVALID,
    ),
    ("empty signature", lambda: sign(good()).rsplit(".", 1)[0] + ".", INVALID),
    ("garbage", lambda: "not-a-jwt-at-all", MALFORMED),
    ("three garbage segments", lambda: "not.a.jwt", MALFORMED),
    ("two segments", lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9", MALFORMED),
    ("four segments", lambda: sign(good()) + ".abcd", MALFORMED),
    ("bad base64 in the payload", lambda: "eyJhbGciOiJIUzI1NiJ9.eyJ*dWIi.c2ln", MALFORMED),
    ("padding in a segment", lambda: "eyJhbGciOiJIUzI1NiJ9=.eyJzdWIiOiJ1MSJ9.c2ln", MALFORMED),
    ("bad base64 in the signature", lambda: sign(good()) + "!", MALFORMED),
    ("impossible base64 length", lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9x.c2lnb", MALFORMED),
    (
        "payload not JSON",
        lambda: hand_made('{"alg":"HS256","typ":"JWT"}', "sub=u1", "c2lnbmF0dXJl"),
        MALFORMED,
    ),
    (
        "payload a JSON list",
        lambda: hand_made('{"alg":"HS256"}', '["sub","u1"]', "c2lnbmF0dXJl"),
        MALFORMED,
    ),
    ("header not JSON", lambda: hand_made("{alg:HS256}", '{"sub":"u1"}', "c2ln"), MALFORMED),
    (
        "exp not a number",
        lambda: hand_made('{"alg":"HS256"}', '{"sub":"u1","exp":"tomorrow"}', "c2lnbmF0dXJl"),
        MALFORMED,
    ),
    ("exp a bool", lambda: sign(good(exp=True)), MALFORMED),
    (
        "exp too large",
        lambda: hand_made('{"alg":"HS256"}', '{"sub":"u1","exp":1e999}', "c2ln"),
        MALFORMED,
    ),
    (
        "NaN in the payload",
        lambda: hand_made('{"alg":"HS256"}', '{"sub":"u1","exp":NaN}', "c2ln"),
        MALFORMED,
    ),
    ("sub not a string", lambda: sign(good(sub=5)), MALFORMED),
    (
        "payload not UTF-8",
        lambda: b64(b'{"alg":"HS256"}') + "." + b64(b"\xff") + ".c2ln",
        MALFORMED,
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "code"), HMAC_REFUSALS, ids=[row[0] for row in HMAC_REFUSALS]
)
def test_hmac_refusals(name: str, make: Callable[[], str], code: str) -> None:
    assert refused(hmac_verifier(), make()).code == code


@pytest.mark.parametrize("token", ["", None])
def test_empty_token_is_missing(token: str | None) -> None:
    err = refused(hmac_verifier(), token or "")
    assert err.code == "missing_token"


def test_leeway_is_driven_by_the_clock() -> None:
    clock = clock_at()
    v = TokenVerifier(clock, secret=SECRET, leeway=30)
    token = sign(good(exp=NOW + 10))
    assert v.verify(token).subject == "u1"
    clock.advance(10 + 29)  # 29 s past exp: within the leeway
    assert v.verify(token).subject == "u1"
    clock.advance(1)  # exactly exp + leeway
    assert refused(v, token).code == EXPIRED


def test_zero_leeway() -> None:
    v = TokenVerifier(clock_at(), secret=SECRET, leeway=0)
    assert refused(v, sign(good(exp=NOW - 1))).code == EXPIRED
    assert v.verify(sign(good(exp=NOW + 1))).subject == "u1"
    assert refused(v, sign(good(nbf=NOW + 1))).code == INVALID


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"exp": NOW - 10}, None),  # expired within leeway
        ({"nbf": NOW + 10}, None),  # nbf within leeway
        ({"iat": NOW + 10}, None),  # iat within leeway
        ({"nbf": NOW - 3600, "iat": NOW - 3600}, None),
        ({"aud": ["other", AUDIENCE]}, None),
        ({"exp": NOW - 31}, EXPIRED),
        ({"nbf": NOW + 31}, INVALID),
        ({"iat": NOW + 3600}, INVALID),
        ({"iss": "https://evil.test/"}, INVALID),
        ({"iss": ISSUER.upper()}, INVALID),
        ({"iss": None}, INVALID),
        ({"aud": "evil-audience"}, INVALID),
        ({"aud": ["evil-audience", "other"]}, INVALID),
        ({"aud": None}, INVALID),
        ({"aud": []}, INVALID),
        ({"aud": 5}, MALFORMED),
        ({"aud": [AUDIENCE, 5]}, MALFORMED),
        # A token from the wrong issuer is invalid even when it has also expired.
        ({"iss": "https://evil.test/", "exp": NOW - 3600}, INVALID),
    ],
)
def test_registered_claims(overrides: dict[str, Any], code: str | None) -> None:
    v = hmac_verifier(issuer=ISSUER, audience=AUDIENCE)
    claims = good(iss=ISSUER, aud=AUDIENCE)
    claims.update(overrides)
    claims = {k: val for k, val in claims.items() if val is not None}
    token = sign(claims)
    if code is None:
        assert v.verify(token).subject == "u1"
    else:
        err = refused(v, token)
        assert err.code == code
        for leak in ("evil", ISSUER, AUDIENCE):
            assert leak not in err.reason


@pytest.mark.parametrize(
    "payload",
    [
        '{"sub":"u1","exp":9999999999,"iss":5}',
        '{"sub":"u1","exp":9999999999,"aud":{"a":1}}',
        '{"sub":"u1","exp":"9999999999"}',
        '{"sub":"u1","exp":9999999999,"nbf":[1]}',
        '{"sub":"u1","exp":9999999999,"iat":false}',
    ],
)
def test_registered_claims_of_the_wrong_type_are_malformed(payload: str) -> None:
    err = refused(hmac_verifier(issuer=ISSUER), hs256_raw(payload))
    assert err.code == MALFORMED


def test_a_correctly_signed_raw_token_passes() -> None:
    # Proves hs256_raw signs correctly, so the refusals above are about the claims.
    assert hmac_verifier().verify(hs256_raw('{"sub":"u1","exp":9999999999}')).subject == "u1"


def test_iss_and_aud_not_checked_when_not_configured() -> None:
    assert hmac_verifier().verify(sign(good(iss="anyone", aud="anything"))).subject == "u1"


# --- the symbols claim -----------------------------------------------------------------------

TOO_MANY = [f"S{i}" for i in range(10_001)]


@pytest.mark.parametrize(
    ("symbols", "want"),
    [
        ("*", None),
        (["msft", " aapl ", "AAPL", "brk.b", "Msft"], frozenset({"AAPL", "BRK.B", "MSFT"})),
        ([], frozenset()),
        (TOO_MANY[:10_000], frozenset(TOO_MANY[:10_000])),
    ],
)
def test_symbols_claim_accepted(symbols: Any, want: frozenset[str] | None) -> None:
    assert hmac_verifier().verify(sign(good(symbols=symbols))).symbols == want


def test_symbols_claim_absent_allows_all() -> None:
    claims = hmac_verifier().verify(sign(good()))
    assert claims.symbols is None
    assert claims.entitled("ANYTHING")


@pytest.mark.parametrize(
    "symbols",
    [
        TOO_MANY,
        "",
        "AAPL",
        " * ",
        5,
        True,
        {"AAPL": True},
        ["AAPL", 5],
        ["AAPL", ["MSFT"]],
        ["AAPL", None],
        ["AAPL", "  "],
        ["*"],
    ],
)
def test_symbols_claim_of_another_shape_is_invalid(symbols: Any) -> None:
    assert refused(hmac_verifier(), sign(good(symbols=symbols))).code == INVALID


def test_symbols_claim_null_is_invalid() -> None:
    token = jwt.encode({"sub": "u1", "exp": NOW + 60, "symbols": None}, SECRET)
    assert refused(hmac_verifier(), token).code == INVALID


def test_entitled() -> None:
    claims = hmac_verifier().verify(sign(good(symbols=["msft", "aapl", "BRK.B"])))
    assert claims.entitled("AAPL")
    assert claims.entitled("MSFT")
    assert claims.entitled("BRK.B")
    assert not claims.entitled("GOOG")
    assert not claims.entitled("aapl")  # callers pass normalised symbols
    assert Claims("u", 0.0, None).entitled("GOOG")
    assert not Claims("u", 0.0, frozenset()).entitled("AAPL")


# --- public keys: the Go TestNewPublicKeys table ---------------------------------------------


def test_algorithms_follow_the_key(keys: dict[str, Any]) -> None:
    assert key_verifier(keys["rsa"]).algorithms == (
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    )
    assert key_verifier(keys["ec256"]).algorithms == ("ES256",)
    assert key_verifier(keys["ec384"]).algorithms == ("ES384",)
    assert key_verifier(keys["ec521"]).algorithms == ("ES512",)
    assert key_verifier(keys["ed"]).algorithms == ("EdDSA",)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_algorithms(keys: dict[str, Any], alg: str) -> None:
    assert key_verifier(keys["rsa"]).verify(sign(good(), keys["rsa"], alg)).subject == "u1"


@pytest.mark.parametrize(
    ("name", "alg"), [("ec256", "ES256"), ("ec384", "ES384"), ("ec521", "ES512")]
)
def test_ec_algorithms(keys: dict[str, Any], name: str, alg: str) -> None:
    assert key_verifier(keys[name]).verify(sign(good(), keys[name], alg)).subject == "u1"


def test_eddsa(keys: dict[str, Any]) -> None:
    assert key_verifier(keys["ed"]).verify(sign(good(), keys["ed"], "EdDSA")).subject == "u1"


def hs256_with_key_bytes(key_bytes: bytes) -> str:
    """The classic algorithm-confusion token: HS256 'signed' with the public key's PEM."""
    return hs256_raw(json.dumps(good()), key_bytes)


@pytest.mark.parametrize(
    ("verifier_key", "make", "code"),
    [
        ("rsa", lambda k: hs256_with_key_bytes(public_pem(k["rsa"])), INVALID),
        ("rsa", lambda k: sign(good(), SECRET, "HS256"), INVALID),
        ("rsa", lambda k: sign(good(), k["rsa_other"], "RS256"), INVALID),
        ("rsa", lambda k: sign(good(), k["ec256"], "ES256"), INVALID),
        ("rsa", lambda k: sign(good(exp=NOW - 3600), k["rsa"], "RS256"), EXPIRED),
        ("rsa", lambda k: sign(good(), key=None, alg="none"), INVALID),
        ("ec256", lambda k: sign(good(), k["ec384"], "ES384"), INVALID),
        ("ec256", lambda k: hs256_with_key_bytes(public_pem(k["ec256"])), INVALID),
        ("ec256", lambda k: sign(good(), key=None, alg="none"), INVALID),
        ("ec384", lambda k: sign(good(), k["ec256"], "ES256"), INVALID),
        ("ed", lambda k: sign(good(), k["rsa"], "RS256"), INVALID),
        ("ed", lambda k: hs256_with_key_bytes(public_pem(k["ed"])), INVALID),
        ("ed", lambda k: sign(good(), key=None, alg="none"), INVALID),
    ],
)
def test_public_key_refusals(
    keys: dict[str, Any], verifier_key: str, make: Callable[[dict[str, Any]], str], code: str
) -> None:
    assert refused(key_verifier(keys[verifier_key]), make(keys)).code == code


def test_hmac_verifier_refuses_rs256(keys: dict[str, Any]) -> None:
    assert refused(hmac_verifier(), sign(good(), keys["rsa"], "RS256")).code == INVALID


def test_pem_formats(keys: dict[str, Any]) -> None:
    private = keys["rsa"]
    pkcs1 = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert b"RSA PUBLIC KEY" in pkcs1
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2001, 1, 1, tzinfo=UTC))  # expired: not checked
        .sign(private, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    ec_params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    token = sign(good(), private, "RS256")
    for pem in (pkcs1, cert_pem, ec_params + public_pem(private)):
        v = TokenVerifier(clock_at(), public_key_pem=pem)
        assert v.verify(token).subject == "u1"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: public_pem(k["rsa_weak"]), "RSA key of 1024 bits, want at least 2048"),
        (lambda k: public_pem(k["ec256k"]), "ECDSA curve not supported"),
        (lambda k: public_pem(k["ed448"]), "key type not supported"),
        (lambda k: b"ssh-ed25519 AAAA", 'no "PUBLIC KEY"'),
        (
            lambda k: k["rsa"].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "private key",
        ),
        (
            lambda k: b"-----BEGIN PUBLIC KEY-----\nanVuaw==\n-----END PUBLIC KEY-----\n",
            "does not parse",
        ),
    ],
)
def test_bad_public_keys_are_refused_at_load(
    keys: dict[str, Any], make: Callable[[dict[str, Any]], bytes], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        load_and_check(make(keys))


def load_and_check(pem: bytes) -> None:
    TokenVerifier(clock_at(), public_key_pem=pem)


def test_load_public_key_returns_the_key(keys: dict[str, Any]) -> None:
    key = load_public_key(public_pem(keys["ed"]))
    assert isinstance(key, ed25519.Ed25519PublicKey)


# --- construction and configuration ----------------------------------------------------------


def test_constructor_needs_exactly_one_key(keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(clock_at())
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(clock_at(), secret=b"")
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(clock_at(), secret=SECRET, public_key_pem=public_pem(keys["ed"]))
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(clock_at(), secret=SECRET, leeway=-1)


def test_repr_shows_no_secret() -> None:
    assert "test-secret" not in repr(hmac_verifier())


def auth_config(**overrides: Any) -> AuthConfig:
    fields: dict[str, Any] = {
        "secret": None,
        "public_key_file": "",
        "jwks_url": "",
        "issuer": "",
        "audience": "",
        "leeway": 30.0,
    }
    fields.update(overrides)
    return AuthConfig(**fields)


def test_from_config_secret() -> None:
    v = TokenVerifier.from_config(auth_config(secret=SECRET, issuer=ISSUER, leeway=0.0), clock_at())
    assert v.algorithms == ("HS256", "HS384", "HS512")
    assert v.verify(sign(good(iss=ISSUER))).subject == "u1"
    assert refused(v, sign(good())).code == INVALID  # issuer enforced
    assert refused(v, sign(good(exp=NOW - 1, iss=ISSUER))).code == EXPIRED  # leeway 0


def test_from_config_secret_override() -> None:
    dev = b"dev-secret-dev-secret-dev-secret"
    v = TokenVerifier.from_config(auth_config(secret=SECRET), clock_at(), secret=dev)
    assert v.verify(sign(good(), dev)).subject == "u1"
    assert refused(v, sign(good(), SECRET)).code == INVALID
    v = TokenVerifier.from_config(auth_config(), clock_at(), secret=dev)
    assert v.verify(sign(good(), dev)).subject == "u1"


def test_from_config_public_key_file(tmp_path: Path, keys: dict[str, Any]) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(keys["ec256"]))
    v = TokenVerifier.from_config(auth_config(public_key_file=str(path)), clock_at())
    assert v.algorithms == ("ES256",)
    assert v.verify(sign(good(), keys["ec256"], "ES256")).subject == "u1"


def test_from_config_errors(tmp_path: Path, keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^\[auth\] jwks_url: no key set service was given$"):
        TokenVerifier.from_config(auth_config(jwks_url="https://issuer.test/jwks"), clock_at())
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"^\[auth\] public_key_file: cannot read"):
        TokenVerifier.from_config(auth_config(public_key_file=str(missing)), clock_at())
    weak = tmp_path / "weak.pem"
    weak.write_bytes(public_pem(keys["rsa_weak"]))
    with pytest.raises(ValueError, match=r"^\[auth\] public_key_file: .*1024 bits"):
        TokenVerifier.from_config(auth_config(public_key_file=str(weak)), clock_at())
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PUBLIC KEY-----\nanVuaw==\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match=r"^\[auth\] public_key_file: .*does not parse"):
        TokenVerifier.from_config(auth_config(public_key_file=str(bad)), clock_at())
    good_key = tmp_path / "ok.pem"
    good_key.write_bytes(public_pem(keys["ed"]))
    with pytest.raises(ValueError, match="set only one"):
        TokenVerifier.from_config(
            auth_config(public_key_file=str(good_key), secret=SECRET), clock_at()
        )
    with pytest.raises(ValueError, match="no token key"):
        TokenVerifier.from_config(auth_config(), clock_at())


# --- bearer_token: the Go TestFromRequest table ----------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "want"),
    [
        (["Bearer abc"], None, "abc"),
        ([b"Bearer abc"], None, "abc"),
        (["bearer abc"], None, "abc"),
        (["BEARER abc"], None, "abc"),
        (["Bearer   abc "], None, "abc"),
        ([], "q1", "q1"),
        (["Bearer h1"], "q1", "h1"),
        ([b"Bearer h1"], "q1", "h1"),
    ],
)
def test_bearer_token(headers: list[Any], query: str | None, want: str) -> None:
    assert bearer_token(headers, query) == want


@pytest.mark.parametrize(
    ("headers", "query", "code"),
    [
        (["Basic dXNlcg=="], None, MALFORMED),
        (["Basic dXNlcg=="], "q1", MALFORMED),
        (["Bearer "], None, MALFORMED),
        (["Bearer"], None, MALFORMED),
        (["abc.def.ghi"], None, MALFORMED),
        ([""], None, MALFORMED),
        ([b""], "q1", MALFORMED),
        (["Bearer\tabc"], None, MALFORMED),
        (["Bearer a1", "Bearer a2"], None, MALFORMED),
        ([b"Bearer a1", b"Bearer a2"], "q1", MALFORMED),
        ([], "", "missing_token"),
        ([], None, "missing_token"),
    ],
)
def test_bearer_token_refusals(headers: list[Any], query: str | None, code: str) -> None:
    with pytest.raises(TokenError) as info:
        bearer_token(headers, query)
    assert info.value.code == code
    assert info.value.message == MESSAGES[code]
    for header in headers:
        text = header.decode() if isinstance(header, bytes) else header
        credentials = text.partition(" ")[2].strip() if " " in text else text
        if len(credentials) > 3 and credentials.lower() != "bearer":
            assert credentials not in str(info.value) + repr(info.value)


def test_error_messages_are_the_documented_ones() -> None:
    assert MESSAGES == {
        "missing_token": "a token is required: Authorization: Bearer <JWT>, or ?token=<JWT>",
        "malformed_token": (
            "the token is not a well-formed JWT, or the Authorization header is not Bearer"
        ),
        "invalid_token": "the token's signature, algorithm or claims are not accepted",
        "token_expired": "the token has expired",
    }


# --- mint_token ------------------------------------------------------------------------------


def test_mint_token_round_trip() -> None:
    v = hmac_verifier()
    token = mint_token(SECRET, "demo", now=NOW + 0.7, ttl=3600)
    claims = v.verify(token)
    assert claims == Claims(subject="demo", expires_at=NOW + 3600, symbols=None)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload["iat"] == int(NOW)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_mint_token_symbols_and_algorithms(alg: str) -> None:
    token = mint_token(SECRET, "demo", now=NOW, ttl=60, symbols=["aapl", "MSFT"], algorithm=alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert hmac_verifier().verify(token).symbols == frozenset({"AAPL", "MSFT"})


def test_mint_token_issuer_and_audience() -> None:
    token = mint_token(SECRET, "demo", now=NOW, ttl=60, issuer=ISSUER, audience=AUDIENCE)
    assert hmac_verifier(issuer=ISSUER, audience=AUDIENCE).verify(token).subject == "demo"


def test_mint_token_negative_ttl_is_expired() -> None:
    token = mint_token(SECRET, "demo", now=NOW, ttl=-3600)
    assert refused(hmac_verifier(), token).code == EXPIRED


def test_mint_token_refusals() -> None:
    with pytest.raises(ValueError, match="subject"):
        mint_token(SECRET, "", now=NOW, ttl=60)
    with pytest.raises(ValueError, match="secret"):
        mint_token(b"", "demo", now=NOW, ttl=60)
    with pytest.raises(ValueError, match="algorithm"):
        mint_token(SECRET, "demo", now=NOW, ttl=60, algorithm="RS256")


# -- property tests: any token shape is refused with TokenError only ----------------------------


_b64_segment = st.binary(max_size=80).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
)
_json_segment = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
).map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode())
_claims_segment = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.text(max_size=5) | st.integers(),
        "exp": st.integers() | st.floats() | st.text(max_size=3),
        "nbf": st.integers() | st.floats(),
        "iat": st.integers() | st.floats(),
        "aud": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2) | st.integers(),
        "symbols": st.text(max_size=3) | st.lists(st.text(max_size=3) | st.integers(), max_size=3),
    },
).map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode())
_header_segment = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "RS256", "none", "ES256", "EdDSA", "", "HS999"])},
    optional={"kid": st.text(max_size=4) | st.integers(), "typ": st.just("JWT")},
).map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode())
_token_shapes = (
    st.text(max_size=120)
    | st.binary(max_size=120).map(lambda b: b.decode("latin-1"))
    | st.lists(_b64_segment | _json_segment | st.text(max_size=10), min_size=1, max_size=5).map(
        ".".join
    )
    | st.tuples(_header_segment, _claims_segment, _b64_segment).map(".".join)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_token_shapes)
def test_any_token_shape_raises_only_token_error(token: str) -> None:
    verifier = hmac_verifier()
    try:
        verifier.verify(token)
    except TokenError as e:
        assert e.code in MESSAGES
        assert token not in str(e) or len(token) < 4  # never quoted back
    d = verifier.verify_deferred(token)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert d.called
    for f in failures:
        assert isinstance(f.value, TokenError)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_token_shapes)
def test_any_token_shape_with_a_signature_raises_only_token_error(token: str) -> None:
    # the header and claims as drawn, signed for real: only the claims decide
    head, _, rest = token.partition(".")
    body = rest.partition(".")[0]
    mac = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    signed_token = f"{head}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    try:
        hmac_verifier().verify(signed_token)
    except TokenError:
        pass
