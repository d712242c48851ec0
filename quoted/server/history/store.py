"""The history of every symbol in this process: its last ticks and OHLC bars, bounded.

:meth:`HistoryStore.record` is handed every batch of quotes the store applies, from any
source (app.build puts it in front of the hub's publish, which sees every batch, subscribed
symbols or not), and folds each quote into its symbol's rings (quoted.server.history.bars):
one tick ring and one bar ring per interval, so a request reads what is there and never walks
the ticks. A symbol's rings are allocated on its first tick, whole: memory per symbol is
:meth:`Bounds.bytes_per_symbol`, whatever the tick rate.

What is kept is exactly what the WebSocket sent: each quote's ``current_price`` and
``last_updated`` (unix ms), and its ``volume``. A bar's ``volume`` is that of its last tick
(a quote's volume is the instrument's or the feed's published figure, usually cumulative,
never a per-tick size: summing it would be meaningless). A tick earlier than its symbol's
previous one is refused (the sink refuses such an item as ``stale``; this also guards bars,
which need time to go forward); one at the same millisecond is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from quoted.server.history.bars import NO_VOLUME, Layout
from quoted.server.store import Quote

if TYPE_CHECKING:
    from quoted.server.config import HistoryConfig

__all__ = ["INTERVALS", "TICK", "Bounds", "HistoryStore", "Row", "SymbolHistory"]

TICK = "tick"
# the bar intervals, their width in ms, in the order of the answer's accepted list
INTERVALS: Mapping[str, int] = MappingProxyType(
    {"1s": 1000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
)
ACCEPTED = (TICK, *INTERVALS)

Row = tuple[float, ...]
"""A tick ``(time_ms, price, volume)`` or a bar ``(start_ms, open, high, low, close, volume)``,
volume NaN when unknown."""

# what one symbol costs besides its two buffers: the SymbolHistory object, its two array
# objects and its slot in the store's dict (measured by bench/history_memory.py, CPython 3.11)
OVERHEAD_PER_SYMBOL = 800


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much is kept per symbol: ``ticks``, and bars per interval."""

    ticks: int
    bars: Mapping[str, int]

    @classmethod
    def of(cls, config: HistoryConfig) -> Bounds:
        return cls(
            config.ticks,
            MappingProxyType(
                {
                    "1s": config.bars_1s,
                    "1m": config.bars_1m,
                    "5m": config.bars_5m,
                    "1h": config.bars_1h,
                }
            ),
        )

    def kept(self, interval: str) -> int:
        """How many entries of ``interval`` are kept (``tick`` or a bar interval)."""
        return self.ticks if interval == TICK else self.bars[interval]

    def layout(self) -> Layout:
        return Layout(self.ticks, [(span, self.bars[name]) for name, span in INTERVALS.items()])

    def bytes_per_symbol(self) -> int:
        """The bytes one symbol with history holds: its buffers plus the objects around them."""
        return self.layout().nbytes() + OVERHEAD_PER_SYMBOL


class SymbolHistory:
    """One symbol's rings (quoted.server.history.bars.Layout says where each lies)."""

    __slots__ = ("data", "state")

    def __init__(self, layout: Layout) -> None:
        self.data = layout.new_data()
        self.state = layout.new_state()

    def add(self, layout: Layout, ms: float, price: float, volume: float) -> bool:
        """Append a tick and fold it into every bar; False (nothing kept) when it is earlier
        than the previous tick."""
        data, state = self.data, self.state
        if ms < data[layout.last_at]:
            return False
        data[layout.last_at] = ms
        layout.ticks.add_tick(data, state, ms, price, volume)
        for ring in layout.bars:
            ring.add_bar(data, state, ms, price, volume)
        return True

    def rows(self, layout: Layout, interval: str, limit: int, since_ms: float | None) -> list[Row]:
        """The newest ``limit`` entries later than ``since_ms``, oldest first."""
        ring = layout.ticks if interval == TICK else layout.bars[_BAR_INDEX[interval]]
        return ring.records(self.data, self.state, limit, since_ms)


_BAR_INDEX = {name: i for i, name in enumerate(INTERVALS)}


class HistoryStore:
    """Every symbol's :class:`SymbolHistory`, created on its first tick."""

    __slots__ = ("_layout", "_symbols", "bounds", "refused")

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._layout = bounds.layout()
        self._symbols: dict[str, SymbolHistory] = {}
        self.refused = 0  # ticks refused as earlier than their symbol's last

    def record(self, quotes: Iterable[Quote]) -> None:
        """Keep every quote of an applied batch (the hook in front of the hub)."""
        symbols, layout = self._symbols, self._layout
        for q in quotes:
            e = q.entry
            h = symbols.get(e.symbol)
            if h is None:
                h = symbols[e.symbol] = SymbolHistory(layout)
            if not h.add(layout, q.last_updated_ms, q.current_price, e.volume):
                self.refused += 1

    def add(self, symbol: str, ms: int, price: float, volume: float | None = None) -> bool:
        """Keep one tick (tests, and loading from elsewhere); False when refused as earlier
        than the symbol's last."""
        h = self._symbols.get(symbol)
        if h is None:
            h = self._symbols[symbol] = SymbolHistory(self._layout)
        ok = h.add(self._layout, ms, price, NO_VOLUME if volume is None else volume)
        if not ok:
            self.refused += 1
        return ok

    def rows(self, symbol: str, interval: str, limit: int, since_ms: float | None) -> list[Row]:
        """The newest ``limit`` entries of ``interval`` later than ``since_ms``, oldest first
        (none for a symbol without ticks)."""
        h = self._symbols.get(symbol)
        return [] if h is None else h.rows(self._layout, interval, limit, since_ms)

    def __len__(self) -> int:
        """How many symbols have history."""
        return len(self._symbols)

    @property
    def nbytes(self) -> int:
        """The bytes of every symbol's buffers (without the objects around them)."""
        return len(self._symbols) * self._layout.nbytes()
