"""A JWK Set server for tests: twisted.web on a free loopback port, keys changeable,
fetches counted, and an outage switch (the connection is aborted)."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def jwk_of(key: PrivateKey, kid: str | None, alg: str | None) -> dict[str, Any]:
    """The public JWK of ``key``."""
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(pub))
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pub))
    else:
        data = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(pub))
    if kid is not None:
        data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    return data


class JWKSResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        self.hang = False

    def render_GET(self, request: Request) -> bytes | int:
        self.fetches += 1
        if self.down:
            request.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        if self.hang:
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"keys": self.keys}).encode()


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        pass  # the access log would quote the URL, which the tests check quoted never logs


class JWKSServer:
    def __init__(self) -> None:
        self.resource = JWKSResource()
        self.port: Any = None

    def start(self, context_factory: Any = None) -> None:
        site = _QuietSite(self.resource)
        site.noisy = False
        if context_factory is None:
            self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        else:
            self.port = reactor.listenSSL(0, site, context_factory, interface="127.0.0.1")

    async def stop(self) -> None:
        await self.port.stopListening()

    def url(self, scheme: str = "http", host: str = "127.0.0.1", query: str = "") -> str:
        u = f"{scheme}://{host}:{self.port.getHost().port}/.well-known/jwks.json"
        return u + (f"?{query}" if query else "")

    def publish(self, keys: dict[str, PrivateKey], alg: str | None = None) -> None:
        self.resource.keys = [jwk_of(k, kid, alg) for kid, k in keys.items()]

    @property
    def fetches(self) -> int:
        return self.resource.fetches
