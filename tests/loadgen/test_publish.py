"""quoted-load's publisher (quoted.loadgen.publish): its prices and bodies, then its posts
over real sockets to a stand-in for POST /v1/quotes that answers what each test tells it
(the whole runs against a real quoted are in test_load.py).

The posts are driven by calling ``tick`` and awaiting the posts under way, not by the clock,
so every test sends exactly the posts it counts.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from quoted.loadgen.cli import format_summary, parse_args
from quoted.loadgen.conn import CLOSED, LoadConnection
from quoted.loadgen.publish import BAND, STEP, Publisher, cents, walk
from quoted.loadgen.run import CATCH_UP_MAX, CATCH_UP_POLL, Runner
from tests.harness import free_port

POOL = [("AAPL", 150.0), ("MSFT", 300.0), ("BTC/USD", 40000.0), ("EUR", 1.08), ("X", 1.0)]


# -- prices and bodies ------------------------------------------------------------------------


def test_walk_moves_in_small_steps_within_the_band_and_posts_cents() -> None:
    rng = random.Random(3)
    for base in (1.0, 1.08, 150.0, 40000.0):
        price, posted = base, {cents(base)}
        for _ in range(5000):
            nxt = walk(rng, price, base)
            assert base * (1 - BAND) <= nxt <= base * (1 + BAND)
            assert abs(nxt - price) <= price * STEP * (1 + 1e-9)
            price = nxt
            posted.add(cents(price))
        # the posted price moves, even where one step is under a cent ($1: 0.2 cents)
        assert len(posted) > 5, (base, posted)
        assert all(p == round(p, 2) for p in posted)
    assert cents(0.001) == 0.01 and cents(2.005) in (2.0, 2.01)


def publisher(url: str = "http://127.0.0.1:1/v1/quotes", **kw: Any) -> Publisher:
    options: dict[str, Any] = {"rate": 10.0, "per_post": 2, "timeout": 5.0}
    options.update(kw)
    return Publisher(reactor, url, "tok", POOL, rng=random.Random(1), **options)


def test_bodies_take_the_next_symbols_round_the_pool() -> None:
    p = publisher()
    bodies = [json.loads(p.body()) for _ in range(3)]
    assert [[i["symbol"] for i in b["quotes"]] for b in bodies] == [
        ["AAPL", "MSFT"],
        ["BTC/USD", "EUR"],
        ["X", "AAPL"],
    ]
    assert all(set(i) == {"symbol", "price"} for b in bodies for i in b["quotes"])
    first, again = bodies[0]["quotes"][0]["price"], bodies[2]["quotes"][1]["price"]
    assert again == cents(p.price["AAPL"])  # the walk goes on from its last step
    assert abs(again - first) <= first * STEP + 0.01 and abs(first - 150) <= 150 * STEP + 0.005


def test_per_post_is_capped_by_the_pool_and_bad_settings_refused() -> None:
    assert publisher(per_post=50).per_post == len(POOL)
    with pytest.raises(ValueError, match="rate"):
        publisher(rate=0.0)
    with pytest.raises(ValueError, match="no symbols"):
        Publisher(reactor, "http://h/", "t", [], rate=1, per_post=1, timeout=1, rng=random.Random())


# -- posts over real sockets to a stand-in server ---------------------------------------------


class Quotes(Resource):
    """POST /v1/quotes: records each request and answers with ``answer(request, body)``."""

    isLeaf = True

    def __init__(self, answer: Callable[[Request, dict[str, Any]], Any]) -> None:
        super().__init__()
        self.answer = answer
        self.seen: list[tuple[dict[str, list[bytes]], dict[str, Any], int]] = []

    def render_POST(self, request: Request) -> Any:
        body = json.loads(request.content.read())
        headers = {k.decode().lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((headers, body, request.getClientAddress().port))
        return self.answer(request, body)


def accept_all(request: Request, body: dict[str, Any]) -> bytes:
    return json.dumps({"accepted": len(body["quotes"]), "rejected": []}).encode()


@pytest_twisted.async_yield_fixture
async def stand_in() -> AsyncIterator[Callable[..., Any]]:
    """``stand_in(answer)``: (url, resource) of a listening stand-in, stopped after the test."""
    ports: list[Any] = []

    def start(answer: Callable[[Request, dict[str, Any]], Any] = accept_all) -> Any:
        resource = Quotes(answer)
        site = Site(resource)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}/v1/quotes", resource

    yield start
    for port in ports:
        await port.stopListening()


async def posts_answered(p: Publisher) -> None:
    await defer.DeferredList(list(p.in_flight))


@pytest_twisted.ensureDeferred
async def test_posts_kept_alive_with_token_and_json(stand_in: Any) -> None:
    url, resource = stand_in()
    p = publisher(url)
    for _ in range(3):
        p.tick()
        await posts_answered(p)
    await p.stop()
    assert len(resource.seen) == 3
    ports = {port for _, _, port in resource.seen}
    assert len(ports) == 1  # one kept-alive connection for every post
    headers, body, _ = resource.seen[0]
    assert headers["authorization"] == [b"Bearer tok"]
    assert headers["content-type"] == [b"application/json"]
    assert [i["symbol"] for i in body["quotes"]] == ["AAPL", "MSFT"]
    s = p.summary()
    assert (s["posts"], s["items"], s["accepted"], s["rejected"]) == (3, 6, 6, 0)
    assert s["statuses"] == {"200": 3} and s["non_200"] == 0 and s["errors"] == {}
    assert s["post_ms"]["p50"] is not None and p.first_errors == []


@pytest_twisted.ensureDeferred
async def test_rejected_items_by_code_and_statuses_counted(stand_in: Any) -> None:
    answers = iter(
        [
            (200, {"accepted": 1, "rejected": [{"index": 1, "symbol": "MSFT", "code": "stale"}]}),
            (200, {"accepted": 0, "rejected": [{"code": "unknown_symbol"}, {"code": "stale"}]}),
            (403, {"error": {"code": "insufficient_scope", "message": "no"}}),
            (503, {"error": {"code": "broker_unavailable", "message": "later"}}),
            (200, {"something": "else"}),
        ]
    )

    def answer(request: Request, body: dict[str, Any]) -> bytes:
        status, reply = next(answers)
        request.setResponseCode(status)
        return json.dumps(reply).encode()

    url, resource = stand_in(answer)
    p = publisher(url)
    for _ in range(5):
        p.tick()
        await posts_answered(p)
    await p.stop()
    s = p.summary()
    assert (s["posts"], s["items"], s["accepted"]) == (5, 10, 1)
    assert s["rejected"] == 3 and s["rejected_by"] == {"stale": 2, "unknown_symbol": 1}
    assert s["statuses"] == {"200": 3, "403": 1, "503": 1} and s["non_200"] == 2
    assert s["bad_bodies"] == 1 and s["errors"] == {}
    assert len({port for _, _, port in resource.seen}) == 1  # an error status keeps it alive
    assert len(p.first_errors) == 3  # the first three, for the run's stderr
    assert "stale" in p.first_errors[0] and "unknown_symbol" in p.first_errors[1]
    assert "403" in p.first_errors[2] and "insufficient_scope" in p.first_errors[2]


@pytest_twisted.ensureDeferred
async def test_a_full_pipe_skips_ticks_and_a_silent_server_times_out(stand_in: Any) -> None:
    held: list[Request] = []

    def hold(request: Request, body: dict[str, Any]) -> int:
        held.append(request)
        return NOT_DONE_YET

    url, _ = stand_in(hold)
    p = publisher(url, max_in_flight=2, timeout=0.3)
    p.tick(count=3)  # three due at once (a late tick): two go, one is skipped
    assert (p.posts, p.skipped, len(p.in_flight)) == (2, 1, 2)
    await posts_answered(p)
    await p.stop()
    s = p.summary()
    assert s["errors"] == {"timeout": 2} and s["statuses"] == {} and s["accepted"] == 0
    assert s["skipped"] == 1 and len(held) == 2


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    p = publisher(f"http://127.0.0.1:{free_port()}/v1/quotes")
    p.tick()
    await posts_answered(p)
    await p.stop()
    s = p.summary()
    assert s["posts"] == 1 and s["statuses"] == {} and s["accepted"] == 0
    assert list(s["errors"]) == ["ConnectionRefusedError"], s


def test_the_rate_is_held_and_a_full_pipe_skips_on_the_clock() -> None:
    """On a MemoryReactorClock: nothing connects, so every post waits for its timeout."""
    clock = MemoryReactorClock()
    p = Publisher(
        clock,
        "http://127.0.0.1:9/v1/quotes",
        "tok",
        POOL,
        rate=10.0,
        per_post=2,
        timeout=0.95,
        rng=random.Random(1),
        max_in_flight=3,
    )
    p.start()
    assert (p.posts, len(clock.tcpClients)) == (1, 1)  # the first post at start
    clock.advance(0.1)
    clock.advance(0.1)
    assert (p.posts, p.skipped) == (3, 0)
    clock.advance(0.35)  # a late tick: three posts due at once, all skipped (3 in flight)
    assert (p.posts, p.skipped) == (3, 3)
    clock.advance(0.4)  # 0.95 s: the first post times out
    assert p.errors == {"timeout": 1} and len(p.in_flight) == 2
    clock.advance(0.05)  # 1.0 s: its place is taken
    assert (p.posts, p.skipped) == (4, 7)
    stopped = defer.ensureDeferred(p.stop())
    clock.advance(0.5)
    assert not stopped.called and p.posts == 4  # stopped: no more posts, the last still waits
    clock.advance(0.5)
    assert stopped.called and p.errors == {"timeout": 4} and not p.in_flight
    assert clock.getDelayedCalls() == []
    s = p.summary()
    assert (s["posts"], s["items"], s["accepted"], s["statuses"]) == (4, 8, 0, {})
    assert s["window_s"] == 1.0


# -- the command line -------------------------------------------------------------------------


def test_publish_arguments() -> None:
    o = parse_args(["--secret", "s", "--publish-rate", "10", "--publish-symbols", "7"])
    assert (o.publish_rate, o.publish_symbols, o.publish_token) == (10.0, 7, "")
    o = parse_args(["--token", "t", "--publish-rate", "2.5", "--publish-token", "pt"])
    assert (o.publish_rate, o.publish_symbols, o.publish_token) == (2.5, 50, "pt")
    assert "publish_token" not in repr(o)
    assert parse_args(["--token", "t"]).publish_rate == 0
    o = parse_args(["--secret", "s", "--conns", "0", "--publish-rate", "10"])
    assert (o.conns, o.catch_up) == (0, False)
    assert parse_args(["--secret", "s", "--catch-up"]).catch_up


@pytest.mark.parametrize(
    "argv",
    [
        ["--token", "t", "--publish-rate", "10"],  # no way to a quotes:publish token
        ["--secret", "s", "--publish-rate", "-1"],
        ["--secret", "s", "--publish-rate", "nan"],
        ["--secret", "s", "--publish-rate", "inf"],
        ["--secret", "s", "--publish-rate", "1", "--publish-symbols", "0"],
    ],
)
def test_bad_publish_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2


def test_summary_has_a_publish_line() -> None:
    p = publisher()
    p.posts, p.items, p.accepted = 4, 8, 7
    p.rejected.update(["stale"])
    p.statuses.update({"200": 3, "503": 1})
    text = format_summary({**SUMMARY, "publish": p.summary(), "catch_up_s": 2.5})
    assert "0 inconclusive  (after 2.5s catching up)" in text
    last = text.splitlines()[-1]
    assert last.startswith("publish      4 posts of 2  accepted 7  rejected 1 {'stale': 1}")
    assert "non-200 1 {'200': 3, '503': 1}" in last
    assert "publish" not in format_summary({**SUMMARY, "publish": None})


SUMMARY: dict[str, Any] = {
    "connected": 1,
    "failed": 0,
    "failed_by": {},
    "connect_ms": {"p50": 1, "p99": 1},
    "messages": 1,
    "updates": 1,
    "bytes": 1,
    "duration_s": 1,
    "latency_ms": {"p50": 1, "p95": 1, "p99": 1, "max": 1},
    "verified": 1,
    "mismatches": 0,
    "inconclusive": 0,
    "seq_gaps": 0,
    "patch_mismatches": 0,
    "patch_errors": 0,
    "stale_updates": 0,
    "protocol_errors": 0,
    "closed": {},
    "slow": {"opened": 0, "closed": 0, "codes": {}},
    "churn": {"opened": 0, "closed": 0},
    "cpu_s": 1,
    "elapsed_s": 1,
}


def test_after_the_publisher_the_run_waits_until_the_subscribers_caught_up() -> None:
    clock = Clock()
    runner = Runner(parse_args(["--secret", "s"]), clock, io.StringIO())
    backlog = runner.stats.backlog
    assert backlog is not None
    closed = LoadConnection(0, [], b"", runner.stats, runner, clock)
    closed.state = CLOSED  # its bytes are dropped, not parsed: the queue is what counts
    clock.advance(1)
    backlog.add(closed, b"x")
    waited = defer.ensureDeferred(runner.caught_up())
    clock.advance(0.05)  # the queue is worked off, but bytes came in 0.05 s ago
    assert not backlog.queue and not waited.called
    clock.advance(0.1)
    backlog.add(closed, b"y")  # more: quiet counts from here
    for _ in range(4):
        clock.advance(0.05)
    assert not waited.called
    clock.advance(0.05)
    assert waited.called and waited.result == pytest.approx(0.4)
    assert clock.getDelayedCalls() == []


def test_the_catch_up_has_a_limit() -> None:
    clock = Clock()
    runner = Runner(parse_args(["--secret", "s"]), clock, io.StringIO())
    backlog = runner.stats.backlog
    assert backlog is not None
    backlog.last_read = float("inf")  # bytes coming in for ever
    waited = defer.ensureDeferred(runner.caught_up())
    clock.pump([CATCH_UP_POLL] * round(CATCH_UP_MAX / CATCH_UP_POLL - 2))
    assert not waited.called
    clock.pump([CATCH_UP_POLL] * 3)
    assert waited.called  # within one poll of the limit (the sum of the polls is not exact)
    assert CATCH_UP_MAX <= waited.result <= CATCH_UP_MAX + CATCH_UP_POLL + 1e-6
