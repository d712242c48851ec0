"""The sink: per-item results, conflation, order, one broadcast per call (in memory, Clock)."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from quoted.server.feeds.items import CODES
from quoted.server.feeds.sink import FeedSink, PublishResult
from quoted.server.instruments import builtin_instruments
from quoted.server.metrics import Metrics
from quoted.server.store import Quote, QuoteStore, format_time_ms

START = 1_795_000_000.0


class Sink:
    """A FeedSink on a real store, with the batches it broadcast."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = QuoteStore(builtin_instruments(), int(START * 1000))
        self.metrics = Metrics(CollectorRegistry())
        self.batches: list[list[Quote]] = []
        self.sink = FeedSink(
            self.store, self.batches.append, self.clock, self.metrics, future_ms=30_000
        )

    def publish(self, items: list[Any], **kw: Any) -> PublishResult:
        results: list[PublishResult] = []
        self.sink.publish(items, **kw).addCallback(results.append)
        assert len(results) == 1  # alone, the sink answers at once
        return results[0]

    def quote(self, symbol: str) -> dict[str, Any]:
        entry = self.store.lookup(symbol)
        assert entry is not None
        return entry.latest.as_dict()

    def count(self, result: str) -> float:
        v = self.metrics.registry.get_sample_value("quoted_publish_items_total", {"result": result})
        return v or 0.0


def at(offset_ms: int) -> str:
    return format_time_ms(int(START * 1000) + offset_ms)


def codes(r: PublishResult) -> list[tuple[int, str]]:
    return [(x.index, x.code) for x in r.rejected]


def test_good_and_bad_items_in_one_call() -> None:
    s = Sink()
    r = s.publish(
        [
            {"symbol": "AAPL", "price": 151.25},
            {"symbol": "NOPE", "price": 1},
            {"symbol": "MSFT", "price": "x"},
            {"symbol": "TSLA", "price": 250.5, "time": "soon"},
            {"symbol": "GOOGL", "price": 140, "volume": -1},
            "junk",
        ]
    )
    assert r.accepted == 1
    assert codes(r) == [
        (1, "unknown_symbol"),
        (2, "bad_price"),
        (3, "bad_time"),
        (4, "bad_item"),
        (5, "bad_item"),
    ]
    assert r.rejected[0].symbol == "NOPE" and r.rejected[4].symbol == ""
    assert s.quote("AAPL")["current_price"] == 151.25
    assert s.quote("AAPL")["last_updated"] == at(0)
    assert [[q.entry.symbol for q in b] for b in s.batches] == [["AAPL"]]
    assert s.count("accepted") == 1 and s.count("bad_item") == 2
    body = r.as_json()
    assert body["accepted"] == 1
    assert body["rejected"][0] == {  # type: ignore[index]
        "index": 1,
        "symbol": "NOPE",
        "code": "unknown_symbol",
        "message": "'NOPE' is not an instrument of this server",
    }


def test_exact_price_change_and_percent_rounded_as_the_simulator_rounds() -> None:
    s = Sink()
    s.publish([{"symbol": "AAPL", "price": 151.255, "reference_price": 149.1, "volume": 7}])
    q = s.quote("AAPL")
    assert q["current_price"] == 151.255
    assert q["base_price"] == 149.1
    assert q["change"] == 2.16
    assert q["change_percent"] == 1.45
    assert q["volume"] == 7


def test_several_items_for_a_symbol_collapse_to_the_last() -> None:
    s = Sink()
    before = s.store.lookup("AAPL").latest.version  # type: ignore[union-attr]
    r = s.publish(
        [
            {"symbol": "AAPL", "price": 150, "time": at(1)},
            {"symbol": "MSFT", "price": 400, "time": at(1)},
            {"symbol": "AAPL", "price": 151, "time": at(2)},
            {"symbol": "AAPL", "price": 152, "time": at(3)},
        ]
    )
    assert (r.accepted, r.rejected) == (4, ())
    assert len(s.batches) == 1 and len(s.batches[0]) == 2  # one broadcast, one quote a symbol
    aapl = s.store.lookup("AAPL").latest  # type: ignore[union-attr]
    assert aapl.current_price == 152 and aapl.version == before + 1


def test_an_older_item_is_stale_within_a_call_and_across_calls() -> None:
    s = Sink()
    r = s.publish(
        [
            {"symbol": "AAPL", "price": 150, "time": at(10)},
            {"symbol": "AAPL", "price": 149, "time": at(5)},
        ]
    )
    assert r.accepted == 1 and codes(r) == [(1, "stale")]
    r = s.publish([{"symbol": "AAPL", "price": 148, "time": at(9)}])
    assert r.accepted == 0 and codes(r) == [(0, "stale")]
    assert s.quote("AAPL")["current_price"] == 150
    # the same time again is not older: a correction of the same tick applies
    r = s.publish([{"symbol": "AAPL", "price": 150.5, "time": at(10)}])
    assert r.accepted == 1 and s.quote("AAPL")["current_price"] == 150.5


def test_stale_last_item_makes_its_earlier_items_stale_too() -> None:
    s = Sink()
    s.publish([{"symbol": "AAPL", "price": 150, "time": at(10)}])
    r = s.publish(
        [
            {"symbol": "AAPL", "price": 1, "time": at(1)},
            {"symbol": "MSFT", "price": 400},
            {"symbol": "AAPL", "price": 2, "time": at(2)},
        ]
    )
    assert r.accepted == 1 and codes(r) == [(0, "stale"), (2, "stale")]


def test_the_first_tick_may_be_older_than_the_start() -> None:
    # the quote every instrument starts with is no tick: a feed's clock may lag quoted's
    s = Sink()
    r = s.publish([{"symbol": "AAPL", "price": 150, "time": at(-60_000)}])
    assert r.accepted == 1 and s.quote("AAPL")["last_updated"] == at(-60_000)


def test_the_token_symbols_limit_what_is_published() -> None:
    s = Sink()
    r = s.publish(
        [{"symbol": "AAPL", "price": 150}, {"symbol": "MSFT", "price": 400}],
        symbols=frozenset({"MSFT"}),
    )
    assert r.accepted == 1 and codes(r) == [(0, "forbidden_symbol")]


def test_a_repeat_is_accepted_but_not_broadcast() -> None:
    s = Sink()
    s.publish([{"symbol": "AAPL", "price": 150, "time": at(1)}])
    r = s.publish([{"symbol": "AAPL", "price": 150, "time": at(1)}])
    assert r.accepted == 1 and len(s.batches) == 1


def test_latency_is_observed_per_accepted_call() -> None:
    s = Sink()
    s.publish([{"symbol": "AAPL", "price": 150}])
    s.publish([{"symbol": "NOPE", "price": 150}])
    count = s.metrics.registry.get_sample_value("quoted_publish_latency_seconds_count")
    assert count == 1


def test_patches_turn_the_previous_quote_into_the_new_one() -> None:
    s = Sink()
    doc = {"AAPL": s.quote("AAPL")}
    steps: list[dict[str, Any]] = [
        {"symbol": "AAPL", "price": 151.25},
        {"symbol": "AAPL", "price": 151.3, "volume": 99},
        {"symbol": "AAPL", "price": 151.3, "reference_price": 150},
        {"symbol": "AAPL", "price": 0.0001},
    ]
    for i, item in enumerate(steps):
        s.clock.advance(0.001)
        s.publish([item])
        q = s.batches[-1][0]
        ops = json.loads("[" + q.patch.decode() + "]")
        ops = [{**op, "path": op["path"].removeprefix("/quotes")} for op in ops]
        doc = jsonpatch.apply_patch(doc, ops)
        assert doc == {"AAPL": s.quote("AAPL")}, i


ITEM = st.fixed_dictionaries(
    {},
    optional={
        "symbol": st.sampled_from(["AAPL", "msft", "NOPE", "", "BRK.B"]) | st.integers(),
        "price": st.floats(allow_nan=True) | st.integers() | st.text(max_size=3) | st.none(),
        "time": st.sampled_from([at(-5), at(0), at(5), at(40_000), "bad"]) | st.integers(),
        "volume": st.integers(min_value=-2, max_value=2**64) | st.floats(),
        "reference_price": st.floats() | st.none(),
        "extra": st.just(1),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ITEM | st.integers() | st.text(max_size=2), max_size=12))
def test_every_item_is_accounted_for(items: list[Any]) -> None:
    s = Sink()
    r = s.publish(items)
    assert r.accepted + len(r.rejected) == len(items)
    assert sorted(x.index for x in r.rejected) == [x.index for x in r.rejected]
    assert all(x.code in CODES for x in r.rejected)
    assert len(s.batches) <= 1
    for q in s.batches[0] if s.batches else []:
        json.loads(q.json)  # every quote stays valid JSON
