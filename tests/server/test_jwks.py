"""quoted.server.jwks: parsing a JWK Set, and KeySetService against a real JWKS server on loopback
(fetch, rotation, the unknown-kid throttle, outages, timeouts, https, no URL in logs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from quoted.server.auth import INVALID_TOKEN, TokenError, TokenVerifier
from quoted.server.jwks import KeySetService, parse_key_set
from tests.jwksserver import JWKSServer, jwk_of

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "weak": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


def token(key: Any, alg: str, kid: str | None, sub: str = "u1", ttl: float = 3600) -> str:
    now = time.time()  # the verifier runs on the real reactor, whose clock this is
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": sub, "exp": int(now + ttl)}, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    """HS256 signed with any bytes (pyjwt refuses a PEM or JWK as an HMAC secret)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


# -- parse_key_set ------------------------------------------------------------------------


def test_parse_key_types_and_algorithms(keys: dict[str, Any]) -> None:
    doc = {
        "keys": [
            jwk_of(keys["rsa"], "r", None),
            jwk_of(keys["ec"], "e", None),
            jwk_of(keys["ed"], "d", None),
            jwk_of(keys["rsa2"], "r2", "PS256"),
        ]
    }
    ks = parse_key_set(json.dumps(doc).encode())
    assert ks.by_kid["r"].algorithms[0] == "RS256" and "PS512" in ks.by_kid["r"].algorithms
    assert ks.by_kid["e"].algorithms == ("ES256",)
    assert ks.by_kid["d"].algorithms == ("EdDSA",)
    assert ks.by_kid["r2"].algorithms == ("PS256",)
    assert ks.candidates("nope") is None
    assert ks.candidates(None) is not None and len(ks.candidates(None) or ()) == 4


def test_parse_skips_unusable_keys(keys: dict[str, Any]) -> None:
    enc = jwk_of(keys["rsa"], "enc", None) | {"use": "enc"}
    confused = jwk_of(keys["ec"], "confused", "RS256")  # an alg the key cannot have
    weak = jwk_of(keys["weak"], "weak", None)
    oct_key = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    good = jwk_of(keys["ed"], None, None)
    ks = parse_key_set(json.dumps({"keys": [enc, confused, weak, oct_key, good]}).encode())
    assert ks.by_kid == {}
    assert len(ks.anonymous) == 1 and ks.anonymous[0].algorithms == ("EdDSA",)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"keys":{}}',
        b'{"keys":[]}',
        b'{"keys":[{"kty":"oct","k":"AAAA"}]}',
        b'{"keys":[{"kty":"RSA","n":"AQAB"}]}',
        b'{"keys":[1,"x",null]}',
        b"[" * 100_000,
    ],
)
def test_parse_refuses_bad_sets(body: bytes) -> None:
    with pytest.raises(ValueError) as info:
        parse_key_set(body)
    assert "AQAB" not in str(info.value) and "AAAA" not in str(info.value)


def test_verifier_with_a_set_never_fetches_synchronously(keys: dict[str, Any]) -> None:
    clock = Clock()
    clock.advance(time.time())
    service = KeySetService(clock, "http://127.0.0.1:9/jwks")
    service.keys = parse_key_set(json.dumps({"keys": [jwk_of(keys["rsa"], "k1", None)]}).encode())
    v = TokenVerifier(clock, keyset=service)
    assert v.verify(token(keys["rsa"], "RS256", "k1")).subject == "u1"
    assert v.verify(token(keys["rsa"], "PS256", "k1")).subject == "u1"  # no "alg" in the JWK
    for bad, reason in [
        (token(keys["rsa2"], "RS256", "k1"), "bad signature"),
        (token(keys["ec"], "ES256", "k1"), "algorithm not allowed for the key"),
        (token(keys["rsa"], "RS256", "k2"), "unknown key id"),
    ]:
        with pytest.raises(TokenError) as info:
            v.verify(bad)
        assert info.value.code == INVALID_TOKEN and info.value.reason == reason
    # HS256 "signed" with the RSA key's public JWK: algorithm confusion
    pub = json.dumps(jwk_of(keys["rsa"], "k1", None)).encode()
    forged = hs256_by_hand({"sub": "u1", "exp": int(time.time()) + 60}, pub, {"kid": "k1"})
    with pytest.raises(TokenError, match="algorithm not allowed"):
        v.verify(forged)
    assert not clock.getDelayedCalls()


def test_no_set_loaded_refuses_every_token(keys: dict[str, Any]) -> None:
    clock = Clock()
    v = TokenVerifier(clock, keyset=KeySetService(clock, "http://127.0.0.1:9/jwks"))
    assert not v.ready
    with pytest.raises(TokenError, match="no JWK Set loaded"):
        v.verify(token(keys["rsa"], "RS256", "k1"))


# -- KeySetService against a real server ----------------------------------------------------


@pytest_twisted.async_yield_fixture
async def jwks(keys: dict[str, Any]) -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    server.publish({"k1": keys["rsa"]}, "RS256")
    server.start()
    yield server
    await server.stop()


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def started(url: str, **kw: Any) -> tuple[KeySetService, TokenVerifier]:
    service = KeySetService(reactor, url, **kw)
    service.startService()
    await service.fetch()
    return service, TokenVerifier(reactor, keyset=service)


@ensure
async def test_fetch_verify_and_rotate(jwks: JWKSServer, keys: dict[str, Any]) -> None:
    service, v = await started(jwks.url())
    try:
        assert service.loaded and v.ready and jwks.fetches == 1
        claims = await v.verify_deferred(token(keys["rsa"], "RS256", "k1"))
        assert claims.subject == "u1" and jwks.fetches == 1  # known kid: no fetch
        # rotation: the issuer publishes k2; the first token with it waits for one fetch
        jwks.publish({"k1": keys["rsa"], "k2": keys["ec"]})
        claims = await v.verify_deferred(token(keys["ec"], "ES256", "k2", sub="u2"))
        assert claims.subject == "u2" and jwks.fetches == 2
    finally:
        service.stopService()


@ensure
async def test_unknown_kid_fetches_at_most_once_per_10s(
    jwks: JWKSServer, keys: dict[str, Any]
) -> None:
    service, v = await started(jwks.url())
    try:
        # two at once share the fetch; later ones within 10 s are refused without a fetch
        d1 = v.verify_deferred(token(keys["rsa"], "RS256", "x1"))
        d2 = v.verify_deferred(token(keys["rsa"], "RS256", "x2"))
        for d in (d1, d2):
            with pytest.raises(TokenError, match="unknown key id"):
                await d
        for i in range(30):
            with pytest.raises(TokenError, match="unknown key id"):
                await v.verify_deferred(token(keys["rsa"], "RS256", f"y{i}"))
        assert jwks.fetches == 2
    finally:
        service.stopService()


@ensure
async def test_outage_keeps_cached_keys(
    jwks: JWKSServer, keys: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    secret = "credential-in-the-query-7f3a"
    service, v = await started(jwks.url(query=f"key={secret}"))
    try:
        jwks.resource.down = True
        await service.fetch()
        assert service.failures == 1 and service.loaded
        claims = await v.verify_deferred(token(keys["rsa"], "RS256", "k1"))
        assert claims.subject == "u1"
        with pytest.raises(TokenError):  # a new kid during the outage: refused, not hung
            await v.verify_deferred(token(keys["rsa2"], "RS256", "new"))
    finally:
        service.stopService()
    assert any(e.get("log_id") == "quoted.jwks.fetch_failed" for e in events)
    for e in events:
        assert secret not in repr(e), e
    assert secret not in repr(service) and secret not in repr(v)


@ensure
async def test_start_without_the_server_is_not_ready(keys: dict[str, Any]) -> None:
    jwks = JWKSServer()
    jwks.start()
    url = jwks.url()
    await jwks.stop()  # connection refused from now on
    service, v = await started(url)
    try:
        assert not service.loaded and not v.ready and service.failures == 1
        with pytest.raises(TokenError, match="no JWK Set loaded"):
            await v.verify_deferred(token(keys["rsa"], "RS256", "k1"))
    finally:
        service.stopService()


@ensure
async def test_fetch_timeout_cancels(jwks: JWKSServer) -> None:
    jwks.resource.hang = True
    started_at = reactor.seconds()
    service, _ = await started(jwks.url(), timeout=0.3)
    try:
        assert not service.loaded and service.failures == 1
        assert reactor.seconds() - started_at < 3
    finally:
        service.stopService()


@ensure
async def test_https_with_a_private_ca(keys: dict[str, Any], tmp_path: Any) -> None:
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS

    from tests.certs import self_signed

    cert_pem, key_pem = self_signed("localhost")
    server_ctx = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    jwks = JWKSServer()
    jwks.publish({"k1": keys["ed"]})
    jwks.start(server_ctx)
    trusted = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(cert_pem))
    try:
        service, v = await started(jwks.url("https", "localhost"), tls_policy=trusted)
        assert service.loaded
        assert (await v.verify_deferred(token(keys["ed"], "EdDSA", "k1"))).subject == "u1"
        service.stopService()
        # the certificate does not name this host: hostname verification refuses it
        service, v = await started(jwks.url("https", "127.0.0.1"), tls_policy=trusted)
        assert not service.loaded and service.failures == 1
        service.stopService()
        # a CA the client does not trust
        service, v = await started(jwks.url("https", "localhost"))
        assert not service.loaded
        service.stopService()
    finally:
        await jwks.stop()
