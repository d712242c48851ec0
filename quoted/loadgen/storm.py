"""quoted-load's reconnect storm (--storm-at): every normal connection closes at one moment
and reconnects at once; how long until each has its new snapshot.

:class:`Storm` keeps the state of each client of the storm (closing, dialing, back or
failed) by its index: the runner closes the connections (a clean close 1000, or with
``drop`` a TCP reset), dials each again the moment its old connection is gone (same index,
so the same token subject and, with --resume, the previous connection's TLS session), and
tells the storm when the new connection has its snapshot (seq 1) or failed. A client whose
close does not complete within ``close_wait`` is aborted, so every one comes back or fails.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from quoted.loadgen.conn import CLOSING, LoadConnection
from quoted.wire.closecodes import CLOSE_NORMAL

__all__ = ["Storm"]

CLOSING_STATE, DIALING = "closing", "dialing"


def percentile(sorted_values: list[float], p: float) -> float | None:
    """The nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


class Storm:
    """One reconnect storm: who is closing, dialing, back or failed, and when."""

    def __init__(self, clock: IReactorTime, drop: bool = False, close_wait: float = 3.0) -> None:
        self.clock, self.drop, self.close_wait = clock, drop, close_wait
        self.at: float | None = None  # when it began (the clock's seconds)
        self.state: dict[int, str] = {}  # index -> closing / dialing, until back or failed
        self.clients = 0
        self.back_s: list[float] = []
        self.failed_by: Counter[str] = Counter()
        self.resumed = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self._stragglers: IDelayedCall | None = None
        self._closing: list[LoadConnection] = []

    @property
    def started(self) -> bool:
        return self.at is not None

    def start(self, conns: list[LoadConnection]) -> None:
        """Close every one of ``conns`` now."""
        self.at = self.clock.seconds()
        self.clients = len(conns)
        self._closing = conns
        for c in conns:
            self.state[c.index] = CLOSING_STATE
        for c in conns:
            if self.drop:
                c.drop()
            else:
                c.close(CLOSE_NORMAL)
        if self.clients:
            self._stragglers = self.clock.callLater(self.close_wait, self._abort_stragglers)
        self._check_done()

    def _abort_stragglers(self) -> None:
        self._stragglers = None
        for c in self._closing:
            if c.state == CLOSING and self.state.get(c.index) == CLOSING_STATE:
                c.abort()
        self._closing = []

    def gone(self, conn: LoadConnection) -> bool:
        """``conn`` closed: whether it is one of the storm's, to dial again now."""
        if self.state.get(conn.index) != CLOSING_STATE:
            return False
        self.state[conn.index] = DIALING
        return True

    def snapshot(self, conn: LoadConnection) -> None:
        """A connection has its snapshot: a storm client back, if it is one."""
        if self.at is None or self.state.get(conn.index) != DIALING:
            return
        del self.state[conn.index]
        self.back_s.append(self.clock.seconds() - self.at)
        self.resumed += conn.resumed
        self._check_done()

    def failed(self, conn: LoadConnection, reason: str) -> None:
        if self.state.get(conn.index) != DIALING:
            return
        del self.state[conn.index]
        self.failed_by[reason] += 1
        self._check_done()

    def _check_done(self) -> None:
        if not self.state and not self.done.called:
            self.stop()
            self.done.callback(None)

    def stop(self) -> None:
        if self._stragglers is not None and self._stragglers.active():
            self._stragglers.cancel()
        self._stragglers = None
        self._closing = []

    def summary(self) -> dict[str, Any]:
        back = sorted(self.back_s)

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 1)

        return {
            "clients": self.clients,
            "back": len(back),
            "failed": sum(self.failed_by.values()),
            "failed_by": dict(self.failed_by),
            "pending": len(self.state),  # neither back nor failed when the run ended
            "all_back_s": round(back[-1], 3) if back and not self.state else None,
            "back_p50_ms": ms(percentile(back, 50)),
            "back_p99_ms": ms(percentile(back, 99)),
            "resumed": self.resumed,
            "drop": self.drop,
            "at": None if self.at is None else round(self.at, 3),
        }
