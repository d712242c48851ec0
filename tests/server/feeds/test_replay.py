"""Tests of quoted.server.feeds.replay: read_ticks on files, ReplayFeed on task.Clock.

Playback goes into a sink and what reached it is read back with the clock's time of each
``publish`` call: offsets, speed, loop, the end of a replay, stop, one call per moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from quoted.server.feeds import replay
from quoted.server.feeds.replay import (
    SAMPLE_FILE,
    ReplayError,
    ReplayFeed,
    ReplayTick,
    read_ticks,
)
from quoted.server.feeds.sink import (
    Batch,
    BrokerUnavailable,
    Cursor,
    FeedSink,
    PublishResult,
    SharedOrder,
)
from quoted.server.instruments import builtin_instruments
from quoted.server.metrics import Metrics
from quoted.server.store import Quote, QuoteStore

T0 = "2026-12-02T14:30:00.000Z"


def at(ms: int) -> str:
    """The RFC 3339 time ``ms`` after T0 (within one minute)."""
    return f"2026-12-02T14:30:{ms // 1000:02d}.{ms % 1000:03d}Z"


class RecordedSink(FeedSink):
    """The real sink, telling when each ``publish`` call came and with which items."""

    def __init__(self, clock: Clock, store: QuoteStore, shared: SharedOrder | None) -> None:
        self.clock = clock
        self.broadcasts: list[tuple[float, list[Quote]]] = []
        self.calls: list[tuple[float, list[dict[str, Any]]]] = []
        registry = CollectorRegistry()
        super().__init__(
            store, self._broadcast, clock, Metrics(registry), future_ms=5000, shared=shared
        )

    def _broadcast(self, quotes: list[Quote]) -> None:
        self.broadcasts.append((self.clock.seconds(), quotes))

    def publish(
        self,
        items: Sequence[object],
        *,
        symbols: frozenset[str] | None = None,
        cursor: Cursor | None = None,
    ) -> Deferred[PublishResult]:
        self.calls.append((self.clock.seconds(), [dict(i) for i in items if isinstance(i, dict)]))
        return super().publish(items, symbols=symbols, cursor=cursor)


class HeldOrder:
    """A shared order (Redis's place) that answers only when told: a slow broker. Each
    ``record`` waits in ``held``; ``release`` records every tick of the oldest one."""

    def __init__(self) -> None:
        self.held: list[tuple[Batch, Deferred[list[bool]]]] = []

    def record(self, batch: Batch, cursor: str | None) -> Deferred[list[bool]]:
        d: Deferred[list[bool]] = Deferred()
        self.held.append((batch, d))
        return d

    def release(self) -> None:
        batch, d = self.held.pop(0)
        d.callback([True] * len(batch))


class DownOrder:
    """A shared order whose broker is down for its first ``down`` calls."""

    def __init__(self, down: int) -> None:
        self.down = down

    def record(self, batch: Batch, cursor: str | None) -> Deferred[list[bool]]:
        if self.down:
            self.down -= 1
            return fail(BrokerUnavailable("redis: connection refused"))
        return succeed([True] * len(batch))


class Harness:
    """A real FeedSink over a QuoteStore of the built-in instruments, on a Clock."""

    def __init__(
        self,
        ticks: Sequence[ReplayTick],
        speed: float = 1,
        loop: bool = False,
        shared: SharedOrder | None = None,
    ) -> None:
        self.clock = Clock()
        self.store = QuoteStore(builtin_instruments(), start_ms=0)
        self.sink = RecordedSink(self.clock, self.store, shared)
        self.feed = ReplayFeed(self.clock, ticks, speed, loop, self.sink)

    def moments(self) -> list[tuple[float, list[str]]]:
        """(time, symbols) of each publish call so far."""
        return [(round(t, 6), [str(i["symbol"]) for i in items]) for t, items in self.sink.calls]


def ticks(*spec: tuple[int, str]) -> list[ReplayTick]:
    return [ReplayTick(ms, {"symbol": s, "price": 100.0}) for ms, s in spec]


def ids(events: list[LogEvent], log_id: str) -> list[LogEvent]:
    return [e for e in events if e.get("log_id") == log_id]


def write(tmp_path: Path, content: str | bytes, name: str = "ticks") -> str:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_bytes(content)
    return str(p)


# -- read_ticks -------------------------------------------------------------------------------


def test_csv_with_volume(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\ufefftime,symbol,price,volume\r\n"
        f"{T0},AAPL,175.5,1200\r\n"
        "\r\n"
        f"{at(250)},MSFT,420.25,\r\n"
        f'{at(1250)},"AAPL",176,7\r\n',
    )
    assert read_ticks(path) == [
        ReplayTick(0, {"symbol": "AAPL", "price": 175.5, "volume": 1200}),
        ReplayTick(250, {"symbol": "MSFT", "price": 420.25}),
        ReplayTick(1250, {"symbol": "AAPL", "price": 176.0, "volume": 7}),
    ]


def test_csv_without_volume_leaves_what_does_not_parse_to_the_sink(tmp_path: Path) -> None:
    path = write(tmp_path, f"\n\ntime,symbol,price\n{T0},AAPL,175.5\n{T0},MSFT,cheap\n")
    assert read_ticks(path) == [
        ReplayTick(0, {"symbol": "AAPL", "price": 175.5}),
        ReplayTick(0, {"symbol": "MSFT", "price": "cheap"}),
    ]


def test_ndjson(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'{{"symbol": "AAPL", "price": 175.5, "time": "{T0}", "volume": 1200}}\n'
        "\n"
        f'{{"symbol": "MSFT", "price": 420.25, "time": "{at(40)}", "reference_price": 410}}\n'
        f'  {{"time": "{at(40)}", "symbol": "GLD", "price": 185}}',
    )
    assert read_ticks(path) == [
        ReplayTick(0, {"symbol": "AAPL", "price": 175.5, "volume": 1200}),
        ReplayTick(40, {"symbol": "MSFT", "price": 420.25, "reference_price": 410}),
        ReplayTick(40, {"symbol": "GLD", "price": 185}),
    ]


HEADER = "time,symbol,price\n"
ROW = f"{T0},AAPL,175.5\n"
JSON = f'{{"symbol": "AAPL", "price": 1, "time": "{T0}"}}\n'


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("", 1, "empty file"),
        ("\n  \n\n", 1, "empty file"),
        (HEADER, 2, "no ticks after the header"),
        (b"time,symbol,price\n" + ROW.encode() + b"2026-12-02,\xff\n", 3, "not UTF-8"),
        ("time;symbol;price\n" + ROW, 1, "expected a CSV header"),
        ("time,symbol,price,volume,extra\n" + ROW, 1, "expected a CSV header"),
        ("symbol,price\n", 1, "expected a CSV header"),
        (HEADER + ROW + f"{T0},AAPL\n", 3, "2 fields where the header has 3"),
        (HEADER + ROW + f'{T0},"AAPL,1\n', 3, "bad CSV"),
        (HEADER + f"{T0},,175.5\n", 2, "missing field symbol"),
        (HEADER + f"{T0},AAPL, \n", 2, "missing field price"),
        (HEADER + ",AAPL,1\n", 2, "missing field time"),
        (HEADER + ROW + "yesterday,AAPL,1\n", 3, "bad time 'yesterday'"),
        (HEADER + ROW + "2026-12-02T14:29:59.999Z,AAPL,1\n", 3, "out of order"),
        (JSON + '{"symbol": "AAPL", "price": 1,\n', 2, "bad JSON"),
        (JSON + "\n[1, 2]\n", 3, "not a JSON object but list"),
        (JSON + '{"price": 1, "time": "' + T0 + '"}\n', 2, "missing field symbol"),
        (JSON + '{"symbol": "AAPL", "time": "' + T0 + '"}\n', 2, "missing field price"),
        (JSON + '{"symbol": "AAPL", "price": 1}\n', 2, "missing field time"),
        (JSON + '{"symbol": "AAPL", "price": 1, "time": 5}\n', 2, "bad time 5: not a string"),
        (JSON + '{"symbol": "AAPL", "price": 1, "time": "2026-12-02"}\n', 2, "bad time"),
        (JSON + '{"symbol": "AAPL", "price": 1, "time": "2026-01-01T00:00:00Z"}', 2, "order"),
        (JSON + "[" * 100_000 + "\n", 2, "bad JSON"),
    ],
)
def test_every_error_names_the_path_and_the_line(
    tmp_path: Path, content: str | bytes, line: int, reason: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ReplayError) as e:
        read_ticks(path)
    assert str(e.value).startswith(f"{path}: line {line}: "), str(e.value)
    assert reason in e.value.reason
    assert (e.value.path, e.value.line) == (path, line)


def test_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.csv")
    with pytest.raises(ReplayError, match=r"nowhere\.csv: line 1: cannot open the file: No such"):
        read_ticks(path)


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match=r": line 1: cannot open the file"):
        read_ticks(str(tmp_path))


def test_too_many_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "MAX_TICKS", 3)
    path = write(tmp_path, HEADER + ROW * 3)
    assert len(read_ticks(path)) == 3
    path = write(tmp_path, HEADER + ROW * 4)
    with pytest.raises(ReplayError, match=r": line 5: more than 3 ticks"):
        read_ticks(path)


def test_too_large_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "MAX_BYTES", 1024)
    path = write(tmp_path, HEADER + ROW * 30)
    with pytest.raises(ReplayError, match=r": line 1: the file is larger than 0 MiB \(1,"):
        read_ticks(path)


def test_a_file_without_a_size_is_bounded_while_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound holds while reading too (a device, a FIFO, a file that grows): stat said 0."""
    monkeypatch.setattr(replay, "MAX_BYTES", 1024)
    with pytest.raises(ReplayError, match=r"^/dev/zero: line 1: the file is larger than"):
        read_ticks("/dev/zero")


def test_the_shipped_sample() -> None:
    assert Path(SAMPLE_FILE).name == "sample-ticks.csv"
    got = read_ticks(SAMPLE_FILE)
    assert 200 <= len(got) <= 1000
    assert 50_000 <= got[-1].offset_ms <= 60_000
    builtin = {i.symbol: i.base_price for i in builtin_instruments()}
    assert {t.item["symbol"] for t in got} == set(builtin)
    for t in got:
        assert set(t.item) == {"symbol", "price", "volume"}
        price, volume = t.item["price"], t.item["volume"]
        assert isinstance(price, float) and isinstance(volume, int) and volume > 0
        assert abs(price / builtin[str(t.item["symbol"])] - 1) < 0.02
    # the first moment sets every quote
    assert {t.item["symbol"] for t in got if t.offset_ms == 0} == set(builtin)


# -- ReplayFeed -------------------------------------------------------------------------------

SPEC = ((0, "AAPL"), (250, "MSFT"), (250, "GLD"), (1000, "SPY"))


def test_ticks_at_their_recorded_offsets_one_call_per_moment_without_time(
    log_events: list[LogEvent],
) -> None:
    h = Harness(ticks(*SPEC))
    h.feed.startService()
    h.clock.advance(0)
    assert h.moments() == [(0, ["AAPL"])]
    h.clock.advance(0.249)
    assert len(h.sink.calls) == 1
    h.clock.advance(0.001)
    assert h.moments() == [(0, ["AAPL"]), (0.25, ["MSFT", "GLD"])]
    h.clock.advance(0.749)
    assert len(h.sink.calls) == 2
    h.clock.advance(0.001)
    assert h.moments()[-1] == (1.0, ["SPY"])
    assert all("time" not in item for _, items in h.sink.calls for item in items)
    # the end: one "finished", nothing left on the clock, idle for ever
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(3600)
    assert len(h.sink.calls) == 3
    assert len(ids(log_events, "quoted.replay.finished")) == 1
    assert h.feed.running
    h.feed.stopService()


def test_speed_ten_is_ten_times_faster() -> None:
    h = Harness(ticks(*SPEC), speed=10)
    h.feed.startService()
    h.clock.pump([0, 0.025, 0.075])
    assert h.moments() == [(0, ["AAPL"]), (0.025, ["MSFT", "GLD"]), (0.1, ["SPY"])]
    assert h.clock.getDelayedCalls() == []


def test_a_fraction_of_the_recorded_speed() -> None:
    h = Harness(ticks(*SPEC), speed=0.5)
    h.feed.startService()
    h.clock.pump([0, 0.5, 1.5])
    assert h.moments() == [(0, ["AAPL"]), (0.5, ["MSFT", "GLD"]), (2.0, ["SPY"])]


def test_the_schedule_does_not_drift() -> None:
    """Each call is due from the start of its pass: 1,000 ticks 1 ms apart end at 0.999 s."""
    h = Harness([ReplayTick(ms, {"symbol": "AAPL", "price": 1.0}) for ms in range(1000)])
    h.feed.startService()
    h.clock.advance(0)
    for _ in range(999):
        h.clock.advance(0.001)
    assert len(h.sink.calls) == 1000
    assert h.moments()[-1][0] == pytest.approx(0.999)
    assert h.clock.getDelayedCalls() == []


def test_loop_starts_over_after_the_median_gap() -> None:
    # moments at 0, 250, 1000: gaps 250 and 750, median 500
    h = Harness(ticks(*SPEC), speed=2, loop=True)
    assert h.feed.restart_gap_ms == 500
    h.feed.startService()
    h.clock.pump([0] + [0.125] * 16)  # 2 s: the pass lasts (1000 + 500) / 2 ms
    assert h.moments() == [
        (0, ["AAPL"]),
        (0.125, ["MSFT", "GLD"]),
        (0.5, ["SPY"]),
        (0.75, ["AAPL"]),
        (0.875, ["MSFT", "GLD"]),
        (1.25, ["SPY"]),
        (1.5, ["AAPL"]),
        (1.625, ["MSFT", "GLD"]),
        (2.0, ["SPY"]),
    ]
    assert len(h.clock.getDelayedCalls()) == 1
    h.feed.stopService()
    assert h.clock.getDelayedCalls() == []


def test_loop_gap_is_at_least_a_millisecond_and_a_second_without_gaps() -> None:
    same = Harness(ticks((0, "AAPL"), (0, "MSFT")), loop=True)
    assert same.feed.restart_gap_ms == 1000
    dense = Harness(ticks((0, "AAPL"), (0, "MSFT"), (1, "AAPL"), (1, "MSFT")), loop=True)
    assert dense.feed.restart_gap_ms == 1
    dense.feed.startService()
    dense.clock.pump([0] + [0.001] * 5)
    assert [t for t, _ in dense.moments()] == [0, 0.001, 0.002, 0.003, 0.004, 0.005]
    dense.feed.stopService()


def test_stop_cancels_the_pending_call_and_start_begins_again() -> None:
    h = Harness(ticks(*SPEC), loop=True)
    h.feed.startService()
    h.clock.pump([0, 0.3])
    assert len(h.sink.calls) == 2
    assert h.feed.stopService() is None
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(10)
    assert len(h.sink.calls) == 2
    h.feed.startService()
    h.clock.advance(0)
    assert h.moments()[-1] == (10.3, ["AAPL"])
    h.feed.stopService()


def test_late_moments_go_out_in_one_call_when_the_publish_in_flight_settles() -> None:
    """One publish in flight at a time: what fell due meanwhile is sent at once, in one call."""
    broker = HeldOrder()
    h = Harness(ticks(*SPEC), shared=broker)
    h.feed.startService()
    h.clock.advance(0)
    h.clock.advance(2)
    assert h.moments() == [(0, ["AAPL"])]
    assert h.clock.getDelayedCalls() == []
    broker.release()
    h.clock.advance(0)
    assert h.moments() == [(0, ["AAPL"]), (2, ["MSFT", "GLD", "SPY"])]
    broker.release()
    assert h.clock.getDelayedCalls() == []


def test_stop_waits_for_the_publish_in_flight() -> None:
    broker = HeldOrder()
    h = Harness(ticks(*SPEC), shared=broker)
    h.feed.startService()
    h.clock.advance(0)
    stopped = h.feed.stopService()
    assert isinstance(stopped, Deferred)
    done: list[object] = []
    stopped.addCallback(done.append)
    assert done == []
    broker.release()
    assert done == [None]
    assert len(h.sink.calls) == 1
    assert h.clock.getDelayedCalls() == []


def test_a_looped_file_far_behind_skips_whole_passes() -> None:
    broker = HeldOrder()
    h = Harness(ticks(*SPEC), loop=True, shared=broker)  # a pass of 1.5 s
    h.feed.startService()
    h.clock.advance(0)
    h.clock.advance(10)  # 6.67 passes
    broker.release()
    h.clock.advance(0)
    broker.release()
    # the rest of the first pass, then the moments due of the pass starting at 9 s
    assert h.moments()[1] == (10, ["MSFT", "GLD", "SPY", "AAPL", "MSFT", "GLD", "SPY"])
    h.clock.advance(0.5)
    assert h.moments()[2] == (10.5, ["AAPL"])
    broker.release()
    h.feed.stopService()


def test_rejections_are_logged_once_per_code_per_minute_with_counts(
    log_events: list[LogEvent],
) -> None:
    h = Harness(ticks((0, "NOPE"), (500, "AAPL"), (1000, "NOPE")), loop=True)  # a 1.5 s pass
    h.feed.startService()
    h.clock.pump([0] + [0.5] * 119)  # 59.5 s
    logged = ids(log_events, "quoted.replay.rejected")
    assert [(e["code"], e["count"]) for e in logged] == [("unknown_symbol", 1)]
    assert logged[0]["example"] == "NOPE: 'NOPE' is not an instrument of this server"
    h.clock.advance(0.5)  # 60 s: the first NOPE of the 41st pass
    logged = ids(log_events, "quoted.replay.rejected")
    assert [e["count"] for e in logged] == [1, 80]
    h.clock.pump([0.5, 0.5])  # 61 s: one more
    h.feed.stopService()  # what was counted since is logged at stop
    assert [e["count"] for e in ids(log_events, "quoted.replay.rejected")] == [1, 80, 1]


def test_a_failed_publish_is_logged_and_the_replay_goes_on(log_events: list[LogEvent]) -> None:
    h = Harness(ticks(*SPEC), shared=DownOrder(2))
    h.feed.startService()
    h.clock.pump([0, 0.25, 0.75])
    assert len(h.sink.calls) == 3
    # the first failure at once, the second (within the minute) when the replay ends
    failed = ids(log_events, "quoted.replay.publish_failed")
    assert [e["count"] for e in failed] == [1, 1]
    assert failed[0]["log_failure"].check(BrokerUnavailable)
    assert len(ids(log_events, "quoted.replay.finished")) == 1
    assert h.clock.getDelayedCalls() == []


def test_a_publish_raising_is_a_failed_publish(log_events: list[LogEvent]) -> None:
    h = Harness(ticks(*SPEC))

    def broken(items: Sequence[object], **kw: object) -> Deferred[PublishResult]:
        raise ValueError("a bug in the sink")

    h.sink.publish = broken  # type: ignore[method-assign]
    h.feed.startService()
    h.clock.pump([0, 0.25, 0.75])
    # the first at once, the two after it when the replay ends
    failed = ids(log_events, "quoted.replay.publish_failed")
    assert [e["count"] for e in failed] == [1, 2]
    assert failed[0]["log_failure"].check(ValueError)
    assert len(ids(log_events, "quoted.replay.finished")) == 1
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf")])
def test_a_bad_speed(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        Harness(ticks(*SPEC), speed=speed)


def test_no_ticks() -> None:
    with pytest.raises(ValueError, match="no ticks"):
        Harness([])


# -- from a file through the real sink --------------------------------------------------------


def test_a_file_replayed_into_the_store_stamped_with_receipt_time(
    tmp_path: Path, log_events: list[LogEvent]
) -> None:
    """The store shows the recorded prices at the replay's own times; a bad price in the
    file is the sink's to refuse (bad_price), and the rest plays on."""
    path = write(
        tmp_path,
        f"time,symbol,price,volume\n{T0},AAPL,180.5,100\n{at(500)},MSFT,-1,\n"
        f"{at(500)},GLD,190.25,\n{at(1500)},aapl,181,200\n",
    )
    h = Harness(read_ticks(path), loop=True)
    h.clock.advance(100)  # the replay starts later than the recording's own clock
    h.feed.startService()
    h.clock.pump([0, 0.5, 1.0])
    assert [
        (t, [(q.entry.instrument.symbol, q.current_price) for q in qs])
        for t, qs in (h.sink.broadcasts)
    ] == [(100, [("AAPL", 180.5)]), (100.5, [("GLD", 190.25)]), (101.5, [("AAPL", 181.0)])]
    aapl = h.store.lookup("AAPL")
    assert aapl is not None
    assert aapl.latest.last_updated_ms == 101_500  # receipt time, not 2026-12-02's
    assert aapl.volume == 200
    rejected = ids(log_events, "quoted.replay.rejected")
    assert [(e["code"], e["count"]) for e in rejected] == [("bad_price", 1)]
    # the next pass, after the median gap (of 500 and 1000 ms), is new, not stale
    assert h.feed.restart_gap_ms == 750
    h.clock.pump([0.75, 0.5, 1.0])
    assert [t for t, _ in h.sink.broadcasts] == [100, 100.5, 101.5, 102.25, 102.75, 103.75]
    assert [e["code"] for e in ids(log_events, "quoted.replay.rejected")] == ["bad_price"]
    h.feed.stopService()
    assert h.clock.getDelayedCalls() == []


def test_the_shipped_sample_replays_with_nothing_rejected(log_events: list[LogEvent]) -> None:
    got = read_ticks(SAMPLE_FILE)
    h = Harness(got, speed=10)
    h.feed.startService()
    h.clock.pump([0] + [0.01] * 600)  # the 60 s at ten times the pace
    assert len(ids(log_events, "quoted.replay.finished")) == 1
    assert ids(log_events, "quoted.replay.rejected") == []
    assert len(h.sink.broadcasts) == len({t.offset_ms for t in got})
    assert len(h.sink.broadcasts[0][1]) == 20  # every quote set at the first moment
    last = {t.item["symbol"]: t.item["price"] for t in got}
    assert {e.instrument.symbol: e.latest.current_price for e in h.store} == last
    assert h.clock.getDelayedCalls() == []
