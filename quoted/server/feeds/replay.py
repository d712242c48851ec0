"""The replay source: ticks recorded in a file, played back at their recorded pace.

:func:`read_ticks` reads a whole tick file once, at start, before the reactor runs (a file is
either read completely and correctly or the start stops with a :class:`ReplayError` naming the
file and the line, so an operator never serves half a recording). Two formats, told apart by
the first non-empty line:

* CSV (the ``csv`` module's dialect) with the header ``time,symbol,price`` or
  ``time,symbol,price,volume``; the fields are turned into a publish item by
  :func:`quoted.server.feeds.items.from_text`, as a Redis Stream entry is;
* NDJSON: one JSON object a line, a publish item (``symbol``, ``price``, ``time`` required
  here; ``volume``, ``reference_price`` optional).

``time`` is RFC 3339; the file must be in time order. Only what the player needs is checked
here (the shape of the file, the times and their order); prices, symbols and volumes are the
sink's to judge, with its codes, as for every other source.

:class:`ReplayFeed` is the ``IService`` that plays them: each tick at its offset from the first
one divided by ``speed``, on the injected clock, the ticks of one moment in one
``sink.publish`` call (one broadcast). An item goes to the sink without its recorded time: the
sink stamps the receipt time, since a replayed tick is new now and its recorded time, older than
the quote it would replace, would be refused as stale (on the second loop at the latest).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.feeds.items import from_text, parse_time

if TYPE_CHECKING:
    from quoted.server.feeds.sink import PublishResult, Rejected

__all__ = [
    "MAX_BYTES",
    "MAX_TICKS",
    "SAMPLE_FILE",
    "ReplayError",
    "ReplayFeed",
    "ReplayTick",
    "read_ticks",
]

SAMPLE_FILE = str(Path(__file__).with_name("sample-ticks.csv"))
"""The synthetic sample shipped in the package (made by examples/make_replay_sample.py)."""

MAX_TICKS = 1_000_000
MAX_BYTES = 256 * 1024 * 1024
"""A tick file is held in memory for as long as quoted runs: bounded, so a wrong path (a log,
a database dump) stops the start with a message instead of eating the machine's memory."""

CSV_HEADERS = (("time", "symbol", "price"), ("time", "symbol", "price", "volume"))
REQUIRED = ("symbol", "price", "time")

LOG_EVERY = 60.0
"""Seconds between two log lines about rejected items of one code (or failed publishes): a
bad tick in a looped file comes back every loop, and one line a tick would flood the journal."""

NO_GAP_MS = 1000
"""The pause before a loop starts over when every tick of the file has one time (no gap to take
the median of): a second, not the 1 ms floor, so such a file does not broadcast 1,000 times a
second."""

_EPSILON = 1e-6  # seconds: a call due within this is due now (float sums of offsets)


class ReplayError(ValueError):
    """A tick file that cannot be replayed: ``PATH: line N: reason``.

    A problem of the whole file (it cannot be opened, it is too large, it is empty) is reported
    at line 1, where an editor opens it.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}: line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReplayTick:
    """One recorded tick: its time after the first tick's, and the publish item to send
    (without ``time``: the sink stamps the receipt time)."""

    offset_ms: int
    item: dict[str, object]


# -- reading ----------------------------------------------------------------------------------


class _Lines:
    """The lines of a binary file as text, counted (``lineno`` is the last line given), each
    decoded on its own so a bad byte names its line; at most :data:`MAX_BYTES` read in all."""

    def __init__(self, path: str, f: IO[bytes]) -> None:
        self.path = path
        self.lineno = 0
        self._f = f
        self._read = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._f.readline(MAX_BYTES - self._read + 1)
        if not raw:
            raise StopIteration
        self._read += len(raw)
        self.lineno += 1
        if self._read > MAX_BYTES:
            raise self.error(f"the file is larger than {MAX_BYTES >> 20} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"not UTF-8 (byte {e.start + 1} of the line)") from None
        if self.lineno == 1 and text.startswith("\ufeff"):  # a byte order mark (Excel's CSV)
            text = text[1:]
        return text

    def error(self, reason: str, line: int | None = None) -> ReplayError:
        return ReplayError(self.path, self.lineno if line is None else line, reason)


class _Collector:
    """Checks each tick's time and order and makes the :class:`ReplayTick` list."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.ticks: list[ReplayTick] = []
        self._first_ms = 0
        self._last_ms = 0
        self._last_text = ""

    def add(self, time: object, item: dict[str, object]) -> None:
        lines = self.lines
        if not isinstance(time, str):
            raise lines.error(f"bad time {time!r}: not a string")
        try:
            ms = parse_time(time)
        except ValueError as e:
            raise lines.error(f"bad time {time!r}: {e}") from None
        if not self.ticks:
            self._first_ms = ms
        elif ms < self._last_ms:
            raise lines.error(
                f"out of order: {time} is before the previous tick's {self._last_text}"
            )
        if len(self.ticks) >= MAX_TICKS:
            raise lines.error(f"more than {MAX_TICKS:,} ticks")
        symbol = item.get("symbol")
        if isinstance(symbol, str):  # a recording repeats a few symbols a million times
            item["symbol"] = sys.intern(symbol)
        self.ticks.append(ReplayTick(ms - self._first_ms, item))
        self._last_ms = ms
        self._last_text = time


def read_ticks(path: str) -> list[ReplayTick]:
    """Every tick of the CSV or NDJSON file ``path``, in order (module docstring).

    Raises :class:`ReplayError` (``PATH: line N: reason``) for a file that cannot be read, is
    not UTF-8, has neither a CSV header nor a JSON object first, a bad line, a missing field, a
    bad time, a tick earlier than the one before it, no tick at all, or too many.
    Blocking file IO: called once before the reactor runs.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise ReplayError(path, 1, f"cannot open the file: {e.strerror or e}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as e:  # pragma: no cover (an open file can be stat'ed)
            raise ReplayError(path, 1, f"cannot read the file: {e.strerror or e}") from None
        if size > MAX_BYTES:
            raise ReplayError(
                path, 1, f"the file is larger than {MAX_BYTES >> 20} MiB ({size:,} bytes)"
            )
        lines = _Lines(path, f)
        try:
            return _read(lines)
        except OSError as e:
            raise lines.error(f"cannot read the file: {e.strerror or e}") from None


def _read(lines: _Lines) -> list[ReplayTick]:
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise lines.error("empty file: no ticks", line=1)
    collector = _Collector(lines)
    if first.lstrip().startswith("{"):
        _read_ndjson(first, lines, collector)
    else:
        _read_csv(first, lines, collector)
    if not collector.ticks:  # a CSV header and nothing else
        raise lines.error("no ticks after the header", line=lines.lineno + 1)
    return collector.ticks


def _read_csv(first: str, lines: _Lines, collector: _Collector) -> None:
    header = tuple(next(csv.reader([first]), []))
    if header not in CSV_HEADERS:
        shown = first.strip()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise lines.error(
            "expected a CSV header time,symbol,price or time,symbol,price,volume, "
            f"or an NDJSON object; got {shown!r}"
        )
    names = tuple(sys.intern(n) for n in header[1:])
    reader = csv.reader(lines, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise lines.error(f"bad CSV: {e}") from None
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise lines.error(f"{len(row)} fields where the header has {len(header)}")
        cells = [cell.strip() for cell in row]
        for name, cell in zip(header, cells, strict=True):
            if not cell and name in REQUIRED:
                raise lines.error(f"missing field {name}")
        fields = {n: c for n, c in zip(names, cells[1:], strict=True) if c}
        collector.add(cells[0], from_text(fields))


def _read_ndjson(first: str, lines: _Lines, collector: _Collector) -> None:
    line = first
    while True:
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise lines.error(f"bad JSON: {e.msg} (column {e.colno})") from None
            except RecursionError:
                raise lines.error("bad JSON: nested too deeply") from None
            if not isinstance(obj, dict):
                raise lines.error(f"not a JSON object but {type(obj).__name__}")
            for name in REQUIRED:
                if name not in obj:
                    raise lines.error(f"missing field {name}")
            time = obj.pop("time")
            collector.add(time, {sys.intern(k): v for k, v in obj.items()})
        line = next(lines, "")
        if not line:
            return


# -- playing ----------------------------------------------------------------------------------


class Sink(Protocol):
    """What the feed publishes into: :class:`quoted.server.feeds.sink.FeedSink` (a replay
    has no symbols limit nor cursor to pass)."""

    def publish(self, items: Sequence[object]) -> Deferred[PublishResult]: ...


class _Clock(Protocol):
    # IReactorTime, typed for mypy with or without the zope plugin
    def seconds(self) -> float: ...
    def callLater(self, delay: float, f: Any, *args: object) -> IDelayedCall: ...


@dataclass(slots=True)
class _Tally:
    """What happened since the last log line of one kind, and when that line was."""

    count: int = 0
    logged_at: float | None = None
    example: str = ""


class ReplayFeed(Service):
    """Plays ``ticks`` into ``sink`` at their offsets divided by ``speed`` (module docstring).

    The schedule is kept from the start of each pass, not from the previous call, so it does
    not drift. One ``publish`` is in flight at a time: the next call is scheduled when it has
    settled, and whatever fell due meanwhile (a slow broker, a busy reactor) goes out in the
    next call at once, so the replay never falls behind nor piles up Deferreds. With ``loop``
    it starts over after the last tick, after the median gap between its moments (at least
    1 ms, divided by ``speed``); a pass fully missed is skipped. Rejected items and failed
    publishes are logged at most once a minute per kind, with counts, and never stop it.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ticks: Sequence[ReplayTick],
        speed: float,
        loop: bool,
        sink: Sink,
    ) -> None:
        """Raises ValueError for no ticks or a ``speed`` that is not a finite number > 0."""
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed {speed!r} must be a number > 0")
        if not ticks:
            raise ValueError("no ticks to replay")
        self._clock = cast(_Clock, clock)
        self._sink = sink
        self._speed = float(speed)
        self._loop = loop
        self._scale = 1000.0 * speed  # recorded ms per clock second
        self._count = len(ticks)
        moments: list[tuple[int, list[object]]] = []
        for tick in ticks:
            if moments and moments[-1][0] == tick.offset_ms:
                moments[-1][1].append(tick.item)
            else:
                moments.append((tick.offset_ms, [tick.item]))
        self._moments = moments
        gaps = [b[0] - a[0] for a, b in pairwise(moments)]
        self.restart_gap_ms = max(statistics.median(gaps), 1) if gaps else NO_GAP_MS
        self.pass_seconds = (moments[-1][0] + self.restart_gap_ms) / self._scale
        self._index = 0
        self._pass_start = 0.0
        self._call: IDelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self._rejected: dict[str, _Tally] = {}
        self._failed = _Tally()
        self.publishes = 0
        """How many ``publish`` calls were made since construction (for tests and metrics)."""

    def startService(self) -> None:
        super().startService()
        self._index = 0
        self._pass_start = self._clock.seconds()
        self.log.info(
            "replay started: {ticks} ticks over {seconds:.3f}s at speed {speed}, loop {loop}",
            ticks=self._count,
            seconds=self._moments[-1][0] / self._scale,
            speed=self._speed,
            loop=self._loop,
            log_id="quoted.replay.started",
        )
        if self._in_flight is None:  # else it schedules when it settles
            self._schedule()

    def stopService(self) -> Deferred[None] | None:
        """Cancels the pending call; the Deferred of a publish still in flight, if any."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._flush()
        if self._in_flight is None:
            return None
        done: Deferred[None] = Deferred()
        self._in_flight.addBoth(lambda _: done.callback(None))
        return done

    def _due(self) -> float:
        return self._pass_start + self._moments[self._index][0] / self._scale

    def _next_pass(self, now: float) -> None:
        self._index = 0
        self._pass_start += self.pass_seconds
        if now > self._pass_start + self.pass_seconds:  # a whole pass missed: skip it
            self._pass_start += math.floor((now - self._pass_start) / self.pass_seconds) * (
                self.pass_seconds
            )

    def _schedule(self) -> None:
        now = self._clock.seconds()
        if self._index == len(self._moments):
            if not self._loop:
                self._flush()
                self.log.info(
                    "replay finished: {ticks} ticks in {publishes} publishes",
                    ticks=self._count,
                    publishes=self.publishes,
                    log_id="quoted.replay.finished",
                )
                return
            self._next_pass(now)
        self._call = self._clock.callLater(max(0.0, self._due() - now), self._fire)

    def _fire(self) -> None:
        """Publishes the moment this call was for and every one due by now, in one call."""
        self._call = None
        if not self.running:
            return
        now = self._clock.seconds() + _EPSILON
        moments = self._moments
        items: list[object] = list(moments[self._index][1])
        self._index += 1
        while True:
            if self._index == len(moments):
                if not self._loop:
                    break
                self._next_pass(now)
            if self._due() > now:
                break
            items.extend(moments[self._index][1])
            self._index += 1
        self.publishes += 1
        d: Deferred[PublishResult] = maybeDeferred(self._sink.publish, items)
        settled = d.addCallbacks(self._published, self._publish_failed)
        self._in_flight = settled
        settled.addBoth(self._settled).addErrback(self._stopped_by)

    def _stopped_by(self, failure: Failure) -> None:
        self.log.failure("replay stopped by an error", failure, log_id="quoted.replay.failed")

    def _settled(self, _: object) -> None:
        self._in_flight = None
        if self.running:
            self._schedule()

    def _published(self, result: PublishResult) -> None:
        if not result.rejected:
            return
        now = self._clock.seconds()
        by_code: dict[str, Rejected] = {}
        counts = Counter[str]()
        for r in result.rejected:
            counts[r.code] += 1
            by_code[r.code] = r
        for code, n in counts.items():
            tally = self._rejected.setdefault(code, _Tally())
            tally.count += n
            last = by_code[code]
            tally.example = f"{last.symbol}: {last.message}"
            if tally.logged_at is None or now - tally.logged_at >= LOG_EVERY:
                self._log_rejected(code, tally, now)

    def _log_rejected(self, code: str, tally: _Tally, now: float) -> None:
        self.log.warn(
            "replay: {count} item(s) rejected as {code} (the last: {example}); "
            "logged at most once a minute",
            count=tally.count,
            code=code,
            example=tally.example,
            log_id="quoted.replay.rejected",
        )
        tally.count = 0
        tally.logged_at = now

    def _publish_failed(self, failure: Failure) -> None:
        now = self._clock.seconds()
        tally = self._failed
        tally.count += 1
        if tally.logged_at is None or now - tally.logged_at >= LOG_EVERY:
            self.log.failure(
                "replay: {count} publish(es) failed, the replay goes on; "
                "logged at most once a minute",
                failure,
                count=tally.count,
                log_id="quoted.replay.publish_failed",
            )
            tally.count = 0
            tally.logged_at = now

    def _flush(self) -> None:
        """Logs the counts not logged yet (at the end of a replay and at stop)."""
        now = self._clock.seconds()
        for code, tally in self._rejected.items():
            if tally.count:
                self._log_rejected(code, tally, now)
        if self._failed.count:
            self.log.warn(
                "replay: {count} more publish(es) failed",
                count=self._failed.count,
                log_id="quoted.replay.publish_failed",
            )
            self._failed.count = 0
