"""Issue 19's HTTP items over real sockets: request deadlines and body limits on every kind of
request (3), open connections per IP (3), duplicate Host and Origin (9), twisted.web's own
refusals in JSON (10); beside each attack a calm WebSocket client whose seq stays unbroken.
The log items (11, 12) are in tests/server/test_hardening_logs.py (real twistd processes).

Each refusal is checked as a client sees it: the status, the JSON body's code, and the
connection closed by the server.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from quoted.server import channel
from tests.harness import (
    QuotedServer,
    SocketClient,
    WSClient,
    client_endpoint,
    eventually,
    make_config,
    server_url,
    sleep,
)

ensure = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.transports("ws", "wss")
# the server's deadlines in these tests: the head, then the body, each within this
DEADLINE = 0.5
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Peer(Protocol):
    """A raw client: sends what it is told, keeps every byte of the answer."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.answered: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.callback(None)
        self.lost.callback(None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.lost.called:
            self.transport.write(data)

    @property
    def status(self) -> int:
        line = self.data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else 0

    @property
    def code(self) -> str:
        body = self.data.partition(b"\r\n\r\n")[2]
        try:
            return str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return ""


async def open_peer(port: int, source: str | None = None) -> Peer:
    peer = Peer()
    await client_endpoint(port, source=source).connect(Factory.forProtocol(lambda: peer))
    return peer


async def closed(peer: Peer, timeout: float = 5) -> None:
    await defer.Deferred.addTimeout(peer.lost, timeout, reactor)


async def exchange(port: int, data: bytes, source: str | None = None) -> Peer:
    """Send ``data``; wait until the server closes the connection."""
    peer = await open_peer(port, source)
    peer.send(data)
    await closed(peer)
    return peer


def head(line: str, port: int, *extra: str) -> bytes:
    lines = [line, f"Host: 127.0.0.1:{port}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade(token: str) -> tuple[str, ...]:
    return (
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {token}",
    )


async def ws_from(port: int, query: str, token: str, source: str) -> WSClient:
    """The harness's WebSocket client, connecting from the loopback address ``source``."""
    url = server_url(port, query)
    factory = WebSocketClientFactory(
        url, headers={"Authorization": f"Bearer {token}"}, reactor=reactor
    )
    factory.protocol = WSClient
    proto: WSClient = await client_endpoint(port, source=source).connect(factory)
    return await proto.opened


@dataclass
class Suite:
    server: QuotedServer
    calm: WSClient

    def check_calm(self) -> None:
        seqs = self.calm.seqs
        assert self.calm.close_code is None, "the calm client was closed"
        assert seqs and seqs == list(range(1, len(seqs) + 1)), "the calm client missed a seq"


@pytest_twisted.async_yield_fixture(scope="module")
async def suite(transport: str) -> AsyncIterator[Suite]:
    server = QuotedServer(
        make_config(
            tls=transport == "wss",
            feed={"update_interval": 0.05, "mode": "all"},
            server={"max_connections_per_ip": 3},
            websocket={"handshake_rate_per_ip": 0},
        )
    )
    await server.start()
    site = server.service.getServiceNamed("listener").factory
    site.head_timeout = site.body_timeout = DEADLINE
    # from its own address: the per-IP test fills 127.0.0.1's and 127.0.0.3's places
    calm = await ws_from(server.port, "symbols=AAPL", server.token("calm"), "127.0.0.2")
    await calm.wait_type("quotes_patch")
    yield Suite(server, calm)
    await server.stop()


# -- item 3: one deadline for every request -------------------------------------------------------


def trickle_cases(port: int, token: str) -> dict[str, tuple[bytes, bytes]]:
    """name -> (what is sent at once, the byte sent every 50 ms after it)."""
    return {
        "head": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X"),
        "GET with a body": (head("GET /healthz HTTP/1.1", port, "Content-Length: 100000"), b"a"),
        "POST to any path": (head("POST /healthz HTTP/1.1", port, "Content-Length: 1000000"), b"a"),
        "POST /v1/quotes": (
            head("POST /v1/quotes HTTP/1.1", port, "Content-Length: 1000", "X-A: b"),
            b"{",
        ),
        "an upgrade with a body": (
            head(
                "GET /ws/quotes?symbols=AAPL HTTP/1.1", port, *upgrade(token), "Content-Length: 50"
            ),
            b"a",
        ),
        "chunked": (
            head("POST /healthz HTTP/1.1", port, "Transfer-Encoding: chunked") + b"10000\r\n",
            b"a",
        ),
    }


CASES = ["head", "GET with a body", "POST to any path", "POST /v1/quotes"]
CASES += ["an upgrade with a body", "chunked"]


@pytest.mark.parametrize("case", CASES)
@ensure
async def test_every_request_must_arrive_within_its_deadline(suite: Suite, case: str) -> None:
    port = suite.server.port
    first, each = trickle_cases(port, suite.server.token("trickler"))[case]
    peer = await open_peer(port)
    start = reactor.seconds()
    peer.send(first)
    for _ in range(60):  # a byte every 50 ms, for at most 3 s: bytes extend nothing
        if peer.lost.called:
            break
        peer.send(each)
        await sleep(0.05)
    await closed(peer)
    # the head's deadline, then the body's: never more than the two
    assert reactor.seconds() - start < 2 * DEADLINE + 0.7
    assert (peer.status, peer.code) == (408, "request_timeout"), peer.data
    suite.check_calm()


@pytest.mark.parametrize(
    "line, extra",
    [
        ("GET /healthz HTTP/1.1", ()),
        ("POST /healthz HTTP/1.1", ()),
        ("POST /v1/quotes HTTP/1.1", ("Content-Type: application/json",)),
        ("PUT /nowhere HTTP/1.1", ("Expect: 100-continue",)),
        ("GET /ws/quotes?symbols=AAPL HTTP/1.1", ("upgrade",)),
    ],
    ids=["GET", "POST /healthz", "POST /v1/quotes", "PUT with Expect", "upgrade"],
)
@ensure
async def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(
    suite: Suite, line: str, extra: tuple[str, ...]
) -> None:
    port = suite.server.port
    if extra == ("upgrade",):
        extra = upgrade(suite.server.token("big"))
    # only the head is sent: the answer comes without a byte of the body
    peer = await exchange(port, head(line, port, *extra, "Content-Length: 1000000000"))
    assert (peer.status, peer.code) == (413, "body_too_large"), peer.data
    assert b"100 Continue" not in peer.data
    suite.check_calm()


@ensure
async def test_a_chunked_body_is_refused_at_the_limit_in_memory(suite: Suite) -> None:
    port = suite.server.port
    peer = await open_peer(port)
    peer.send(head("POST /anything HTTP/1.1", port, "Transfer-Encoding: chunked"))
    chunk = b"%x\r\n" % (256 * 1024) + b"a" * (256 * 1024) + b"\r\n"
    for _ in range(8):  # 2 MiB, twice the limit
        peer.send(chunk)
    await closed(peer)
    assert (peer.status, peer.code) == (413, "body_too_large"), peer.data[:300]
    suite.check_calm()


@ensure
async def test_a_body_within_the_limit_and_time_is_served(suite: Suite) -> None:
    port = suite.server.port
    body = b"x" * 5000
    peer = await exchange(
        port,
        head("GET /healthz HTTP/1.1", port, f"Content-Length: {len(body)}", "Connection: close")
        + body,
    )
    assert peer.status == 200, peer.data


# -- item 3: open connections per IP ------------------------------------------------------------


@ensure
async def test_open_connections_per_ip_are_bounded_heads_and_websockets_alike(
    suite: Suite,
) -> None:
    port, server = suite.server.port, suite.server
    # three connections still in their head: 127.0.0.1's places are taken
    holders = [await open_peer(port) for _ in range(3)]
    for h in holders:
        h.send(b"GET /healthz HTTP/1.1\r\n")
    await sleep(0.05)
    refused = await exchange(port, head("GET /healthz HTTP/1.1", port))
    assert (refused.status, refused.code) == (429, "too_many_ip_connections"), refused.data
    assert b"Retry-After: 5" in refused.data
    # another address is not concerned
    other = await exchange(
        port, head("GET /healthz HTTP/1.1", port, "Connection: close"), source="127.0.0.4"
    )
    assert other.status == 200
    # a place comes back when a connection closes (here: the head deadline closes them all)
    for h in holders:
        await closed(h)
    again = await exchange(port, head("GET /healthz HTTP/1.1", port, "Connection: close"))
    assert again.status == 200, again.data

    # WebSockets hold their place until they close
    ws = [await ws_from(port, "symbols=AAPL", server.token(f"w{i}"), "127.0.0.3") for i in range(3)]
    refused = await exchange(port, head("GET /healthz HTTP/1.1", port), source="127.0.0.3")
    assert (refused.status, refused.code) == (429, "too_many_ip_connections")
    ws[0].sendClose(1000)
    await eventually(lambda: ws[0].close_code is not None)

    async def accepted() -> bool:
        p = await exchange(
            port, head("GET /healthz HTTP/1.1", port, "Connection: close"), source="127.0.0.3"
        )
        return p.status == 200

    for _ in range(50):
        if await accepted():
            break
        await sleep(0.02)
    else:
        raise AssertionError("the closed WebSocket's place did not come back")
    for c in ws[1:]:
        c.sendClose(1000)
    site = server.service.getServiceNamed("listener").factory
    await eventually(lambda: "127.0.0.3" not in site.peers.open)
    suite.check_calm()


@ensure
async def test_connections_from_a_trusted_proxy_are_not_counted(start_server: Any) -> None:
    import ipaddress

    s = await start_server(
        server={
            "max_connections_per_ip": 1,
            "trusted_proxies": (ipaddress.ip_network("127.0.0.9/32"),),
        }
    )
    holders = [await open_peer(s.port, "127.0.0.9") for _ in range(4)]
    peer = await exchange(
        s.port, head("GET /healthz HTTP/1.1", s.port, "Connection: close"), source="127.0.0.9"
    )
    assert peer.status == 200
    for h in holders:
        h.transport.loseConnection()  # type: ignore[union-attr]


# -- item 9: one Host, one Origin ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path, extra",
    [
        ("/healthz", ("Host: evil.example",)),
        ("/v1/quotes", ("Origin: http://evil.example", "Origin: http://127.0.0.1")),
        ("/ws/quotes?symbols=AAPL", ("upgrade", "Host: evil.example")),
        ("/ws/quotes?symbols=AAPL", ("upgrade", "Origin: http://evil.example", "Origin: x")),
        ("/ws/quotes?symbols=AAPL", ("upgrade", "Origin: http://evil.example, http://127.0.0.1")),
    ],
    ids=[
        "REST two Hosts",
        "REST two Origins",
        "handshake two Hosts",
        "handshake two Origins",
        "handshake Origins in one line",
    ],
)
@ensure
async def test_duplicate_host_or_origin_is_400(
    suite: Suite, path: str, extra: tuple[str, ...]
) -> None:
    port = suite.server.port
    lines = list(extra)
    if lines[0] == "upgrade":
        lines = [*upgrade(suite.server.token("dup")), *lines[1:]]
    peer = await exchange(port, head(f"GET {path} HTTP/1.1", port, "Connection: close", *lines))
    assert (peer.status, peer.code) == (400, "duplicate_header"), peer.data
    suite.check_calm()


# -- item 10: twisted.web's own refusals, in JSON --------------------------------------------------


def many_headers(n: int) -> bytes:
    return b"".join(b"X-%d: v\r\n" % i for i in range(n))


BAD = {
    "HTTP/2.0 request line": (
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        505,
        "http_version_not_supported",
    ),
    "HTTP/0.9 request line": (b"GET /healthz\r\n\r\n", 400, "bad_request"),
    "garbage request line": (b"\x16\x03\x01\x02\x00\x01\r\n\r\n", 400, "bad_request"),
    "NUL in a value": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        400,
        "bad_request",
    ),
    "bare CR in a value": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        400,
        "bad_request",
    ),
    "a header without a colon": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n",
        400,
        "bad_request",
    ),
    "a bad Content-Length": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
        400,
        "bad_request",
    ),
    "Content-Length and chunked": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
        "bad_request",
    ),
    "an unknown Transfer-Encoding": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
        "bad_request",
    ),
    "a malformed chunk": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        "bad_request",
    ),
    "5,000 headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many_headers(5000) + b"\r\n",
        431,
        "headers_too_large",
    ),
    "a head over 64 KiB": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 30000) for i in range(3))
        + b"\r\n",
        431,
        "headers_too_large",
    ),
    "a request line over 64 KiB": (
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "a header line over 64 KiB": (
        b"GET / HTTP/1.1\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
@ensure
async def test_twisted_webs_own_refusals_have_our_json_body(suite: Suite, case: str) -> None:
    data, status, code = BAD[case]
    peer = await exchange(suite.server.port, data)
    assert (peer.status, peer.code) == (status, code), peer.data[:300]
    h = peer.data.partition(b"\r\n\r\n")[0].lower()
    assert b"content-type: application/json" in h and b"connection: close" in h
    suite.check_calm()


@ensure
async def test_600_headers_under_16_kib_are_served(suite: Suite) -> None:
    port = suite.server.port
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + many_headers(600)
    peer = await exchange(port, data + b"\r\n")
    assert peer.status == 200, peer.data[:300]


@ensure
async def test_a_pipelined_request_keeps_its_own_deadline(suite: Suite) -> None:
    """The deadline is re-armed before twisted.web plays a pipelined request back."""
    port = suite.server.port
    two = head("GET /healthz HTTP/1.1", port) + head("GET /healthz HTTP/1.1", port)
    peer = await open_peer(port)
    peer.send(two)
    await eventually(lambda: peer.data.count(b"HTTP/1.1 200") == 2)
    await closed(peer)  # then idle: the next head's deadline closes it
    assert peer.data.count(b"HTTP/1.1 408") == 1


@ensure
async def test_a_refused_client_that_never_closes_is_cut_off(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal closes the connection even when the client does nothing more: over TLS the
    server sends its close_notify (twisted.web's producer unregistered first) and, when the
    client never answers it, aborts the connection ``CLOSE_GRACE`` after the answer."""
    monkeypatch.setattr(channel, "CLOSE_GRACE", 0.3)
    site = suite.server.service.getServiceNamed("listener").factory
    client = SocketClient(suite.server.port, source="127.0.0.12")
    await client.handshake()
    assert client.send(b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n")
    answer = b""

    def answered() -> bool:
        nonlocal answer
        answer += client.read()
        return b"}" in answer

    await eventually(answered)
    assert answer.startswith(b"HTTP/1.1 505"), answer[:100]
    start = reactor.seconds()
    await eventually(lambda: "127.0.0.12" not in site.peers.open, timeout=3)
    assert reactor.seconds() - start < 2  # the grace (0.3 s), not the 60 s idle timeout
    client.close()
    suite.check_calm()


def established(client: SocketClient) -> bool:
    """Whether the client's TCP connection is still established (the kernel's TCP_INFO state:
    1), whatever TLS saw: a close_notify is not the end of the connection."""
    return client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1


@ensure
async def test_a_client_refused_at_accept_that_never_closes_is_cut_off(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection past the per-IP limit gets its 429 and is closed even when the client
    does nothing more: over TLS it is aborted ``CLOSE_GRACE`` after the answer, not held as
    long as the client likes."""
    monkeypatch.setattr(channel, "CLOSE_GRACE", 0.3)
    holders = [SocketClient(suite.server.port, source="127.0.0.13") for _ in range(3)]
    for h in holders:
        await h.handshake()
    client = SocketClient(suite.server.port, source="127.0.0.13")
    await client.handshake()
    answer = b""

    def answered() -> bool:
        nonlocal answer
        answer += client.read()
        return b"}" in answer

    await eventually(answered)
    assert answer.startswith(b"HTTP/1.1 429"), answer[:100]
    start = reactor.seconds()
    await eventually(lambda: not established(client), timeout=3)
    assert reactor.seconds() - start < 2  # the grace (0.3 s), not never
    for c in (*holders, client):
        c.close()
    suite.check_calm()
