"""Fixed-capacity rings of ticks and OHLC bars, all of one symbol in one array of doubles.

A symbol's history is two arrays: ``data``, every ring's records back to back, and
``state``, each ring's head and count. Both are allocated whole on the symbol's first tick
and never grow, so the memory of a symbol is known in advance and the same for every symbol
with history (no Python object per tick: one float object alone would be 24 bytes; no object
per ring either: a :class:`Ring` says where a ring lies in the arrays and is shared by every
symbol). A tick costs a few array stores per ring.

- a tick is ``(time_ms, price, volume)``;
- a bar is ``(start_ms, open, high, low, close, volume)``, ``start_ms`` aligned to its span in
  UTC (a multiple of the span since the epoch: unix time has no leap seconds).

Times in unix milliseconds are exact in a double (below 2**53), and so are the prices, which
are the very floats the store sent; an unknown volume is NaN (``null`` in JSON).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence

__all__ = ["BAR_WIDTH", "NO_VOLUME", "TICK_WIDTH", "Layout", "Ring"]

TICK_WIDTH = 3
BAR_WIDTH = 6
NO_VOLUME = math.nan


class Ring:
    """Where one ring lies: ``capacity`` records of ``width`` doubles from ``offset`` in a
    symbol's ``data``; its head (the slot of the next record) and count at ``2 * index`` and
    ``2 * index + 1`` in its ``state``. ``span_ms`` is a bar ring's interval (0: ticks)."""

    __slots__ = ("capacity", "index", "offset", "span_ms", "width")

    def __init__(self, index: int, offset: int, width: int, capacity: int, span_ms: int) -> None:
        self.index = index
        self.offset = offset
        self.width = width
        self.capacity = capacity
        self.span_ms = span_ms

    def add_tick(
        self, data: array[float], state: array[int], ms: float, price: float, volume: float
    ) -> None:
        """Append a tick, dropping the oldest when full."""
        i = 2 * self.index
        head = state[i]
        at = self.offset + head * 3
        data[at] = ms
        data[at + 1] = price
        data[at + 2] = volume
        state[i] = (head + 1) % self.capacity
        if state[i + 1] < self.capacity:
            state[i + 1] += 1

    def add_bar(
        self, data: array[float], state: array[int], ms: float, price: float, volume: float
    ) -> None:
        """Fold a tick (no earlier than the previous one) into the open bar, or open the next
        bar when the tick is past it (an interval without ticks has no bar: a gap, as any
        market's bars have), dropping the oldest bar when full."""
        start = ms - ms % self.span_ms
        i = 2 * self.index
        head = state[i]
        cap = self.capacity
        if state[i + 1]:
            at = self.offset + ((head - 1) % cap) * 6
            if data[at] == start:
                data[at + 2] = max(data[at + 2], price)
                data[at + 3] = min(data[at + 3], price)
                data[at + 4] = price
                data[at + 5] = volume
                return
        at = self.offset + head * 6
        data[at] = start
        data[at + 1] = data[at + 2] = data[at + 3] = data[at + 4] = price
        data[at + 5] = volume
        state[i] = (head + 1) % cap
        if state[i + 1] < cap:
            state[i + 1] += 1

    def records(
        self,
        data: array[float],
        state: array[int],
        newest: int | None = None,
        after: float | None = None,
    ) -> list[tuple[float, ...]]:
        """The records oldest first: at most the ``newest`` last ones, and of those only the
        ones whose time (first value) is later than ``after``."""
        out: list[tuple[float, ...]] = []
        for rec in self._newest_first(data, state):
            if after is not None and rec[0] <= after:
                break  # times only grow: every older record is older still
            out.append(rec)
            if newest is not None and len(out) >= newest:
                break
        out.reverse()
        return out

    def _newest_first(self, data: array[float], state: array[int]) -> Iterator[tuple[float, ...]]:
        w, cap, base = self.width, self.capacity, self.offset
        slot = state[2 * self.index]
        for _ in range(state[2 * self.index + 1]):
            slot = (slot - 1) % cap
            at = base + slot * w
            yield tuple(data[at : at + w])


class Layout:
    """The rings of every symbol: a tick ring of ``ticks`` records, then one bar ring per
    ``(span_ms, capacity)`` of ``bars``; after them one double, the last tick's time."""

    __slots__ = ("bars", "doubles", "last_at", "ticks")

    def __init__(self, ticks: int, bars: Sequence[tuple[int, int]]) -> None:
        self.ticks = Ring(0, 0, TICK_WIDTH, ticks, 0)
        offset = ticks * TICK_WIDTH
        rings = []
        for n, (span_ms, capacity) in enumerate(bars, start=1):
            rings.append(Ring(n, offset, BAR_WIDTH, capacity, span_ms))
            offset += capacity * BAR_WIDTH
        self.bars = tuple(rings)
        self.last_at = offset
        self.doubles = offset + 1

    def new_data(self) -> array[float]:
        """A symbol's records, empty; its last tick's time before any (-1)."""
        data = array("d", bytes(8 * self.doubles))
        data[self.last_at] = -1.0
        return data

    def new_state(self) -> array[int]:
        """A symbol's heads and counts, all 0."""
        return array("q", bytes(16 * (1 + len(self.bars))))

    def nbytes(self) -> int:
        """The bytes of one symbol's two buffers."""
        return 8 * self.doubles + 16 * (1 + len(self.bars))
