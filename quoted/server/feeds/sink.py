"""The sink: the one validated path from any feed into the store and out to the subscribers.

The publish API, the replay and Redis Stream sources and every feed plugin hand their items
to :meth:`FeedSink.publish`. Per item, not per request: each is checked
(quoted.server.feeds.items: the same checks and codes for every source), a bad one is
refused with its code and the good ones are applied. Several items for one symbol collapse
to the last (conflation); an item older than what its symbol already shows is ``stale``
(feeds retry and reorder; an old tick never overwrites a newer one). The accepted quotes go
to the hub in one batch (one broadcast, one message per connection).

Alone, the sink decides the order itself. With Redis (``shared``), the order and the quote's
version are decided atomically in Redis for every instance
(quoted.server.cluster.bridge.RedisBridge.record), which applies and broadcasts the
accepted quotes before its Deferred fires; when Redis cannot be reached the whole call
fails with :class:`BrokerUnavailable` and nothing is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from quoted.server.feeds.items import STALE, ItemError, Tick, parse_item
from quoted.server.metrics import Metrics
from quoted.server.store import Entry, Quote, QuoteStore, format_time_ms

__all__ = [
    "BrokerUnavailable",
    "Cursor",
    "CursorMoved",
    "FeedSink",
    "PublishResult",
    "Rejected",
    "SharedOrder",
]

ACCEPTED = "accepted"


class BrokerUnavailable(Exception):
    """Redis cannot be reached: nothing of the call was applied (the publish API answers
    503 ``broker_unavailable`` with Retry-After)."""


class CursorMoved(Exception):
    """The shared cursor was not where the caller last saw it (another instance read the
    stream meanwhile): nothing of the call was applied; read the cursor again."""


Cursor = tuple[str, str]
"""A stream source's position: (the entry id it read from, the last entry id of the call)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """One refused item: its position in the request, its symbol as sent, a code, why."""

    index: int
    symbol: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What became of one call's items."""

    accepted: int
    rejected: tuple[Rejected, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The publish API's 200 body."""
        return {
            "accepted": self.accepted,
            "rejected": [
                {"index": r.index, "symbol": r.symbol, "code": r.code, "message": r.message}
                for r in self.rejected
            ],
        }


Batch = list[tuple[Entry, Tick]]
"""One tick per entry, in the order of their first item in the call."""


class SharedOrder(Protocol):
    """Where the order is decided when instances share a market (the Redis bridge)."""

    def record(self, batch: Batch, cursor: Cursor | None) -> Deferred[list[bool]]:
        """Record each tick unless it is older than its symbol's shared quote; True for each
        recorded, False for each stale, in ``batch``'s order. The recorded ones are applied
        and broadcast (one batch) before the Deferred fires. ``cursor`` (a Redis Stream
        source's (expected, new) entry ids), when given, moves the shared cursor from
        expected to new atomically with the ticks, or fails with :class:`CursorMoved` and
        records nothing if it is not at expected. Fails with :class:`BrokerUnavailable`
        when nothing could be recorded."""
        ...


class FeedSink:
    """Checks, conflates, orders and applies published items (module docstring)."""

    def __init__(
        self,
        store: QuoteStore,
        publish: Callable[[list[Quote]], None],
        clock: IReactorTime,
        metrics: Metrics,
        *,
        future_ms: int,
        shared: SharedOrder | None = None,
    ) -> None:
        """``publish`` is the hub's (one call per accepted batch); ``future_ms`` how far
        ahead of this clock an item's time may be (``[auth] leeway``); ``shared`` decides
        the order in Redis instead of here."""
        self._store = store
        self._publish = publish
        self._clock = clock
        self._metrics = metrics
        self.future_ms = future_ms
        self._shared = shared
        # the entries a feed has set since start: the order check starts with the first
        # (the quote every instrument starts with is no tick of a feed)
        self._fed: set[Entry] = set()

    def publish(
        self,
        items: Sequence[object],
        *,
        symbols: frozenset[str] | None = None,
        cursor: Cursor | None = None,
    ) -> Deferred[PublishResult]:
        """Check every item, apply the good ones and say what became of each.

        ``symbols``, when given, is what the publisher may publish (a token's ``symbols``
        claim): items outside it are ``forbidden_symbol``. ``cursor`` is passed to the
        shared order (:meth:`SharedOrder.record`; alone the position is the caller's to
        keep), even when no item is good, so a stream moves past its bad entries.
        """
        received = self._clock.seconds()
        receipt_ms = int(received * 1000)
        lookup = self._store.lookup
        rejected: list[Rejected] = []
        latest: dict[Entry, Tick] = {}
        indexes: dict[Entry, list[int]] = {}

        def known(symbol: str) -> bool:
            return lookup(symbol) is not None

        def entitled(symbol: str) -> bool:
            return symbols is None or symbol in symbols

        for index, item in enumerate(items):
            try:
                tick = parse_item(
                    item,
                    receipt_ms=receipt_ms,
                    future_ms=self.future_ms,
                    known=known,
                    entitled=entitled,
                )
            except ItemError as e:
                rejected.append(Rejected(index, _symbol_of(item), e.code, e.message))
                continue
            entry = lookup(tick.symbol)
            assert entry is not None  # known() said so
            before = latest.get(entry)
            if before is not None and tick.at_ms < before.at_ms:
                rejected.append(
                    _stale(index, tick.symbol, f"an earlier item ({format_time_ms(before.at_ms)})")
                )
                continue
            if before is not None:  # as if applied in turn: an earlier volume or base stays
                tick = tick._replace(
                    volume=before.volume if tick.volume is None else tick.volume,
                    reference_price=(
                        before.reference_price
                        if tick.reference_price is None
                        else tick.reference_price
                    ),
                )
            latest[entry] = tick
            indexes.setdefault(entry, []).append(index)
        batch: Batch = list(latest.items())
        if self._shared is None or (not batch and cursor is None):
            recorded = [self._in_order(e, t) for e, t in batch]
            self._apply([bt for bt, ok in zip(batch, recorded, strict=True) if ok])
            return succeed(self._result(batch, recorded, indexes, rejected, received))
        d = self._shared.record(batch, cursor)
        return d.addCallback(
            lambda recorded: self._result(batch, recorded, indexes, rejected, received)
        )

    def _in_order(self, entry: Entry, tick: Tick) -> bool:
        return entry not in self._fed or tick.at_ms >= entry.latest.last_updated_ms

    def _apply(self, batch: Batch) -> None:
        quotes: list[Quote] = []
        for e, t in batch:
            self._fed.add(e)
            q = e.put(t.price, t.at_ms, t.volume, t.reference_price)
            if q is not None:
                quotes.append(q)
        if quotes:
            self._publish(quotes)

    def _result(
        self,
        batch: Batch,
        recorded: Sequence[bool],
        indexes: dict[Entry, list[int]],
        rejected: list[Rejected],
        received: float,
    ) -> PublishResult:
        accepted = 0
        for (entry, tick), ok in zip(batch, recorded, strict=True):
            if ok:
                accepted += len(indexes[entry])
                continue
            # the last item of the symbol is older than its quote, and so is every earlier one
            # (each was no newer than the next)
            rejected.extend(
                _stale(i, tick.symbol, "the symbol's current quote") for i in indexes[entry]
            )
        rejected.sort(key=lambda r: r.index)
        metrics = self._metrics
        if accepted:
            metrics.publish_items.labels(result=ACCEPTED).inc(accepted)
            metrics.publish_latency.observe(max(0.0, self._clock.seconds() - received))
        for r in rejected:
            metrics.publish_items.labels(result=r.code).inc()
        return PublishResult(accepted, tuple(rejected))


def _stale(index: int, symbol: str, newer: str) -> Rejected:
    return Rejected(index, symbol, STALE, f"the item's time is older than {newer}")


def _symbol_of(item: object) -> str:
    """The symbol an item names, as sent (cut to 64 characters), or "" when it names none."""
    symbol = item.get("symbol") if isinstance(item, dict) else None
    return symbol[:64] if isinstance(symbol, str) else ""
