"""Periodic work: :class:`Periodic`, Twisted's ``TimerService`` on the injected clock.

``TimerService`` builds its ``LoopingCall`` in ``startService`` on ``self.clock`` and its
``stopService`` waits for a call in progress, so a parent service stops only once the loop has
ended. What quoted's loops need beyond it:

* ``now``: the first call at start (``TimerService``'s only choice) or one step later;
* ``counted``: the callable receives how many steps passed since its previous call
  (``LoopingCall.withCount``), so a caller sees ticks the clock skipped;
* a failure ends the loop (as ``LoopingCall`` does: one exception ends it) and is logged with
  ``log.failure`` and a ``log_id`` on the owner's logger, never only at garbage collection and
  never through the legacy ``twisted.python.log.err``.

A service with periodic work adds one :class:`Periodic` per job as a child of a
``MultiService`` (or is one); nothing starts or stops a ``LoopingCall`` by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Periodic"]


class Periodic(TimerService):
    """Calls ``fn`` every ``step`` seconds on ``clock`` while running (module docstring)."""

    log = Logger()
    volatile = ["_looping", "_ended"]  # TimerService's, for the names used here

    def __init__(
        self,
        clock: IReactorTime,
        step: float,
        fn: Callable[..., object],
        *,
        failed: str,
        log_id: str,
        log: Logger | None = None,
        now: bool = False,
        counted: bool = False,
    ) -> None:
        """``failed`` is the message logged (with ``log_id``, on ``log``: the owner's logger)
        when a call raises or its Deferred fails; the loop has then ended. With ``counted``,
        ``fn`` is called with the number of steps since its previous call (1 when none was
        skipped)."""
        super().__init__(step, fn)
        self.clock = clock
        self.now = now
        self.counted = counted
        self._failed_message = failed
        self._log_id = log_id
        if log is not None:
            self.log = log
        self._looping: LoopingCall | None = None
        self._ended: Deferred[Any] | None = None

    def startService(self) -> None:
        # TimerService.startService always makes the first call at once: the same steps, with
        # ``now`` and ``counted`` honoured
        Service.startService(self)
        self._start_loop(self.now)

    def set_step(self, step: float) -> None:
        """Call every ``step`` seconds from now on: a running loop restarts, its next call one
        new step from now (a reload; the loop's call in progress, if any, is not waited for)."""
        self.step = step
        loop = self._looping
        if loop is not None and loop.running:
            loop.stop()
            self._start_loop(False)

    def _start_loop(self, now: bool) -> None:
        fn = self.call[0]
        loop = LoopingCall.withCount(fn) if self.counted else LoopingCall(fn)
        loop.clock = cast(IReactorTime, self.clock)  # TimerService's attribute: may be replaced
        self._looping = loop
        ended: Deferred[Any] = loop.start(self.step, now=now)
        ended.addErrback(self._failed)
        self._ended = ended

    def _failed(self, failure: Failure) -> None:
        self.log.failure(self._failed_message, failure, log_id=self._log_id)

    def stopService(self) -> Deferred[None] | None:
        """Stop the loop. None when it has ended already (no call in progress); else a
        Deferred that fires once the call in progress (a Deferred it returned) has ended."""
        loop, ended = self._looping, self._ended
        if loop is not None and loop.running:
            loop.stop()
        if ended is None or ended.called:
            Service.stopService(self)
            return None
        done: Deferred[None] = Deferred()

        def stopped(_: object) -> None:
            Service.stopService(self)
            done.callback(None)

        ended.addCallback(stopped)
        return done
