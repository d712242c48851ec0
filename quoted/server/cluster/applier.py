"""What every process does with a shared quote read from Redis: apply it if it is newer.

:class:`Applier` keeps, per entry, the :class:`~quoted.server.cluster.codec.Stamp` it last
applied, and is the one way a shared quote reaches the store (a channel message, an HMGET
repair or follow, the HGETALL of a resync, a PUBLISH or RECORD this process ran). A value is
checked when read (quoted.server.cluster.codec.decode, against the local clock), the quote is
built before its stamp is recorded (a quote that cannot be built is logged once with its key
and skipped, never recorded: it cannot outrank the genuine ticks after it), and one bad value
never costs the rest of its batch. Nothing here raises into the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from quoted.server.cluster.codec import Refusals, Shared, Stamp, parse_shared
from quoted.server.store import Entry, Quote, QuoteStore

__all__ = ["Applier"]


class Applier:
    """Applies shared quotes newer than the last applied for their entry (module docstring)."""

    def __init__(
        self,
        store: QuoteStore,
        publish: Callable[[list[Quote]], None],
        now_ms: Callable[[], int],
    ) -> None:
        """``publish`` receives each applied batch (never empty); ``now_ms`` is the local
        clock that bounds a stamp (codec.MAX_AHEAD_MS)."""
        self._store = store
        self._publish = publish
        self.now_ms = now_ms
        self.refusals = Refusals()
        self._applied: dict[Entry, Stamp] = {}
        self.behind: Stamp | None = None  # the newest stamp that made the last batch older

    def parse(
        self, symbols: Sequence[str], payloads: Sequence[str | None], where: str
    ) -> list[tuple[Entry, Shared]]:
        """The well-formed shared quotes of the symbols served here; the others logged once
        with their key (``where`` + symbol)."""
        got = parse_shared(
            self._store.lookup, symbols, payloads, self.now_ms(), self.refusals, where
        )
        return list(got)

    def apply(self, batch: Iterable[tuple[Entry, Shared]]) -> list[Quote]:
        """Apply each shared quote newer than the last applied for its entry; publish the new
        quotes as one batch and return them. :attr:`behind` is the newest applied stamp that
        made one of ``batch`` older (None when none was)."""
        quotes: list[Quote] = []
        applied = self._applied
        self.behind = None
        for e, s in batch:
            prev = applied.get(e)
            if prev is not None and s.stamp <= prev:
                if self.behind is None or prev > self.behind:
                    self.behind = prev
                continue
            try:
                # exact: a simulator price is in cents already (encode), so put agrees with set
                q = e.put(s.price, s.stamp.ms, s.volume, s.base)
            except (ValueError, OverflowError) as err:  # built first: nothing recorded
                self.refusals.refused(e.symbol, " ".join(map(str, s)), str(err))
                continue
            applied[e] = s.stamp
            if q is not None:
                quotes.append(q)
        if quotes:
            self._publish(quotes)
        return quotes

    def forget(self, entries: Iterable[Entry] | None = None) -> None:
        """Forget the stamps of ``entries`` (all when None): whatever Redis says next wins."""
        if entries is None:
            self._applied.clear()
            return
        for e in entries:
            self._applied.pop(e, None)
