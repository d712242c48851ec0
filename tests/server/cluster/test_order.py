"""The shared order of published ticks: the codec, the RECORD script on a real redis-server,
and RedisBridge.record (quoted.server.cluster.order) between two bridges in this process.

The script is run with the test's own blocking client (tests.server.cluster.test_redis.Redis),
so what it writes is read independently of txredisapi; the bridges run on the real reactor.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from quoted.server.cluster.codec import MAX_AHEAD_MS
from quoted.server.cluster.lease import (
    Keys,
    Shared,
    Stamp,
    decode,
    encode,
    encode_published,
)
from quoted.server.cluster.order import RECORD, record_args
from quoted.server.feeds.items import Tick
from quoted.server.feeds.sink import BrokerUnavailable, CursorMoved
from quoted.server.store import MAX_MS
from tests.harness import eventually, sleep
from tests.server.cluster.test_redis import (
    Redis,
    _read_reply,
    own_redis,
    peers,
    prefix,
    redis,
    shared,
)

__all__ = ["own_redis", "peers", "prefix", "redis"]  # the fixtures, used by name

ensure = pytest_twisted.ensureDeferred

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

T = 1_764_000_000_000  # a unix ms
AHEAD = int(time.time() * 1000) + 86_400_000  # a stamp a day ahead of this clock

# -- the codec ----------------------------------------------------------------------------------

prices = st.floats(5e-324, 1e12, allow_nan=False, allow_infinity=False)


@given(
    st.integers(0, 10**15 - 1),
    st.integers(0, MAX_MS),
    prices,
    st.none() | st.integers(0, 2**63 - 1),
    st.none() | prices,
)
def test_published_codec_round_trips_exactly(
    version: int, ms: int, price: float, volume: int | None, base: float | None
) -> None:
    assert decode(encode_published(version, ms, price, volume, base)) == Shared(
        Stamp(version, ms), price, volume, base
    )


def test_both_forms_decode() -> None:
    assert decode(encode(7, T, 150.255)) == Shared(Stamp(7, T), 150.26)
    assert decode(f"8 {T} 151.2549 1200 149.1") == Shared(Stamp(8, T), 151.2549, 1200, 149.1)
    assert decode(f"8 {T} 151 - -") == Shared(Stamp(8, T), 151.0)
    assert decode(b"8 1 2 - 3") == Shared(Stamp(8, 1), 2.0, None, 3.0)


@pytest.mark.parametrize(
    "payload",
    [
        "1 2 3 4",  # four fields
        "1 2 3 4 5 6",
        "1 2 3 x -",
        "1 2 3 - x",
        "1 2 3 -1 -",
        "1 2 3 9223372036854775808 -",  # volume beyond 2**63 - 1
        "1 2 3 - 0",
        "1 2 3 - 1e3",  # an exponent is not the codec's
        "1 2 3 - 1000000000000.5",  # a base above 1e12
        "1 2 1e3 - -",
        "1 2 inf - -",
        "1 2 nan",
        "1 2 0.0 - -",
        "1 2 1_000",
        "1 2 +3",
        "1 2 .5",
        "1234567890123456 2 3",  # 16 digits: not exact in Lua's doubles
        "1 1234567890123456 3",
        "-1 2 3",
        " 1 2 3",
        "1 2 3 ",
        "1 2 3\n",
        "1  2 3",
        "\uff11 2 3",  # a digit, but not an ASCII one
        "1 2 3 - -\x00",
    ],
)
def test_decode_refuses_malformed(payload: str) -> None:
    with pytest.raises(ValueError):
        decode(payload)


@given(st.lists(st.sampled_from(["1", "-", "0", "2.5", "x", "", "1e3", "99"]), max_size=6))
def test_decode_raises_only_value_error(fields: list[str]) -> None:
    try:
        decode(" ".join(fields))
    except ValueError:
        pass


def test_keys_of_a_stream_and_the_market_pattern() -> None:
    k = Keys.of("qt:")
    assert k.cursor_of("quoted:ticks") == "qt:cursor:quoted:ticks"
    assert k.market == "qt:sym:*"
    assert Keys.of("a*b?[c]\\:").market == "a\\*b\\?\\[c\\]\\\\:sym:*"


def test_record_args_carry_exact_prices_and_blanks_for_what_is_not_given() -> None:
    ticks = [Tick("AAPL", 151.2549, T, 1200, 149.1), Tick("MSFT", 0.1 + 0.2, T + 1)]
    args = record_args("qt:sym:", [(None, t) for t in ticks], ("1-0", "5-0"), T)  # type: ignore[misc]
    assert args == [
        *("qt:sym:", "1-0", "5-0", T + MAX_AHEAD_MS),
        *("AAPL", str(T), "151.2549", "1200", "149.1"),
        *("MSFT", str(T + 1), "0.30000000000000004", "", ""),
    ]
    assert record_args("c", [], None, 0) == ["c", "", "", MAX_AHEAD_MS]


# -- the script, on a real redis-server ---------------------------------------------------------


def run(
    r: Redis, pfx: str, ticks: list[tuple[Any, ...]], cursor: tuple[str, str] = ("", "")
) -> Any:
    """EVAL RECORD with ``ticks`` of (symbol, ms, price, volume, base) as strings."""
    keys = Keys.of(pfx)
    ahead = int(time.time() * 1000) + MAX_AHEAD_MS
    args = [keys.channel, *cursor, ahead, *(str(x) for t in ticks for x in t)]
    return r.call("EVAL", RECORD, 2, keys.quotes, keys.cursor_of("s"), *args)


def hget(r: Redis, pfx: str, symbol: str) -> str | None:
    v: str | None = r.call("HGET", Keys.of(pfx).quotes, symbol)
    return v


def test_script_versions_stale_and_merges(redis: Redis, prefix: str) -> None:
    assert run(redis, prefix, [("AAPL", T, "151.25", "", "")]) == [f"1 {T} 151.25 - -"]
    # older: stale, nothing written; the same millisecond is in order
    assert run(redis, prefix, [("AAPL", T - 1, "150", "", "")]) == [0]
    assert hget(redis, prefix, "AAPL") == f"1 {T} 151.25 - -"
    assert run(redis, prefix, [("AAPL", T, "151.3", "1200", "149.1")]) == [
        f"2 {T} 151.3 1200 149.1"
    ]
    # volume and reference price carried forward when a tick gives none; replaced when given
    assert run(redis, prefix, [("AAPL", T + 5, "152", "", "")]) == [f"3 {T + 5} 152 1200 149.1"]
    assert run(redis, prefix, [("AAPL", T + 6, "153", "7", "")]) == [f"4 {T + 6} 153 7 149.1"]
    # several symbols in one call, each on its own
    out = run(redis, prefix, [("AAPL", T, "1", "", ""), ("MSFT", T, "300.125", "", "")])
    assert out == [0, f"1 {T} 300.125 - -"]
    assert decode(hget(redis, prefix, "MSFT") or "") == Shared(Stamp(1, T), 300.125)


def test_script_follows_a_simulator_quote_and_replaces_a_malformed_one(
    redis: Redis, prefix: str
) -> None:
    quotes = Keys.of(prefix).quotes
    fence = 1_763_000_000_000
    redis.call("HSET", quotes, "AAPL", encode(fence, T, 181.234))
    assert run(redis, prefix, [("AAPL", T - 1, "1", "", "")]) == [0]
    assert run(redis, prefix, [("AAPL", T, "182", "", "")]) == [f"{fence + 1} {T} 182 - -"]
    # garbage (or a value of a later codec) never freezes the symbol: replaced, with the tick's
    # time as version, above any version counted from 1
    for bad in ("garbage", f"5 {T} 1 x -", f"5 {T} 1 - 0", f"12345678901234567 {T} 1"):
        redis.call("HSET", quotes, "TSLA", bad)
        assert run(redis, prefix, [("TSLA", T - 9, "250", "3", "")]) == [f"{T - 9} {T - 9} 250 3 -"]


def test_script_publishes_what_it_writes(redis: Redis, prefix: str) -> None:
    channel = Keys.of(prefix).channel + "AMZN"
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode())
        f = s.makefile("rb")
        assert _read_reply(f)[0] == "subscribe"
        out = run(redis, prefix, [("AMZN", T, "180.5", "", "")])
        assert _read_reply(f) == ["message", channel, out[0]]


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from(
        ["7", "0", "999999999999999", "1234567890123456", "x", "-1", "", str(AHEAD)]
    ),
    ms=st.sampled_from(["5", "0", "1234567890123456", "1.5", str(AHEAD)]),
    price=st.sampled_from(
        ["1", "0.5", "0", "1e3", "inf", "00.10", "-2", "1.", "0.004", "1000000000000.01", "1e12"]
    ),
    tail=st.sampled_from(
        [
            "",
            " - -",
            " 5 -",
            " - 2.5",
            " - 1000000000000",
            " - 1000000000001",
            " x -",
            " 9223372036854775807 -",
            " 9223372036854775808 -",
            " - 0.0",
            " -",
            " - - -",
        ]
    ),
)
def test_script_reads_a_value_exactly_as_decode_does(
    redis: Redis, version: str, ms: str, price: str, tail: str
) -> None:
    """Lua's check of the previous value and Python's decode never disagree: a value decode
    accepts is followed (version + 1, its volume and base kept), any other is replaced; a
    stamp more than MAX_AHEAD_MS ahead of the clock (AHEAD, a day) is refused by both."""
    pfx = "qt-prop:"
    prev = f"{version} {ms} {price}{tail}"
    redis.call("HSET", Keys.of(pfx).quotes, "AAPL", prev)
    tick_ms = 2**46
    (written,) = run(redis, pfx, [("AAPL", tick_ms, "10", "", "")])
    try:
        old = decode(prev, int(time.time() * 1000))
    except ValueError:
        assert written == f"{tick_ms} {tick_ms} 10 - -"
    else:
        assert written == encode_published(
            min(old.stamp.version + 1, 10**15 - 1), tick_ms, 10.0, old.volume, old.base
        )
    decode(written)


def test_script_cursor_compare_and_set(redis: Redis, prefix: str) -> None:
    cursor = Keys.of(prefix).cursor_of("s")
    # absent is "0-0"
    assert run(redis, prefix, [("AAPL", T, "1", "", "")], ("5-0", "6-0")) == -1
    assert hget(redis, prefix, "AAPL") is None and redis.call("GET", cursor) is None
    assert run(redis, prefix, [("AAPL", T, "1", "", "")], ("0-0", "6-0")) == [f"1 {T} 1 - -"]
    assert redis.call("GET", cursor) == "6-0"
    # a wrong expected id writes nothing, stale or not
    assert run(redis, prefix, [("AAPL", T + 1, "2", "", "")], ("5-0", "7-0")) == -1
    assert hget(redis, prefix, "AAPL") == f"1 {T} 1 - -" and redis.call("GET", cursor) == "6-0"
    # an empty batch (entries that were all bad) still moves it; stale ticks move it too
    assert run(redis, prefix, [], ("6-0", "8-0")) == []
    assert redis.call("GET", cursor) == "8-0"
    assert run(redis, prefix, [("AAPL", T - 1, "3", "", "")], ("8-0", "9-0")) == [0]
    assert redis.call("GET", cursor) == "9-0"


# -- RedisBridge.record between two bridges -----------------------------------------------------


def ticks(*specs: tuple[Any, ...]) -> list[tuple[Any, Tick]]:
    return [(e, Tick(e.symbol, *rest)) for e, *rest in specs]


@ensure
async def test_record_applies_here_before_firing_and_reaches_every_peer(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, simulated=False)
    b = await peers(redis.url, prefix, simulated=False)
    sub = a.subscribe("AAPL", "MSFT")
    aapl, msft = a.entry("AAPL"), a.entry("MSFT")
    got = await a.bridge.record(ticks((aapl, 151.2549, T, 1200, 149.1), (msft, 0.3, T)), None)
    assert got == [True, True]
    # applied, exact, in one message, before the Deferred fired
    assert (aapl.latest.current_price, aapl.latest.last_updated_ms) == (151.2549, T)
    assert (aapl.volume, aapl.base_price) == (1200, 149.1)
    assert sub.seq == 2 and len(a.sent) == 2
    assert shared(redis, prefix, "AAPL") == Shared(Stamp(1, T), 151.2549, 1200, 149.1)
    # b follows the whole market: no subscriber of its own needed (REST shows it)
    b_aapl = b.entry("AAPL")
    await eventually(lambda: b_aapl.latest.last_updated_ms == T)
    assert b_aapl.latest.json == aapl.latest.json
    assert b.entry("MSFT").latest.json == msft.latest.json

    # stale as Redis says, across bridges: b refuses what is older than a's tick
    got = await b.bridge.record(ticks((b_aapl, 150.0, T - 1), (b.entry("MSFT"), 0.31, T)), None)
    assert got == [False, True]
    assert b_aapl.latest.current_price == 151.2549
    await eventually(lambda: msft.latest.current_price == 0.31)
    # the channel's copy of a's own tick changed nothing here (one message for the call)
    assert sub.seq == 3
    assert msft.latest.json == b.entry("MSFT").latest.json


@ensure
async def test_record_with_a_cursor_moves_it_or_refuses_the_whole_call(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, simulated=False, stream="feed")
    cursor = Keys.of(prefix).cursor_of("feed")
    aapl = a.entry("AAPL")
    before = aapl.latest
    with pytest.raises(CursorMoved):
        await a.bridge.record(ticks((aapl, 10.0, T)), ("3-0", "4-0"))
    assert aapl.latest is before and shared(redis, prefix, "AAPL") is None
    assert await a.bridge.record(ticks((aapl, 10.0, T)), ("0-0", "4-0")) == [True]
    assert redis.call("GET", cursor) == "4-0" and aapl.latest.current_price == 10.0
    assert await a.bridge.record([], ("4-0", "5-0")) == []
    assert redis.call("GET", cursor) == "5-0"


@ensure
async def test_record_fails_broker_unavailable_while_redis_is_away(
    own_redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(own_redis.url, prefix, simulated=False)
    aapl = a.entry("AAPL")
    own_redis.kill()
    await eventually(lambda: not a.bridge.up, timeout=3)
    before = aapl.latest
    with pytest.raises(BrokerUnavailable):
        await a.bridge.record(ticks((aapl, 10.0, T)), None)
    assert aapl.latest is before
    status, body = a.bridge.readiness() or (0, {})
    assert (status, body["reason"]) == (
        200,
        "redis unreachable: serving the last prices, publishing refused",
    )
    own_redis.start()
    await eventually(lambda: a.bridge.up, timeout=10)
    assert await a.bridge.record(ticks((aapl, 10.0, T)), None) == [True]


@ensure
async def test_record_unanswered_is_broker_unavailable(
    tmp_path: Path, prefix: str, peers: Any
) -> None:
    """A command sent and never answered (Redis stopped with SIGSTOP: the socket stays open)
    fails at the reply timeout, as BrokerUnavailable."""
    r = Redis(tmp_path)
    try:
        a = await peers(r.url, prefix, simulated=False)
        assert r.proc is not None
        r.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(BrokerUnavailable):
            await a.bridge.record(ticks((a.entry("AAPL"), 10.0, T)), None)
        assert a.entry("AAPL").latest.version == 1
    finally:
        if r.proc is not None:
            r.proc.send_signal(signal.SIGCONT)
        r.kill()


@ensure
async def test_a_new_leader_of_a_published_market_seeds_nothing(
    redis: Redis, prefix: str, peers: Any
) -> None:
    p = await peers(redis.url, prefix, ttl=3.0, up=False, simulated=False)
    p.subscribe("AMZN")
    await eventually(p.bridge.leading, timeout=5)
    await sleep(0.5)  # what a seed would take (one HMGET, one EVALSHA) many times over
    assert shared(redis, prefix, "AMZN") is None
    assert redis.call("ZCARD", Keys.of(prefix).interest) == 0


@ensure
async def test_a_malformed_shared_value_is_skipped_then_replaced(
    redis: Redis, prefix: str, peers: Any
) -> None:
    quotes = Keys.of(prefix).quotes
    redis.call("HSET", quotes, "TSLA", f"3 {T} 250 x -")
    a = await peers(redis.url, prefix, simulated=False)
    tsla = a.entry("TSLA")
    assert tsla.latest.version == 1  # skipped at start
    assert await a.bridge.record(ticks((tsla, 251.5, T - 5)), None) == [True]
    assert tsla.latest.current_price == 251.5
    assert shared(redis, prefix, "TSLA") == Shared(Stamp(T - 5, T - 5), 251.5)
