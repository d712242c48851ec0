"""The ``redis_stream`` source (quoted.server.cluster.stream) against a real redis-server.

The reader runs on the real reactor with its real txredisapi connection: alone under a
recording sink (where it starts, the shared cursor, CursorMoved, a key that is no stream),
and inside a real quoted (app.build through tests.harness.QuotedServer): entries applied to
REST and to a WebSocket subscriber, malformed entries counted and skipped, a Redis restart
survived (a redis-server with an append-only file fsynced on every write, so the stream
survives its SIGKILL), and with ``[redis] enabled`` two instances of which only the leader
reads, the other going on from the shared cursor when the leader stops.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from quoted.server.cluster.bridge import RedisBridge
from quoted.server.cluster.lease import Keys
from quoted.server.cluster.stream import Malformed, StreamFeed, _Tally, entry_item
from quoted.server.feeds.sink import CursorMoved, PublishResult
from quoted.server.store import format_time_ms
from tests.harness import QuotedServer, eventually, make_config, sleep
from tests.server.cluster.test_redis import Redis, _read_reply

ensure = pytest_twisted.ensureDeferred

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


class DurableRedis(Redis):
    """A redis-server whose every write is in its append-only file before the reply, so a
    SIGKILL and a start on the same port and directory give the same stream back."""

    persistence = ("--appendonly", "yes", "--appendfsync", "always")


def call_bytes(r: Redis, *args: bytes | str | int) -> Any:
    """A command whose arguments may be any bytes (Redis.call sends ``str(arg)``)."""
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        s.sendall(b"".join(parts))
        with s.makefile("rb") as f:
            return _read_reply(f)


def xadd(r: Redis, stream: str, **fields: object) -> str:
    args: list[object] = []
    for k, v in fields.items():
        args += (k, v)
    return str(r.call("XADD", stream, "*", *args))


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    r = Redis(tmp_path_factory.mktemp("redis"))
    yield r
    r.kill()


@pytest.fixture
def stream() -> str:
    return f"qt-{secrets.token_hex(4)}:ticks"


# -- entries as items (no Redis) ---------------------------------------------------------------


def test_an_entry_is_read_as_a_publish_item() -> None:
    assert entry_item(["symbol", "AAPL", "price", "151.25", "volume", "12"]) == {
        "symbol": "AAPL",
        "price": 151.25,
        "volume": 12,
    }
    # txredisapi hands over bytes where it did not decode: UTF-8 bytes read as text
    assert entry_item([b"symbol", "MSFT", "price", b"1.5"]) == {"symbol": "MSFT", "price": 1.5}


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (["symbol", "AAPL", "price"], "pairs"),
        ("symbol AAPL", "pairs"),
        (None, "pairs"),
        (["symbol", b"AA\xffPL", "price", "1"], "UTF-8"),
        ([b"\xfe", "x", "price", "1"], "UTF-8"),
        (["symbol", "AAPL", "symbol", "MSFT"], "twice"),
        (["symbol", 7], "UTF-8"),
    ],
)
def test_a_malformed_entry_says_why(fields: object, why: str) -> None:
    item = entry_item(fields)
    assert isinstance(item, Malformed) and why in item.reason


def test_refusals_are_logged_once_a_minute_per_code_with_counts() -> None:
    t = _Tally()
    assert t.add("bad_price", "1-0: x", 100.0) == (1, "1-0: x")  # the first at once
    assert t.add("bad_price", "2-0: y", 101.0) is None
    assert t.add("bad_item", "3-0: z", 102.0) == (1, "3-0: z")  # another code: its own minute
    assert t.add("bad_price", "4-0: w", 150.0) is None
    assert t.due(159.0) == []
    assert t.due(160.0) == [("bad_price", 2, "2-0: y")]
    assert t.due(500.0) == []  # nothing new


# -- the reader under a recording sink -------------------------------------------------------------


class RecordingSink:
    """Accepts everything (no checks); records each call; may raise given failures first."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[object], tuple[str, str] | None]] = []
        self.fail: list[tuple[Exception, Callable[[], object]]] = []

    def publish(
        self, items: Any, *, cursor: tuple[str, str] | None = None
    ) -> defer.Deferred[PublishResult]:
        if self.fail:
            error, meanwhile = self.fail.pop(0)
            meanwhile()
            return defer.fail(error)
        self.calls.append((list(items), cursor))
        return defer.succeed(PublishResult(len(items)))

    def items(self) -> list[object]:
        return [i for items, _ in self.calls for i in items]


@pytest_twisted.async_yield_fixture
async def readers() -> AsyncIterator[Any]:
    """``readers(url, stream, sink, leading=None, cursor=None)``: a started StreamFeed."""
    started: list[StreamFeed] = []

    def start(url: str, stream: str, sink: Any, **kw: Any) -> StreamFeed:
        f = StreamFeed(reactor, url, stream, sink, **kw)
        f.startService()
        started.append(f)
        return f

    yield start
    for f in started:
        if f.running:
            await f.stopService()


@ensure
async def test_alone_it_reads_the_whole_stream_then_waits_for_more(
    redis: Redis, stream: str, readers: Any
) -> None:
    ids = [xadd(redis, stream, symbol="AAPL", price=p) for p in (1, 2, 3)]
    sink = RecordingSink()
    feed = readers(redis.url, stream, sink)
    await eventually(lambda: len(sink.items()) == 3)
    assert all(cursor is None for _, cursor in sink.calls)  # alone: no shared cursor
    assert feed.position == ids[-1]
    await sleep(1.2)  # a whole BLOCK with nothing new: XREAD returned nil, no call
    n = len(sink.calls)
    later = xadd(redis, stream, symbol="MSFT", price="4.5")
    await eventually(lambda: len(sink.items()) == 4)
    assert len(sink.calls) == n + 1 and sink.items()[-1] == {"symbol": "MSFT", "price": 4.5}
    assert feed.position == later


@ensure
async def test_a_stream_that_does_not_exist_yet_is_empty(
    redis: Redis, stream: str, readers: Any
) -> None:
    sink = RecordingSink()
    readers(redis.url, stream, sink)
    await sleep(1.3)
    assert sink.calls == []
    xadd(redis, stream, symbol="AAPL", price=1)
    await eventually(lambda: len(sink.items()) == 1)


@ensure
async def test_a_key_that_is_no_stream_pauses_the_reader_which_retries(
    redis: Redis, stream: str, readers: Any
) -> None:
    redis.call("SET", stream, "not a stream")
    sink = RecordingSink()
    readers(redis.url, stream, sink)
    await sleep(1.0)  # WRONGTYPE, retried every second
    redis.call("DEL", stream)
    xadd(redis, stream, symbol="AAPL", price=1)
    await eventually(lambda: len(sink.items()) == 1, timeout=5)


@ensure
async def test_a_shared_reader_reads_only_while_leading_and_from_the_cursor(
    redis: Redis, stream: str, readers: Any
) -> None:
    ids = [xadd(redis, stream, symbol="AAPL", price=p) for p in (1, 2, 3, 4)]
    key = Keys.of("qt:").cursor_of(stream)
    redis.call("SET", key, ids[1])  # entries 1 and 2 applied by a previous leader
    leader = [False]
    sink = RecordingSink()
    feed = readers(redis.url, stream, sink, leading=lambda: leader[0], cursor=key)
    await sleep(1.0)
    assert sink.calls == [] and feed.position is None
    leader[0] = True
    await eventually(lambda: len(sink.calls) == 1, timeout=3)
    assert sink.calls[0] == (
        [{"symbol": "AAPL", "price": 3.0}, {"symbol": "AAPL", "price": 4.0}],
        (ids[1], ids[3]),  # (read from, the last id of the reply)
    )
    # the recording sink moves no cursor: what it says is the bridge's part. Lose the lease,
    # move the cursor as another leader would, lead again: the reader reads it again
    leader[0] = False
    await eventually(lambda: feed.position is None, timeout=3)
    more = xadd(redis, stream, symbol="AAPL", price=5)
    redis.call("SET", key, ids[3])
    leader[0] = True
    await eventually(lambda: len(sink.calls) == 2, timeout=3)
    assert sink.calls[1] == ([{"symbol": "AAPL", "price": 5.0}], (ids[3], more))


@ensure
async def test_a_shared_reader_without_a_cursor_starts_at_the_beginning(
    redis: Redis, stream: str, readers: Any
) -> None:
    first = xadd(redis, stream, symbol="AAPL", price=1)
    sink = RecordingSink()
    readers(redis.url, stream, sink, leading=lambda: True, cursor=Keys.of("qt:").cursor_of(stream))
    await eventually(lambda: len(sink.calls) == 1, timeout=3)
    assert sink.calls[0][1] == ("0-0", first)


@ensure
async def test_cursor_moved_makes_it_read_the_cursor_again(
    redis: Redis, stream: str, readers: Any
) -> None:
    ids = [xadd(redis, stream, symbol="AAPL", price=p) for p in (1, 2, 3)]
    key = Keys.of("qt:").cursor_of(stream)
    redis.call("SET", key, ids[0])
    sink = RecordingSink()
    # the first publish is refused: meanwhile another instance applied entry 2
    sink.fail = [(CursorMoved(), lambda: redis.call("SET", key, ids[1]))]
    readers(redis.url, stream, sink, leading=lambda: True, cursor=key)
    await eventually(lambda: len(sink.calls) == 1, timeout=3)
    assert sink.calls[0] == ([{"symbol": "AAPL", "price": 3.0}], (ids[1], ids[2]))


@ensure
async def test_one_batch_in_flight_and_stop_waits_for_it(
    redis: Redis, stream: str, readers: Any
) -> None:
    pending: list[defer.Deferred[PublishResult]] = []

    class SlowSink:
        def publish(self, items: Any, *, cursor: Any = None) -> defer.Deferred[PublishResult]:
            pending.append(defer.Deferred())
            return pending[-1]

    xadd(redis, stream, symbol="AAPL", price=1)
    feed = readers(redis.url, stream, SlowSink())
    await eventually(lambda: len(pending) == 1)
    xadd(redis, stream, symbol="AAPL", price=2)
    await sleep(0.3)
    assert len(pending) == 1  # no XREAD while the sink applies the batch
    stopped = feed.stopService()
    await sleep(0.1)
    assert not stopped.called
    pending[0].callback(PublishResult(1))
    await stopped
    assert len(pending) == 1


# -- inside a real quoted ------------------------------------------------------------------------


def stream_config(url: str, stream: str, **redis: Any) -> Any:
    return make_config(
        feed={"source": "redis_stream", "stream": stream},
        redis={"url": url, **redis},
        server={"shutdown_timeout": 0.5},
    )


def items(s: QuotedServer, result: str | None = None) -> float:
    """quoted_publish_items_total of ``result``, or of every result."""
    registry = s.parts.metrics.registry
    if result is not None:
        return registry.get_sample_value("quoted_publish_items_total", {"result": result}) or 0.0
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "quoted_publish_items"
        for sample in metric.samples
        if sample.name == "quoted_publish_items_total"
    )


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@ensure
async def test_entries_reach_rest_and_subscribers(
    redis: Redis, stream: str, start_config: Any
) -> None:
    s = await start_config(stream_config(redis.url, stream))
    client = await s.connect("symbols=AAPL,MSFT")
    await client.wait_type("quotes_patch")
    now = int(reactor.seconds() * 1000)
    xadd(redis, stream, symbol="AAPL", price="151.25", time=format_time_ms(now), volume=1200)
    xadd(redis, stream, symbol="msft", price="321.5", reference_price="300")

    def arrived() -> bool:
        q = client.quotes()
        return q["AAPL"]["current_price"] == 151.25 and q["MSFT"]["current_price"] == 321.5

    await eventually(arrived, timeout=5)
    rest = await s.rest_quotes(["AAPL", "MSFT"])
    assert client.quotes() == rest
    assert rest["AAPL"]["volume"] == 1200 and rest["AAPL"]["last_updated"] == format_time_ms(now)
    assert rest["MSFT"]["base_price"] == 300 and rest["MSFT"]["change"] == 21.5
    assert items(s, "accepted") == 2


@ensure
async def test_a_malformed_entry_is_counted_and_skipped(
    redis: Redis, stream: str, start_config: Any, logged: list[dict[str, Any]]
) -> None:
    s = await start_config(stream_config(redis.url, stream))
    xadd(redis, stream, symbol="AAPL", price="10")
    xadd(redis, stream, symbol="MSFT", price="abc")  # bad_price
    xadd(redis, stream, symbol="MSFT", price="11", colour="red")  # bad_item: unknown field
    call_bytes(redis, "XADD", stream, "*", "symbol", b"\xff\xfeAAPL", "price", "12")  # not UTF-8
    xadd(redis, stream, symbol="NOPE", price="13")  # unknown_symbol
    xadd(redis, stream, symbol="TSLA", price="14", time="yesterday")  # bad_time
    xadd(redis, stream, symbol="MSFT", price="20")
    await eventually(lambda: items(s) == 7, timeout=5)
    assert items(s, "accepted") == 2
    assert items(s, "bad_price") == items(s, "unknown_symbol") == items(s, "bad_time") == 1
    assert items(s, "bad_item") == 2
    rest = await s.rest_quotes(["AAPL", "MSFT", "TSLA"])
    assert rest["AAPL"]["current_price"] == 10 and rest["MSFT"]["current_price"] == 20
    # one warning per code at once; the second bad_item waits for its minute
    warned = [e for e in logged if e.get("log_id") == "quoted.stream.refused_entries"]
    assert sorted(e["code"] for e in warned) == [
        "bad_item",
        "bad_price",
        "bad_time",
        "unknown_symbol",
    ]
    assert all(e["n"] == 1 for e in warned)
    bad_item = next(e for e in warned if e["code"] == "bad_item")
    assert "colour" in bad_item["example"]
    # still reading
    xadd(redis, stream, symbol="AAPL", price="30")
    await eventually(lambda: items(s, "accepted") == 3, timeout=5)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[Redis]:
    r = DurableRedis(tmp_path)
    yield r
    r.kill()


@ensure
async def test_the_reader_survives_a_redis_restart_without_losing_or_repeating(
    durable_redis: Redis, stream: str, start_config: Any
) -> None:
    r = durable_redis
    s = await start_config(stream_config(r.url, stream))
    # no time field: each entry takes its receipt time, so one read twice would be accepted
    # twice (never stale) and show in the count
    for p in (1, 2, 3):
        xadd(r, stream, symbol="AAPL", price=p)
    await eventually(lambda: items(s) == 3, timeout=5)
    r.kill()
    await sleep(0.5)  # the reader's XREAD fails; txredisapi retries with backoff
    r.start()  # the same port and append-only file: the stream is back
    assert r.call("XLEN", stream) == 3
    for p in (4, 5, 6):
        xadd(r, stream, symbol="AAPL", price=p)
    await eventually(lambda: items(s) == 6, timeout=10)
    await sleep(1.5)  # a whole BLOCK later: nothing read again
    assert items(s) == items(s, "accepted") == 6
    assert (await s.rest_quotes(["AAPL"]))["AAPL"]["current_price"] == 6


SYMBOLS = ["AAPL", "MSFT", "TSLA"]


@pytest.mark.skipif(
    not hasattr(RedisBridge, "record"), reason="needs RedisBridge.record (the shared order)"
)
@ensure
async def test_with_redis_only_the_leader_reads_and_the_next_goes_on_from_the_cursor(
    redis: Redis, stream: str, start_config: Any
) -> None:
    prefix = f"qt-{secrets.token_hex(4)}:"
    config = stream_config(redis.url, stream, enabled=True, prefix=prefix, lease_ttl=1.0)
    a, b = await start_config(config), await start_config(config)
    await eventually(lambda: sum(s.parts.bridge.leading() for s in (a, b)) == 1, timeout=5)
    leader, other = (a, b) if a.parts.bridge.leading() else (b, a)
    client = await other.connect("symbols=" + ",".join(SYMBOLS))
    await client.wait_type("quotes_patch")
    key = Keys.of(prefix).cursor_of(stream)
    ids: list[str] = []
    last: dict[str, float] = {}

    def add() -> None:
        n = len(ids)
        symbol, price = SYMBOLS[n % 3], 100.0 + n
        ids.append(xadd(redis, stream, symbol=symbol, price=price))
        last[symbol] = price

    for _ in range(10):
        add()
    await eventually(lambda: items(leader) == 10, timeout=5)
    await sleep(0.3)
    assert items(other) == 0  # the follower never read
    assert redis.call("GET", key) == ids[-1]

    async def keep_adding(n: int) -> None:
        for _ in range(n):
            add()
            await sleep(0.02)

    adding = defer.ensureDeferred(keep_adding(20))
    await leader.stop()  # releases the lease: the other leads at its next try
    await adding
    await eventually(lambda: items(leader) + items(other) == 30, timeout=10)
    await sleep(1.5)  # a whole BLOCK later: nothing read twice
    # (no time field: an entry read twice would be accepted twice, never stale)
    assert items(leader, "accepted") + items(other, "accepted") == 30
    assert items(leader) + items(other) == 30
    assert items(other) > 0 and redis.call("GET", key) == ids[-1]
    rest = await other.rest_quotes(SYMBOLS)
    assert {s: q["current_price"] for s, q in rest.items()} == last
    await eventually(lambda: client.quotes() == rest, timeout=3)
