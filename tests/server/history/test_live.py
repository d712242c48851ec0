"""GET /v1/history against a real quoted on real sockets: what a WebSocket client saw is what
the history says, tick for tick and bar for bar; the checks and their statuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest_twisted
from twisted.internet import defer

from quoted.server.feeds.items import parse_time
from tests.harness import QuotedServer, WSClient, eventually, sleep

ensure = pytest_twisted.ensureDeferred

FAST = {"update_interval": 0.02, "mode": "all"}
DEEP = {"ticks": 5000, "bars_1s": 100}


def seen(client: WSClient, symbol: str) -> tuple[str, list[tuple[str, float]]]:
    """The snapshot's last_updated of ``symbol``, and every (last_updated, current_price) the
    client's later messages gave it, in order."""
    doc: dict[str, Any] = {}
    snapshot = ""
    out: list[tuple[str, float]] = []
    for msg in client.messages:
        if msg.get("type") != "quotes_patch":
            continue
        doc = jsonpatch.apply_patch(doc, msg["operations"])
        q = doc["quotes"][symbol]
        point = (q["last_updated"], q["current_price"])
        if msg["seq"] == 1:
            snapshot = point[0]
        elif not out or out[-1] != point:
            out.append(point)
    return snapshot, out


async def history(server: QuotedServer, query: str, token: str | None = None) -> Any:
    r = await server.get("/v1/history?" + query, server.token() if token is None else token)
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/json"
    return r.json()


async def quiet(server: QuotedServer, client: WSClient, symbol: str) -> None:
    """Stop the simulator and wait until the client has the store's last quote."""
    await defer.maybeDeferred(server.parts.oscillator.stopService)
    last = server.parts.store.lookup(symbol).latest.last_updated
    await eventually(lambda: client.quotes()[symbol]["last_updated"] == last)


@ensure
async def test_the_ticks_a_client_received_are_the_tick_history(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server(feed=FAST, history=DEEP)
    client = await server.connect("symbols=AAPL,MSFT")
    await sleep(0.5)
    await quiet(server, client, "AAPL")
    snapshot, points = seen(client, "AAPL")
    assert len(points) >= 10
    body = await history(server, "symbol=aapl&interval=tick&limit=5000")
    assert set(body) == {"symbol", "interval", "ticks"}
    assert (body["symbol"], body["interval"]) == ("AAPL", "tick")
    ticks = [(t["time"], t["price"]) for t in body["ticks"] if t["time"] > snapshot]
    assert ticks == points  # the same numbers and times, in order
    volume = client.quotes()["AAPL"]["volume"]
    assert {t["volume"] for t in body["ticks"]} == {volume}
    # since: strictly later entries only; limit: the newest
    since = points[-3][0]
    later = await history(server, f"symbol=AAPL&interval=tick&since={since}")
    assert [(t["time"], t["price"]) for t in later["ticks"]] == points[-2:]
    two = await history(server, "symbol=AAPL&interval=tick&limit=2")
    assert [(t["time"], t["price"]) for t in two["ticks"]] == points[-2:]


@ensure
async def test_one_second_bars_are_what_the_client_saw_in_each_second(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server(feed=FAST, history=DEEP)
    client = await server.connect("symbols=MSFT")
    await sleep(2.3)
    await quiet(server, client, "MSFT")
    _, points = seen(client, "MSFT")
    per_second: dict[str, list[float]] = {}
    for time, price in points:
        per_second.setdefault(time[:19] + ".000Z", []).append(price)
    first = min(per_second)  # the first second may hold ticks from before the snapshot
    expected = {t: (ps[0], max(ps), min(ps), ps[-1]) for t, ps in per_second.items() if t != first}
    assert len(expected) >= 1
    body = await history(server, "symbol=MSFT&interval=1s&limit=100")
    bars = {b["time"]: (b["open"], b["high"], b["low"], b["close"]) for b in body["bars"]}
    assert {t: bars[t] for t in expected} == expected
    assert list(bars) == sorted(bars)  # oldest first, the open bar last
    assert body["bars"][-1]["time"] == max(per_second)
    assert all(parse_time(b["time"]) % 1000 == 0 for b in body["bars"])
    volume = client.quotes()["MSFT"]["volume"]
    assert {b["volume"] for b in body["bars"]} == {volume}  # the last tick's volume
    [minute_bar, *_] = (await history(server, "symbol=MSFT&interval=1m"))["bars"][-1:]
    assert minute_bar["close"] == points[-1][1]


@ensure
async def test_checks_and_their_statuses(start_server: Callable[..., Any]) -> None:
    server = await start_server(feed=FAST)
    token = server.token()
    cases = [
        ("symbol=AAPL", None, 401, "missing_token"),
        ("interval=1m", token, 400, "bad_request"),
        ("symbol=AAPL,MSFT", token, 400, "bad_request"),
        ("symbol=AAPL&interval=2m", token, 400, "bad_request"),
        ("symbol=AAPL&limit=0", token, 400, "bad_request"),
        ("symbol=AAPL&limit=10001", token, 400, "bad_request"),
        ("symbol=AAPL&limit=ten", token, 400, "bad_request"),
        ("symbol=AAPL&since=yesterday", token, 400, "bad_request"),
        ("symbol=AAPL&interval=1m&interval=5m", token, 400, "bad_request"),
        ("symbol=NOPE", token, 404, "unknown_symbol"),
        ("symbol=AAPL", server.token(symbols=["MSFT"]), 403, "forbidden_symbols"),
    ]
    for query, tok, status, code in cases:
        r = await server.get("/v1/history?" + query, tok)
        assert (r.status, r.json()["error"]["code"]) == (status, code), query
    r = await server.get("/v1/history?symbol=AAPL&interval=2m", token)
    assert "tick, 1s, 1m, 5m, 1h" in r.json()["error"]["message"]
    r = await server.get("/v1/history?symbol=AAPL&limit=0", token)
    assert "1 to 10000" in r.json()["error"]["message"]
    ok = await history(server, "symbol=MSFT&interval=5m", server.token(symbols=["MSFT"]))
    assert ok["interval"] == "5m" and isinstance(ok["bars"], list)
    r = await server.post("/v1/history?symbol=AAPL", b"{}", token)
    assert r.status == 405


@ensure
async def test_limit_defaults_to_100_and_stops_at_what_is_kept(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server(feed=FAST, history={"ticks": 150})
    client = await server.connect("symbols=AAPL")
    kept = server.parts.history
    await eventually(lambda: len(kept.rows("AAPL", "tick", 10_000, None)) == 150, timeout=10)
    assert len((await history(server, "symbol=AAPL&interval=tick"))["ticks"]) == 100
    body = await history(server, "symbol=AAPL&interval=tick&limit=10000")
    assert len(body["ticks"]) == 150
    times = [t["time"] for t in body["ticks"]]
    assert times == sorted(times)
    assert client.close_code is None


@ensure
async def test_history_off_has_no_route_and_keeps_nothing(
    start_server: Callable[..., Any],
) -> None:
    server = await start_server(feed=FAST, history={"enabled": False})
    await server.connect("symbols=AAPL")
    await sleep(0.1)
    r = await server.get("/v1/history?symbol=AAPL", server.token())
    assert (r.status, r.json()["error"]["code"]) == (404, "not_found")
    assert server.parts.history is None
