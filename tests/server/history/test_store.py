"""The history store on a fake clock: bar boundaries, gaps, order, bounds, since and limit."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from quoted.server.feeds.sink import FeedSink
from quoted.server.history import Bounds, HistoryStore
from quoted.server.history.store import INTERVALS
from quoted.server.instruments import Instrument
from quoted.server.metrics import Metrics
from quoted.server.store import Quote, QuoteStore, apply_prices, format_time_ms

T0 = 1_796_198_400_000  # 2026-12-02T08:00:00.000Z: a multiple of every interval
BOUNDS = Bounds(5, {"1s": 4, "1m": 3, "5m": 3, "1h": 2})


def store_of(bounds: Bounds = BOUNDS) -> HistoryStore:
    return HistoryStore(bounds)


def bars(h: HistoryStore, interval: str, limit: int = 100, since: int | None = None) -> list[Any]:
    return [tuple(r) for r in h.rows("AAPL", interval, limit, since)]


def test_t0_is_aligned() -> None:
    assert format_time_ms(T0) == "2026-12-02T08:00:00.000Z"
    assert all(T0 % span == 0 for span in INTERVALS.values())


def test_a_tick_exactly_on_a_boundary_opens_the_next_bar() -> None:
    h = store_of()
    h.add("AAPL", T0 + 999, 10.0, 1)
    h.add("AAPL", T0 + 1000, 11.0, 2)  # exactly on the 1 s boundary: the next bar
    assert bars(h, "1s") == [(T0, 10, 10, 10, 10, 1), (T0 + 1000, 11, 11, 11, 11, 2)]
    assert bars(h, "1m") == [(T0, 10, 11, 10, 11, 2)]


def test_ohlc_within_a_bar() -> None:
    h = store_of()
    for i, p in enumerate([10.0, 12.5, 9.25, 11.0]):
        h.add("AAPL", T0 + 100 * i, p, 100 + i)
    assert bars(h, "1s") == [(T0, 10, 12.5, 9.25, 11, 103)]  # volume: the last tick's


def test_gaps_without_ticks_have_no_bar() -> None:
    h = store_of()
    h.add("AAPL", T0, 10.0, 1)
    h.add("AAPL", T0 + 3500, 11.0, 1)  # seconds 1 and 2 had no tick
    assert [b[0] for b in bars(h, "1s")] == [T0, T0 + 3000]


def test_out_of_order_ticks_are_refused_equal_times_kept() -> None:
    h = store_of()
    assert h.add("AAPL", T0 + 2000, 10.0, 1)
    assert not h.add("AAPL", T0 + 1999, 99.0, 1)
    assert h.add("AAPL", T0 + 2000, 10.5, 1)  # the same millisecond, a new price
    assert h.refused == 1
    assert [t[1] for t in bars(h, "tick")] == [10.0, 10.5]
    assert bars(h, "1s") == [(T0 + 2000, 10, 10.5, 10, 10.5, 1)]


def test_the_ring_drops_the_oldest() -> None:
    h = store_of()
    for i in range(8):
        h.add("AAPL", T0 + 1000 * i, 100.0 + i, i)
    assert [t[1] for t in bars(h, "tick")] == [103, 104, 105, 106, 107]  # 5 kept
    assert [b[0] for b in bars(h, "1s")] == [T0 + 4000 + 1000 * i for i in range(4)]
    assert bars(h, "1m") == [(T0, 100, 107, 100, 107, 7)]


def test_the_oldest_bar_drops_too() -> None:
    h = store_of()
    for m in range(5):
        h.add("AAPL", T0 + 60_000 * m, 1.0 + m, None)
    assert [b[0] for b in bars(h, "1m")] == [T0 + 60_000 * m for m in (2, 3, 4)]
    assert all(math.isnan(b[5]) for b in bars(h, "1m"))  # no volume known


def test_limit_keeps_the_newest_and_since_only_newer() -> None:
    h = store_of()
    for i in range(5):
        h.add("AAPL", T0 + 1000 * i, 100.0 + i, 1)
    assert [t[1] for t in bars(h, "tick", limit=2)] == [103, 104]
    assert [t[1] for t in bars(h, "tick", since=T0 + 2000)] == [103, 104]  # strictly later
    assert [t[1] for t in bars(h, "tick", limit=1, since=T0 + 2000)] == [104]
    assert bars(h, "tick", since=T0 + 4000) == []
    assert [b[0] for b in bars(h, "1s", since=T0 + 2500)] == [T0 + 3000, T0 + 4000]


def test_an_unknown_symbol_has_no_rows() -> None:
    assert store_of().rows("NOPE", "1m", 10, None) == []


def test_memory_is_fixed_per_symbol() -> None:
    h = store_of()
    h.add("AAPL", T0, 1.0, 1)
    one = h.nbytes
    for i in range(1000):
        h.add("AAPL", T0 + i, 1.0, 1)
    assert h.nbytes == one == 8 * (5 * 3 + (4 + 3 + 3 + 2) * 6 + 1) + 16 * 5
    defaults = Bounds(50, {"1s": 50, "1m": 60, "5m": 24, "1h": 12})
    assert defaults.bytes_per_symbol() * 5000 < 50 * 1000**2


# -- fed like quoted feeds it, on a Clock --------------------------------------------------


def market(
    clock: Clock,
) -> tuple[QuoteStore, HistoryStore, list[list[Quote]], Callable[[list[Quote]], None]]:
    store = QuoteStore(
        [Instrument("AAPL", "Apple", "STOCK", 100.0, 5000, 0)], int(clock.seconds() * 1000)
    )
    history = store_of()
    sent: list[list[Quote]] = []

    def deliver(quotes: list[Quote]) -> None:  # as app.build's
        history.record(quotes)
        sent.append(quotes)

    return store, history, sent, deliver


def test_simulated_prices_are_kept_as_the_quotes_say() -> None:
    clock = Clock()
    clock.advance(T0 / 1000)
    store, history, sent, deliver = market(clock)
    entry = store.entries[0]
    for price in [101.234, 101.5, 99.999, 100.0]:
        clock.advance(0.4)
        apply_prices([(entry, price, int(clock.seconds() * 1000))], deliver)
    ticks = history.rows("AAPL", "tick", 100, None)
    quotes = [q for batch in sent for q in batch]
    assert [(t[0], t[1], t[2]) for t in ticks] == [
        (q.last_updated_ms, q.current_price, 5000) for q in quotes
    ]
    assert [t[1] for t in ticks] == [101.23, 101.5, 100.0, 100.0]  # rounded as the store does
    assert clock.getDelayedCalls() == []


def test_the_sink_refuses_a_stale_item_and_history_never_sees_it() -> None:
    clock = Clock()
    clock.advance(T0 / 1000 + 10)
    store, history, _, deliver = market(clock)
    sink = FeedSink(store, deliver, clock, Metrics(CollectorRegistry()), future_ms=30_000)
    late, early = format_time_ms(T0 + 5000), format_time_ms(T0 + 4000)
    r1 = sink.publish([{"symbol": "AAPL", "price": 101.5, "time": late, "volume": 7}])
    r2 = sink.publish([{"symbol": "AAPL", "price": 99.0, "time": early}])
    assert r1.result.accepted == 1  # type: ignore[attr-defined]
    assert [r.code for r in r2.result.rejected] == ["stale"]  # type: ignore[attr-defined]
    assert history.rows("AAPL", "tick", 10, None) == [(T0 + 5000, 101.5, 7.0)]
    assert history.refused == 0
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("interval", ["1s", "1m", "5m", "1h"])
def test_bar_times_are_aligned_to_their_interval(interval: str) -> None:
    h = store_of()
    h.add("AAPL", T0 + 3_723_456, 1.0, 1)  # 01:02:03.456 after T0
    [bar] = bars(h, interval)
    assert bar[0] % INTERVALS[interval] == 0 and bar[0] <= T0 + 3_723_456
