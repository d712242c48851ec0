"""quoted.server.timers.Periodic: TimerService with ``now``, ``counted`` and logged failures."""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger

from quoted.server.timers import Periodic


def periodic(clock: Clock, fn: Any, **kw: Any) -> Periodic:
    return Periodic(clock, 1.0, fn, failed="the test loop stopped", log_id="test.failed", **kw)


def test_is_a_timer_service_on_the_given_clock() -> None:
    clock = Clock()
    p = periodic(clock, lambda: None)
    assert isinstance(p, TimerService)
    assert p.clock is clock and p.step == 1.0


def test_first_call_one_step_after_start_by_default() -> None:
    clock = Clock()
    calls: list[float] = []
    p = periodic(clock, lambda: calls.append(clock.seconds()))
    p.startService()
    assert calls == []
    clock.advance(0.999)
    assert calls == []
    clock.advance(0.001)
    clock.advance(1)
    assert calls == [1.0, 2.0]
    assert p.stopService() is None
    assert not p.running
    assert clock.getDelayedCalls() == []


def test_now_calls_at_once() -> None:
    clock = Clock()
    calls: list[float] = []
    p = periodic(clock, lambda: calls.append(clock.seconds()), now=True)
    p.startService()
    assert calls == [0.0]
    clock.advance(1)
    assert calls == [0.0, 1.0]
    p.stopService()
    assert clock.getDelayedCalls() == []


def test_counted_tells_how_many_steps_passed() -> None:
    clock = Clock()
    counts: list[int] = []
    p = periodic(clock, counts.append, counted=True)
    p.startService()
    clock.advance(1)
    clock.advance(4)
    clock.advance(1)
    assert counts == [1, 4, 1]
    p.stopService()


def test_a_failure_is_logged_with_the_log_id_on_the_owners_logger_and_ends_the_loop(
    log_events: list[LogEvent],
) -> None:
    class Owner:
        log = Logger()

    owner = Owner()
    clock = Clock()

    def boom() -> None:
        raise RuntimeError("boom")

    p = periodic(clock, boom, log=owner.log)
    p.startService()
    clock.advance(1)
    gc.collect()  # an unhandled failure would be logged now, by the Deferred's __del__
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    event: dict[str, Any] = failures[0]
    assert event["log_failure"].check(RuntimeError)
    assert event["log_format"] == "the test loop stopped"
    assert event["log_id"] == "test.failed"
    assert event["log_namespace"] == f"{__name__}.Owner"
    assert clock.getDelayedCalls() == []
    assert p.stopService() is None
    assert not p.running


def test_stop_waits_for_the_call_in_progress() -> None:
    clock = Clock()
    pending: list[Deferred[None]] = []

    def slow() -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pending.append(d)
        return d

    p = periodic(clock, slow, now=True)
    p.startService()
    assert len(pending) == 1
    stopped = p.stopService()
    assert stopped is not None and not stopped.called
    assert p.running  # as TimerService: running until the call in progress has ended
    pending[0].callback(None)
    assert stopped.called and not p.running
    assert clock.getDelayedCalls() == []


def test_stop_before_start_restart_and_twice() -> None:
    clock = Clock()
    calls: list[int] = []
    p = periodic(clock, lambda: calls.append(1))
    assert p.stopService() is None
    p.startService()
    p.stopService()
    p.startService()
    clock.advance(1)
    assert calls == [1]
    p.stopService()
    p.stopService()
    assert clock.getDelayedCalls() == []


def test_as_the_child_of_a_multiservice() -> None:
    clock = Clock()
    calls: list[float] = []
    parent = MultiService()
    periodic(clock, lambda: calls.append(clock.seconds())).setServiceParent(parent)
    parent.startService()
    clock.advance(1)
    clock.advance(1)
    assert calls == [1.0, 2.0]
    fired: list[object] = []
    parent.stopService().addCallback(fired.append)
    assert fired and clock.getDelayedCalls() == []
