"""The hostile suite (SECURITY.md): every case is a real request or frame over a real socket
against a real quoted, with the status and error code, or the close code, a client sees.

While the cases run, a calm client on the same server keeps receiving every tick in order,
and at the end its document equals GET /v1/quotes. Every token used is looked for in every
log event of the module: none may appear.

What only time decides runs again, or only, on the same quoted built on a MemoryReactorClock
(tests.memory), with a calm client of its own checked after each case: every hostile frame
from a client that never answers the close frame (dropped at the 2 s close handshake timeout),
and token expiry and refresh (seconds of token lifetime and leeway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from tests.harness import (
    SECRET,
    QuotedServer,
    WSClient,
    client_endpoint,
    eventually,
    make_config,
    sleep,
)
from tests.jwksserver import JWKSServer
from tests.memory import MemoryQuoted

ensure = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.transports("ws", "wss")
ISSUER = "https://id.quoted.test/"
AUDIENCE = "quoted"
LEEWAY = 2.0
TOKENS: set[str] = set()  # every token minted here, looked for in the logs at the end
MINTED = [0]  # how many were minted (the same claims within one second give the same token)


# -- tokens -----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "u1", **extra: Any) -> dict[str, Any]:
    """Valid claims (iss, aud, an hour); an extra None removes the claim."""
    now = int(time.time())
    c: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600}
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def keep(token: str) -> str:
    TOKENS.add(token)
    MINTED[0] += 1
    return token


def signed(c: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **header: Any) -> str:
    return keep(jwt.encode(c, key, algorithm=alg, headers=header or None))


def by_hand(c: dict[str, Any], alg: str, secret: bytes | None) -> str:
    """A token pyjwt would not make: alg none, or HS256 keyed with a public key's PEM."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(c).encode())
    if secret is None:
        return keep(f"{head}.{body}.")
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return keep(f"{head}.{body}.{b64(mac)}")


def ok(sub: str = "u1", **extra: Any) -> str:
    return signed(claims(sub, **extra))


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


def public_pem(private: Any) -> bytes:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


# -- raw HTTP and WebSocket clients -------------------------------------------------------------


class Raw(Protocol):
    """Sends a handshake; collects the response head (and body), then WebSocket frames.

    Unless ``answer_close`` is false it answers the server's close frame as a client must
    (RFC 6455 5.5.1), so the server drops the TCP connection at once instead of after its close
    handshake timeout; the in-memory cases (test_frame_in_memory) check a silent client too.
    """

    def __init__(self, answer_close: bool = True) -> None:
        self.answer_close = answer_close
        self.buf = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.head_done: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.frames: list[tuple[int, bytes]] = []
        self._head = True
        self._length: int | None = None

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self._head:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self._head = False
            self.buf = rest
            if self.status != 101:
                self._length = int(self.headers.get("content-length", "0"))
        if self._length is not None:
            if len(self.buf) >= self._length and not self.head_done.called:
                self.body = self.buf[: self._length]
                self.head_done.callback(None)
            return
        if not self.head_done.called:
            self.head_done.callback(None)
        self._frames()

    def _frames(self) -> None:
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                return
            self.frames.append((b0 & 0x0F, self.buf[at : at + n]))
            self.buf = self.buf[at + n :]
            if b0 & 0x0F == 8 and self.answer_close and self.transport is not None:
                self.send(frame(8, b""))  # a close without a code: no echo to get wrong

    def connectionLost(self, reason: Any = None) -> None:
        if not self.head_done.called:
            self.head_done.callback(None)
        self.lost.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close_code(self) -> int | None:
        for op, payload in self.frames:
            if op == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def texts(self) -> list[bytes]:
        return [p for op, p in self.frames if op == 1]

    def code(self) -> str:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return ""


def head_bytes(path: str, headers: dict[str, str], port: int, upgrade: bool) -> bytes:
    h = {"Host": f"127.0.0.1:{port}"}
    if upgrade:
        h |= {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
    h |= headers
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def connect(
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    upgrade: bool = True,
    source: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> Raw:
    """One raw request (a WebSocket upgrade unless told); returns once the head is in."""
    proto = Raw()
    await client_endpoint(port, source=source).connect(Factory.forProtocol(lambda: proto))
    data = head_bytes(path, headers, port, upgrade)
    if extra:  # repeated headers
        data = data[:-2] + "".join(f"{k}: {v}\r\n" for k, v in extra).encode() + b"\r\n"
    proto.send(data)
    await defer.Deferred.addTimeout(proto.head_done, 10, reactor)
    return proto


async def handshake(
    port: int, query: str, headers: dict[str, str], **kw: Any
) -> tuple[int, str, dict[str, str]]:
    r = await connect(port, "/ws/quotes" + query, headers, **kw)
    r.transport.abortConnection()  # type: ignore[union-attr]
    return r.status, r.code(), r.headers


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """A client frame (RFC 6455 5.2), masked unless told."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def opened(server: QuotedServer, query: str = "?symbols=AAPL", **headers: str) -> Raw:
    r = await connect(server.port, "/ws/quotes" + query, bearer(ok("frames"), **headers))
    assert r.status == 101, (r.status, r.body)
    return r


async def closed_with(r: Raw, timeout: float = 5) -> int | None:
    await defer.Deferred.addTimeout(r.lost, timeout, reactor)
    return r.close_code()


# -- the servers and the calm clients ------------------------------------------------------------


@dataclass
class Calm:
    client: WSClient
    symbols: list[str]

    def check(self) -> None:
        seqs = self.client.seqs
        assert self.client.close_code is None, "the calm client was closed"
        assert seqs == list(range(1, len(seqs) + 1)), "the calm client missed a seq"


@dataclass
class Suite:
    main: QuotedServer
    limits: QuotedServer
    calm: list[Calm] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@pytest_twisted.async_yield_fixture(scope="module")
async def suite(transport: str) -> AsyncIterator[Suite]:
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    tls = transport == "wss"
    main = QuotedServer(
        make_config(
            tls=tls,
            feed={"update_interval": 0.05, "mode": "all"},
            auth={"issuer": ISSUER, "audience": AUDIENCE, "leeway": LEEWAY},
            websocket={"max_symbols": 5, "handshake_rate_per_ip": 0, "message_rate": 10},
        )
    )
    limits = QuotedServer(
        make_config(
            tls=tls,
            feed={"update_interval": 0.05, "mode": "all"},
            server={"trusted_proxies": (ip_network("127.0.0.9/32"),)},
            websocket={"user_max_connections": 2, "handshake_rate_per_ip": 2},
        )
    )
    await main.start()
    await limits.start()
    main.service.getServiceNamed("listener").factory.head_timeout = 0.5
    s = Suite(main, limits, events=events)
    for server, tok, src in (
        (main, ok("calm"), None),
        (limits, signed({"sub": "calm", "exp": int(time.time()) + 3600}), "127.0.0.2"),
    ):
        del src
        client = await server.connect("symbols=AAPL,MSFT", token=tok)
        await client.wait_type("quotes_patch")
        s.calm.append(Calm(client, ["AAPL", "MSFT"]))
    yield s
    globalLogPublisher.removeObserver(observe)
    await main.stop()
    await limits.stop()


def ip_network(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_network(text)


# -- handshakes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HS:
    name: str
    query: str
    headers: Callable[[int, dict[str, Any]], dict[str, str]]
    status: int
    code: str = ""
    extra: Callable[[], list[tuple[str, str]]] | None = None


NOW = int(time.time())

HANDSHAKES = [
    HS("valid token", "?symbols=AAPL", lambda p, k: bearer(ok()), 101),
    HS("valid token in ?token=", "?symbols=AAPL&token=", lambda p, k: {}, 101),
    HS(
        "forged signature",
        "?symbols=AAPL",
        lambda p, k: bearer(signed(claims(), b"an-attackers-secret-of-32-bytes-or-more")),
        401,
        "invalid_token",
    ),
    HS(
        "expired beyond leeway",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(exp=int(time.time()) - 60)),
        401,
        "token_expired",
    ),
    HS(
        "expired within leeway", "?symbols=AAPL", lambda p, k: bearer(ok(exp=int(time.time()))), 101
    ),
    HS(
        "not yet valid",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(nbf=int(time.time()) + 300)),
        401,
        "invalid_token",
    ),
    HS(
        "nbf within leeway", "?symbols=AAPL", lambda p, k: bearer(ok(nbf=int(time.time()) + 1)), 101
    ),
    HS(
        "issued in the future",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(iat=int(time.time()) + 300)),
        401,
        "invalid_token",
    ),
    HS(
        "wrong issuer",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(iss="https://evil.test/")),
        401,
        "invalid_token",
    ),
    HS("no issuer", "?symbols=AAPL", lambda p, k: bearer(ok(iss=None)), 401, "invalid_token"),
    HS(
        "wrong audience",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(aud="another")),
        401,
        "invalid_token",
    ),
    HS(
        "audience list with ours",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(aud=["other", AUDIENCE])),
        101,
    ),
    HS("no exp", "?symbols=AAPL", lambda p, k: bearer(ok(exp=None)), 401, "invalid_token"),
    HS("no sub", "?symbols=AAPL", lambda p, k: bearer(ok(sub=None)), 401, "invalid_token"),
    HS(
        "alg none",
        "?symbols=AAPL",
        lambda p, k: bearer(by_hand(claims(), "none", None)),
        401,
        "invalid_token",
    ),
    HS(
        "RS256 token to an HMAC key",
        "?symbols=AAPL",
        lambda p, k: bearer(signed(claims(), k["rsa"], "RS256")),
        401,
        "invalid_token",
    ),
    HS(
        "HS256 signed with a public key",
        "?symbols=AAPL",
        lambda p, k: bearer(by_hand(claims(), "HS256", public_pem(k["rsa"]))),
        401,
        "invalid_token",
    ),
    HS(
        "signature cut off",
        "?symbols=AAPL",
        lambda p, k: bearer(ok().rsplit(".", 1)[0] + "."),
        401,
        "invalid_token",
    ),
    HS("not a JWT", "?symbols=AAPL", lambda p, k: bearer("not.a.jwt"), 401, "malformed_token"),
    HS(
        "token in the wrong header",
        "?symbols=AAPL",
        lambda p, k: {"X-Auth-Token": ok()},
        401,
        "missing_token",
    ),
    HS(
        "token in a cookie",
        "?symbols=AAPL",
        lambda p, k: {"Cookie": "token=" + ok()},
        401,
        "missing_token",
    ),
    HS(
        "Token scheme instead of Bearer",
        "?symbols=AAPL",
        lambda p, k: {"Authorization": "Token " + ok()},
        401,
        "malformed_token",
    ),
    HS(
        "two Authorization headers",
        "?symbols=AAPL",
        lambda p, k: bearer(ok()),
        401,
        "malformed_token",
        lambda: [("Authorization", "Bearer " + ok("u2"))],
    ),
    HS(
        "entitled to none asked",
        "?symbols=AAPL,MSFT",
        lambda p, k: bearer(ok(symbols=["TSLA"])),
        403,
        "forbidden_symbols",
    ),
    HS(
        "entitled to some asked",
        "?symbols=AAPL,TSLA",
        lambda p, k: bearer(ok(symbols=["tsla"])),
        101,
    ),
    HS("entitled to all", "?symbols=AAPL", lambda p, k: bearer(ok(symbols="*")), 101),
    HS(
        "symbols claim a number",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(symbols=42)),
        401,
        "invalid_token",
    ),
    HS(
        "symbols claim with a non-string",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(symbols=["AAPL", 1])),
        401,
        "invalid_token",
    ),
    HS(
        "symbols claim with * in a list",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(symbols=["*"])),
        401,
        "invalid_token",
    ),
    HS(
        "symbols claim an object",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(symbols={"AAPL": True})),
        401,
        "invalid_token",
    ),
    HS(
        "foreign Origin",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(), Origin="https://evil.example"),
        403,
        "forbidden_origin",
    ),
    HS(
        "Origin null",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(), Origin="null"),
        403,
        "forbidden_origin",
    ),
    HS(
        "same-host Origin with another port",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(), Origin=f"http://127.0.0.1:{p + 1}"),
        403,
        "forbidden_origin",
    ),
    HS(
        "same-host Origin",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(), Origin=f"http://127.0.0.1:{p}"),
        101,
    ),
    HS(
        "too many symbols",
        "?symbols=AAPL,MSFT,GOOGL,AMZN,TSLA,NVDA",
        lambda p, k: bearer(ok()),
        400,
        "too_many_symbols",
    ),
    HS(
        "path traversal symbol",
        "?symbols=../etc/passwd",
        lambda p, k: bearer(ok()),
        400,
        "no_valid_symbols",
    ),
    HS(
        "control characters",
        "?symbols=" + quote("AAPL\x00\r\nX-Injected: 1"),
        lambda p, k: bearer(ok()),
        400,
        "no_valid_symbols",
    ),
    HS(
        "markup symbol",
        "?symbols=" + quote("<script>alert(1)</script>"),
        lambda p, k: bearer(ok()),
        400,
        "no_valid_symbols",
    ),
    HS(
        "URL too long",
        "?symbols=AAPL&pad=" + "a" * 9000,
        lambda p, k: bearer(ok()),
        414,
        "uri_too_long",
    ),
    HS(
        "headers too large",
        "?symbols=AAPL",
        lambda p, k: bearer(ok(), **{"X-Pad": "a" * 20000}),
        431,
        "headers_too_large",
    ),
]


@pytest.mark.parametrize("case", HANDSHAKES, ids=[c.name for c in HANDSHAKES])
@ensure
async def test_handshake(suite: Suite, keys: dict[str, Any], case: HS) -> None:
    query = case.query + (ok("q") if case.query.endswith("token=") else "")
    extra = case.extra() if case.extra else None
    status, code, headers = await handshake(
        suite.main.port, query, case.headers(suite.main.port, keys), extra=extra
    )
    assert (status, code) == (case.status, case.code)
    if status == 401:
        assert headers.get("www-authenticate", "").startswith("Bearer")


@ensure
async def test_markup_never_echoed_raw(suite: Suite) -> None:
    r = await opened(suite.main, "?symbols=AAPL," + quote("<script>"))
    await eventually(lambda: bool(r.texts()))
    snapshot = r.texts()[0]
    assert b"<script>" not in snapshot and b"<SCRIPT>" not in snapshot
    assert json.loads(snapshot)["invalid_symbols"] == ["<SCRIPT>"]
    r.send(frame(1, b'{"type":"subscribe","id":"a","symbols":["../x","<img src=x>","MSFT"]}'))
    await eventually(lambda: any(b'"subscribed"' in t for t in r.texts()))
    ack = next(t for t in r.texts() if b'"subscribed"' in t)
    assert b"<img" not in ack
    assert json.loads(ack)["invalid"] == ["../X", "<IMG SRC=X>"]
    r.transport.abortConnection()  # type: ignore[union-attr]


# -- asymmetric keys ------------------------------------------------------------------------------

ASYMMETRIC = [
    ("RS256 with its key", "rsa", "RS256", "rsa", 101),
    ("RS512 with its key", "rsa", "RS512", "rsa", 101),
    ("PS256 with its key", "rsa", "PS256", "rsa", 101),
    ("RS256 signed by another key", "rsa", "RS256", "rsa2", 401),
    ("ES256 token to an RSA key", "rsa", "ES256", "ec", 401),
    ("ES256 with its key", "ec", "ES256", "ec", 101),
    ("ES384 token to a P-256 key", "ec", "ES384", "ec384", 401),
    ("EdDSA with its key", "ed", "EdDSA", "ed", 101),
    ("RS256 token to an Ed25519 key", "ed", "RS256", "rsa", 401),
]


@pytest.mark.parametrize("name,pub,alg,signer,status", ASYMMETRIC, ids=[a[0] for a in ASYMMETRIC])
@ensure
async def test_asymmetric_keys(
    start_server: Any,
    keys: dict[str, Any],
    tmp_path: Path,
    name: str,
    pub: str,
    alg: str,
    signer: str,
    status: int,
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(keys[pub]))
    server = await start_server(auth={"secret": None, "public_key_file": str(path)})
    c = {"sub": "u1", "exp": int(time.time()) + 3600}
    cases = [
        (signed(c, keys[signer], alg), status),
        (by_hand(c, "HS256", public_pem(keys[pub])), 401),  # algorithm confusion
        (by_hand(c, "none", None), 401),
    ]
    for token, want in cases:
        got, code, _ = await handshake(server.port, "?symbols=AAPL", bearer(token))
        assert (got, code) == (want, "" if want == 101 else "invalid_token")


# -- JWKS: rotation and outage ----------------------------------------------------------------


@ensure
async def test_jwks_rotation_flood_and_outage(start_server: Any, keys: dict[str, Any]) -> None:
    jwks = JWKSServer()
    jwks.publish({"key-1": keys["rsa"]}, "RS256")
    jwks.start()
    try:
        server = await start_server(
            auth={"secret": None, "jwks_url": jwks.url()},
            feed={"update_interval": 0.05, "mode": "all"},
        )
        await eventually(lambda: server.parts.verifier.ready)

        def sign(kid: str, key: Any) -> str:
            return signed({"sub": "u1", "exp": int(time.time()) + 3600}, key, "RS256", kid=kid)

        calm = await server.connect("symbols=AAPL", token=sign("key-1", keys["rsa"]))
        port = server.port
        assert (await handshake(port, "?symbols=AAPL", bearer(sign("key-1", keys["rsa"]))))[:2] == (
            101,
            "",
        )
        assert (await handshake(port, "?symbols=AAPL", bearer(sign("key-1", keys["rsa2"]))))[
            :2
        ] == (401, "invalid_token")
        none = by_hand({"sub": "u1", "exp": int(time.time()) + 3600}, "none", None)
        assert (await handshake(port, "?symbols=AAPL", bearer(none)))[:2] == (401, "invalid_token")
        # rotation: key-2 published; its first token waits for one fetch and is accepted
        jwks.publish({"key-1": keys["rsa"], "key-2": keys["rsa2"]}, "RS256")
        before = jwks.fetches
        assert (await handshake(port, "?symbols=AAPL", bearer(sign("key-2", keys["rsa2"]))))[
            :2
        ] == (101, "")
        r = await server.get("/v1/quotes?symbols=AAPL", sign("key-2", keys["rsa2"]))
        assert r.status == 200 and jwks.fetches == before + 1
        # a flood of unknown kids is not a flood of fetches
        for i in range(30):
            got = await handshake(port, "?symbols=AAPL", bearer(sign(f"unknown-{i}", keys["rsa"])))
            assert got[:2] == (401, "invalid_token")
        assert jwks.fetches - before <= 2
        # outage: the cached keys still verify
        jwks.resource.down = True
        await server.parts.verifier.keyset.fetch()
        assert (await handshake(port, "?symbols=AAPL", bearer(sign("key-2", keys["rsa2"]))))[
            :2
        ] == (101, "")
        assert (await server.get("/readyz")).status == 200
        await eventually(lambda: len(calm.seqs) > 1)
        assert calm.close_code is None
    finally:
        await jwks.stop()


@ensure
async def test_jwks_down_at_start_is_not_ready(start_server: Any, keys: dict[str, Any]) -> None:
    jwks = JWKSServer()
    jwks.start()
    url = jwks.url()
    await jwks.stop()
    server = await start_server(auth={"secret": None, "jwks_url": url})
    await eventually(lambda: server.parts.verifier.keyset.failures > 0)
    r = await server.get("/readyz")
    assert r.status == 503 and r.json()["status"] == "waiting_for_jwks"
    tok = signed({"sub": "u1", "exp": int(time.time()) + 3600}, keys["rsa"], "RS256", kid="k")
    assert (await handshake(server.port, "?symbols=AAPL", bearer(tok)))[:2] == (
        401,
        "invalid_token",
    )


# -- limits: per user, per IP, X-Forwarded-For ----------------------------------------------------


def plain(sub: str) -> str:
    return signed({"sub": sub, "exp": int(time.time()) + 3600})


@ensure
async def test_per_user_connection_limit(suite: Suite) -> None:
    port = suite.limits.port
    w1 = await connect(port, "/ws/quotes?symbols=AAPL", bearer(plain("alice")), source="127.0.0.3")
    w2 = await connect(port, "/ws/quotes?symbols=AAPL", bearer(plain("alice")), source="127.0.0.4")
    assert (w1.status, w2.status) == (101, 101)
    status, code, headers = await handshake(
        port, "?symbols=AAPL", bearer(plain("alice")), source="127.0.0.6"
    )
    assert (status, code) == (429, "too_many_connections") and headers.get("retry-after")
    assert (await handshake(port, "?symbols=AAPL", bearer(plain("bob")), source="127.0.0.7"))[
        0
    ] == 101
    w1.transport.abortConnection()  # type: ignore[union-attr]
    await w1.lost
    await eventually(lambda: suite.limits.parts.pool.per_user["alice"] < 2)
    assert (await handshake(port, "?symbols=AAPL", bearer(plain("alice")), source="127.0.0.8"))[
        0
    ] == 101
    w2.transport.abortConnection()  # type: ignore[union-attr]


@ensure
async def test_per_ip_handshake_rate(suite: Suite) -> None:
    port = suite.limits.port
    token = plain("carol")
    got = []
    for _ in range(8):  # not upgrades: 400 means the rate check let it through
        status, code, headers = await handshake(
            port, "?symbols=AAPL", bearer(token), upgrade=False, source="127.0.0.5"
        )
        got.append((status, code))
        if status == 429:
            assert headers.get("retry-after")
    assert got[0] == (400, "not_websocket") and got[-1] == (429, "rate_limited"), got
    # another address meanwhile is not limited
    other = await handshake(
        port, "?symbols=AAPL", bearer(token), upgrade=False, source="127.0.0.10"
    )
    assert other[0] == 400
    # X-Forwarded-For from a peer that is not a trusted proxy changes nothing
    forged = await handshake(
        port,
        "?symbols=AAPL",
        bearer(token, **{"X-Forwarded-For": "203.0.113.9"}),
        upgrade=False,
        source="127.0.0.5",
    )
    assert forged[:2] == (429, "rate_limited")


@ensure
async def test_forwarded_for_from_a_trusted_proxy(suite: Suite) -> None:
    port = suite.limits.port
    token = plain("dave")

    async def via_proxy(client: str) -> int:
        hdrs = bearer(token, **{"X-Forwarded-For": f"{client}, 127.0.0.9"})
        return (await handshake(port, "?symbols=AAPL", hdrs, upgrade=False, source="127.0.0.9"))[0]

    statuses = [await via_proxy("198.51.100.1") for _ in range(6)]
    assert statuses[0] == 400 and statuses[-1] == 429, statuses
    assert await via_proxy("198.51.100.2") == 400  # another client behind the same proxy


# -- REST entitlements ---------------------------------------------------------------------------


@ensure
async def test_rest_entitlements(suite: Suite) -> None:
    tok = ok(symbols=["AAPL", "MSFT"])
    r = await suite.main.get("/v1/quotes", tok)
    assert r.status == 200 and sorted(r.json()["quotes"]) == ["AAPL", "MSFT"]
    r = await suite.main.get("/v1/quotes?symbols=TSLA", tok)
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden_symbols"
    r = await suite.main.get("/v1/quotes?symbols=AAPL,TSLA", tok)
    assert r.json()["forbidden_symbols"] == ["TSLA"] and list(r.json()["quotes"]) == ["AAPL"]
    r = await suite.main.get("/v1/quotes", by_hand(claims(), "none", None))
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_token"


# -- slowloris ------------------------------------------------------------------------------------


@ensure
async def test_slowloris_request_head(suite: Suite) -> None:
    proto = Raw()
    await client_endpoint(suite.main.port).connect(Factory.forProtocol(lambda: proto))
    start = reactor.seconds()
    proto.send(b"GET /ws/quotes HTTP/1.1\r\nHost: x\r\n")
    for _ in range(40):  # a header byte every 50 ms, never the blank line
        if proto.lost.called:
            break
        proto.send(b"X")
        await sleep(0.05)
    assert proto.lost.called, "the connection is still open"
    assert reactor.seconds() - start < 1.5
    assert proto.status == 408 and proto.code() == "request_timeout"


# -- frames ---------------------------------------------------------------------------------------


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


FRAMES: list[tuple[str, Callable[[], list[bytes]], int, bool]] = [
    ("unmasked frame", lambda: [frame(1, b'{"type":"ping"}', masked=False)], 1002, False),
    ("RSV2 and RSV3 bits", lambda: [frame(1, b'{"type":"ping"}', rsv=0b011)], 1002, False),
    ("RSV1 without compression", lambda: [frame(1, b'{"type":"ping"}', rsv=0b100)], 1002, False),
    ("unknown opcode", lambda: [frame(3, b"x")], 1002, False),
    ("unknown control opcode", lambda: [frame(0xB, b"x")], 1002, False),
    ("fragmented ping", lambda: [frame(9, b"x", fin=False)], 1002, False),
    ("126-byte ping", lambda: [frame(9, b"x" * 126)], 1002, False),
    ("close code 999", lambda: [frame(8, struct.pack("!H", 999))], 1002, False),
    ("close code 1005 on the wire", lambda: [frame(8, struct.pack("!H", 1005))], 1002, False),
    ("close with one byte", lambda: [frame(8, b"\x03")], 1002, False),
    (
        "close reason not UTF-8",
        lambda: [frame(8, struct.pack("!H", 1000) + b"\xff\xfe")],
        1007,
        False,
    ),
    ("continuation without start", lambda: [frame(0, b"x")], 1002, False),
    (
        "text in the middle of a fragmented message",
        lambda: [frame(1, b'{"type":', fin=False), frame(1, b'"ping"}')],
        1002,
        False,
    ),
    ("invalid UTF-8", lambda: [frame(1, b'{"type":"ping\xff"}')], 1007, False),
    ("overlong UTF-8", lambda: [frame(1, b"\xc0\xaf")], 1007, False),
    ("UTF-16 surrogate", lambda: [frame(1, b"\xed\xa0\x80")], 1007, False),
    ("binary message", lambda: [frame(2, b"\x01\x02\x03")], 1003, False),
    ("message over 4 KiB", lambda: [frame(1, b'{"pad":"' + b"a" * 4200 + b'"}')], 1009, False),
    (
        "fragments over 4 KiB together",
        lambda: [frame(1, b"a" * 3000, fin=False), frame(0, b"a" * 3000)],
        1009,
        False,
    ),
    (
        "deflate bomb: 4 KiB after inflation",
        lambda: [frame(1, deflate(b" " * 1_000_000), rsv=0b100)],
        1009,
        True,
    ),
    (
        "compressed data that does not inflate",
        lambda: [frame(1, b"\xff\xff\xff\xff\xff", rsv=0b100)],
        1007,
        True,
    ),
]


@pytest.mark.parametrize("name,frames,want,compress", FRAMES, ids=[f[0] for f in FRAMES])
@ensure
async def test_frame(
    suite: Suite, name: str, frames: Callable[[], list[bytes]], want: int, compress: bool
) -> None:
    ext = {"Sec-WebSocket-Extensions": "permessage-deflate"} if compress else {}
    r = await opened(suite.main, **ext)
    if compress:
        assert "permessage-deflate" in r.headers.get("sec-websocket-extensions", "")
    for f in frames():
        r.send(f)
    assert await closed_with(r) == want


# the same frames in memory, from a client that never answers the close frame


MAIN: dict[str, dict[str, Any]] = {
    "feed": {"update_interval": 0.05, "mode": "all"},
    "auth": {"issuer": ISSUER, "audience": AUDIENCE, "leeway": LEEWAY},
    "websocket": {"max_symbols": 5, "handshake_rate_per_ip": 0, "message_rate": 10},
}
CLOSE_TIMEOUT = 2.0  # QuoteFactory's closeHandshakeTimeout
# Autobahn's timers go through txaio's batched timer, which truncates each deadline to a whole
# second: the 2 s timeout fires 1 to 2 s after the close frame
TIMER_SLACK = 1.0


@pytest.fixture(scope="module")
def memory_suite() -> Iterator[tuple[MemoryQuoted, Calm]]:
    """The main server's configuration on a fake clock (set to now: tokens carry real times),
    with a calm client."""
    server = MemoryQuoted(make_config(**MAIN), start=time.time())
    client = server.connect("symbols=AAPL,MSFT", token=ok("calm"))
    server.advance(0.2)
    assert client.seqs, "the calm client got no snapshot"
    yield server, Calm(client, ["AAPL", "MSFT"])
    server.stop()


@pytest.fixture
def mem(memory_suite: tuple[MemoryQuoted, Calm]) -> Iterator[MemoryQuoted]:
    """The in-memory server; after the case its calm client has every tick, in order."""
    server, calm = memory_suite
    n = len(calm.client.seqs)
    yield server
    server.advance(0.2)
    assert len(calm.client.seqs) > n + 2, "the calm client stopped receiving"
    calm.check()
    assert calm.client.quotes() == {
        s: server.parts.store.lookup(s).latest.as_dict() for s in calm.symbols
    }


def fake_now(server: MemoryQuoted) -> int:
    return int(server.clock.seconds())


def memory_token(server: MemoryQuoted, sub: str, ttl: float, **extra: Any) -> str:
    """A valid token whose times are on the server's clock."""
    now = server.clock.seconds()
    return ok(sub, iat=int(now), exp=int(now + ttl), **extra)


def memory_opened(server: MemoryQuoted, **headers: str) -> tuple[Raw, Any]:
    r = Raw(answer_close=False)
    pump = server.join(r)
    r.send(head_bytes("/ws/quotes?symbols=AAPL", bearer(ok("frames"), **headers), 80, True))
    server.flush()
    assert r.status == 101, (r.status, r.body)
    return r, pump


@pytest.mark.parametrize("name,frames,want,compress", FRAMES, ids=[f[0] for f in FRAMES])
def test_frame_in_memory(
    mem: MemoryQuoted, name: str, frames: Callable[[], list[bytes]], want: int, compress: bool
) -> None:
    ext = {"Sec-WebSocket-Extensions": "permessage-deflate"} if compress else {}
    r, pump = memory_opened(mem, **ext)
    if compress:
        assert "permessage-deflate" in r.headers.get("sec-websocket-extensions", "")
    for f in frames():
        r.send(f)
    mem.flush()
    assert r.close_code() == want
    assert [op for op, _ in r.frames].count(8) == 1
    # the client never answers: the server drops it at its close handshake timeout
    mem.advance(CLOSE_TIMEOUT + 0.05)
    assert r.lost.called, "the silent client is still connected"
    assert pump.serverIO.disconnected


def test_a_silent_client_is_dropped_at_the_close_timeout_not_before(mem: MemoryQuoted) -> None:
    r, _ = memory_opened(mem)
    r.send(frame(2, b"\x01"))  # binary: a close handshake, not an immediate drop
    mem.flush()
    assert r.close_code() == 1003
    mem.advance(CLOSE_TIMEOUT - TIMER_SLACK - 0.05)
    assert not r.lost.called
    mem.advance(TIMER_SLACK + 0.1)
    assert r.lost.called


def test_message_flood_closes_4029_in_memory(mem: MemoryQuoted) -> None:
    r, _ = memory_opened(mem)
    r.send(b"".join(frame(1, b'{"type":"ping","id":%d}' % i) for i in range(200)))
    mem.flush()
    assert r.close_code() == 4029
    replies = [json.loads(t) for t in r.texts()]
    pongs = sum(m["type"] == "pong" for m in replies)
    limited = sum(m.get("code") == "rate_limited" for m in replies)
    assert pongs == 20 and limited == 19, (pongs, limited)  # no time passes: the burst exactly
    mem.advance(CLOSE_TIMEOUT + 0.05)
    assert r.lost.called


@ensure
async def test_compressed_message_within_limit_is_served(suite: Suite) -> None:
    r = await opened(suite.main, **{"Sec-WebSocket-Extensions": "permessage-deflate"})
    r.send(frame(1, deflate(b'{"type":"ping","id":7}'), rsv=0b100))
    await eventually(lambda: len(r.frames) >= 2)
    r.transport.abortConnection()  # type: ignore[union-attr]


# -- message rate ---------------------------------------------------------------------------------


@ensure
async def test_message_flood_closes_4029(suite: Suite) -> None:
    r = await opened(suite.main)
    r.send(b"".join(frame(1, b'{"type":"ping","id":%d}' % i) for i in range(200)))
    assert await closed_with(r) == 4029
    replies = [json.loads(t) for t in r.texts()]
    pongs = sum(m["type"] == "pong" for m in replies)
    limited = sum(m.get("code") == "rate_limited" for m in replies)
    assert 20 <= pongs <= 22 and limited == 19, (pongs, limited)


@ensure
async def test_ping_frame_flood_closes_4029(suite: Suite) -> None:
    r = await opened(suite.main)
    r.send(b"".join(frame(9, b"p%d" % i) for i in range(200)))
    assert await closed_with(r) == 4029
    pongs = sum(op == 0xA for op, _ in r.frames)
    assert 20 <= pongs <= 22, pongs


@ensure
async def test_burst_within_the_limit(suite: Suite) -> None:
    client = await suite.main.connect("symbols=AAPL", token=ok("burst"))
    for i in range(15):
        client.send_json({"type": "ping", "id": i})
    for i in range(15):
        m = await client.wait_for(lambda m, i=i: m.get("type") == "pong" and m.get("id") == i)
        assert m["id"] == i
    assert not any(m.get("type") == "error" for m in client.messages)
    client.sendClose(1000)


# -- live tokens: expiry and refresh (in memory, but the last) -------------------------------


def test_expiry_sends_token_expired_then_4001(mem: MemoryQuoted) -> None:
    start = mem.clock.seconds()
    client = mem.connect("symbols=AAPL", token=memory_token(mem, "exp1", 1))
    assert client.opened.called
    # exp is a whole second within 1 s of start; the server allows LEEWAY after it
    mem.advance(LEEWAY - 0.05)
    assert client.close_code is None and not any(m["type"] == "error" for m in client.messages)
    mem.advance(1.1)
    (error,) = [m for m in client.messages if m["type"] == "error"]
    assert error["code"] == "token_expired" and "auth" in error["message"]
    assert client.close_code == 4001
    assert mem.clock.seconds() - start >= LEEWAY


def test_refresh_keeps_the_connection(mem: MemoryQuoted) -> None:
    client = mem.connect("symbols=AAPL", token=memory_token(mem, "exp2", 1))
    client.send_json({"type": "auth", "id": "r1", "token": memory_token(mem, "exp2", 3600)})
    mem.flush()
    (ack,) = [m for m in client.messages if m["type"] == "authenticated"]
    assert ack["id"] == "r1" and ack["expires_at"].endswith("Z")
    n = len(client.seqs)
    mem.advance(LEEWAY + 1.5)  # past the first token's expiry
    assert client.close_code is None and len(client.seqs) > n
    assert not any(m.get("type") == "error" for m in client.messages)
    client.sendClose(1000)
    mem.flush()
    assert client.close_code == 1000


def test_refused_refreshes_change_nothing(mem: MemoryQuoted) -> None:
    client = mem.connect("symbols=AAPL", token=memory_token(mem, "exp3", 2))
    now = fake_now(mem)
    attacker = b"an-attackers-secret-of-32-bytes-or-more"
    refused = [
        (memory_token(mem, "someone-else", 3600), "subject_mismatch"),
        (memory_token(mem, "exp3", -3600), "token_expired"),
        (signed(claims("exp3", iat=now, exp=now + 3600), attacker), "invalid_token"),
        ("not.a.jwt", "malformed_token"),
    ]
    for i, (tok, _) in enumerate(refused):
        client.send_json({"type": "auth", "id": i, "token": tok})
    mem.flush()
    errors = {m.get("id"): m["code"] for m in client.messages if m["type"] == "error"}
    assert errors == {i: code for i, (_, code) in enumerate(refused)}
    assert client.close_code is None
    mem.advance(LEEWAY + 2.1)  # the first token still rules
    (expired,) = [m for m in client.messages if m["type"] == "error" and "id" not in m]
    assert expired["code"] == "token_expired"
    assert client.close_code == 4001


def short(sub: str, ttl: float, **extra: Any) -> str:
    return ok(sub, exp=int(time.time() + ttl), **extra)


@ensure
async def test_refresh_with_fewer_entitlements_drops_symbols(suite: Suite) -> None:
    client = await suite.main.connect("symbols=AAPL,MSFT", token=short("exp4", 3600))
    await client.wait_type("quotes_patch")
    client.send_json({"type": "auth", "token": short("exp4", 3600, symbols=["AAPL"])})
    ack = await client.wait_type("authenticated")
    assert ack["forbidden_symbols"] == ["MSFT"]
    await eventually(lambda: list(client.quotes()) == ["AAPL"])
    n = len(client.seqs)
    await eventually(lambda: len(client.seqs) > n + 2)
    assert list(client.quotes()) == ["AAPL"]
    client.sendClose(1000)


# -- the end: the calm clients, the logs ----------------------------------------------------------


@ensure
async def test_zz_calm_clients_unharmed_and_no_token_logged(suite: Suite) -> None:
    checker = (ok("checker"), plain("checker"))
    for calm, server, tok in zip(suite.calm, (suite.main, suite.limits), checker, strict=True):
        n = len(calm.client.seqs)
        await eventually(lambda calm=calm, n=n: len(calm.client.seqs) > n + 2)
        calm.check()
        server.parts.oscillator.stopService()
        await sleep(0.3)  # the last tick's patch reaches the client
        rest = await server.get("/v1/quotes?symbols=AAPL,MSFT", tok)
        assert calm.client.quotes() == rest.json()["quotes"]
    assert MINTED[0] > 100 and TOKENS and suite.events
    for event in suite.events:
        text = repr(event)
        leaked = [t for t in TOKENS if t in text]
        assert not leaked, event
