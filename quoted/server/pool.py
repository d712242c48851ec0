"""The open connections: limits, liveness (pings, idle timeout) and draining.

One sweep (a :class:`~quoted.server.timers.Periodic` on the injected clock) serves every connection:
no timer per connection, so timers do not grow with clients. Each connection
gets its first ping at a random point within the first interval, so clients
that reconnected together are not pinged together.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from quoted.server.config import WebSocketConfig
from quoted.server.timers import Periodic
from quoted.wire.closecodes import CLOSE_GOING_AWAY, CLOSE_POLICY


class Member(Protocol):
    """What the pool needs of a connection."""

    def send_ping(self) -> None:
        """Send a ping frame (the pong is reported with :meth:`Liveness.ponged`)."""

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""

    def abort(self) -> None:
        """Drop the socket now."""


class Liveness:
    """The pool's record of one member: when it was last heard, its next ping, its slot.

    The connection keeps a reference and reports traffic (:meth:`heard`) and pongs
    (:meth:`ponged`); only the pool reads the rest.
    """

    __slots__ = ("conn", "last_seen", "next_ping", "ping_outstanding", "slot")

    def __init__(self, conn: Member, now: float, next_ping: float) -> None:
        self.conn = conn
        self.last_seen = now
        self.next_ping = next_ping
        self.ping_outstanding = False
        self.slot = 0

    def heard(self, now: float) -> None:
        self.last_seen = now

    def ponged(self) -> None:
        self.ping_outstanding = False


class ConnectionPool(MultiService):
    """Every open WebSocket connection, and the sweep that keeps them honest (a child timer,
    every :meth:`sweep_step` seconds, the first one step after start)."""

    log = Logger()

    def __init__(
        self, clock: IReactorTime, config: WebSocketConfig, rng: random.Random | None = None
    ) -> None:
        super().__init__()
        self._clock = clock
        self._config = config
        self._rng = rng or random.Random()
        self.connections: set[Liveness] = set()
        self.per_user: Counter[str] = Counter()
        # handshakes accepted whose connection has not closed yet
        self.reserved = 0
        self.draining = False
        self._wheel: list[set[Liveness]] = []
        self._new_wheel()
        self._closed: dict[Liveness, Deferred[None]] = {}
        self._sweeper = Periodic(
            clock,
            self._step,
            self.sweep,
            failed="the connection sweep stopped",
            log_id="quoted.pool.sweep_failed",
            log=self.log,
        )
        self._sweeper.setServiceParent(self)

    def _new_wheel(self) -> None:
        self._step = self.sweep_step()
        period = min(self._config.health_check_interval, self._config.idle_timeout)
        self._wheel = [set() for _ in range(max(1, round(period / self._step)))]
        self._origin = self._clock.seconds()
        self._next = 1  # the next sweep

    def reconfigure(self, config: WebSocketConfig) -> None:
        """New limits (a reload): counts kept; with new timeouts, a new wheel and sweep step,
        every connection placed again by its deadlines under the new timeouts."""
        old, self._config = self._config, config
        if (old.health_check_interval, old.idle_timeout) == (
            config.health_check_interval,
            config.idle_timeout,
        ):
            return
        self._new_wheel()
        for live in self.connections:
            live.next_ping = min(live.next_ping, live.last_seen + config.health_check_interval)
            live.slot = 0
            self._place(live)
        self._sweeper.set_step(self._step)

    # -- limits -------------------------------------------------------------

    def is_full(self) -> bool:
        return self.reserved >= self._config.max_connections

    def user_is_full(self, user: str) -> bool:
        return self.per_user[user] >= self._config.user_max_connections

    def reserve(self, user: str) -> None:
        """Count an accepted handshake against the limits until release()."""
        self.reserved += 1
        self.per_user[user] += 1

    def release(self, user: str) -> None:
        self.reserved -= 1
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]

    # -- membership ---------------------------------------------------------

    def add(self, conn: Member) -> Liveness:
        """Start watching ``conn``; its record, to report traffic and pongs to."""
        now = self._clock.seconds()
        live = Liveness(conn, now, now + self._rng.uniform(0, self._config.health_check_interval))
        self.connections.add(live)
        self._place(live)
        return live

    def remove(self, live: Liveness) -> None:
        self.connections.discard(live)
        self._wheel[live.slot].discard(live)
        d = self._closed.pop(live, None)
        if d is not None:
            d.callback(None)

    # -- the sweep ----------------------------------------------------------

    def sweep_step(self) -> float:
        """How often the sweep runs: a tenth of the shortest timeout, 50 ms to 1 s."""
        shortest = min(self._config.health_check_interval, self._config.idle_timeout)
        return max(0.05, min(1.0, shortest / 10))

    def _place(self, live: Liveness) -> None:
        """Put a connection in the wheel slot of the first sweep at or after it is due:
        its next ping, or its idle deadline if that comes first."""
        due = min(live.next_ping, live.last_seen + self._config.idle_timeout)
        slot = math.ceil((due - self._origin) / self._step) % len(self._wheel)
        if slot != live.slot or live not in self._wheel[slot]:
            self._wheel[live.slot].discard(live)
            live.slot = slot
            self._wheel[slot].add(live)

    def sweep(self) -> None:
        """Visit the wheel slots due by now: close idle connections and those that did
        not answer the last ping; send pings.

        Each connection sits in the slot of the sweep at or after its next ping or idle
        deadline (traffic only moves the deadline later: the connection is re-placed when
        visited), so a sweep costs a slot's share of the connections, not all of them.
        """
        now = self._clock.seconds()
        idle = self._config.idle_timeout
        interval = self._config.health_check_interval
        wheel = self._wheel
        # sweep m is due at origin + m * step: make up any the clock skipped
        while self._origin + self._next * self._step <= now:
            slot = wheel[self._next % len(wheel)]
            self._next += 1
            for live in list(slot):
                if now - live.last_seen >= idle:
                    live.conn.close_with(CLOSE_POLICY, "idle timeout")
                    continue
                if now >= live.next_ping:
                    if live.ping_outstanding:
                        live.conn.close_with(CLOSE_POLICY, "no pong to the last ping")
                        continue
                    live.ping_outstanding = True
                    live.next_ping = now + interval
                    live.conn.send_ping()
                self._place(live)

    # -- shutdown -----------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[None]:
        """Refuse new handshakes, close every client with 1001, wait up to timeout.

        Connections still open when the timeout passes are dropped.
        """
        self.draining = True
        if not self.connections:
            return succeed(None)
        waits: list[Deferred[None]] = []
        for live in list(self.connections):
            d: Deferred[None] = Deferred()
            self._closed[live] = d
            waits.append(d)
            live.conn.close_with(CLOSE_GOING_AWAY, "server shutting down")
        self.log.info(
            "closing {count} connections: server shutting down",
            count=len(waits),
            log_id="quoted.pool.draining",
        )
        done: Deferred[None] = Deferred()
        timer: IDelayedCall = self._clock.callLater(timeout, self._drop_rest, done)

        def all_closed(_: object) -> None:
            if timer.active():
                timer.cancel()
                done.callback(None)

        DeferredList(waits).addCallback(all_closed)
        return done

    def _drop_rest(self, done: Deferred[None]) -> None:
        left = list(self._closed)
        if left:
            self.log.warn(
                "dropping {count} connections that did not close in time",
                count=len(left),
                log_id="quoted.pool.dropped",
            )
        for live in left:
            live.conn.abort()
        done.callback(None)
