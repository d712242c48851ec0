"""Issue 19, items 4 to 8: what a flaky Redis, or anyone who can write to it, could do.

Each test reproduces one defect against a real redis-server (this process's bridges on the
real reactor, tests.server.cluster.test_redis, or real twistd children,
tests.server.cluster.test_cluster) and asserts the bound: the value refused and logged once,
the later genuine ticks applied, every instance ready, calm clients' documents converging.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from quoted.server.cluster import bridge as bridge_module
from quoted.server.cluster.codec import MAX_AHEAD_MS, Shared, Stamp, decode, publish_args
from quoted.server.cluster.lease import ACQUIRE, Keys, encode, encode_published
from quoted.server.instruments import builtin_instruments
from quoted.server.store import MAX_MS, QuoteStore
from tests.harness import eventually, sleep
from tests.server.cluster.test_cluster import (
    Recorder,
    agree,
    cluster_env,
    leaders,
    metrics,
    rest_quotes,
    start,
    wait_for,
)
from tests.server.cluster.test_redis import (
    Redis,
    a_leader,
    ensure,
    own_redis,
    peers,
    prefix,
    redis,
    shared,
)
from tests.server.test_process import Spawn, get, spawn

__all__ = ["own_redis", "peers", "prefix", "redis", "spawn"]  # the fixtures, used by name

NOW = int(time.time() * 1000)
HOUR = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def refused() -> Any:
    """The quoted.redis.refused events logged during the test."""
    events: list[LogEvent] = []

    def observe(e: LogEvent) -> None:
        if e.get("log_id") == "quoted.redis.refused":
            events.append(e)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# -- item 4: every value validated before anything is recorded --------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "1 {max_ms_1} 100",  # past year 9999: timedelta overflowed in Entry.set
        "1 {now} {e306}",  # 1e306 as digits: change rounds to inf
        "1 {now} {e306} - -",
        "1 {now} 1000000000000.5 - -",  # above 1e12
        "1 {now} 10 - 1{e13}",  # a base above 1e12
        "1 {now} 10 9223372036854775808 -",
        "1 {now} 0.004",  # a simulator price is in cents
        "1 {now} 10.005",
        "1 {now} 0",
        "{hour_ahead} {now} 10",  # item 5: a fence an hour ahead
        "1 {hour_ahead} 10",  # item 5: ms an hour ahead
        "1 {hour_ahead} 10 - -",
    ],
)
def test_decode_refuses_every_out_of_range_field(template: str) -> None:
    payload = template.format(
        max_ms_1=MAX_MS + 1, now=NOW, e306="1" + "0" * 306, e13="0" * 13, hour_ahead=NOW + HOUR
    )
    with pytest.raises(ValueError):
        decode(payload, NOW)


def test_decode_takes_the_edges_of_the_ranges() -> None:
    assert decode(f"{NOW + MAX_AHEAD_MS} {NOW + MAX_AHEAD_MS} 0.01", NOW).price == 0.01
    assert decode(f"1 {NOW} 1000000000000 - -", NOW).price == 1e12
    assert decode(f"1 {NOW} 0.004 - -", NOW).price == 0.004  # published: exact
    assert decode(f"1 {MAX_MS} 5").stamp.ms == MAX_MS  # no clock: the absolute bounds only


@ensure
async def test_a_value_that_cannot_be_built_is_not_recorded_and_the_batch_goes_on(
    redis: Redis, prefix: str, peers: Any, refused: list[LogEvent]
) -> None:
    """Before: apply recorded the stamp, then Entry.set raised (year 9999, inf), so every later
    genuine tick was "older", the rest of the batch was dropped and a traceback reached the
    reactor. Values built by hand here go past decode, to prove the second line holds."""
    p = await peers(redis.url, prefix)
    aapl, msft = p.entry("AAPL"), p.entry("MSFT")
    sub = p.subscribe("AAPL", "MSFT")
    batch = [
        (aapl, Shared(Stamp(9, MAX_MS + 1), 100.0)),
        (msft, Shared(Stamp(9, NOW), 1e307)),
        (aapl, Shared(Stamp(9, NOW), 101.0, 5, 0.0)),  # a base of 0: refused, base kept
    ]
    assert p.bridge.apply(batch) == []
    base = aapl.base_price
    good = [(aapl, Shared(Stamp(2, NOW), 150.25)), (msft, Shared(Stamp(2, NOW), 300.5))]
    assert len(p.bridge.apply(good)) == 2  # lower stamps than the refused ones: nothing recorded
    assert (aapl.latest.current_price, msft.latest.current_price) == (150.25, 300.5)
    assert aapl.base_price == base and sub.seq == 2
    assert len(refused) == 3


@ensure
async def test_poisoned_hash_values_and_messages_neither_freeze_a_symbol_nor_stop_a_resync(
    redis: Redis, prefix: str, peers: Any, refused: list[LogEvent]
) -> None:
    """Before: the same value in the hash made every HGETALL resync raise: a new instance never
    became ready, and every instance stayed degraded."""
    keys = Keys.of(prefix)
    poison = {
        "AAPL": f"1 {MAX_MS + 1} 100",
        "MSFT": f"1 {now_ms()} 1{'0' * 306} - -",
        "GOOGL": f"999999999999999 {now_ms()} 140",  # item 5: a fence absurdly ahead
        "TSLA": f"1 {now_ms() + HOUR} 250",  # item 5: an hour ahead
    }
    for sym, v in poison.items():
        redis.call("HSET", keys.quotes, sym, v)
    redis.call("HSET", keys.quotes, "AMZN", encode(1, 1_764_000_000_000, 181.5))
    leader = await peers(redis.url, prefix, ttl=3.0)  # up: the resync went through
    assert leader.bridge.readiness() is None
    assert leader.entry("AMZN").latest.current_price == 181.5
    assert all(leader.entry(s).latest.version == 1 for s in poison)
    await a_leader(leader)
    follower = await peers(redis.url, prefix, ttl=3.0)
    subs = [follower.subscribe(*poison), leader.subscribe(*poison)]
    # the same values on the channels, then genuine ticks: applied everywhere
    for sym, v in poison.items():
        redis.call("PUBLISH", keys.channel + sym, v)
    at = now_ms()
    moves = [(leader.entry(s), 100.0 + i) for i, s in enumerate(poison)]
    assert leader.bridge.emit(moves, at) == 4
    for sym in poison:
        e = follower.entry(sym)
        await eventually(lambda e=e: e.latest.last_updated_ms == at)
        assert e.latest.json == leader.entry(sym).latest.json
    assert all(s.seq >= 2 for s in subs)
    # the repair read the hash again (every 2 s): each process logged each bad value once
    await sleep(2.2)
    logged = [(id(e["log_source"]), e["key"]) for e in refused]
    assert len(logged) == len(set(logged))
    assert {keys.quotes + " " + s for s in poison} <= {key for _, key in logged}


# -- item 5: stamps bounded against the local clock --------------------------------------------


@ensure
async def test_a_leader_whose_clock_steps_back_takes_a_new_fence_and_everyone_follows(
    redis: Redis, prefix: str, peers: Any
) -> None:
    """Before: its ticks (same fence, earlier ms) were older than what everyone applied, and
    the periodic repair could not help: the symbol froze everywhere until the clock caught up."""
    leader = await peers(redis.url, prefix, ttl=3.0)
    await a_leader(leader)
    follower = await peers(redis.url, prefix, ttl=3.0)
    follower.subscribe("AAPL")
    mine, aapl = leader.entry("AAPL"), follower.entry("AAPL")
    at = now_ms()
    assert leader.bridge.emit([(mine, 170.0)], at) == 1
    await eventually(lambda: aapl.latest.current_price == 170.0)
    fence = leader.bridge.fence
    back = at - HOUR  # the leader's clock stepped back an hour
    leader.bridge.emit([(mine, 171.0)], back)  # older than what it applied: refused, refenced
    await eventually(lambda: leader.bridge.fence > fence, timeout=3)
    assert leader.bridge.leading()
    assert leader.bridge.emit([(mine, 172.0)], back + 1000) == 1
    await eventually(lambda: aapl.latest.current_price == 172.0)
    assert aapl.latest.json == mine.latest.json and aapl.latest.last_updated_ms == back + 1000
    assert shared(redis, prefix, "AAPL") == Shared(Stamp(leader.bridge.fence, back + 1000), 172.0)


def test_record_does_not_take_a_previous_value_an_hour_ahead_as_later(
    redis: Redis, prefix: str
) -> None:
    """Before: RECORD found every genuine tick stale until the poisoned value's time."""
    from tests.server.cluster.test_order import run

    keys = Keys.of(prefix)
    redis.call("HSET", keys.quotes, "AAPL", f"5 {now_ms() + HOUR} 10 - -")
    at = now_ms()
    assert run(redis, prefix, [("AAPL", at, "151.25", "", "")]) == [f"{at} {at} 151.25 - -"]
    redis.call("HSET", keys.quotes, "MSFT", f"999999999999999 {at} 10 - -")
    assert run(redis, prefix, [("MSFT", at, "300", "", "")]) == [f"{at} {at} 300 - -"]


# -- item 6: a price below 0.005 is never served as 0 -----------------------------------------


def test_a_price_below_half_a_cent_is_never_written_nor_served_as_zero() -> None:
    store = QuoteStore(builtin_instruments(), NOW)
    aapl = store.lookup("AAPL")
    assert aapl is not None
    before = aapl.latest
    with pytest.raises(ValueError):
        aapl.set(0.004, NOW + 1)  # rounds to 0
    assert aapl.latest is before
    q = aapl.put(0.004, NOW + 1)  # a published price is exact
    assert q is not None and q.as_dict()["current_price"] == 0.004
    # a new leader seeding that quote (the simulator's form, in cents) leaves it out
    args, batch = publish_args("t", "c:", 7, [(aapl, aapl.latest.current_price)], NOW + 2)
    assert (args, batch) == (["t", "c:"], [])


@ensure
async def test_shared_prices_below_half_a_cent_exact_or_refused_on_a_peer(
    redis: Redis, prefix: str, peers: Any
) -> None:
    keys = Keys.of(prefix)
    at = now_ms()
    redis.call("HSET", keys.quotes, "AAPL", encode_published(3, at, 0.004, None, None))
    redis.call("HSET", keys.quotes, "MSFT", f"3 {at} 0.004")  # the 3-field form is cents
    p = await peers(redis.url, prefix)
    assert p.entry("AAPL").latest.as_dict()["current_price"] == 0.004
    assert p.entry("MSFT").latest.version == 1  # refused, not 0
    assert p.entry("MSFT").latest.current_price > 1


# -- item 7: a client that always reconnects; readiness; no split brain ------------------------


@ensure
async def test_the_bridge_reconnects_after_redis_hung_with_a_database_in_the_url(
    own_redis: Redis, prefix: str, peers: Any
) -> None:
    """Before: after SIGSTOP, the reconnection's SELECT timed out and txredisapi's factory
    stopped trying: degraded for ever. (own_redis.url names database 0.)"""
    assert own_redis.url.endswith("/0") and own_redis.proc is not None
    a = await peers(own_redis.url, prefix, ttl=1.0)
    await a_leader(a)
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: not a.bridge.up, timeout=3)
        await sleep(3.0)  # several SELECTs time out meanwhile
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: a.bridge.up, timeout=10)
    await a_leader(a, timeout=5)


@ensure
async def test_readyz_503_after_the_grace_and_no_local_ticks_once_another_may_lead(
    own_redis: Redis, prefix: str, peers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: 200 "degraded" for ever, and a former leader ticked local prices for ever while
    another process could take the lease: two documents for one symbol."""
    monkeypatch.setattr(bridge_module, "OUTAGE_GRACE", 1.0)
    a = await peers(own_redis.url, prefix, ttl=1.5)
    await a_leader(a)
    aapl = a.entry("AAPL")
    a.subscribe("AAPL")
    own_redis.kill()
    await eventually(lambda: not a.bridge.up, timeout=3)
    status, body = a.bridge.readiness() or (0, {})
    assert (status, body["status"]) == (200, "degraded")
    assert a.bridge.movable() == [aapl]  # a short outage: its lease is still valid
    await eventually(lambda: (a.bridge.readiness() or (0,))[0] == 503, timeout=2)
    status, body = a.bridge.readiness() or (0, {})
    assert body["status"] == "unavailable" and body["reason"].startswith("redis unreachable for")
    # its lease ran out by its own clock: another process may lead now, so no local ticks
    await eventually(lambda: a.bridge.movable() == [], timeout=2)
    before = aapl.latest
    assert a.bridge.emit([(aapl, 190.0)], now_ms()) == 0 and aapl.latest is before
    own_redis.start()
    await eventually(lambda: a.bridge.readiness() is None, timeout=10)


# -- item 8: the lease script ------------------------------------------------------------------


def acquire(r: Redis, pfx: str, token: str, floor: int = 0, renew: str = "0") -> Any:
    keys = Keys.of(pfx)
    return r.call("EVAL", ACQUIRE, 2, keys.lease, keys.fence, token, 3000, now_ms(), floor, renew)


def test_acquire_gives_a_usable_fence_on_every_path(redis: Redis, prefix: str) -> None:
    keys = Keys.of(prefix)
    ours = acquire(redis, prefix, "me")
    assert ours[0] == "ours" and ours[1] >= now_ms() - 1000
    assert acquire(redis, prefix, "me", ours[1]) == ["ours", ours[1]]  # renewed, kept
    assert acquire(redis, prefix, "you") == ["other", 0]  # never read like a fence
    # before: the fence key gone, "already ours" answered 0 ("lost") for ever
    redis.call("DEL", keys.fence)
    again = acquire(redis, prefix, "me", ours[1])
    assert again[0] == "ours" and again[1] > ours[1]
    assert int(redis.call("GET", keys.fence)) == again[1]
    # before: a fence rewritten lower was kept: peers ignored every tick of this leader
    redis.call("SET", keys.fence, 5)
    lower = acquire(redis, prefix, "me", again[1])
    assert lower[0] == "ours" and lower[1] > again[1]
    # before: INCR on a non-integer errored after SET, leaving the lease set half-done
    redis.call("DEL", keys.lease)
    redis.call("SET", keys.fence, "not a number")
    assert acquire(redis, prefix, "me")[0] == "ours"
    # keys of another type are overwritten, not an error
    redis.call("DEL", keys.lease, keys.fence)
    redis.call("HSET", keys.fence, "x", "1")
    redis.call("HSET", keys.lease, "x", "1")
    took = acquire(redis, prefix, "me")
    assert took[0] == "ours" and redis.call("GET", keys.lease) == "me"
    assert int(redis.call("GET", keys.fence)) == took[1]
    # a new fence asked for (a leader whose clock stepped back) is above the floor
    assert acquire(redis, prefix, "me", took[1] + 10**6, "1") == ["ours", took[1] + 10**6 + 1]


@ensure
async def test_losing_or_lowering_the_fence_does_not_stop_the_leader(
    redis: Redis, prefix: str, peers: Any
) -> None:
    """Before: after a short outage (here its command connection killed), the holder took the
    "already ours" path of ACQUIRE, read 0 and believed for ever it had lost the lease: nobody
    led, prices froze; with the fence rewritten lower, its peers ignored its ticks."""
    keys = Keys.of(prefix)
    leader = await peers(redis.url, prefix, ttl=3.0)
    await a_leader(leader)
    follower = await peers(redis.url, prefix, ttl=3.0)
    follower.subscribe("AAPL")
    for damage in (("DEL", keys.fence), ("SET", keys.fence, 3)):
        fence = leader.bridge.fence
        redis.call(*damage)
        redis.call("CLIENT", "KILL", "TYPE", "normal")  # the bridges' command connections
        await eventually(lambda fence=fence: leader.bridge.fence > fence, timeout=3)
        assert leader.bridge.leading() and not follower.bridge.leading()
        at = now_ms()
        assert leader.bridge.emit([(leader.entry("AAPL"), 123.45)], at) == 1
        await eventually(lambda at=at: follower.entry("AAPL").latest.last_updated_ms == at)


# -- real instances: the symptoms as the issue saw them ----------------------------------------


@pytest.mark.slow
def test_poison_in_redis_leaves_every_instance_ready_and_every_document_moving(
    spawn: Spawn, own_redis: Redis
) -> None:
    """Items 4 and 5 on three twistd processes: the issue's values, stamped with the current
    fence, published on the channels of the symbols clients use (before: the stamp recorded,
    then the build raised: every later tick "older", the symbol frozen everywhere), and written
    to the hash for symbols nobody uses, so they stay there (before: every HGETALL resync
    raised, and a late instance never became ready)."""
    ds = start(spawn, cluster_env(own_redis), 2)
    ports = [d.port for d in ds]
    recs = [Recorder(p) for p in ports]
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader")
    keys = Keys.of("quoted:")
    fence, now = int(own_redis.call("GET", keys.fence)), now_ms()
    poison = [
        f"{fence} {MAX_MS + 1} 100",  # past year 9999
        f"{fence} {now + 1000} 1{'0' * 306} - -",  # 1e306: change rounds to inf
        f"999999999999999 {now} 140",  # a fence absurdly ahead
        f"{fence} {now + HOUR} 250",  # an hour ahead
    ]
    for sym, v in zip(["AAPL", "MSFT", "GOOGL", "TSLA"], poison, strict=True):
        own_redis.call("PUBLISH", keys.channel + sym, v)
    for sym, v in zip(["NVDA", "META", "NFLX", "JPM"], poison, strict=True):
        own_redis.call("HSET", keys.quotes, sym, v)
    after = now_ms() + 500
    late = start(spawn, cluster_env(own_redis), 1)[0]  # ready: its resync went through
    ports.append(late.port)
    recs.append(Recorder(late.port))
    wait_for(lambda: all(r.got_after(after) for r in recs), 10, "prices after the poison")
    for p in ports:
        assert get(p, "/readyz")[0] == 200
        assert metrics(p)["quoted_broker_up"] == 1
        unused = rest_quotes(p, ["NVDA", "META", "NFLX", "JPM"])
        assert all(0 < q["current_price"] < 1e12 for q in unused.values())
        assert all(q["last_updated"] < "9999" for q in unused.values())
    time.sleep(1.0)
    assert agree(recs) > 0
    for r, p in zip(recs, ports, strict=True):
        r.check()
        rest = rest_quotes(p)
        for sym, q in r.quotes().items():
            assert q["current_price"] > 0
            if q["last_updated"] == rest[sym]["last_updated"]:
                assert q == rest[sym]


@pytest.mark.slow
def test_after_redis_hangs_five_seconds_every_instance_recovers_one_leader_one_market(
    spawn: Spawn, own_redis: Redis
) -> None:
    """Item 7 as the issue saw it: SIGSTOP for 5 s, then SIGCONT, with the default-style URL
    naming a database. Before: never reconnected, 200 "degraded" for ever, and the stuck former
    leader ticked local prices beside the new leader's."""
    ds = start(spawn, cluster_env(own_redis), 2)
    ports = [d.port for d in ds]
    recs = [Recorder(p) for p in ports]
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader")
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: all(metrics(p)["quoted_broker_up"] == 0 for p in ports), 5, "down")
        time.sleep(5.0)
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    back = wait_for(
        lambda: all(metrics(p)["quoted_broker_up"] == 1 for p in ports), 15, "broker_up 1"
    )
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader again")
    for p in ports:
        assert get(p, "/readyz")[0] == 200
    after = now_ms() + 500
    wait_for(lambda: all(r.got_after(after) for r in recs), 5, "prices after the hang")
    print(f"\nboth instances up {back:.2f}s after SIGCONT")
    time.sleep(1.0)
    assert agree(recs) > 0
    for r, p in zip(recs, ports, strict=True):
        r.check()
        assert not r.closed
        rest = rest_quotes(p)
        for sym, q in r.quotes().items():
            if q["last_updated"] == rest[sym]["last_updated"]:
                assert q == rest[sym]
