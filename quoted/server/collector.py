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

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.metrics import Metrics

YOUNG_EVERY = 1.0  # seconds between collections of generations 0 and 1
FULL_EVERY = 60.0  # at least this long between full collections
IDLE_FULL_EVERY = 300.0  # a full collection at least this often, broadcasts or not


class GarbageCollector(Service):
    """Owns the gc module while running; restores automatic collection on stop."""

    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics) -> None:
        self._clock = clock
        self._metrics = metrics
        self._loop: LoopingCall | None = None
        self._started: float | None = None
        self._last_full = 0.0
        self._was_enabled = True
        self.broadcasting = False

    def startService(self) -> None:
        super().startService()
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()  # what start-up built lives as long as the process
        gc.disable()
        gc.callbacks.append(self._timed)
        self._metrics.tracked_objects.set_function(lambda: len(gc.get_objects()))
        self._last_full = self._clock.seconds()
        self._loop = LoopingCall(self.collect_young)
        self._loop.clock = self._clock
        self._loop.start(YOUNG_EVERY, now=False).addErrback(self._failed)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def _failed(self, failure: Failure) -> None:
        self.log.failure(
            "garbage collection loop stopped", failure, log_id="quoted.collector.failed"
        )

    def collect_young(self) -> None:
        """The young generations; the oldest too when no broadcast came for a long while
        (a server whose symbols nobody moves still frees what closed connections left)."""
        if self._clock.seconds() - self._last_full >= IDLE_FULL_EVERY:
            self._last_full = self._clock.seconds()
            gc.collect(2)
        else:
            gc.collect(1)

    def after_broadcast(self) -> None:
        """Called by the hub when a tick's messages are all written."""
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
