"""Hardening of the WebSocket connection (issue 19, items 1, 2 and 13): each attack reproduced
over real sockets against a real quoted (and, where time or counts decide, in memory on a
MemoryReactorClock), with a calm client beside it that keeps every seq and ends with the
document GET /v1/quotes gives.

1. A client that provokes replies and never reads: what the server queues for it stays within
   ``MAX_QUEUED_BYTES`` plus one frame, it is closed 4008, and nothing of it stays referenced.
2. Frames outside the message rate: endless zero-length continuation frames, and pong floods,
   are counted frame by frame: 4029 after 20 refused in a row, 1009 past ``MAX_FRAGMENTS``
   frames in one message when the rate limit is off; the frames processed are counted.
3. (13) A client's close code and reason are echoed.
"""

from __future__ import annotations

import gc
import json
import struct
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted

from quoted.server import edge, outbound
from quoted.server.budget import MAX_FRAGMENTS, MAX_QUEUED_BYTES, MAX_REFUSED_IN_ROW
from quoted.server.pool import Liveness
from quoted.server.protocol import QuoteProtocol
from tests.harness import (
    QuotedServer,
    SocketClient,
    WSClient,
    eventually,
    make_config,
    sleep,
)
from tests.memory import MemoryQuoted
from tests.server.test_security import (
    Raw,
    bearer,
    closed_with,
    connect,
    frame,
    head_bytes,
    ok,
)

ensure = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.transports("ws", "wss")

CONFIG: dict[str, dict[str, Any]] = {
    "feed": {"update_interval": 0.05, "mode": "all"},
    "websocket": {"max_symbols": 5, "handshake_rate_per_ip": 0, "message_rate": 10},
}


def server_protocols(server: Any) -> list[QuoteProtocol]:
    protos = [live.conn for live in server.parts.pool.connections]
    return [p for p in protos if isinstance(p, QuoteProtocol)]


def of_user(server: Any, user: str) -> QuoteProtocol:
    (proto,) = [p for p in server_protocols(server) if p.accepted.user == user]
    return proto


def metric(server: Any, name: str, **labels: str) -> float:
    value = server.parts.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


# -- the calm client --------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def calm_server(transport: str) -> AsyncIterator[tuple[QuotedServer, WSClient]]:
    """A real quoted with a calm client on AAPL,MSFT; afterwards the calm client has every
    seq and the document of GET /v1/quotes."""
    server = QuotedServer(make_config(tls=transport == "wss", **CONFIG))
    await server.start()
    calm = await server.connect("symbols=AAPL,MSFT", token=ok("calm"))
    await calm.wait_type("quotes_patch")
    yield server, calm
    n = len(calm.seqs)
    await eventually(lambda: len(calm.seqs) > n + 2)
    assert calm.close_code is None, "the calm client was closed"
    assert calm.seqs == list(range(1, len(calm.seqs) + 1)), "the calm client missed a seq"
    server.parts.oscillator.stopService()
    await sleep(0.3)  # the last tick's patch reaches the client
    rest = await server.get("/v1/quotes?symbols=AAPL,MSFT", server.token())
    assert calm.quotes() == rest.json()["quotes"]
    await server.stop()


# -- 1. replies to a client that never reads ------------------------------------------------


def invalid_subscribe(i: int) -> bytes:
    """A subscribe of about 4 KB of distinct invalid symbols whose reply echoes each with its
    ``<`` escaped (``\\u003c``): about 20 KB of reply for 4 KB sent."""
    symbols = [f"{'<' * 28}{i % 100:02d}{n:03d}" for n in range(110)]
    data = json.dumps({"type": "subscribe", "id": i, "symbols": symbols}, separators=(",", ":"))
    assert len(data) <= 4096
    return data.encode()


class Deaf:
    """A raw WebSocket client (over TLS to a wss server) that completes its handshake, then
    never reads again; its receive buffer is small, so the server's side fills after a few
    replies."""

    def __init__(self, port: int, user: str) -> None:
        self.client = SocketClient(port, rcvbuf=4096)
        self.request = head_bytes("/ws/quotes?symbols=TSLA", bearer(ok(user)), port, True)
        self.head = b""

    async def opened(self) -> None:
        await self.client.handshake()
        assert self.client.send(self.request)

        def have_head() -> bool:
            self.head += self.client.read()
            return b"\r\n\r\n" in self.head

        await eventually(have_head)
        assert self.head.startswith(b"HTTP/1.1 101"), self.head[:100]

    def send(self, data: bytes) -> bool:
        """False once the server has dropped the connection."""
        return self.client.send(data)

    def dropped(self) -> bool:
        """Reads what is left: True at the end of the stream or a reset."""
        self.client.read()
        return self.client.ended


@ensure
async def test_replies_to_a_client_that_never_reads_are_bounded_and_closed_4008(
    calm_server: tuple[QuotedServer, WSClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19 item 1: clients with no symbols (no price update, so the tick breaker never
    counts them) send subscribes whose replies are five times their size, and blind pongs,
    and never read. Every write is measured after it happens: no transport ever holds more
    than the budget plus one frame; each deaf client is closed 4008 and dropped; nothing of
    it stays referenced."""
    server, _ = calm_server
    most: dict[int, int] = {}
    largest = [0]
    write_frame = edge.write_frame

    def measured(transport: Any, sock: Any, frame_: bytes, limit: int) -> bool:
        written = write_frame(transport, sock, frame_, limit)
        key = id(transport)
        most[key] = max(most.get(key, 0), edge.queued_bytes(transport))
        largest[0] = max(largest[0], len(frame_))
        return written

    def measured_tls(direct: edge.TLSDirect, frame_: bytes, limit: int) -> bool:
        written = write_tls_frame(direct, frame_, limit)
        key = id(direct.tcp)
        most[key] = max(most.get(key, 0), edge.queued_bytes(direct.tcp))
        largest[0] = max(largest[0], len(frame_))
        return written

    write_tls_frame = edge.write_tls_frame
    monkeypatch.setattr(outbound, "write_frame", measured)
    monkeypatch.setattr(outbound, "write_tls_frame", measured_tls)
    closes = metric(server, "quoted_slow_consumer_closes_total")
    deaf = [Deaf(server.port, f"deaf{i}") for i in range(3)]
    for d in deaf:
        await d.opened()
    await eventually(lambda: len(server_protocols(server)) == 4)
    refs = [weakref.ref(of_user(server, f"deaf{i}")) for i in range(3)]
    for d in deaf:  # no symbols from now on: nothing the hub would ever count as a stall
        d.send(frame(1, b'{"type":"unsubscribe","symbols":["TSLA"]}'))
    sent = 0
    for i in range(200):
        live = [d for d in deaf if d.send(frame(1, invalid_subscribe(i)) + frame(0xA, b""))]
        sent += len(live)
        if not live or len(server_protocols(server)) == 1:
            break
        await sleep(0.1)  # the rate limit's 10 a second: every subscribe is answered
    await eventually(lambda: len(server_protocols(server)) == 1)
    await eventually(lambda: all(d.dropped() for d in deaf))
    assert metric(server, "quoted_slow_consumer_closes_total") - closes == 3
    assert metric(server, "quoted_server_closes_total", code="4008") >= 3
    assert sent > 3 * 10, "the deaf clients were closed before the server queued anything"
    assert 15_000 < largest[0] < 30_000  # the replies were as large as meant
    # the budget closed them: a queue reached it, and none passed it by more than a frame
    # (over TLS, the frame's records: 22 bytes of header, type and tag for each 16 KiB)
    records = 22 * (largest[0] // 16384 + 1) if server.tls else 0
    assert MAX_QUEUED_BYTES < max(most.values()) <= MAX_QUEUED_BYTES + largest[0] + records
    for d in deaf:
        d.client.close()

    def freed() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    # Autobahn's close handshake timer (2 s) holds a protocol until it fires, nothing longer
    await eventually(freed, timeout=5)


# -- 2. frames outside the message rate ------------------------------------------------------


@ensure
async def test_endless_zero_length_continuations_close_4029(
    calm_server: tuple[QuotedServer, WSClient],
) -> None:
    """A text frame with FIN=0, then zero-length continuations (and a pong to look alive):
    each frame takes a token, so the 20th refused in a row closes 4029; the message is
    never processed."""
    server, _ = calm_server
    refused = metric(server, "quoted_rate_limited_messages_total")
    r = await connect(server.port, "/ws/quotes?symbols=AAPL", bearer(ok("fragments")))
    assert r.status == 101
    flood = [frame(1, b'{"type":', fin=False)] + [frame(0, b"", fin=False)] * 2000
    flood.insert(10, frame(0xA, b""))
    r.send(b"".join(flood))
    assert await closed_with(r) == 4029
    counted = metric(server, "quoted_rate_limited_messages_total") - refused
    assert counted == MAX_REFUSED_IN_ROW, counted  # all at once: the burst, then 20 refused
    assert not r.texts()[1:], "the unfinished message was answered"  # only the snapshot


@ensure
async def test_pong_flood_closes_4029(calm_server: tuple[QuotedServer, WSClient]) -> None:
    server, _ = calm_server
    refused = metric(server, "quoted_rate_limited_messages_total")
    r = await connect(server.port, "/ws/quotes?symbols=AAPL", bearer(ok("pongs")))
    r.send(b"".join(frame(0xA, b"p%d" % i) for i in range(2000)))
    assert await closed_with(r) == 4029
    assert metric(server, "quoted_rate_limited_messages_total") - refused == MAX_REFUSED_IN_ROW


@ensure
async def test_a_fragmented_message_within_the_budget_is_served(
    calm_server: tuple[QuotedServer, WSClient],
) -> None:
    server, _ = calm_server
    r = await connect(server.port, "/ws/quotes?symbols=AAPL", bearer(ok("fragmented")))
    parts = [b'{"type":', b"", b'"ping",', b'"id":5}']
    r.send(b"".join(frame(0 if i else 1, p, fin=i == 3) for i, p in enumerate(parts)))
    await eventually(lambda: any(b'"pong"' in t for t in r.texts()))
    (pong,) = [json.loads(t) for t in r.texts() if b'"pong"' in t]
    assert pong == {"type": "pong", "id": 5}
    r.transport.abortConnection()  # type: ignore[union-attr]


# in memory: no time passes, so the counts are exact


@pytest.fixture
def mem() -> Iterator[MemoryQuoted]:
    """quoted on a fake clock (set to now: tokens carry real times) with a calm client that,
    after the case, has every tick in order and the store's document."""
    server = MemoryQuoted(make_config(**CONFIG), start=time.time())
    calm = server.connect("symbols=AAPL,MSFT", token=ok("calm"))
    server.advance(0.2)
    yield server
    n = len(calm.seqs)
    server.advance(0.3)
    assert len(calm.seqs) > n + 2 and calm.close_code is None
    assert calm.seqs == list(range(1, len(calm.seqs) + 1))
    assert calm.quotes() == {
        s: server.parts.store.lookup(s).latest.as_dict() for s in ("AAPL", "MSFT")
    }
    server.stop()


def memory_raw(server: MemoryQuoted, user: str) -> tuple[Raw, QuoteProtocol]:
    r = Raw(answer_close=False)
    server.join(r)
    r.send(head_bytes("/ws/quotes?symbols=AAPL", bearer(ok(user)), 80, True))
    server.flush()
    assert r.status == 101, (r.status, r.body)
    return r, of_user(server, user)


def test_unsolicited_pongs_are_processed_within_the_burst_only(
    mem: MemoryQuoted, monkeypatch: pytest.MonkeyPatch
) -> None:
    processed = [0]
    ponged = Liveness.ponged

    def counting(self: Liveness) -> None:
        processed[0] += 1
        ponged(self)

    monkeypatch.setattr(Liveness, "ponged", counting)
    r, _ = memory_raw(mem, "pongs")
    r.send(b"".join(frame(0xA, b"") for _ in range(1000)))
    mem.flush()
    assert processed[0] == 20  # the burst (twice message_rate), then nothing
    assert r.close_code() == 4029


def test_continuations_without_a_rate_limit_close_1009_at_the_fragment_limit() -> None:
    server = MemoryQuoted(
        make_config(websocket={"message_rate": 0, "handshake_rate_per_ip": 0}), start=time.time()
    )
    r, proto = memory_raw(server, "fragments")
    budget_frames = [frame(1, b'{"type":', fin=False)] + [frame(0, b"", fin=False)] * 5000
    r.send(b"".join(budget_frames))
    server.flush()
    assert r.close_code() == 1009
    assert proto._budget is not None and proto._budget.fragments == MAX_FRAGMENTS + 1
    assert not r.texts()[1:]
    server.stop()


def test_a_refused_message_gets_one_rate_limited_error(mem: MemoryQuoted) -> None:
    r, _ = memory_raw(mem, "burst")
    r.send(b"".join(frame(9, b"") for _ in range(20)))  # the burst, spent on pings
    parts = [b'{"type":', b'"ping"}']
    r.send(b"".join(frame(0 if i else 1, p, fin=i == 1) for i, p in enumerate(parts)))
    mem.flush()
    replies = [json.loads(t) for t in r.texts()[1:]]
    assert [m.get("code") for m in replies] == ["rate_limited"]
    assert r.close_code() is None


# -- 13. close codes are echoed --------------------------------------------------------------


def close_payload(r: Raw) -> bytes | None:
    for op, payload in r.frames:
        if op == 8:
            return payload
    return None


@pytest.mark.parametrize(
    "sent",
    [
        struct.pack("!H", 1000),
        struct.pack("!H", 1001) + b"leaving",
        struct.pack("!H", 4000) + b"my own reason",
        struct.pack("!H", 4999),
        b"",
    ],
    ids=["1000", "1001 with a reason", "4000 with a reason", "4999", "no code"],
)
@ensure
async def test_a_clients_close_code_and_reason_are_echoed(
    calm_server: tuple[QuotedServer, WSClient], sent: bytes
) -> None:
    server, _ = calm_server
    r = await connect(server.port, "/ws/quotes?symbols=AAPL", bearer(ok("closer")))
    r.send(frame(8, sent))
    await closed_with(r)
    assert close_payload(r) == sent


def test_close_codes_are_echoed_in_memory(mem: MemoryQuoted) -> None:
    client = mem.connect("symbols=AAPL", token=ok("closer"))
    client.sendClose(4321, "done here")
    mem.flush()
    assert (client.remoteCloseCode, client.remoteCloseReason) == (4321, "done here")
