"""Tests of quoted.server.pool.ConnectionPool: limits, the liveness sweep and draining."""

from __future__ import annotations

import dataclasses
import random

import pytest
from twisted.internet.task import Clock

from quoted.server.config import WebSocketConfig, load_config
from quoted.server.pool import ConnectionPool, Liveness

# Binary fractions only (times, steps, intervals): every clock reading is exact, so a sweep
# lands exactly on next_ping instead of a rounding error before it (one step late).
T0 = 1024.0
INTERVAL = 10.0  # health_check_interval: the sweep runs every second
IDLE = 60.0
SEED = 7
BASE = load_config(None, environ={"JWT_SECRET": "pool-test-secret-0123456789-abcdefgh"}).websocket


def ws_config(**changes: object) -> WebSocketConfig:
    values: dict[str, object] = {
        "health_check_interval": INTERVAL,
        "idle_timeout": IDLE,
        "max_connections": 3,
        "user_max_connections": 2,
    }
    values.update(changes)
    return dataclasses.replace(BASE, **values)  # type: ignore[arg-type]


class FakeConn:
    """A pool member (quoted.server.pool.Member) recording when the pool called it; it reports
    pongs and traffic to its record, as QuoteProtocol does."""

    def __init__(self, clock: Clock, answer_pings: bool = True, fresh: bool = False) -> None:
        self.clock = clock
        self.answer_pings = answer_pings  # a pong comes back before the next sweep
        self.fresh = fresh  # the pong counts as traffic (last_seen), as a real one does
        self.live: Liveness | None = None
        self.pings: list[float] = []
        self.closes: list[tuple[float, int, str]] = []
        self.aborts = 0

    def send_ping(self) -> None:
        now = self.clock.seconds()
        self.pings.append(now)
        if self.answer_pings:
            self.clock.callLater(0, self._pong)

    def _pong(self) -> None:
        assert self.live is not None
        self.live.ponged()
        if self.fresh:
            self.live.heard(self.clock.seconds())

    def close_with(self, code: int, reason: str) -> None:
        self.closes.append((self.clock.seconds(), code, reason))

    def abort(self) -> None:
        self.aborts += 1


def live(conn: FakeConn) -> Liveness:
    assert conn.live is not None
    return conn.live


class World:
    def __init__(self, **changes: object) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.config = ws_config(**changes)
        self.pool = ConnectionPool(self.clock, self.config, random.Random(SEED))

    def start(self) -> None:
        self.pool.startService()

    def add(self, **kw: bool) -> FakeConn:
        conn = FakeConn(self.clock, **kw)
        conn.live = self.pool.add(conn)
        return conn

    def run(self, seconds: float, step: float = 0.125) -> None:
        """Let time pass in small steps (so pongs scheduled at 0 s run between sweeps)."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)


@pytest.fixture
def w() -> World:
    return World()


# -- pings --------------------------------------------------------------------------------------


def test_first_ping_comes_at_a_seeded_random_point_of_the_first_interval(w: World) -> None:
    w.start()
    conn = w.add()
    first = T0 + random.Random(SEED).uniform(0, INTERVAL)
    assert live(conn).next_ping == first
    assert live(conn).last_seen == T0
    assert live(conn).ping_outstanding is False
    w.run(INTERVAL + 1)
    assert conn.pings, "no ping within the first interval and a sweep step"
    step = w.pool.sweep_step()
    assert first <= conn.pings[0] < first + step + 1e-9


def test_first_pings_are_spread_over_the_interval() -> None:
    w = World(max_connections=100)
    conns = [w.add() for _ in range(50)]
    firsts = [live(c).next_ping - T0 for c in conns]
    assert all(0 <= f <= INTERVAL for f in firsts)
    assert len(set(firsts)) == 50
    assert max(firsts) - min(firsts) > INTERVAL / 2  # not bunched up


def test_a_ping_every_interval_after_the_first(w: World) -> None:
    w.start()
    conn = w.add(fresh=True)
    w.run(INTERVAL * 5 + 1)
    assert len(conn.pings) == 5
    gaps = [b - a for a, b in zip(conn.pings, conn.pings[1:], strict=False)]
    assert gaps == [INTERVAL] * 4
    assert conn.closes == []


def test_no_pong_by_the_next_ping_closes_1008(w: World) -> None:
    w.start()
    conn = w.add(answer_pings=False)
    w.run(INTERVAL + 1)
    assert len(conn.pings) == 1
    first = conn.pings[0]
    w.run(first + INTERVAL - w.clock.seconds() - 0.125)
    assert conn.closes == []  # not before the next ping is due
    w.run(0.125)
    assert [(code, reason) for _, code, reason in conn.closes] == [
        (1008, "no pong to the last ping")
    ]
    assert conn.closes[0][0] == first + INTERVAL
    assert len(conn.pings) == 1  # no second ping instead


def test_a_pong_keeps_the_connection(w: World) -> None:
    w.start()
    conn = w.add(fresh=True)
    w.run(IDLE * 3)
    assert conn.closes == []
    assert len(conn.pings) == 18


def test_idle_timeout_closes_1008_even_when_pings_are_answered(w: World) -> None:
    w.start()
    conn = w.add()  # pongs come back but the client sends nothing else
    w.run(IDLE - 0.125)
    assert conn.closes == []
    w.run(0.125)
    assert conn.closes
    at, code, reason = conn.closes[0]
    assert (code, reason) == (1008, "idle timeout")
    assert at == T0 + IDLE  # the sweep runs on whole seconds from T0


def test_traffic_resets_the_idle_timeout(w: World) -> None:
    w.start()
    conn = w.add()
    w.run(IDLE - 1)
    live(conn).last_seen = w.clock.seconds()
    w.run(IDLE - 1)
    assert conn.closes == []


def test_removed_connections_are_not_swept(w: World) -> None:
    w.start()
    conn = w.add(answer_pings=False)
    w.pool.remove(live(conn))
    w.run(IDLE + INTERVAL)
    assert (conn.pings, conn.closes) == ([], [])


@pytest.mark.parametrize(
    ("interval", "idle", "step"),
    [
        (30.0, 1800.0, 1.0),  # defaults: capped at 1 s
        (10.0, 60.0, 1.0),
        (2.0, 1800.0, 0.2),  # a tenth of the shortest timeout
        (30.0, 1.5, 0.15),  # ... whichever it is
        (0.1, 1800.0, 0.05),  # floored at 50 ms
        (0.3, 0.2, 0.05),
    ],
)
def test_sweep_step_is_a_tenth_of_the_shortest_timeout_within_bounds(
    interval: float,
    idle: float,
    step: float,
) -> None:
    w = World(health_check_interval=interval, idle_timeout=idle)
    assert w.pool.sweep_step() == pytest.approx(step)
    w.start()
    (call,) = w.clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(T0 + step)  # the sweep runs at that pace
    w.pool.stopService()


# -- limits -------------------------------------------------------------------------------------


def test_limits_count_reserved_handshakes_overall_and_per_user(w: World) -> None:
    pool = w.pool
    assert not pool.is_full()
    assert not pool.user_is_full("alice")
    pool.reserve("alice")
    pool.reserve("alice")
    assert pool.user_is_full("alice")
    assert not pool.user_is_full("bob")
    assert not pool.is_full()
    pool.reserve("bob")
    assert pool.is_full()  # max_connections 3
    assert pool.reserved == 3
    pool.release("alice")
    assert not pool.is_full()
    assert not pool.user_is_full("alice")
    pool.release("alice")
    pool.release("bob")
    assert pool.reserved == 0
    assert dict(pool.per_user) == {}  # no zero counts left behind


# -- draining -------------------------------------------------------------------------------------


def test_drain_closes_every_connection_1001_and_fires_when_all_are_removed(w: World) -> None:
    w.start()
    conns = [w.add() for _ in range(3)]
    fired: list[object] = []
    d = w.pool.drain(5.0)
    d.addCallback(fired.append)
    assert w.pool.draining
    for c in conns:
        assert [(code, reason) for _, code, reason in c.closes] == [(1001, "server shutting down")]
    w.pool.remove(live(conns[0]))
    w.pool.remove(live(conns[1]))
    w.clock.advance(1)
    assert fired == []
    w.pool.remove(live(conns[2]))
    assert fired == [None]
    assert all(c.aborts == 0 for c in conns)
    w.clock.advance(10)  # the timeout was cancelled: nothing else happens
    assert fired == [None]
    assert all(c.aborts == 0 for c in conns)
    w.pool.stopService()
    assert w.clock.getDelayedCalls() == []


def test_drain_aborts_the_rest_after_the_timeout_and_fires(w: World) -> None:
    w.start()
    conns = [w.add() for _ in range(3)]
    fired: list[object] = []
    w.pool.drain(5.0).addCallback(fired.append)
    w.pool.remove(live(conns[0]))
    w.clock.advance(4.9)
    assert fired == []
    assert [c.aborts for c in conns] == [0, 0, 0]
    w.clock.advance(0.1)
    assert fired == [None]
    assert [c.aborts for c in conns] == [0, 1, 1]
    # the aborted ones close later: no second callback, no error
    w.pool.remove(live(conns[1]))
    w.pool.remove(live(conns[2]))
    assert fired == [None]
    assert w.pool.connections == set()
    w.pool.stopService()
    assert w.clock.getDelayedCalls() == []


def test_drain_of_an_empty_pool_fires_at_once(w: World) -> None:
    fired: list[object] = []
    w.pool.drain(5.0).addCallback(fired.append)
    assert fired == [None]
    assert w.pool.draining
    assert w.clock.getDelayedCalls() == []


def test_drain_when_connections_close_at_once(w: World) -> None:
    """A transport that is already gone may call back into remove() from close_with."""

    class Gone(FakeConn):
        def close_with(self, code: int, reason: str) -> None:
            super().close_with(code, reason)
            w.pool.remove(live(self))

    conns = [Gone(w.clock) for _ in range(2)]
    for c in conns:
        c.live = w.pool.add(c)
    fired: list[object] = []
    w.pool.drain(5.0).addCallback(fired.append)
    assert fired == [None]
    assert all(len(c.closes) == 1 for c in conns)
    assert w.clock.getDelayedCalls() == []


def test_stop_service_leaves_no_delayed_calls(w: World) -> None:
    w.start()
    conns = [w.add() for _ in range(3)]
    w.run(INTERVAL * 2)
    assert w.pool.running
    w.pool.stopService()
    assert not w.pool.running
    assert w.clock.getDelayedCalls() == []
    pings = [len(c.pings) for c in conns]
    w.clock.advance(IDLE * 2)  # no sweep any more
    assert [len(c.pings) for c in conns] == pings
    assert all(c.closes == [] for c in conns)
