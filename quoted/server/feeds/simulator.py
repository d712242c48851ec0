"""The price simulator: a random walk of each subscribed instrument around its base price.

:class:`OscillatorService` ticks every ``interval`` seconds on the injected clock. Each tick it
asks which entries may move (those with subscribers), moves all of them (mode ``all``) or a
random non-empty subset (mode ``subset``, as the original service did) to a price within
``oscillation_percent`` of the base price, and hands the new quotes to ``publish`` as one batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from quoted.server.store import Entry, Quote, apply_prices
from quoted.server.timers import Periodic

__all__ = ["MODES", "MODE_ALL", "MODE_SUBSET", "OscillatorService", "next_price"]

MODE_SUBSET = "subset"
MODE_ALL = "all"
MODES = (MODE_SUBSET, MODE_ALL)

MIN_PRICE = 1.0


class _Seconds(Protocol):
    def seconds(self) -> float: ...


def next_price(base: float, oscillation_percent: float, rng: random.Random) -> float:
    """``base * (1 + u)``, ``u`` uniform in ``[-p/100, +p/100]``, never below 1.00.

    Not rounded: :meth:`Entry.set` rounds to cents.
    """
    f = oscillation_percent / 100
    return max(base * (1 + rng.uniform(-f, f)), MIN_PRICE)


class OscillatorService(Periodic):
    """Moves the prices of the active entries once per ``interval`` and publishes them.

    A :class:`~quoted.server.timers.Periodic`: the first tick one interval after start, each
    told how many ticks were skipped; a tick never waits, so ``stopService`` returns None.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        oscillation_percent: float,
        mode: str,
        active: Callable[[], Sequence[Entry]],
        publish: Callable[[list[Quote]], None],
        rng: random.Random | None = None,
        on_tick: Callable[[int, int], None] | None = None,
        emit: Callable[[list[tuple[Entry, float]], int], int] | None = None,
    ) -> None:
        """``active`` returns the entries that may move now; ``publish`` receives one tick's new
        quotes (never an empty list). ``on_tick(moved, skipped)``, when given, is called every
        tick with how many quotes moved and how many ticks were skipped since the previous one
        (the clock jumped or the reactor was busy), for metrics. ``emit``, when given, receives
        the tick's (entry, new price) pairs and its millisecond instead of the oscillator
        applying them (the Redis bridge publishes them first) and returns how many moved."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if not interval > 0:
            raise ValueError(f"interval {interval!r} must be positive")
        if not oscillation_percent >= 0:
            raise ValueError(f"oscillation_percent {oscillation_percent!r} must not be negative")
        super().__init__(
            clock,
            interval,
            self._ticks,
            failed="price oscillator stopped by an error",
            log_id="quoted.oscillator.failed",
            counted=True,
        )
        # IReactorTime.seconds, typed for mypy with or without the zope plugin
        self._seconds = cast(_Seconds, clock).seconds
        self._interval = interval
        self._fraction = oscillation_percent
        self._all = mode == MODE_ALL
        self._mode = mode
        self._active = active
        self._publish = publish
        self._rng = rng if rng is not None else random.Random()
        self._on_tick = on_tick
        self._emit = emit

    def startService(self) -> None:
        self.log.info(
            "price oscillator started: every {interval}s, mode {mode}",
            interval=self._interval,
            mode=self._mode,
        )
        super().startService()

    def set_tick(self, interval: float, oscillation_percent: float, mode: str) -> None:
        """``[feed] update_interval``, ``oscillation_percent`` and ``mode`` from now on (a
        reload): a new interval restarts the loop, its next tick one interval from now."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self._fraction = oscillation_percent
        self._all = mode == MODE_ALL
        self._mode = mode
        if interval != self._interval:
            self._interval = interval
            self.set_step(interval)

    def _ticks(self, count: int) -> None:
        moved = self.tick()
        if self._on_tick is not None:
            self._on_tick(moved, count - 1)

    def tick(self) -> int:
        """Move prices once, now, publish the new quotes and return how many moved."""
        active = self._active()
        if not active:
            return 0
        rng = self._rng
        if self._all:
            chosen: Sequence[Entry] = active
        else:
            getrandbits = rng.getrandbits
            chosen = [e for e in active if getrandbits(1)]
            if not chosen:
                chosen = [rng.choice(active)]
        at_ms = int(self._seconds() * 1000)
        pct = self._fraction
        if self._emit is not None:
            moves = [(e, next_price(e.base_price, pct, rng)) for e in chosen]
            return self._emit(moves, at_ms)
        prices = [(e, next_price(e.base_price, pct, rng), at_ms) for e in chosen]
        return len(apply_prices(prices, self._publish))
