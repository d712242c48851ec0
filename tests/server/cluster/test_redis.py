"""quoted.server.cluster (bridge and lease) against a real redis-server, in this process.

Each bridge runs on the real reactor, as in production. A redis-server on a free port serves
the module (unique key prefix per test); tests that stop Redis start their own. The test's
own view of Redis is a tiny blocking RESP client (``Redis.call``), so what the bridge wrote is
read independently of txredisapi.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from quoted.server.cluster.bridge import RedisBridge
from quoted.server.cluster.lease import Keys, Shared, Stamp, decode, encode, parse_url
from quoted.server.config import RedisConfig
from quoted.server.hub import FanOutHub
from quoted.server.instruments import builtin_instruments
from quoted.server.metrics import Metrics
from quoted.server.store import MAX_MS, Quote, QuoteStore, round2
from tests.harness import eventually, free_port, sleep

ensure = pytest_twisted.ensureDeferred

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


# -- a redis-server of the test's own, and a blocking client ---------------------------------------


class RedisError(Exception):
    pass


def _read_reply(f: Any) -> Any:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RedisError(f"unexpected reply {line!r}")


class Redis:
    """A redis-server child on a free port, without persistence, killed after the test."""

    persistence: tuple[str, ...] = ("--appendonly", "no")

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", *self.persistence, "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.call("PING") == "PONG":
                    return
            except (OSError, RedisError):  # not up yet, or still loading its file
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def call(self, *args: object) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [f"*{len(args)}\r\n".encode()]
            for a in args:
                b = str(a).encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
            s.sendall(b"".join(parts))
            with s.makefile("rb") as f:
                return _read_reply(f)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    r = Redis(tmp_path_factory.mktemp("redis"))
    yield r
    r.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    """A redis-server for this test alone (it may be killed and restarted)."""
    r = Redis(tmp_path)
    yield r
    r.kill()


@pytest.fixture
def prefix() -> str:
    return f"qt-{secrets.token_hex(4)}:"


# -- bridges on the real reactor -------------------------------------------------------------------


class Peer:
    """One process's store, hub and bridge, without the network side."""

    def __init__(self, url: str, prefix: str, ttl: float, **bridge: Any) -> None:
        from twisted.internet import reactor

        self.metrics = Metrics(CollectorRegistry())
        self.store = QuoteStore(builtin_instruments(), int(reactor.seconds() * 1000))
        config = RedisConfig(enabled=True, url=url, prefix=prefix, lease_ttl=ttl)
        # built as app.build does: the bridge first (the hub's follower), publishing into the hub
        self.bridge = RedisBridge(reactor, config, self.store, self.publish, self.metrics, **bridge)
        self.hub = FanOutHub(reactor, self.metrics, 5, follower=self.bridge)
        self.sent: list[bytes] = []

    def publish(self, quotes: list[Quote]) -> None:
        self.hub.publish(quotes)

    def entry(self, symbol: str) -> Any:
        e = self.store.lookup(symbol)
        assert e is not None
        return e

    def subscribe(self, *symbols: str) -> Any:
        sub = self.hub.open(self)
        self.hub.snapshot(sub, [self.entry(s) for s in symbols], [], [])
        return sub

    # the hub's Connection
    def send_patch(self, payload: bytes) -> None:
        self.sent.append(payload)

    def slow_consumer(self) -> None:
        raise AssertionError("never slow here")

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)


@pytest_twisted.async_yield_fixture
async def peers() -> AsyncIterator[Any]:
    """``await peers(url, prefix, ttl=1.0, up=True, **bridge_keywords)``: a started Peer,
    stopped after the test."""
    started: list[Peer] = []

    async def start(url: str, prefix: str, ttl: float = 1.0, up: bool = True, **kw: Any) -> Peer:
        p = Peer(url, prefix, ttl, **kw)
        p.bridge.startService()
        started.append(p)
        if up:
            await eventually(lambda: p.bridge.up, timeout=5)
        return p

    yield start
    for p in started:
        if p.bridge.running:
            await p.bridge.stopService()


async def a_leader(*ps: Peer, timeout: float = 5.0) -> Peer:
    await eventually(lambda: sum(p.bridge.leading() for p in ps) == 1, timeout=timeout)
    return next(p for p in ps if p.bridge.leading())


def shared(r: Redis, prefix: str, symbol: str) -> Shared | None:
    v = r.call("HGET", Keys.of(prefix).quotes, symbol)
    return None if v is None else decode(v)


# -- the codec (no Redis) --------------------------------------------------------------------------


@given(
    st.integers(0, 10**15 - 1),
    st.integers(0, MAX_MS),
    st.floats(0.005, 1e12, allow_nan=False, allow_infinity=False),
)
def test_codec_round_trips_the_rounded_price(fence: int, ms: int, price: float) -> None:
    s = decode(encode(fence, ms, price))
    assert s.stamp == Stamp(fence, ms)
    assert s.price == round2(price)


@pytest.mark.parametrize(
    "payload", ["", "1 2", "1 2 3 4", "x 2 3", "1 y 3", "1 2 z", "1 2 -5", "1 2 0", "1 2 nan"]
)
def test_decode_refuses_malformed(payload: str) -> None:
    with pytest.raises(ValueError):
        decode(payload)


@given(st.text(max_size=30))
def test_decode_never_raises_anything_but_value_error(payload: str) -> None:
    try:
        decode(payload)
    except ValueError:
        pass


def test_stamp_order_is_fence_then_time() -> None:
    assert Stamp(2, 1) > Stamp(1, 9)  # a later leader wins even with an older time
    assert Stamp(1, 5) > Stamp(1, 4)
    assert not Stamp(1, 5) > Stamp(1, 5)


def test_shared_quote_is_byte_identical_whatever_the_local_history() -> None:
    a = QuoteStore(builtin_instruments(), 1_700_000_000_000).lookup("AAPL")
    b = QuoteStore(builtin_instruments(), 1_600_000_000_000).lookup("AAPL")
    assert a is not None and b is not None
    b.set(171.11, 1_650_000_000_000)  # b has a history a has not
    s = decode(encode(7, 1_764_000_000_123, 150.255))
    qa, qb = a.set(s.price, s.stamp.ms), b.set(s.price, s.stamp.ms)
    assert qa is not None and qb is not None
    assert qa.json == qb.json and qa.current_price == 150.26


def test_url_parsing_keeps_the_password_out_of_the_repr() -> None:
    t = parse_url("rediss://user:p%40ss@redis.example:6380/2")
    assert (t.host, t.port, t.tls, t.db, t.username, t.password) == (
        "redis.example",
        6380,
        True,
        2,
        "user",
        "p@ss",
    )
    assert "p@ss" not in repr(t) and "user" not in repr(t)
    t = parse_url("redis://127.0.0.1")
    assert (t.port, t.tls, t.db, t.password) == (6379, False, None, None)


# -- the lease -------------------------------------------------------------------------------------


@ensure
async def test_one_leader_renews_and_the_gauge_says_so(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, ttl=0.6)
    b = await peers(redis.url, prefix, ttl=0.6)
    leader = await a_leader(a, b)
    other = b if leader is a else a
    assert leader.bridge.fence > 0
    assert leader.gauge("quoted_feed_leader") == 1.0
    assert other.gauge("quoted_feed_leader") == 0.0
    assert a.gauge("quoted_broker_up") == b.gauge("quoted_broker_up") == 1.0
    # three lease times later, still the same leader: renewed, not re-taken
    fence = leader.bridge.fence
    await sleep(1.8)
    assert leader.bridge.leading() and not other.bridge.leading()
    assert leader.bridge.fence == fence
    assert 0 < redis.call("PTTL", Keys.of(prefix).lease) <= 600


@ensure
async def test_lease_lost_when_deleted_then_taken_with_a_higher_fence(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, ttl=0.6)
    b = await peers(redis.url, prefix, ttl=0.6)
    first = await a_leader(a, b)
    fence = first.bridge.fence
    redis.call("SET", Keys.of(prefix).lease, "someone-else", "PX", 700)  # stolen
    await eventually(lambda: not first.bridge.leading(), timeout=2)
    assert not a.bridge.leading() and not b.bridge.leading()
    redis.call("DEL", Keys.of(prefix).lease)  # the thief died
    second = await a_leader(a, b, timeout=3)
    assert second.bridge.fence > fence


@ensure
async def test_fence_grows_even_when_redis_lost_its_counter(
    redis: Redis, prefix: str, peers: Any
) -> None:
    keys = Keys.of(prefix)
    redis.call("SET", keys.fence, 5)
    a = await peers(redis.url, prefix, ttl=0.6)
    await a_leader(a)
    # max(previous + 1, now ms)
    assert a.bridge.fence >= int(time.time() * 1000) - 60_000
    fence = a.bridge.fence
    redis.call("DEL", keys.fence, keys.lease)
    await eventually(lambda: a.bridge.fence != fence, timeout=3)
    assert a.bridge.fence > fence


@ensure
async def test_publish_is_refused_once_the_lease_is_gone(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, ttl=3.0)
    await a_leader(a)
    aapl = a.entry("AAPL")
    assert a.bridge.emit([(aapl, 100.011)], 1_764_000_000_000) == 1
    await eventually(lambda: shared(redis, prefix, "AAPL") is not None)
    assert shared(redis, prefix, "AAPL") == Shared(Stamp(a.bridge.fence, 1_764_000_000_000), 100.01)
    await eventually(lambda: aapl.latest.current_price == 100.01)  # applied after the script

    # paused past its lease: another process holds it now
    redis.call("SET", Keys.of(prefix).lease, "another-token", "PX", 60_000)
    assert a.bridge.leading()  # it cannot know yet
    assert a.bridge.emit([(aapl, 200.02)], 1_764_000_001_000) == 1
    await eventually(lambda: not a.bridge.leading())
    assert shared(redis, prefix, "AAPL") == Shared(Stamp(a.bridge.fence, 1_764_000_000_000), 100.01)
    assert aapl.latest.current_price == 100.01
    assert a.bridge.movable() == [] and a.bridge.emit([(aapl, 1.5)], 1) == 0


@ensure
async def test_released_on_stop_so_another_takes_over_at_once(
    redis: Redis, prefix: str, peers: Any
) -> None:
    a = await peers(redis.url, prefix, ttl=6.0)
    await a_leader(a)
    b = await peers(redis.url, prefix, ttl=6.0)
    await a.bridge.stopService()
    assert redis.call("GET", Keys.of(prefix).lease) is None
    await a_leader(b, timeout=2.5)  # at b's next try (every 2 s), not after the 6 s lease


# -- apply, follow, seed ---------------------------------------------------------------------------


@ensure
async def test_apply_takes_only_newer_stamps(redis: Redis, prefix: str, peers: Any) -> None:
    a = await peers(redis.url, prefix)
    msft = a.entry("MSFT")
    sub = a.subscribe("MSFT")
    assert a.bridge.apply([(msft, Shared(Stamp(3, 2000), 300.0))])
    assert not a.bridge.apply([(msft, Shared(Stamp(3, 2000), 301.0))])  # same stamp
    assert not a.bridge.apply([(msft, Shared(Stamp(3, 1999), 302.0))])  # older time
    assert not a.bridge.apply([(msft, Shared(Stamp(2, 9999), 303.0))])  # older leader
    assert a.bridge.apply([(msft, Shared(Stamp(4, 1000), 304.0))])  # newer leader, older time
    assert msft.latest.current_price == 304.0 and msft.latest.last_updated_ms == 1000
    assert len(a.sent) == 3 and sub.seq == 3  # snapshot, then one message per applied batch


@ensure
async def test_follow_subscribes_reads_and_unsubscribes(
    redis: Redis, prefix: str, peers: Any
) -> None:
    keys = Keys.of(prefix)
    leader = await peers(redis.url, prefix, ttl=3.0)
    await a_leader(leader)
    follower = await peers(redis.url, prefix, ttl=3.0)
    assert leader.bridge.emit([(leader.entry("GOOGL"), 140.5)], 1_764_000_000_000) == 1
    await eventually(lambda: shared(redis, prefix, "GOOGL") is not None)

    channel = keys.channel + "GOOGL"
    sub = follower.subscribe("GOOGL")
    googl = follower.entry("GOOGL")
    # subscribed, then the shared quote read and applied: the client gets it as an update
    await eventually(lambda: redis.call("PUBSUB", "NUMSUB", channel)[1] == 1)
    await eventually(lambda: googl.latest.current_price == 140.5)
    assert googl.latest.json == leader.entry("GOOGL").latest.json
    assert sub.seq == 2
    # the interest set tells the leader to move it
    assert float(redis.call("ZSCORE", keys.interest, "GOOGL")) > time.time() * 1000
    await eventually(lambda: leader.entry("GOOGL") in leader.bridge.movable(), timeout=3)

    # a new tick reaches the follower through the channel
    leader.bridge.emit([(leader.entry("GOOGL"), 141.25)], 1_764_000_001_000)
    await eventually(lambda: googl.latest.current_price == 141.25)
    assert googl.latest.json == leader.entry("GOOGL").latest.json

    # its last subscriber gone: the sweep unsubscribes
    follower.hub.unsubscribe(sub, [googl])
    await eventually(lambda: redis.call("PUBSUB", "NUMSUB", channel)[1] == 0, timeout=3)


@ensure
async def test_a_late_process_starts_from_the_hash(redis: Redis, prefix: str, peers: Any) -> None:
    keys = Keys.of(prefix)
    redis.call("HSET", keys.quotes, "AAPL", encode(9, 1_764_000_000_500, 181.234))
    redis.call("HSET", keys.quotes, "NOPE", encode(9, 1_764_000_000_500, 1.0))  # not ours
    redis.call("HSET", keys.quotes, "TSLA", "garbage")
    p = await peers(redis.url, prefix)
    assert p.entry("AAPL").latest.current_price == 181.23
    assert p.entry("AAPL").latest.last_updated_ms == 1_764_000_000_500
    assert p.entry("TSLA").latest.version == 1  # the malformed value was skipped


@ensure
async def test_a_new_leader_seeds_what_the_hash_lacks(
    redis: Redis, prefix: str, peers: Any
) -> None:
    p = await peers(redis.url, prefix, ttl=3.0, up=False)
    p.subscribe("AMZN")
    await a_leader(p)
    await eventually(lambda: shared(redis, prefix, "AMZN") is not None)
    s = shared(redis, prefix, "AMZN")
    assert s is not None and s.price == p.entry("AMZN").latest.current_price


# -- readiness and outages -------------------------------------------------------------------------


@ensure
async def test_readiness_before_redis_and_during_an_outage(
    own_redis: Redis, prefix: str, peers: Any
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    never = await peers(closed, prefix, up=False)
    await sleep(0.3)
    assert never.bridge.readiness() == (
        503,
        {"status": "starting", "reason": "redis not reached yet"},
    )
    assert never.gauge("quoted_broker_up") == 0.0

    a = await peers(own_redis.url, prefix, ttl=3.0)  # its lease outlives the checks below
    await a_leader(a)
    sub = a.subscribe("AAPL")
    assert a.bridge.readiness() is None
    own_redis.kill()
    await eventually(lambda: not a.bridge.up, timeout=3)
    status, body = a.bridge.readiness() or (0, {})
    assert (status, body["status"]) == (200, "degraded")
    assert a.gauge("quoted_broker_up") == 0.0 and a.gauge("quoted_feed_leader") == 0.0
    # the last leader keeps ticking its own clients' symbols locally while its lease is valid
    aapl = a.entry("AAPL")
    assert a.bridge.movable() == [aapl]
    before = sub.seq
    assert a.bridge.emit([(aapl, 190.0)], 1_764_000_000_000) == 1
    assert aapl.latest.current_price == 190.0 and sub.seq == before + 1

    own_redis.start()  # empty: no persistence
    await eventually(lambda: a.bridge.up, timeout=10)
    assert a.gauge("quoted_broker_up") == 1.0
    await a_leader(a, timeout=5)
    # the new leader seeded the empty hash with its current quote
    await eventually(lambda: shared(own_redis, prefix, "AAPL") is not None)
    s = shared(own_redis, prefix, "AAPL")
    assert s is not None and s.price == 190.0
