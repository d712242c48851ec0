"""Which symbols any process uses: the sorted set ``<prefix>interest``, for the leader.

Each process scores the symbols its clients use INTEREST_TTL_MS ahead, once a second
(:meth:`Interest.add`); the leader's simulator moves the members not yet expired
(:meth:`Interest.read`, which also drops the expired ones), so a dead process's interest
fades within INTEREST_TTL_MS. Split from quoted.server.cluster.bridge to keep it short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from quoted.server.cluster.lease import interest_args
from quoted.server.store import Entry, QuoteStore

__all__ = ["INTEREST_TTL_MS", "Interest"]

INTEREST_TTL_MS = 5000


class Interest:
    """One process's writes and the leader's reads of the interest ZSET (module docstring)."""

    def __init__(
        self,
        key: str,
        store: QuoteStore,
        now_ms: Callable[[], int],
        call: Callable[..., Deferred[Any]],
        failed: Callable[[Failure, str], None],
    ) -> None:
        self._key = key
        self._store = store
        self._now_ms = now_ms
        self._call = call
        self._failed = failed
        self.union: list[Entry] = []  # what any process used at the last refresh

    def add(self, entries: Iterable[Entry]) -> None:
        """Score ``entries`` INTEREST_TTL_MS ahead (ZADD GT: never shortening a score)."""
        symbols = sorted(e.symbol for e in entries)
        until = self._now_ms() + INTEREST_TTL_MS
        for args in interest_args(until, symbols):
            self._call("ZADD", self._key, "GT", *args).addErrback(self._failed, "record interest")

    def refresh(self) -> Deferred[None]:
        """Read :attr:`union` again: the entries any process uses now."""
        return self.read().addCallback(lambda es: setattr(self, "union", es))

    def read(self) -> Deferred[list[Entry]]:
        """The entries any process uses now, the expired members dropped."""
        now_ms = self._now_ms()
        trim = self._call("ZREMRANGEBYSCORE", self._key, "-inf", f"({now_ms}")
        trim.addErrback(self._failed, "trim interest")
        d = self._call("ZRANGEBYSCORE", self._key, now_ms, "+inf")
        lookup = self._store.lookup
        return d.addCallback(lambda ms: [e for e in map(lookup, ms) if e is not None])
