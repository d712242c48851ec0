"""POST /v1/quotes on two Redis-backed quoted instances: one market, ordered in Redis.

Two QuotedServers (tests.harness: app.build on the real reactor, real sockets) with
``[feed] source = publish`` and ``[redis] enabled`` share a redis-server; clients are Autobahn
WebSocket clients applying every patch with jsonpatch, publishers raw HTTP/1.1 POSTs with an
HS256 token carrying ``scope: quotes:publish``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet import defer

from quoted.server.cluster.lease import Keys, decode
from quoted.server.store import format_time_ms
from tests.harness import (
    SECRET,
    QuotedServer,
    Response,
    eventually,
    make_config,
    parse_response,
    raw,
)
from tests.server.cluster.test_redis import Redis, own_redis, prefix, redis

__all__ = ["own_redis", "prefix", "redis"]  # the fixtures, used by name

ensure = pytest_twisted.ensureDeferred

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

SYMBOLS = ["AAPL", "MSFT", "GOOGL"]


def publisher_token() -> str:
    now = int(time.time())
    claims = {"sub": "feed", "iat": now, "exp": now + 3600, "scope": "quotes:publish"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def post(server: QuotedServer, items: list[dict[str, Any]]) -> Response:
    body = json.dumps({"quotes": items}).encode()
    head = (
        f"POST /v1/quotes HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
        f"Authorization: Bearer {publisher_token()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return parse_response(await raw(server.port, head.encode() + body, whole_response=True))


def at(ms: int) -> str:
    return format_time_ms(ms)


@pytest_twisted.async_yield_fixture
async def market() -> AsyncIterator[Any]:
    """``await market(url, prefix)``: a started publish-fed quoted on Redis, stopped after."""
    started: list[QuotedServer] = []

    async def start(url: str, pfx: str) -> QuotedServer:
        config = make_config(
            redis={"enabled": True, "url": url, "prefix": pfx, "lease_ttl": 1.0},
            feed={"source": "publish"},
        )
        s = QuotedServer(config)
        await s.start()
        started.append(s)
        await eventually(lambda: s.parts.bridge.up, timeout=5)
        return s

    yield start
    for s in started:
        await s.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


@ensure
async def test_a_post_to_one_instance_reaches_the_clients_and_rest_of_both(
    redis: Redis, prefix: str, market: Any
) -> None:
    a, b = await market(redis.url, prefix), await market(redis.url, prefix)
    client = await b.connect("symbols=" + ",".join(SYMBOLS))
    own = await a.connect("symbols=" + ",".join(SYMBOLS))
    await client.wait_type("quotes_patch")
    await own.wait_type("quotes_patch")
    t = now_ms() - 1000
    items = [
        {"symbol": "AAPL", "price": 151.2549, "time": at(t), "volume": 1200},
        {"symbol": "MSFT", "price": 401.5, "time": at(t), "reference_price": 390.25},
        {"symbol": "NOPE", "price": 1},
    ]
    r = await post(a, items)
    assert r.status == 200, r
    assert r.json() == {
        "accepted": 2,
        "rejected": [
            {
                "index": 2,
                "symbol": "NOPE",
                "code": "unknown_symbol",
                "message": "'NOPE' is not an instrument of this server",
            }
        ],
    }
    await eventually(lambda: client.quotes()["MSFT"]["current_price"] == 401.5)
    doc = client.quotes()
    assert doc["AAPL"]["current_price"] == 151.2549 and doc["AAPL"]["volume"] == 1200
    assert doc["MSFT"]["base_price"] == 390.25 and doc["MSFT"]["change"] == 11.25
    assert doc["AAPL"]["last_updated"] == at(t)
    # (GOOGL, never published, shows each instance's own start time)
    published = ["AAPL", "MSFT"]
    doc = {k: v for k, v in doc.items() if k in published}
    assert await a.rest_quotes(published) == doc == await b.rest_quotes(published)
    # one message for the request where it was recorded (a peer gets each symbol's channel
    # message, batched per reactor turn)
    await eventually(lambda: own.quotes()["MSFT"]["current_price"] == 401.5)
    assert len(own.seqs) == 2
    assert {k: v for k, v in own.quotes().items() if k in published} == doc
    # a symbol nobody on a subscribes to: a's REST shows b's post (the whole market followed)
    r = await post(b, [{"symbol": "TSLA", "price": 250.5, "time": at(t)}])
    assert r.json()["accepted"] == 1
    await eventually(lambda: a.parts.store.lookup("TSLA").latest.current_price == 250.5)
    assert (await a.rest_quotes(["TSLA"])) == (await b.rest_quotes(["TSLA"]))


@ensure
async def test_stale_is_decided_in_redis_across_instances(
    redis: Redis, prefix: str, market: Any
) -> None:
    a, b = await market(redis.url, prefix), await market(redis.url, prefix)
    t = now_ms() - 5000
    r = await post(a, [{"symbol": "AAPL", "price": 150, "time": at(t)}])
    assert r.json()["accepted"] == 1
    # b has not necessarily applied a's tick yet: Redis says it is newer all the same
    r = await post(b, [{"symbol": "AAPL", "price": 149, "time": at(t - 1)}])
    assert r.json()["accepted"] == 0
    assert [x["code"] for x in r.json()["rejected"]] == ["stale"]
    r = await post(b, [{"symbol": "AAPL", "price": 151, "time": at(t)}])  # same ms: in order
    assert r.json()["accepted"] == 1
    await eventually(lambda: a.parts.store.lookup("AAPL").latest.current_price == 151)
    assert decode(redis.call("HGET", Keys.of(prefix).quotes, "AAPL")).stamp.version == 2


@ensure
async def test_concurrent_posts_to_both_end_in_one_document_everywhere(
    redis: Redis, prefix: str, market: Any
) -> None:
    a, b = await market(redis.url, prefix), await market(redis.url, prefix)
    clients = [await s.connect("symbols=" + ",".join(SYMBOLS)) for s in (a, b) for _ in range(2)]
    for c in clients:
        await c.wait_type("quotes_patch")
    base = now_ms() - 60_000
    # interleaved times: a posts the even milliseconds, b the odd, each in a shuffled order
    requests: list[tuple[QuotedServer, list[dict[str, Any]]]] = []
    for n in range(40):
        server = a if n % 2 == 0 else b
        k = (n * 17) % 40  # a permutation of 0..39: times arrive out of order
        items = [
            {"symbol": s, "price": round(100 + k + i / 10, 2), "time": at(base + k), "volume": k}
            for i, s in enumerate(SYMBOLS)
        ]
        requests.append((server, items))
    answers = await defer.gatherResults(
        [defer.ensureDeferred(post(s, items)) for s, items in requests]
    )
    assert all(r.status == 200 for r in answers)
    accepted = 0
    for (_, items), r in zip(requests, answers, strict=True):
        body = r.json()
        accepted += body["accepted"]
        stale = {x["index"] for x in body["rejected"]}
        assert {x["code"] for x in body["rejected"]} <= {"stale"}
        # the newest tick of the run can never be stale
        for i, item in enumerate(items):
            if item["time"] == at(base + 39):
                assert i not in stale
    hash_ = Keys.of(prefix).quotes
    for s in SYMBOLS:
        v = decode(redis.call("HGET", hash_, s))
        assert v.stamp.ms == base + 39 and v.volume == 39
    # each symbol's version counts its recorded ticks: every accepted item, once
    versions = sum(decode(redis.call("HGET", hash_, s)).stamp.version for s in SYMBOLS)
    assert versions == accepted

    def settled() -> bool:
        return all(
            c.quotes().get(s, {}).get("last_updated") == at(base + 39)
            for c in clients
            for s in SYMBOLS
        )

    await eventually(settled)
    rest_a, rest_b = await a.rest_quotes(SYMBOLS), await b.rest_quotes(SYMBOLS)
    assert rest_a == rest_b
    for c in clients:
        assert c.quotes() == rest_a
        assert c.seqs == list(range(1, len(c.seqs) + 1))


@ensure
async def test_503_broker_unavailable_while_redis_is_stopped_then_publishing_again(
    own_redis: Redis, prefix: str, market: Any
) -> None:
    a = await market(own_redis.url, prefix)
    t = now_ms() - 1000
    assert (await post(a, [{"symbol": "AAPL", "price": 150, "time": at(t)}])).status == 200
    own_redis.kill()
    await eventually(lambda: not a.parts.bridge.up, timeout=3)
    r = await post(a, [{"symbol": "AAPL", "price": 160, "time": at(t + 1)}])
    assert r.status == 503, r
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "broker_unavailable"
    assert (await a.rest_quotes(["AAPL"]))["AAPL"]["current_price"] == 150  # nothing applied
    own_redis.start()  # empty: no persistence
    await eventually(lambda: a.parts.bridge.up, timeout=10)
    r = await post(a, [{"symbol": "AAPL", "price": 160, "time": at(t + 1)}])
    assert r.status == 200 and r.json()["accepted"] == 1, r
    assert (await a.rest_quotes(["AAPL"]))["AAPL"]["current_price"] == 160
