"""Garbage collection on our schedule, never in the middle of a broadcast.

With 10,000 connections a full (generation 2) collection walks a few hundred
thousand objects: 100 ms or more during which no client is served. CPython
starts one whenever allocations cross its thresholds, which under load is
often in the middle of a tick's fan-out. So quoted turns automatic collection
off, freezes what start-up built (modules, the store: never garbage), and
collects itself: the young generations every second, the oldest after a
broadcast, when the next tick is furthest away. Every collection's pause is
timed through gc.callbacks into ``quoted_gc_pause_seconds``; one that starts
while the hub is broadcasting is counted in
``quoted_gc_during_broadcast_total`` (none should).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from quoted.server.metrics import Metrics
from quoted.server.timers import Periodic

YOUNG_EVERY = 1.0  # seconds between collections of generations 0 and 1
FULL_EVERY = 60.0  # at least this long between full collections
IDLE_FULL_EVERY = 300.0  # a full collection at least this often, broadcasts or not


class GarbageCollector(MultiService):
    """Owns the gc module while running; restores automatic collection on stop.

    The hub tells it when a broadcast starts and ends (it is one of the hub's broadcast
    listeners: :meth:`broadcast_started`, :meth:`broadcast_finished`).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics) -> None:
        super().__init__()
        self._clock = clock
        self._metrics = metrics
        self._started: float | None = None
        self._last_full = 0.0
        self._was_enabled = True
        self.broadcasting = False
        Periodic(
            clock,
            YOUNG_EVERY,
            self.collect_young,
            failed="garbage collection loop stopped",
            log_id="quoted.collector.failed",
            log=self.log,
        ).setServiceParent(self)

    def startService(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()  # what start-up built lives as long as the process
        gc.disable()
        gc.callbacks.append(self._timed)
        self._metrics.tracked_objects.set_function(lambda: len(gc.get_objects()))
        self._last_full = self._clock.seconds()
        super().startService()  # the young collections' timer

    def stopService(self) -> Deferred[object]:
        d: Deferred[object] = super().stopService()  # collect_young never waits: stopped now
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        return d

    def collect_young(self) -> None:
        """The young generations; the oldest too when no broadcast came for a long while
        (a server whose symbols nobody moves still frees what closed connections left)."""
        if self._clock.seconds() - self._last_full >= IDLE_FULL_EVERY:
            self._last_full = self._clock.seconds()
            gc.collect(2)
        else:
            gc.collect(1)

    def broadcast_started(self) -> None:
        """The hub is about to write a tick's messages."""
        self.broadcasting = True

    def broadcast_finished(self) -> None:
        """The hub has written a tick's messages."""
        self.broadcasting = False
        self.after_broadcast()

    def after_broadcast(self) -> None:
        """A full collection when the last one is FULL_EVERY seconds old: right after a
        broadcast, when the next tick is furthest away."""
        now = self._clock.seconds()
        if now - self._last_full >= FULL_EVERY:
            self._last_full = now
            gc.collect(2)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            if self.broadcasting:
                self._metrics.gc_during_broadcast.inc()
        elif self._started is not None:
            self._metrics.gc_pause.labels(generation=str(info["generation"])).observe(
                time.perf_counter() - self._started
            )
            self._started = None
