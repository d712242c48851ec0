"""Tests of quoted.server.feeds.simulator: next_price and OscillatorService, on task.Clock."""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from quoted.server.feeds.simulator import OscillatorService, next_price
from quoted.server.instruments import Instrument, builtin_instruments
from quoted.server.store import Entry, Quote, QuoteStore, round2


class Harness:
    """A store, a clock, the active entries and what was published."""

    def __init__(
        self,
        mode: str = "all",
        percent: float = 1.0,
        instruments: Sequence[Instrument] | None = None,
        interval: float = 1.0,
        seed: int = 42,
    ) -> None:
        self.clock = Clock()
        self.store = QuoteStore(
            builtin_instruments() if instruments is None else instruments, start_ms=0
        )
        self.active: list[Entry] = []
        self.batches: list[list[Quote]] = []
        self.ticks: list[tuple[int, int]] = []
        self.service = OscillatorService(
            self.clock,
            interval,
            percent,
            mode,
            active=lambda: self.active,
            publish=self.batches.append,
            rng=random.Random(seed),
            on_tick=lambda moved, skipped: self.ticks.append((moved, skipped)),
        )


# -- next_price -------------------------------------------------------------------------------


def test_next_price_within_percent() -> None:
    rng = random.Random(1)
    prices = [next_price(200.0, 2.5, rng) for _ in range(5000)]
    assert all(195.0 <= p <= 205.0 for p in prices)
    assert min(prices) < 195.5 and max(prices) > 204.5  # it does spread over the range
    assert next_price(200.0, 0, rng) == 200.0


def test_next_price_never_below_one() -> None:
    rng = random.Random(2)
    prices = [next_price(1.05, 90, rng) for _ in range(2000)]
    assert min(prices) == 1.0
    assert max(prices) > 1.9


def test_next_price_is_deterministic_for_a_seed() -> None:
    a = [next_price(100, 1, random.Random(7)) for _ in range(3)]
    b = [next_price(100, 1, random.Random(7)) for _ in range(3)]
    assert a == b


# -- the service ------------------------------------------------------------------------------


def test_first_tick_after_one_interval() -> None:
    h = Harness(interval=0.5)
    h.active = list(h.store.entries[:3])
    h.service.startService()
    assert h.service.running
    h.clock.advance(0.499)
    assert h.batches == [] and h.ticks == []
    h.clock.advance(0.001)
    assert len(h.batches) == 1
    assert h.ticks == [(3, 0)]
    assert [q.last_updated_ms for q in h.batches[0]] == [500, 500, 500]
    h.service.stopService()


def test_ticks_each_interval() -> None:
    h = Harness(interval=0.25)
    h.active = [h.store.entries[0]]
    h.service.startService()
    for n in range(1, 6):
        h.clock.advance(0.25)
        assert len(h.batches) == n
    assert [b[0].last_updated_ms for b in h.batches] == [250, 500, 750, 1000, 1250]
    assert [b[0].version for b in h.batches] == [2, 3, 4, 5, 6]
    assert h.ticks == [(1, 0)] * 5
    h.service.stopService()


def test_nothing_active_publishes_nothing() -> None:
    h = Harness()
    h.service.startService()
    h.clock.advance(1)
    h.clock.advance(1)
    assert h.batches == []
    assert h.ticks == [(0, 0), (0, 0)]
    assert all(e.latest.version == 1 for e in h.store.entries)
    h.service.stopService()


@pytest.mark.parametrize("mode", ["all", "subset"])
def test_moves_only_active_entries(mode: str) -> None:
    h = Harness(mode=mode, percent=1.0)
    es = h.store.entries
    h.active = list(es[:10])
    h.service.startService()
    for _ in range(100):
        h.clock.advance(1)
    assert len(h.batches) == 100
    for batch in h.batches:
        symbols = [q.entry.symbol for q in batch]
        assert 1 <= len(batch) <= 10
        assert len(set(symbols)) == len(symbols)
        assert set(symbols) <= {e.symbol for e in es[:10]}
        if mode == "all":
            assert len(batch) == 10
    if mode == "subset":
        sizes = [len(b) for b in h.batches]
        assert min(sizes) < 10  # not every symbol on every tick
        assert max(sizes) > 1
        assert {q.entry.symbol for b in h.batches for q in b} == {e.symbol for e in es[:10]}
    for e in es[10:]:
        assert e.latest.version == 1, e.symbol
    for e in es[:10]:
        q = e.latest
        base = e.instrument.base_price
        assert round2(base * 0.99) <= q.current_price <= round2(base * 1.01), e.symbol
        assert q.change == round2(q.current_price - base)
    assert [m for m, _ in h.ticks] == [len(b) for b in h.batches]
    h.service.stopService()


def test_subset_moves_at_least_one() -> None:
    h = Harness(mode="subset")
    h.active = [h.store.entries[0]]
    h.service.startService()
    for _ in range(50):
        h.clock.advance(1)
    # with one active entry, a coin toss alone would leave half the ticks empty
    assert [len(b) for b in h.batches] == [1] * 50
    h.service.stopService()


def test_active_is_asked_each_tick() -> None:
    h = Harness()
    es = h.store.entries
    h.service.startService()
    h.active = [es[0]]
    h.clock.advance(1)
    h.active = [es[1], es[2]]
    h.clock.advance(1)
    assert [[q.entry.symbol for q in b] for b in h.batches] == [["AAPL"], ["MSFT", "GOOGL"]]
    h.service.stopService()


def test_prices_never_below_one() -> None:
    h = Harness(percent=90, instruments=[Instrument("PENNY", "Penny", "STOCK", 1.05, 1)])
    h.active = list(h.store.entries)
    h.service.startService()
    prices = []
    for _ in range(300):
        h.clock.advance(1)
        prices.append(h.store.entries[0].latest.current_price)
    assert min(prices) == 1.0
    assert max(prices) <= 2.0
    h.service.stopService()


def test_unchanged_quotes_are_not_published() -> None:
    h = Harness(percent=0)
    h.active = list(h.store.entries[:2])
    h.clock.advance(1)
    assert h.service.tick() == 2  # a new millisecond: last_updated moves
    assert h.service.tick() == 0  # same price, same millisecond: nothing new
    assert len(h.batches) == 1


def test_skipped_ticks_reported() -> None:
    h = Harness(interval=1.0)
    h.active = [h.store.entries[0]]
    h.service.startService()
    h.clock.advance(1)
    h.clock.advance(5)  # four ticks missed: one call, told about them
    h.clock.advance(1)
    assert h.ticks == [(1, 0), (1, 4), (1, 0)]
    assert len(h.batches) == 3
    h.service.stopService()


def test_stop_service_stops_ticking() -> None:
    h = Harness()
    h.active = [h.store.entries[0]]
    h.service.startService()
    h.clock.advance(1)
    assert h.service.stopService() is None
    assert not h.service.running
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(10)
    assert len(h.batches) == 1
    h.service.stopService()  # twice is harmless


def test_restart() -> None:
    h = Harness()
    h.active = [h.store.entries[0]]
    h.service.startService()
    h.service.stopService()
    h.service.startService()
    h.clock.advance(1)
    assert len(h.batches) == 1
    h.service.stopService()
    assert h.clock.getDelayedCalls() == []


def test_publish_error_is_logged(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.active = [h.store.entries[0]]

    def publish(quotes: list[Quote]) -> None:
        raise RuntimeError("boom")

    h.service._publish = publish
    h.service.startService()
    h.clock.advance(1)
    gc.collect()  # an unhandled failure would be logged now, by the Deferred's __del__
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    event: dict[str, Any] = failures[0]
    assert event["log_failure"].check(RuntimeError)
    assert "oscillator" in event["log_format"]
    assert event["log_namespace"] == "quoted.server.feeds.simulator.OscillatorService"
    # the loop has ended (the failure was handled, not left in a Deferred) and stops cleanly
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(5)
    assert h.service.stopService() is None


def test_same_seed_same_prices() -> None:
    runs = []
    for _ in range(2):
        h = Harness(mode="subset", seed=99)
        h.active = list(h.store.entries)
        h.service.startService()
        for _ in range(10):
            h.clock.advance(1)
        h.service.stopService()
        runs.append([[(q.entry.symbol, q.current_price) for q in b] for b in h.batches])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("mode", "interval", "percent", "match"),
    [
        ("some", 1.0, 1.0, "mode 'some'"),
        ("all", 0.0, 1.0, "interval"),
        ("all", 1.0, -1.0, "oscillation_percent"),
    ],
)
def test_bad_settings(mode: str, interval: float, percent: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OscillatorService(Clock(), interval, percent, mode, list, lambda q: None)
