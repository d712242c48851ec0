"""quoted.client: its policies on a Clock, its wire handling on a fake transport, and the whole
client against a real quoted: in memory on a fake clock where only time matters (refresh,
backoff on 503), on the real reactor for the rest (document, subscriptions, restart, fatal
refusals)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from quoted.client import QuoteClient, ServerError
from quoted.client.reconnect import (
    CONNECTING,
    FAILED,
    LIVE,
    RECONNECTING,
    STOPPED,
    Backoff,
    ClientState,
    Rejection,
    refresh_delay,
    rejection_verdict,
)
from quoted.wire.frames import text_frame
from quoted.wire.tokens import mint_token
from tests.harness import SECRET, QuotedServer, eventually, free_port, make_config, sleep
from tests.memory import MemoryQuoted

# -- pure policies ------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(initial=1.0, factor=2.0, maximum=8.0)
    rng = random.Random(7)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 8, 8]):
        delays = [b.delay(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d < ceiling for d in delays)
        assert len(set(delays)) > 40  # jittered, not one value
    assert b.delay(10_000, rng) < 8.0


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "action"),
    [
        (503, "server_full", 5.0, "retry"),
        (503, "shutting_down", 5.0, "retry"),
        (429, "rate_limited", 2.0, "retry"),
        (429, "too_many_connections", 5.0, "retry"),
        (500, "internal", 0.0, "retry"),
        (401, "token_expired", 0.0, "new_token"),
        (401, "invalid_token", 0.0, "fatal"),
        (401, "missing_token", 0.0, "fatal"),
        (401, "malformed_token", 0.0, "fatal"),
        (403, "forbidden_origin", 0.0, "fatal"),
        (403, "forbidden_symbols", 0.0, "fatal"),
        (400, "no_valid_symbols", 0.0, "fatal"),
        (404, "not_found", 0.0, "fatal"),
    ],
)
def test_rejection_verdict(status: int, code: str, retry_after: float, action: str) -> None:
    v = rejection_verdict(Rejection(status, code, "why", retry_after))
    assert v.action == action
    assert v.min_delay == retry_after
    assert code in v.reason


def test_refresh_a_minute_before_exp_or_at_80_percent() -> None:
    long = mint_token(SECRET, "a", now=1000, ttl=3600)
    assert refresh_delay(long, 1000.0, 1000.0) == pytest.approx(3540)
    short = mint_token(SECRET, "a", now=1000, ttl=3)
    assert refresh_delay(short, 1000.0, 1000.0) == pytest.approx(2.4)
    assert refresh_delay(short, 1005.0, 1000.0) == 0.0  # late: at once
    assert refresh_delay("not-a-jwt", 0.0, 0.0) is None


def test_state_descriptions() -> None:
    s = ClientState(RECONNECTING, "503 server_full: full", 4.2, 104.2)
    assert s.describe() == "reconnecting in 5 s: 503 server_full: full"
    assert s.describe(now=102.0) == "reconnecting in 3 s: 503 server_full: full"
    assert ClientState(LIVE).describe() == "live"


# -- the client on a Clock with a fake network (its fast patch: tests/wire/test_patch.py) ------


def quote_value(symbol: str, price: float) -> dict[str, Any]:
    return {"symbol": symbol, "current_price": price, "change": 0.0, "last_updated": "t"}


class Transport(StringTransport):
    """StringTransport, but Autobahn may unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeEndpoint:
    """Each connect either refuses or builds the protocol on a StringTransport."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.attempts: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse:
            self.attempts.append((None, StringTransport()))
            return defer.fail(ConnectionRefusedError("refused"))
        proto = factory.buildProtocol(None)
        transport = Transport()
        proto.makeConnection(transport)
        self.attempts.append((proto, transport))
        return defer.succeed(proto)

    @property
    def last(self) -> tuple[Any, StringTransport]:
        return self.attempts[-1]


def make_client(
    clock: Clock, endpoint: FakeEndpoint, tokens: Callable[[], str], states: list[ClientState]
) -> QuoteClient:
    return QuoteClient(
        "ws://quotes.example/ws/quotes",
        tokens,
        ["AAPL"],
        lambda changed: None,
        reactor=clock,
        on_state=states.append,
        rng=random.Random(1),
        endpoint=endpoint,  # type: ignore[arg-type]
    )


def http_reject(status: int, code: str, retry_after: int = 0) -> bytes:
    body = json.dumps({"error": {"code": code, "message": f"{code} text"}}).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    if retry_after:
        head += f"Retry-After: {retry_after}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def accept(transport: StringTransport) -> bytes:
    request = transport.value().decode()
    key = next(
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {base64.b64encode(digest).decode()}\r\n\r\n"
    ).encode()


def close_frame(code: int, reason: str) -> bytes:
    payload = struct.pack("!H", code) + reason.encode()
    return bytes((0x88, len(payload))) + payload


def lose(proto: Any) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def test_refused_connections_back_off_and_stop_cancels() -> None:
    clock, endpoint, states = Clock(), FakeEndpoint(refuse=True), []
    client = make_client(clock, endpoint, lambda: "tok", states)
    client.startService()
    delays = []
    for _ in range(6):
        assert client.state.name == RECONNECTING
        delays.append(client.state.delay)
        clock.advance(client.state.delay)
    assert len(endpoint.attempts) == 7
    ceilings = [0.5, 1, 2, 4, 8, 16]
    assert all(c / 2 <= d < c for d, c in zip(delays, ceilings, strict=True))
    client.stopService()
    assert client.state.name == STOPPED
    assert clock.getDelayedCalls() == []


def test_503_waits_retry_after_plus_jitter() -> None:
    clock, endpoint, states = Clock(), FakeEndpoint(), []
    client = make_client(clock, endpoint, lambda: "tok", states)
    client.startService()
    proto, transport = endpoint.last
    assert b"Authorization: Bearer tok" in transport.value()
    assert b"GET /ws/quotes?symbols=AAPL " in transport.value()
    proto.dataReceived(http_reject(503, "server_full", retry_after=7))
    lose(proto)
    assert client.state.name == RECONNECTING
    assert 7.25 <= client.state.delay < 7.5
    assert "server_full" in client.state.reason
    clock.advance(7.2)
    assert len(endpoint.attempts) == 1  # not before Retry-After
    clock.advance(0.3)
    assert len(endpoint.attempts) == 2


def test_body_split_across_reads_is_awaited() -> None:
    clock, endpoint, states = Clock(), FakeEndpoint(), []
    client = make_client(clock, endpoint, lambda: "tok", states)
    client.startService()
    proto, _ = endpoint.last
    raw = http_reject(401, "invalid_token")
    proto.dataReceived(raw[:-10])
    proto.dataReceived(raw[-10:])
    lose(proto)
    assert client.state.name == FAILED
    assert client.state.reason == "401 invalid_token: invalid_token text"
    clock.advance(3600)
    assert len(endpoint.attempts) == 1  # never retried
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(("status", "code"), [(403, "forbidden_origin"), (400, "not_websocket")])
def test_refusals_are_fatal(status: int, code: str) -> None:
    clock, endpoint, states = Clock(), FakeEndpoint(), []
    client = make_client(clock, endpoint, lambda: "tok", states)
    client.startService()
    d = client.subscribe(["MSFT"])
    failures: list[Failure] = []
    d.addErrback(failures.append)
    proto, _ = endpoint.last
    proto.dataReceived(http_reject(status, code))
    lose(proto)
    assert [s.name for s in states] == [CONNECTING, FAILED]
    assert code in client.state.describe()
    assert failures  # pending requests fail with the client
    clock.advance(3600)
    assert len(endpoint.attempts) == 1


def open_connection(endpoint: FakeEndpoint) -> Any:
    proto, transport = endpoint.last
    proto.dataReceived(accept(transport))
    transport.clear()
    return proto


def test_4001_reconnects_only_with_a_new_token() -> None:
    tokens = iter(["t1", "t2", "t2"])
    clock, endpoint, states = Clock(), FakeEndpoint(), []
    client = make_client(clock, endpoint, lambda: next(tokens), states)
    client.startService()
    proto = open_connection(endpoint)
    assert client.state.name == LIVE
    proto.dataReceived(close_frame(4001, "token expired"))
    lose(proto)
    assert client.state.name == RECONNECTING  # t2 differs from t1
    clock.advance(client.state.delay)
    proto, transport = endpoint.last
    assert b"Bearer t2" in transport.value()
    open_connection(endpoint)
    proto.dataReceived(close_frame(4001, "token expired"))
    lose(proto)
    assert client.state.name == FAILED  # t2 again: no blind retry
    assert "no new token" in client.state.reason
    assert clock.getDelayedCalls() == []


def test_seq_gap_resynchronizes_at_once() -> None:
    clock, endpoint, states = Clock(), FakeEndpoint(), []
    client = make_client(clock, endpoint, lambda: "tok", states)
    client.startService()
    proto = open_connection(endpoint)
    snapshot = {
        "type": "quotes_patch",
        "seq": 1,
        "operations": [
            {"op": "add", "path": "/quotes", "value": {}},
            {"op": "add", "path": "/quotes/AAPL", "value": quote_value("AAPL", 1.0)},
        ],
        "invalid_symbols": [],
    }
    proto.dataReceived(text_frame(json.dumps(snapshot).encode()))
    assert dict(client.quotes) == {"AAPL": quote_value("AAPL", 1.0)}
    with pytest.raises(TypeError):
        client.quotes["X"] = 1  # type: ignore[index]
    gap = {
        "type": "quotes_patch",
        "seq": 3,
        "operations": [{"op": "remove", "path": "/quotes/AAPL"}],
    }
    proto.dataReceived(text_frame(json.dumps(gap).encode()))
    assert "AAPL" in client.quotes  # the gapped patch is not applied
    proto.dataReceived(close_frame(1000, ""))
    lose(proto)
    assert client.state.name == RECONNECTING
    assert client.state.delay == 0.0
    assert "seq 3 after 1" in client.state.reason
    assert client.resyncs == 1
    clock.advance(0)
    assert len(endpoint.attempts) == 2


# -- against a real quoted -------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.states: list[ClientState] = []
        self.updates: list[frozenset[str]] = []

    def names(self) -> list[str]:
        return [s.name for s in self.states]


def start_client(
    server: QuotedServer | MemoryQuoted,
    symbols: list[str],
    rec: Recorder,
    tokens: Callable[[], Any] | None = None,
) -> QuoteClient:
    """A started client of ``server``: over real sockets on the reactor, or, for a
    MemoryQuoted, on its fake clock and joined to it in memory."""
    in_memory = isinstance(server, MemoryQuoted)
    client = QuoteClient(
        server.url(),
        tokens or server.token,
        symbols,
        rec.updates.append,
        reactor=server.clock if in_memory else reactor,
        on_state=rec.states.append,
        **({"endpoint": server.endpoint()} if in_memory else {}),
    )
    client.startService()
    if in_memory:
        server.flush()
    return client


async def stopped(client: QuoteClient) -> None:
    if client.running:
        await client.stopService()


@pytest_twisted.ensureDeferred
async def test_document_equals_rest_and_subscriptions(start_server: Any) -> None:
    server = await start_server(
        feed={"update_interval": 0.05, "mode": "all"}, websocket={"max_symbols": 3}
    )
    rec = Recorder()
    client = start_client(server, ["AAPL", "MSFT"], rec)
    try:
        await eventually(lambda: client.seq >= 5)
        assert sorted(client.quotes) == ["AAPL", "MSFT"]
        assert any(u in ({"AAPL"}, {"MSFT"}, {"AAPL", "MSFT"}) for u in rec.updates)

        ack = await client.subscribe(["spy", "nope"])
        assert ack["symbols"] == ["AAPL", "MSFT", "SPY"]
        assert ack["invalid"] == ["NOPE"]
        await eventually(lambda: "SPY" in client.quotes)
        ack = await client.unsubscribe(["AAPL"])
        assert ack["symbols"] == ["MSFT", "SPY"]
        await eventually(lambda: "AAPL" not in client.quotes)
        assert client.symbols == ["MSFT", "SPY"]
        with pytest.raises(ServerError) as e:
            await client.subscribe(["TSLA", "GOOGL"])
        assert e.value.code == "too_many_symbols"
        assert client.symbols == ["MSFT", "SPY"]  # the refused change is undone

        # freeze prices, let the last tick arrive, then compare with REST exactly
        await freeze(server)
        rest = await server.rest_quotes(["MSFT", "SPY"])
        assert dict(client.quotes) == rest
        assert rec.names() == [CONNECTING, LIVE]
    finally:
        await stopped(client)
    assert client.state.name == STOPPED


async def freeze(server: QuotedServer) -> None:
    """Stop the price feed and let the last tick reach the clients."""
    await defer.maybeDeferred(server.parts.oscillator.stopService)
    await sleep(0.3)


def _on_port(port: int, **sections: dict[str, Any]) -> QuotedServer:
    config = make_config(**sections)
    listen = f"tcp:{port}:interface=127.0.0.1"
    return QuotedServer(
        dataclasses.replace(config, server=dataclasses.replace(config.server, listen=listen))
    )


@pytest_twisted.ensureDeferred
async def test_resubscribes_after_a_server_restart() -> None:
    port = free_port()
    feed = {"update_interval": 0.05, "mode": "all"}
    first = _on_port(port, feed=feed, server={"shutdown_timeout": 1.0})
    await first.start()
    rec = Recorder()
    client = start_client(first, ["AAPL"], rec)
    second: QuotedServer | None = None
    try:
        await eventually(lambda: client.state.name == LIVE and client.seq > 1)
        await client.subscribe(["MSFT"])
        await eventually(lambda: "MSFT" in client.quotes)
        await first.stop()  # drains: close 1001
        await eventually(lambda: client.state.name == RECONNECTING)
        assert "1001" in client.state.reason
        second = _on_port(port, feed=feed)
        await second.start()
        await eventually(lambda: client.state.name == LIVE, timeout=10)
        await eventually(lambda: client.seq > 2)
        assert sorted(client.quotes) == ["AAPL", "MSFT"]
        # the new server's document, not the old one's
        await freeze(second)
        assert dict(client.quotes) == await second.rest_quotes(["AAPL", "MSFT"])
    finally:
        await stopped(client)
        if second is not None:
            await second.stop()


def memory_stopped(server: MemoryQuoted, client: QuoteClient) -> None:
    d = defer.maybeDeferred(client.stopService)
    server.advance(3)
    assert d.called
    server.stop()
    assert server.clock.getDelayedCalls() == []


def test_refreshes_the_token_before_it_expires() -> None:
    server = MemoryQuoted(
        make_config(auth={"leeway": 0.0}, feed={"update_interval": 0.1, "mode": "all"})
    )
    # control: without a refresh the server does close such a connection with 4001
    plain = server.connect("symbols=AAPL", token=server.token(ttl=2))
    assert plain.opened.called
    server.advance(2.1)
    assert plain.close_code == 4001

    issued: list[str] = []

    def tokens() -> str:
        issued.append(server.token(ttl=3))
        return issued[-1]

    rec = Recorder()
    client = start_client(server, ["AAPL"], rec, tokens)
    assert rec.names() == [CONNECTING, LIVE]
    server.advance(7.5)  # more than two lifetimes of a 3 s token
    assert rec.names() == [CONNECTING, LIVE]  # never closed
    assert len(issued) >= 3
    seq = client.seq
    server.advance(0.5)
    assert client.seq > seq  # still streaming
    memory_stopped(server, client)


@pytest_twisted.ensureDeferred
async def test_an_expired_connection_without_a_new_token_fails(start_server: Any) -> None:
    server = await start_server(auth={"leeway": 0.0})
    token = server.token(ttl=2)
    rec = Recorder()
    client = start_client(server, ["AAPL"], rec, lambda: token)
    try:
        await eventually(lambda: client.state.name == FAILED, timeout=6)
        assert "4001" in client.state.reason
        assert "no new token" in client.state.reason
        assert rec.names() == [CONNECTING, LIVE, FAILED]
    finally:
        await stopped(client)


def test_backs_off_on_503_until_the_slot_frees() -> None:
    server = MemoryQuoted(make_config(websocket={"max_connections": 1}))
    holder = server.connect("symbols=AAPL")
    assert holder.opened.called
    rec = Recorder()
    client = start_client(server, ["MSFT"], rec)
    assert client.state.name == RECONNECTING
    state = client.state
    assert "503 server_full" in state.reason
    assert state.delay >= 5  # Retry-After
    server.advance(1.0)
    holder.sendClose(1000)
    server.flush()
    assert holder.close_code == 1000
    server.advance(state.retry_at - server.clock.seconds() - 0.05)
    assert rec.names() == [CONNECTING, RECONNECTING]  # not before Retry-After
    server.advance(0.1)
    assert server.clock.seconds() >= state.retry_at
    assert rec.names() == [CONNECTING, RECONNECTING, CONNECTING, LIVE]
    server.advance(0.5)
    assert "MSFT" in client.quotes
    memory_stopped(server, client)


@pytest_twisted.ensureDeferred
async def test_a_bad_token_fails_without_retrying(server: QuotedServer) -> None:
    bad = mint_token(
        b"another-secret-that-is-at-least-32-bytes!", "eve", now=reactor.seconds(), ttl=60
    )
    rec = Recorder()
    client = start_client(server, ["AAPL"], rec, lambda: bad)
    try:
        await eventually(lambda: client.state.name == FAILED)
        assert client.state.reason.startswith("401 invalid_token")
        assert bad not in client.state.reason
        await sleep(1.0)
        assert rec.names() == [CONNECTING, FAILED]
    finally:
        await stopped(client)


async def _wss_server(tmp_path: Path, name: str) -> tuple[QuotedServer, Path]:
    from tests.certs import self_signed

    cert_pem, key_pem = self_signed(name)
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    config = make_config(feed={"update_interval": 0.05, "mode": "all"})
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    server = QuotedServer(
        dataclasses.replace(config, server=dataclasses.replace(config.server, listen=listen))
    )
    await server.start()
    return server, cert


@pytest_twisted.ensureDeferred
async def test_wss_verifies_the_certificate_and_the_host_name(tmp_path: Path) -> None:
    server, cert = await _wss_server(tmp_path, "localhost")
    clients: list[QuoteClient] = []

    def wss(cafile: Path, host: str = "localhost") -> QuoteClient:
        c = QuoteClient(
            f"wss://{host}:{server.port}/ws/quotes",
            server.token,
            ["AAPL"],
            lambda changed: None,
            reactor=reactor,
            cafile=str(cafile),
        )
        c.startService()
        clients.append(c)
        return c

    try:
        trusted = wss(cert)
        await eventually(lambda: "AAPL" in trusted.quotes)
        from tests.certs import self_signed

        other = tmp_path / "other.pem"
        other.write_bytes(self_signed("localhost")[0])
        untrusted = wss(other)  # a certificate the CA file does not vouch for
        wrong_name = wss(cert, host="127.0.0.1")  # trusted, but not issued for this name
        await eventually(
            lambda: untrusted.state.name == RECONNECTING and wrong_name.state.name == RECONNECTING
        )
        await sleep(0.5)
        assert untrusted.seq == 0 and wrong_name.seq == 0
        assert not untrusted.quotes and not wrong_name.quotes
    finally:
        for c in clients:
            await stopped(c)
        await server.stop()
