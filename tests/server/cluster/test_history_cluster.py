"""History shared through Redis: two instances answer the same history, one started later
answers the earlier history, and a Redis outage leaves each answering its own, flagged
partial. Real quoted instances (tests.harness) on a private redis-server."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from quoted.server.cluster.history import HISTORY, parse_row
from tests.harness import QuotedServer, eventually, make_config, sleep
from tests.server.cluster.test_redis import Redis, own_redis, prefix, redis
from tests.server.history.test_live import seen

__all__ = ["own_redis", "prefix", "redis"]  # the fixtures, used by name

ensure = pytest_twisted.ensureDeferred

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

FAST = {"update_interval": 0.05, "mode": "all"}


@pytest_twisted.async_yield_fixture
async def instance() -> AsyncIterator[Any]:
    """``await instance(url, prefix)``: a started simulator-fed quoted on Redis."""
    started: list[QuotedServer] = []

    async def start(url: str, pfx: str, **history: Any) -> QuotedServer:
        config = make_config(
            redis={"enabled": True, "url": url, "prefix": pfx, "lease_ttl": 1.0},
            feed=FAST,
            history={"ticks": 2000, **history},
        )
        s = QuotedServer(config)
        await s.start()
        started.append(s)
        await eventually(lambda: s.parts.bridge.up, timeout=5)
        return s

    yield start
    for s in started:
        if s.service.running:
            await s.stop()


async def get(server: QuotedServer, query: str) -> Any:
    r = await server.get("/v1/history?" + query, server.token())
    assert r.status == 200, r
    return r.json()


async def still(*servers: QuotedServer) -> None:
    for s in servers:
        await defer.maybeDeferred(s.parts.oscillator.stopService)


@ensure
async def test_two_instances_and_a_later_one_answer_the_same_history(
    redis: Redis, prefix: str, instance: Any
) -> None:
    a, b = await instance(redis.url, prefix), await instance(redis.url, prefix)
    client = await a.connect("symbols=AAPL")  # nobody on b uses AAPL: b reads Redis
    await eventually(lambda: len(seen(client, "AAPL")[1]) >= 10, timeout=10)
    await still(a, b)
    last = a.parts.store.lookup("AAPL").latest.last_updated
    await eventually(lambda: client.quotes()["AAPL"]["last_updated"] == last)
    query = "symbol=AAPL&interval=tick&limit=2000"

    async def written() -> bool:
        ticks = (await get(b, query))["ticks"]
        return bool(ticks) and ticks[-1]["time"] == last

    for _ in range(100):
        if await written():
            break
        await sleep(0.05)
    ticks_a, ticks_b = await get(a, query), await get(b, query)
    assert ticks_a == ticks_b and "partial" not in ticks_a
    snapshot, points = seen(client, "AAPL")
    assert [(t["time"], t["price"]) for t in ticks_b["ticks"] if t["time"] > snapshot] == points
    for interval in ("1s", "1m", "5m", "1h"):
        q = f"symbol=AAPL&interval={interval}"
        assert (await get(a, q)) == (await get(b, q)), interval
    bars = (await get(b, "symbol=AAPL&interval=1m"))["bars"]
    assert bars[-1]["close"] == points[-1][1]
    assert max(bar["high"] for bar in bars) == max(t["price"] for t in ticks_b["ticks"])

    c = await instance(redis.url, prefix)  # started later: of its own only the current quote
    assert len(c.parts.history.rows("AAPL", "tick", 10, None)) <= 1
    assert (await get(c, query)) == ticks_a
    assert (await get(c, "symbol=AAPL&interval=1s")) == (await get(a, "symbol=AAPL&interval=1s"))


@ensure
async def test_bounds_hold_in_redis_and_older_ticks_are_refused(
    redis: Redis, prefix: str, instance: Any
) -> None:
    a = await instance(redis.url, prefix, bars_1s=3, ticks=4)
    await a.connect("symbols=MSFT")
    await sleep(0.6)
    await still(a)
    await sleep(0.2)
    assert redis.call("LLEN", f"{prefix}hist:tick:MSFT") == 4
    assert 1 <= redis.call("LLEN", f"{prefix}hist:1s:MSFT") <= 3
    ticks = (await get(a, "symbol=MSFT&interval=tick&limit=100"))["ticks"]
    assert len(ticks) == 4
    # the script refuses a tick earlier than the symbol's last (a new leader's clock behind)
    last = parse_row(redis.call("LINDEX", f"{prefix}hist:tick:MSFT", -1), 3)
    assert last is not None
    keys = [f"{prefix}hist:{k}:MSFT" for k in ("tick", "1s", "1m", "5m", "1h")]
    reply = redis.call(
        "EVAL", HISTORY, len(keys), *keys, 4, 3, 60, 24, 12, int(last[0]) - 1, "1.5", "7"
    )
    assert reply == [0]
    assert (await get(a, "symbol=MSFT&interval=tick&limit=100"))["ticks"] == ticks
    redis.call("RPUSH", f"{prefix}hist:tick:MSFT", "garbage", "1 nan 2")  # another writer
    assert (await get(a, "symbol=MSFT&interval=tick&limit=100"))["ticks"] == ticks[2:]


@ensure
async def test_an_outage_answers_this_instance_s_history_flagged_partial(
    own_redis: Redis, prefix: str, instance: Any
) -> None:
    a = await instance(own_redis.url, prefix)
    client = await a.connect("symbols=AAPL")
    await eventually(lambda: len(seen(client, "AAPL")[1]) >= 5, timeout=10)
    own_redis.kill()
    await eventually(lambda: not a.parts.bridge.up, timeout=5)
    # the former leader may go on ticking its own prices for the rest of its lease: stop the
    # feed, so the answer and this instance's history are read at the same point
    await defer.maybeDeferred(a.parts.oscillator.stopService)
    body = await get(a, "symbol=AAPL&interval=tick&limit=2000")
    assert body["partial"] is True
    local = a.parts.history.rows("AAPL", "tick", 2000, None)
    assert len(body["ticks"]) == len(local) >= 5
    assert body["ticks"][-1]["price"] == local[-1][1]
    bars = await get(a, "symbol=AAPL&interval=1m")
    assert bars["partial"] is True and bars["bars"]
