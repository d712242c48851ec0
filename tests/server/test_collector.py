"""quoted.server.collector: garbage collection on quoted's schedule, with a Clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from quoted.server.collector import FULL_EVERY, IDLE_FULL_EVERY, YOUNG_EVERY, GarbageCollector
from quoted.server.metrics import Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


@pytest.fixture
def running() -> Iterator[tuple[GarbageCollector, Clock, Metrics]]:
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    collector = GarbageCollector(clock, metrics)
    was = gc.isenabled()
    collector.startService()
    yield collector, clock, metrics
    if collector.running:
        collector.stopService()
    assert gc.isenabled() == was
    assert clock.getDelayedCalls() == []


def test_automatic_collection_is_off_while_running(
    running: tuple[GarbageCollector, Clock, Metrics],
) -> None:
    collector, _, _ = running
    assert not gc.isenabled()
    assert gc.get_freeze_count() > 0  # what start-up built is frozen
    collector.stopService()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_young_generations_every_second(running: tuple[GarbageCollector, Clock, Metrics]) -> None:
    _, clock, metrics = running
    before = value(metrics, "quoted_gc_pause_seconds_count", generation="1")
    clock.advance(YOUNG_EVERY)
    clock.advance(YOUNG_EVERY)
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="1") == before + 2
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="2") == 0


def test_full_collection_only_after_a_broadcast_and_at_most_once_a_minute(
    running: tuple[GarbageCollector, Clock, Metrics],
) -> None:
    collector, clock, metrics = running
    collector.after_broadcast()
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="2") == 0  # too soon
    clock.advance(FULL_EVERY)
    collector.after_broadcast()
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="2") == 1
    collector.after_broadcast()
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="2") == 1


def test_a_collection_during_a_broadcast_is_counted(
    running: tuple[GarbageCollector, Clock, Metrics],
) -> None:
    collector, _, metrics = running
    collector.broadcasting = True
    gc.collect(0)
    collector.broadcasting = False
    gc.collect(0)
    assert value(metrics, "quoted_gc_during_broadcast_total") == 1


def test_full_collection_without_broadcasts_every_five_minutes(
    running: tuple[GarbageCollector, Clock, Metrics],
) -> None:
    _, clock, metrics = running
    for _ in range(int(IDLE_FULL_EVERY / YOUNG_EVERY)):
        clock.advance(YOUNG_EVERY)
    assert value(metrics, "quoted_gc_pause_seconds_count", generation="2") == 1


def test_build_manages_the_garbage_collector_unless_told_not_to() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from quoted.server.app import build
    from tests.harness import make_config

    def collectors(manage_gc: bool) -> list[object]:
        service = build(make_config(), MemoryReactorClock(), manage_gc=manage_gc)
        return [s for s in service if isinstance(s, GarbageCollector)]

    assert len(collectors(True)) == 1
    assert collectors(False) == []
