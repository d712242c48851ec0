"""Tests of quoted.server.hub.FanOutHub: snapshots, one message per tick, conflation, the breaker.

A real QuoteStore makes the quotes (and their pre-encoded patches); a fake connection records
what the hub hands it. Every message is applied with the jsonpatch library to the document the
client would hold, which must equal the store's latest quotes.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from twisted.internet.task import Clock

from quoted.server.hub import FanOutHub, Subscription
from quoted.server.instruments import builtin_instruments
from quoted.server.metrics import Metrics
from quoted.server.store import Entry, Quote, QuoteStore

T0 = 1_796_000_000.0  # 2026-11-30, in seconds
TICK = 0.25


class FakeConn:
    """Records every payload and every slow_consumer call."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.slow_calls = 0

    def send_patch(self, payload: bytes) -> int:
        self.raw.append(payload)
        return len(payload) + 2

    def slow_consumer(self) -> None:
        self.slow_calls += 1

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.raw]

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for m in self.messages:
            doc = jsonpatch.apply_patch(doc, m["operations"])
        return doc


class World:
    """A hub on a Clock, its store, metrics and a tick maker."""

    def __init__(self, threshold: int = 5) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.store = QuoteStore(builtin_instruments(), self.ms())
        self.hub = FanOutHub(self.clock, self.metrics, threshold)
        self.moves = 0

    def ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def entries(self, *symbols: str) -> list[Entry]:
        found = [self.store.lookup(s) for s in symbols]
        assert all(e is not None for e in found), symbols
        return found  # type: ignore[return-value]

    def connect(
        self, *symbols: str, invalid: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()
    ) -> tuple[Subscription, FakeConn]:
        conn = FakeConn()
        sub = self.hub.open(conn)
        self.hub.snapshot(sub, self.entries(*symbols), invalid, forbidden)
        return sub, conn

    def move(self, *symbols: str, price: bool = True) -> list[Quote]:
        """A new version of each symbol, a tick later (price unchanged unless ``price``)."""
        self.clock.advance(TICK)
        quotes = []
        for e in self.entries(*symbols):
            self.moves += 1
            step = 0.01 * (1 + self.moves % 7) * (1 if self.moves % 2 else -1)
            q = e.set(e.latest.current_price + (step if price else 0.0), self.ms())
            assert q is not None
            quotes.append(q)
        return quotes

    def tick(self, *symbols: str, price: bool = True) -> list[Quote]:
        quotes = self.move(*symbols, price=price)
        self.hub.publish(quotes)
        return quotes

    def gauge(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)

    def gauges(self) -> tuple[float | None, float | None, float | None]:
        """The three gauges the hub keeps, read from their own metric objects: the registry's
        get_sample_value collects every metric (and /proc) for one sample, which was most of
        the state machines' time."""
        subs, active, idle = (self.sample(name) for name in GAUGES)
        return subs, active, idle

    def sample(self, name: str) -> float | None:
        """``registry.get_sample_value(name)``, collecting only the metric that holds it."""
        attribute = _HOLDER.get(name)
        if attribute is None:
            for attribute in dir(self.metrics):
                metric = getattr(self.metrics, attribute)
                if isinstance(metric, MetricWrapperBase) and _value(metric, name) is not None:
                    _HOLDER[name] = attribute
                    break
            else:
                return self.gauge(name)
        return _value(getattr(self.metrics, attribute), name)

    def counter(self, name: str) -> float | None:
        return self.registry.get_sample_value(name + "_total")

    def expected(self, *symbols: str) -> dict[str, Any]:
        return {"quotes": {e.symbol: e.latest.as_dict() for e in self.entries(*symbols)}}


GAUGES = ("quoted_subscriptions", "quoted_active_symbols", "quoted_connections_idle")
_HOLDER: dict[str, str] = {}  # sample name -> the Metrics attribute whose metric holds it


def _value(metric: MetricWrapperBase, name: str) -> float | None:
    for family in metric.collect():
        for s in family.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    return None


def ops(raw: bytes) -> list[dict[str, Any]]:
    """Pre-encoded operation bytes (comma-joined, no brackets) as a list."""
    return json.loads(b"[" + raw + b"]")  # type: ignore[no-any-return]


def paths(message: dict[str, Any]) -> set[str]:
    return {op["path"] for op in message["operations"]}


@pytest.fixture
def w() -> World:
    return World()


# -- snapshot ---------------------------------------------------------------------------------


def test_snapshot_is_seq_1_with_the_quotes_and_the_refused_symbols(w: World) -> None:
    _, conn = w.connect("AAPL", "GOOGL", invalid=("NOPE",), forbidden=("TSLA",))
    aapl, googl = w.entries("AAPL", "GOOGL")
    assert conn.messages == [
        {
            "type": "quotes_patch",
            "seq": 1,
            "operations": [
                {"op": "add", "path": "/quotes", "value": {}},
                {"op": "add", "path": "/quotes/AAPL", "value": aapl.latest.as_dict()},
                {"op": "add", "path": "/quotes/GOOGL", "value": googl.latest.as_dict()},
            ],
            "invalid_symbols": ["NOPE"],
            "forbidden_symbols": ["TSLA"],
        }
    ]
    assert conn.document() == w.expected("AAPL", "GOOGL")
    assert w.counter("quoted_symbol_updates_delivered") == 2


def test_snapshot_of_no_symbols_is_an_empty_document_and_an_idle_connection(w: World) -> None:
    sub, conn = w.connect(invalid=("NOPE",))
    assert conn.messages == [
        {
            "type": "quotes_patch",
            "seq": 1,
            "operations": [{"op": "add", "path": "/quotes", "value": {}}],
            "invalid_symbols": ["NOPE"],
            "forbidden_symbols": [],
        }
    ]
    assert sub.symbols() == []
    assert w.gauges() == (0, 0, 1)


# -- one message per tick -----------------------------------------------------------------------


def test_each_publish_is_one_message_with_every_moved_symbol_and_seq_plus_1(w: World) -> None:
    _, conn = w.connect("AAPL", "GOOGL", "MSFT")
    w.tick("AAPL", "GOOGL", "TSLA")  # TSLA: nobody's
    assert len(conn.raw) == 2
    second = conn.messages[1]
    assert second["seq"] == 2
    assert set(second) == {"type", "seq", "operations"}
    assert {p.split("/")[2] for p in paths(second)} == {"AAPL", "GOOGL"}  # not MSFT, TSLA
    w.tick("MSFT")
    assert [m["seq"] for m in conn.messages] == [1, 2, 3]
    assert {p.split("/")[2] for p in paths(conn.messages[2])} == {"MSFT"}
    assert conn.document() == w.expected("AAPL", "GOOGL", "MSFT")


def test_a_tick_without_any_of_its_symbols_sends_nothing(w: World) -> None:
    _, conn = w.connect("AAPL")
    w.tick("TSLA", "MSFT")
    w.tick()
    assert len(conn.raw) == 1
    assert w.gauge("quoted_fanout_latency_seconds_count") == 0  # no observation


def test_consecutive_version_is_sent_as_the_quotes_field_patch(w: World) -> None:
    _, conn = w.connect("AAPL")
    (q,) = w.tick("AAPL", price=False)  # only last_updated changed
    assert (
        conn.messages[1]["operations"]
        == ops(q.patch)
        == [
            {
                "op": "replace",
                "path": "/quotes/AAPL/last_updated",
                "value": q.last_updated,
            }
        ]
    )
    (q,) = w.tick("AAPL")
    assert conn.messages[2]["operations"] == ops(q.patch)
    assert conn.document() == w.expected("AAPL")


def test_missed_versions_are_sent_as_a_whole_quote_replace(w: World) -> None:
    _, conn = w.connect("AAPL")
    w.move("AAPL", price=False)  # a version this connection never hears of
    (q,) = w.tick("AAPL", price=False)
    assert (
        conn.messages[1]["operations"]
        == ops(q.replace)
        == [
            {
                "op": "replace",
                "path": "/quotes/AAPL",
                "value": q.as_dict(),
            }
        ]
    )
    assert w.counter("quoted_conflated_updates") == 1
    assert conn.document() == w.expected("AAPL")


def test_paused_connection_gets_one_conflated_message_on_resume(w: World) -> None:
    sub, conn = w.connect("AAPL", "GOOGL", "MSFT")
    _, other = w.connect("AAPL")
    w.hub.pause(sub)
    for _ in range(3):
        w.tick("AAPL", "GOOGL")
    assert len(conn.raw) == 1  # nothing while paused
    assert [m["seq"] for m in other.messages] == [1, 2, 3, 4]  # the others are not held up
    assert w.counter("quoted_write_stalls") == 3
    w.hub.resume(sub)
    assert len(conn.raw) == 2
    resumed = conn.messages[1]
    assert resumed["seq"] == 2
    aapl, googl = w.entries("AAPL", "GOOGL")
    assert resumed["operations"] == ops(aapl.latest.replace) + ops(googl.latest.replace)
    assert w.counter("quoted_conflated_updates") == 4  # two versions skipped per symbol
    assert conn.document() == w.expected("AAPL", "GOOGL", "MSFT")
    w.hub.resume(sub)  # nothing new: no message
    assert len(conn.raw) == 2
    w.tick("GOOGL")
    assert [m["seq"] for m in conn.messages] == [1, 2, 3]
    assert conn.messages[2]["operations"] == ops(googl.latest.patch)


def test_resume_after_a_single_missed_version_sends_the_field_patch(w: World) -> None:
    sub, conn = w.connect("AAPL")
    w.hub.pause(sub)
    (q,) = w.tick("AAPL")
    w.hub.resume(sub)
    assert conn.messages[1]["operations"] == ops(q.patch)
    assert w.counter("quoted_conflated_updates") == 0


def test_fanout_latency_is_observed_once_per_tick(w: World) -> None:
    w.connect("AAPL")
    w.connect("AAPL", "GOOGL")
    quotes = w.move("AAPL", "GOOGL")
    w.clock.advance(0.04)
    w.hub.publish(quotes)
    assert w.gauge("quoted_fanout_latency_seconds_count") == 1
    assert w.gauge("quoted_fanout_latency_seconds_sum") == pytest.approx(0.04, abs=0.002)


# -- the circuit breaker ------------------------------------------------------------------------


def test_paused_for_threshold_ticks_with_updates_is_closed_once() -> None:
    w = World(threshold=3)
    sub, conn = w.connect("AAPL", "GOOGL")
    w.hub.pause(sub)
    w.tick("AAPL")
    w.tick("GOOGL", "AAPL")
    assert conn.slow_calls == 0
    assert sub in w.hub.subscriptions
    w.tick("MSFT")  # none of its symbols moved: does not count
    assert (conn.slow_calls, sub.stalled) == (0, 2)
    w.tick("AAPL")
    assert conn.slow_calls == 1
    assert sub not in w.hub.subscriptions
    assert w.hub.active() == []
    assert w.gauges()[:2] == (0, 0)
    assert w.counter("quoted_write_stalls") == 3
    w.tick("AAPL", "GOOGL")
    w.hub.resume(sub)  # the transport may still drain: a closed subscription sends nothing
    assert conn.slow_calls == 1
    assert len(conn.raw) == 1


def test_paused_connection_with_no_moved_symbols_never_stalls() -> None:
    w = World(threshold=2)
    sub, conn = w.connect("AAPL")
    _, other = w.connect("MSFT")
    w.hub.pause(sub)
    for _ in range(5):
        w.tick("MSFT")
    assert (conn.slow_calls, sub.stalled) == (0, 0)
    assert w.counter("quoted_write_stalls") == 0
    assert sub in w.hub.subscriptions
    assert len(other.raw) == 6
    w.hub.resume(sub)
    assert len(conn.raw) == 1  # nothing it missed


def test_a_message_delivered_resets_the_stall_count() -> None:
    w = World(threshold=3)
    sub, conn = w.connect("AAPL")
    w.hub.pause(sub)
    w.tick("AAPL")
    w.tick("AAPL")
    w.hub.resume(sub)
    w.hub.pause(sub)
    w.tick("AAPL")
    w.tick("AAPL")
    assert conn.slow_calls == 0
    w.tick("AAPL")
    assert conn.slow_calls == 1


# -- subscribe, unsubscribe, close ----------------------------------------------------------------


def test_subscribe_and_unsubscribe_go_out_with_the_next_flush(w: World) -> None:
    sub, conn = w.connect("AAPL")
    googl, aapl = w.entries("GOOGL", "AAPL")
    assert w.hub.subscribe(sub, [googl, aapl]) == [googl]
    assert len(conn.raw) == 1  # not before the flush
    w.hub.flush(sub)
    assert conn.messages[1] == {
        "type": "quotes_patch",
        "seq": 2,
        "operations": [ops(googl.latest.add_op)[0]],
    }
    assert w.hub.subscribe(sub, [googl]) == []
    assert w.hub.unsubscribe(sub, [aapl]) == [aapl]
    assert w.hub.unsubscribe(sub, [aapl]) == []
    assert sub.symbols() == ["GOOGL"]
    (_, q) = w.tick("AAPL", "GOOGL")  # the flush of the tick carries the remove first
    assert conn.messages[2]["seq"] == 3
    assert conn.messages[2]["operations"] == [
        {"op": "remove", "path": "/quotes/AAPL"},
        *ops(q.patch),
    ]
    assert conn.document() == w.expected("GOOGL")
    w.hub.flush(sub)  # nothing new: no message
    assert len(conn.raw) == 3


def test_subscribe_while_paused_goes_out_on_resume(w: World) -> None:
    sub, conn = w.connect("AAPL")
    w.hub.pause(sub)
    w.hub.subscribe(sub, w.entries("MSFT"))
    w.tick("MSFT")  # moved after the add was queued
    w.tick("MSFT")
    w.hub.unsubscribe(sub, w.entries("AAPL"))
    assert len(conn.raw) == 1
    w.hub.resume(sub)
    assert [m["seq"] for m in conn.messages] == [1, 2]
    assert conn.document() == w.expected("MSFT")


def test_active_counts_subscribers_per_symbol(w: World) -> None:
    aapl, googl = w.entries("AAPL", "GOOGL")
    one, _ = w.connect("AAPL")
    two, _ = w.connect("AAPL", "GOOGL")
    assert set(w.hub.active()) == {aapl, googl}
    w.hub.unsubscribe(one, [aapl])
    assert set(w.hub.active()) == {aapl, googl}  # two still holds it
    w.hub.unsubscribe(two, [aapl])
    assert w.hub.active() == [googl]
    w.hub.subscribe(one, [googl])
    w.hub.close(two)
    assert w.hub.active() == [googl]
    w.hub.close(one)
    assert w.hub.active() == []


def test_gauges_follow_every_step(w: World) -> None:
    assert w.gauges() == (0, 0, 0)
    one = w.hub.open(FakeConn())
    assert w.gauges() == (0, 0, 1)
    w.hub.snapshot(one, w.entries("AAPL", "GOOGL"), (), ())
    assert w.gauges() == (2, 2, 0)
    two = w.hub.open(FakeConn())
    assert w.gauges() == (2, 2, 1)
    w.hub.snapshot(two, w.entries("AAPL"), (), ())
    assert w.gauges() == (3, 2, 0)
    w.hub.subscribe(two, w.entries("MSFT", "AAPL"))
    assert w.gauges() == (4, 3, 0)
    assert w.gauges() == tuple(w.gauge(name) for name in GAUGES)  # what the registry says
    w.hub.unsubscribe(two, w.entries("AAPL", "MSFT"))
    assert w.gauges() == (2, 2, 1)
    w.hub.unsubscribe(one, w.entries("AAPL"))
    assert w.gauges() == (1, 1, 1)
    w.hub.close(two)  # idle when closed
    assert w.gauges() == (1, 1, 0)
    w.hub.close(two)  # idempotent
    assert w.gauges() == (1, 1, 0)
    w.hub.unsubscribe(one, w.entries("GOOGL"))
    assert w.gauges() == (0, 0, 1)
    w.hub.close(one)
    assert w.gauges() == (0, 0, 0)


@pytest.mark.parametrize("how", ["close", "breaker"])
def test_closing_an_active_connection_leaves_nothing_counted(how: str) -> None:
    w = World(threshold=1)
    sub, conn = w.connect("AAPL", "GOOGL")
    assert w.gauges() == (2, 2, 0)
    if how == "close":
        w.hub.close(sub)
    else:
        w.hub.pause(sub)
        w.tick("AAPL")
        assert conn.slow_calls == 1
    assert w.gauges() == (0, 0, 0)


def test_close_stops_delivery(w: World) -> None:
    sub, conn = w.connect("AAPL")
    w.hub.subscribe(sub, w.entries("GOOGL"))  # queued, never flushed
    w.hub.close(sub)
    w.hub.close(sub)
    w.tick("AAPL", "GOOGL")
    w.hub.flush(sub)
    w.hub.resume(sub)
    assert len(conn.raw) == 1
    assert sub.symbols() == []


# -- every sequence of events: the client's document is the store's ------------------------------

SYMBOLS = ("AAPL", "MSFT", "GOOGL", "V", "QQQ")
THRESHOLD = 3


class Client:
    def __init__(self, sub: Subscription, conn: FakeConn, symbols: set[str]) -> None:
        self.sub = sub
        self.conn = conn
        self.symbols = symbols
        self.paused = False
        self.stalled = 0
        self.applied = 0
        self.seq = 0
        self.doc: dict[str, Any] = {}


class HubMachine(RuleBasedStateMachine):
    """Random subscribe/unsubscribe/publish/pause/resume/close over a few connections."""

    # also check each message's operations exactly, not only the document they lead to
    exact_ops = False

    def __init__(self) -> None:
        super().__init__()
        self.w = World(threshold=THRESHOLD)
        self.clients: dict[int, Client] = {}
        self.next_id = 0
        # see test_closing_an_active_connection_leaves_nothing_counted

    def pick(self, data: st.DataObject) -> Client:
        return self.clients[data.draw(st.sampled_from(sorted(self.clients)))]

    @rule(symbols=st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=4))
    def connect(self, symbols: list[str]) -> None:
        if len(self.clients) >= 4:
            return
        sub, conn = self.w.connect(*symbols)
        self.clients[self.next_id] = Client(sub, conn, set(symbols))
        self.next_id += 1
        assert len(conn.raw) == 1

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), symbols=st.lists(st.sampled_from(SYMBOLS), unique=True, min_size=1))
    def subscribe(self, data: st.DataObject, symbols: list[str]) -> None:
        c = self.pick(data)
        new = self.w.hub.subscribe(c.sub, self.w.entries(*symbols))
        assert [e.symbol for e in new] == [s for s in symbols if s not in c.symbols]
        c.symbols |= set(symbols)
        if not c.paused:  # as the protocol does after a subscription change
            self.flush_expecting(c, [op for e in new for op in ops(e.latest.add_op)])

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), symbols=st.lists(st.sampled_from(SYMBOLS), unique=True, min_size=1))
    def unsubscribe(self, data: st.DataObject, symbols: list[str]) -> None:
        c = self.pick(data)
        gone = self.w.hub.unsubscribe(c.sub, self.w.entries(*symbols))
        assert [e.symbol for e in gone] == [s for s in symbols if s in c.symbols]
        c.symbols -= set(symbols)
        if not c.paused:
            self.flush_expecting(c, [op for e in gone for op in ops(e.remove_op)])

    def flush_expecting(self, c: Client, expected: list[dict[str, Any]]) -> None:
        before = len(c.conn.raw)
        self.w.hub.flush(c.sub)
        if self.exact_ops:
            sent = [json.loads(raw)["operations"] for raw in c.conn.raw[before:]]
            assert sent == ([expected] if expected else [])

    @rule(moved=st.lists(st.sampled_from(SYMBOLS), unique=True), price=st.booleans())
    def publish(self, moved: list[str], price: bool) -> None:
        before = {cid: len(c.conn.raw) for cid, c in self.clients.items()}
        quotes = self.w.tick(*moved, price=price)
        for cid, c in list(self.clients.items()):
            touched = bool(c.symbols & set(moved))
            sent = len(c.conn.raw) - before[cid]
            if not touched or c.paused:
                assert sent == 0
            else:
                assert sent == 1
                if self.exact_ops:  # every moved symbol of its own, one version on: its patch
                    assert json.loads(c.conn.raw[-1])["operations"] == [
                        op for q in quotes if q.entry.symbol in c.symbols for op in ops(q.patch)
                    ]
            if touched and c.paused:
                c.stalled += 1
                if c.stalled >= THRESHOLD:
                    assert c.conn.slow_calls == 1
                    assert c.sub not in self.w.hub.subscriptions
                    self.forget(cid)
                    continue
            assert c.conn.slow_calls == 0

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        c = self.pick(data)
        self.w.hub.pause(c.sub)
        c.paused = True

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        c = self.pick(data)
        before = len(c.conn.raw)
        self.w.hub.resume(c.sub)
        assert len(c.conn.raw) - before <= 1
        c.paused = False
        c.stalled = 0

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        c = self.pick(data)
        self.w.hub.close(c.sub)
        self.forget(next(cid for cid, x in self.clients.items() if x is c))

    def forget(self, cid: int) -> None:
        self.clients.pop(cid)

    @invariant()
    def documents_match_the_store(self) -> None:
        for c in self.clients.values():
            for raw in c.conn.raw[c.applied :]:
                m = json.loads(raw)
                assert m["type"] == "quotes_patch"
                assert m["seq"] == c.seq + 1
                assert m["operations"], m
                c.seq += 1
                c.doc = jsonpatch.apply_patch(c.doc, m["operations"])
            c.applied = len(c.conn.raw)
            assert c.sub.symbols() == sorted(c.symbols)
            if not c.paused:
                assert c.doc == self.w.expected(*c.symbols)

    @invariant()
    def gauges_and_active_match(self) -> None:
        held = [s for c in self.clients.values() for s in c.symbols]
        subs, active, idle = self.w.gauges()
        assert subs == len(held)
        assert active == len(set(held))
        assert {e.symbol for e in self.w.hub.active()} == set(held)
        assert idle == sum(1 for c in self.clients.values() if not c.symbols)


class ExactHubMachine(HubMachine):
    exact_ops = True


HubMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ExactHubMachine.TestCase.settings = HubMachine.TestCase.settings
test_hub_state_machine = HubMachine.TestCase
test_hub_state_machine_exact_operations = ExactHubMachine.TestCase
