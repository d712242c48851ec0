"""quoted-load's run: dialing at a rate, churn, slow readers, the final check, the summary.

:class:`Runner` opens the connections (quoted.loadgen.conn) at most ``rate`` handshakes per
second and at most MAX_IN_FLIGHT at once, spread over the source addresses; holds the
load for the duration (counted from when every initial connection has answered);
then compares each live document with GET /v1/quotes and closes everything. With
``publish_rate``, a :class:`~quoted.loadgen.publish.Publisher` posts prices to
``POST /v1/quotes`` over the same window and is stopped (every post answered) before the
settle and the check, so the documents are compared with a still REST; before the settle the
run then waits (at most CATCH_UP_MAX) until the subscribers have read and parsed everything
the server sent, since a load generator on one core falls behind a server fanning out a
post to thousands and its documents would otherwise lag REST (inconclusive, not verified).
``catch_up`` asks for the same wait without a publisher of its own (one in another
process, whose posts end before this run's check), and ``conns = 0`` makes a run that only
publishes.
"""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import sys
from collections import Counter, deque
from typing import Any, TextIO
from urllib.parse import quote

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTCP

from quoted.loadgen.conn import (
    CLOSED,
    OPEN,
    Backlog,
    LoadConnection,
    OneShotFactory,
    Stats,
    upgrade_request,
)
from quoted.loadgen.http import http_get
from quoted.loadgen.publish import PUBLISH_SCOPE, Publisher
from quoted.wire.closecodes import CLOSE_NORMAL
from quoted.wire.tokens import mint_token

MAX_IN_FLIGHT = 500  # handshakes under way at once
REST_CHUNK = 1000  # the REST limit of symbols per request
REST_URL_BYTES = 7000  # below the server's 8 KiB URL limit
CLOSE_WAIT = 3.0  # how long the final closes may take before the rest are aborted
CATCH_UP_QUIET = 0.25  # after the publisher: caught up once nothing was read for this long
CATCH_UP_MAX = 60.0  # and the backlog is empty, or after this long whatever the state
CATCH_UP_POLL = 0.05


class Unreachable(Exception):
    """The server did not answer at the start of the run."""


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    url: str
    host: str
    port: int
    secret: str = dataclasses.field(default="", repr=False)
    token: str = dataclasses.field(default="", repr=False)
    conns: int = 100
    symbols_per_conn: int = 5
    symbols_pool: int = 50
    duration: float = 30.0
    rate: float = 0.0
    source_ips: tuple[str, ...] = ()
    slow: int = 0
    churn: int = 0
    compress: bool = False
    json: bool = False
    settle: float = 1.0
    seed: int | None = None
    timeout: float = 10.0
    publish_rate: float = 0.0  # posts a second to POST /v1/quotes (0: no publisher)
    publish_symbols: int = 50  # symbols per post
    publish_token: str = dataclasses.field(default="", repr=False)
    catch_up: bool = False  # wait until the subscribers caught up before the check

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.port}"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Runner:
    """One run: dialing at a rate, churn, slow readers, the final check and the summary."""

    def __init__(self, opts: Options, reactor: Any, err: TextIO) -> None:
        self.opts, self.reactor, self.err = opts, reactor, err
        self.stats = Stats()
        self.stats.backlog = Backlog(reactor)
        self.latency = HdrHistogram(1, 3_600_000, 3)
        self.connect_hist = HdrHistogram(1, 3_600_000_000, 3)  # microseconds
        self.rng = random.Random(opts.seed)
        self.pool: list[str] = []
        self.base_prices: dict[str, float] = {}
        self.publisher: Publisher | None = None
        self.queue: deque[tuple[int, bool]] = deque()  # (index, slow) waiting to dial
        self.in_flight = 0
        self.credit = 1.0
        self.last_pump = reactor.seconds()
        self.next_index = opts.conns + opts.slow
        self.next_ip = 0
        self.live: dict[int, LoadConnection] = {}  # open normal connections
        self.slow_conns: list[LoadConnection] = []
        self.slow_opened = 0
        self.slow_codes: Counter[str] = Counter()
        self.churn_opened = self.churn_closed = 0
        self.churn_pending: set[int] = set()
        self.mismatches = self.inconclusive = self.verified = 0
        self.mismatch_lines: list[str] = []
        self.initial_left = opts.conns + opts.slow
        self.initial_done: defer.Deferred[None] = defer.Deferred()
        self.interrupted = False
        self._waits: list[defer.Deferred[None]] = []
        self._loops: list[task.LoopingCall] = []
        self._closing: defer.Deferred[None] | None = None
        self._progress_last = (reactor.seconds(), cpu_seconds(), 0, 0)

    # -- symbols and tokens ---------------------------------------------------------------

    def symbols_for(self, i: int) -> list[str]:
        pool, k = self.pool, min(self.opts.symbols_per_conn, len(self.pool))
        if self.opts.seed is not None:
            return random.Random(f"{self.opts.seed}-{i}").sample(pool, k)
        return [pool[(i * k + j) % len(pool)] for j in range(k)]

    def token_for(self, i: int) -> str:
        if self.opts.token:
            return self.opts.token
        ttl = self.opts.duration + 3600
        return mint_token(
            self.opts.secret.encode(), f"load-{i}", now=self.reactor.seconds(), ttl=ttl
        )

    # -- dialing --------------------------------------------------------------------------

    def pump(self) -> None:
        now = self.reactor.seconds()
        rate = self.opts.rate
        if rate:
            self.credit = min(self.credit + rate * (now - self.last_pump), max(1.0, rate * 0.05))
        self.last_pump = now
        while self.queue and self.in_flight < MAX_IN_FLIGHT and (not rate or self.credit >= 1):
            self.credit -= 1
            self.dial(*self.queue.popleft())

    def dial(self, i: int, slow: bool) -> None:
        symbols = self.symbols_for(i) if self.pool else []
        query = "symbols=" + ",".join(quote(s, safe="") for s in symbols) if symbols else ""
        host = f"{self.opts.host}:{self.opts.port}"
        request = upgrade_request(host, "/ws/quotes", query, self.token_for(i), self.opts.compress)
        conn = LoadConnection(
            i,
            symbols,
            request,
            self.stats,
            self,
            self.reactor,
            compress=self.opts.compress,
            slow=slow,
        )
        bind = None
        if self.opts.source_ips:
            bind = (self.opts.source_ips[self.next_ip % len(self.opts.source_ips)], 0)
            self.next_ip += 1
        self.in_flight += 1
        tcp: IReactorTCP = self.reactor
        connector = tcp.connectTCP(
            self.opts.host, self.opts.port, OneShotFactory(conn), self.opts.timeout, bind
        )
        conn.start(connector, self.opts.timeout)

    def _answered(self, conn: LoadConnection) -> None:
        self.in_flight -= 1
        if conn.index < self.opts.conns + self.opts.slow:
            self.initial_left -= 1
            if self.initial_left == 0 and not self.initial_done.called:
                self.initial_done.callback(None)
        self.pump()

    # Hooks
    def opened(self, conn: LoadConnection) -> None:
        if conn.slow:
            self.slow_conns.append(conn)
            self.slow_opened += 1
        else:
            self.live[conn.index] = conn
            if conn.index in self.churn_pending:
                self.churn_opened += 1
        self.churn_pending.discard(conn.index)
        self._answered(conn)

    def failed(self, conn: LoadConnection, reason: str) -> None:
        self.churn_pending.discard(conn.index)
        self._answered(conn)

    def closed(self, conn: LoadConnection, code: int, by_us: bool) -> None:
        self.live.pop(conn.index, None)
        if conn.slow and not by_us:
            self.slow_codes[str(code)] += 1
        elif not by_us:
            self.stats.closed[str(code)] += 1
        if self._closing is not None and not self._closing.called and self._all_closed():
            self._closing.callback(None)

    def _all_closed(self) -> bool:
        return not self.live and all(c.state == CLOSED for c in self.slow_conns)

    def churn_tick(self) -> None:
        victims = [c for c in self.live.values() if c.state == OPEN]
        for conn in self.rng.sample(victims, min(self.opts.churn, len(victims))):
            conn.close(CLOSE_NORMAL)
            self.churn_closed += 1
            self.churn_pending.add(self.next_index)
            self.queue.append((self.next_index, False))
            self.next_index += 1
        self.pump()

    # -- time ------------------------------------------------------------------------------

    def wait(self, seconds: float) -> defer.Deferred[None]:
        """Fires after ``seconds``, or at once on interrupt."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.interrupted:
            d.callback(None)
            return d
        call = self.reactor.callLater(seconds, d.callback, None)

        def cancel(result: None) -> None:
            if call.active():
                call.cancel()
            self._waits.remove(d)
            return result

        d.addBoth(cancel)
        self._waits.append(d)
        return d

    def interrupt(self) -> None:
        self.interrupted = True
        for d in list(self._waits):
            if not d.called:
                d.callback(None)
        if not self.initial_done.called:
            self.initial_done.callback(None)

    def loop(self, interval: float, fn: Any) -> None:
        lc = task.LoopingCall(fn)
        lc.clock = self.reactor
        lc.start(interval, now=False).addErrback(self._loop_failed, fn)
        self._loops.append(lc)

    def _loop_failed(self, failure: Any, fn: Any) -> None:
        print(
            f"quoted-load: {getattr(fn, '__name__', fn)} failed: {failure.getErrorMessage()}",
            file=self.err,
        )

    def fold(self) -> None:
        """Move the per-ms latency counts into the histogram (once a second)."""
        lat, self.stats.latency = self.stats.latency, {}
        record = self.latency.record_value
        for ms, n in lat.items():
            record(min(ms, 3_600_000), n)
        us, self.stats.connect_us = self.stats.connect_us, []
        for v in us:
            self.connect_hist.record_value(max(1, min(v, 3_600_000_000)))

    def progress(self) -> None:
        self.fold()
        now, cpu = self.reactor.seconds(), cpu_seconds()
        t0, c0, m0, u0 = self._progress_last
        dt = max(now - t0, 1e-6)
        s = self.stats
        self._progress_last = (now, cpu, s.messages, s.updates)
        self.err.write(
            f"\rconnected {len(self.live)}/{self.opts.conns} failed {s.failed}"
            f"  msgs/s {(s.messages - m0) / dt:.0f}  updates/s {(s.updates - u0) / dt:.0f}"
            f"  p99 {self.latency.get_value_at_percentile(99)}ms"
            f"  cpu {(cpu - c0) / dt * 100:.0f}%"
            + (
                f"  posts {self.publisher.posts} accepted {self.publisher.accepted}"
                if self.publisher is not None
                else ""
            )
            + "   "
        )
        self.err.flush()

    # -- the run ----------------------------------------------------------------------------

    def rest_token(self) -> str:
        return self.opts.token or mint_token(
            self.opts.secret.encode(),
            "load-rest",
            now=self.reactor.seconds(),
            ttl=self.opts.duration + 3600,
        )

    async def fetch_pool(self) -> None:
        url = self.opts.http_base + "/v1/instruments"
        try:
            status, body = await http_get(self.reactor, url, self.rest_token(), self.opts.timeout)
        except Exception as e:
            raise Unreachable(f"GET {url}: {e.__class__.__name__}: {e}") from None
        if status != 200:
            print(
                f"quoted-load: GET /v1/instruments: {status} {body[:200]!r}; connecting "
                "without symbols",
                file=self.err,
            )
            return
        instruments = json.loads(body)["instruments"]
        symbols = [i["symbol"] for i in instruments]
        self.base_prices = {i["symbol"]: float(i["base_price"]) for i in instruments}
        if len(symbols) < self.opts.symbols_pool:
            print(
                f"quoted-load: the server serves {len(symbols)} instruments; "
                f"--symbols-pool {self.opts.symbols_pool} becomes {len(symbols)}",
                file=self.err,
            )
        self.pool = symbols[: self.opts.symbols_pool]

    def publish_token(self) -> str:
        return self.opts.publish_token or mint_token(
            self.opts.secret.encode(),
            "load-publisher",
            now=self.reactor.seconds(),
            ttl=self.opts.duration + 3600,
            scope=PUBLISH_SCOPE,
        )

    def make_publisher(self) -> Publisher | None:
        """The publisher over the subscribers' pool, or None (no --publish-rate, or nothing
        to publish)."""
        if not self.opts.publish_rate:
            return None
        if not self.pool:
            print("quoted-load: no instruments: nothing to publish", file=self.err)
            return None
        if self.opts.publish_symbols > len(self.pool):
            print(
                f"quoted-load: --publish-symbols {self.opts.publish_symbols} becomes "
                f"{len(self.pool)}, the symbols of the pool",
                file=self.err,
            )
        return Publisher(
            self.reactor,
            self.opts.http_base + "/v1/quotes",
            self.publish_token(),
            [(s, self.base_prices[s]) for s in self.pool],
            rate=self.opts.publish_rate,
            per_post=self.opts.publish_symbols,
            timeout=self.opts.timeout,
            rng=random.Random(None if self.opts.seed is None else f"{self.opts.seed}-publish"),
        )

    async def run(self) -> dict[str, Any]:
        await self.fetch_pool()
        began = self.reactor.seconds()
        self.queue.extend((i, False) for i in range(self.opts.conns))
        self.queue.extend(
            (i, True) for i in range(self.opts.conns, self.opts.conns + self.opts.slow)
        )
        self.loop(0.01, self.pump)
        self.loop(1.0, self.progress if self.err.isatty() else self.fold)
        self.pump()
        if self.initial_left == 0 and not self.initial_done.called:
            self.initial_done.callback(None)  # nothing to dial: a publisher-only run
        await self.initial_done
        window_start = self.reactor.seconds()
        if self.opts.churn:
            self.loop(1.0, self.churn_tick)
        self.publisher = self.make_publisher()
        if self.publisher is not None and not self.interrupted:
            self.publisher.start()
        await self.wait(self.opts.duration)
        window_end = self.reactor.seconds()
        for lc in self._loops[2:]:
            lc.stop()
        del self._loops[2:]
        catch_up = None
        if self.publisher is not None:
            await self.publisher.stop()
            for line in self.publisher.first_errors:
                print("quoted-load: publish:", line, file=self.err)
        if self.publisher is not None or self.opts.catch_up:
            catch_up = await self.caught_up()
        self.queue.clear()
        for c in self.slow_conns:
            c.resume()
        await self.wait(self.opts.settle)
        await self.check()
        await self.close_all()
        for lc in self._loops:
            lc.stop()
        self._loops.clear()
        self.fold()
        if self.err.isatty():
            self.err.write("\n")
        for line in self.mismatch_lines[:3]:
            print("quoted-load: mismatch:", line, file=self.err)
        summary = self.summary(window_end - window_start, window_end - began)
        summary["catch_up_s"] = catch_up
        return summary

    async def caught_up(self) -> float:
        """Wait until the backlog is empty and nothing was read for CATCH_UP_QUIET (every
        message the server sent is parsed), at most CATCH_UP_MAX; the seconds waited."""
        backlog = self.stats.backlog
        began = now = self.reactor.seconds()
        while backlog is not None and not self.interrupted and now - began < CATCH_UP_MAX:
            if not backlog.queue and now - backlog.last_read >= CATCH_UP_QUIET:
                break
            await self.wait(CATCH_UP_POLL)
            now = self.reactor.seconds()
        return round(float(now - began), 3)

    async def check(self) -> None:
        """Compare every live document with GET /v1/quotes, symbol by symbol."""
        in_use = sorted({s for c in self.live.values() for s in c.symbols})
        chunk: list[str] = []
        size = 0
        for sym in [*in_use, None]:
            q = quote(sym, safe="") if sym is not None else ""
            if sym is None or len(chunk) == REST_CHUNK or size + len(q) > REST_URL_BYTES:
                if chunk:
                    await self.check_chunk(chunk)
                chunk, size = [], 0
            if sym is not None:
                chunk.append(sym)
                size += len(q) + 1

    async def check_chunk(self, symbols: list[str]) -> None:
        url = (
            self.opts.http_base
            + "/v1/quotes?symbols="
            + ",".join(quote(s, safe="") for s in symbols)
        )
        try:
            status, body = await http_get(self.reactor, url, self.rest_token(), self.opts.timeout)
        except Exception as e:
            print(f"quoted-load: final check: GET /v1/quotes: {e}", file=self.err)
            return
        if status != 200:
            print(f"quoted-load: final check: GET /v1/quotes: {status}", file=self.err)
            return
        rest: dict[str, Any] = json.loads(body)["quotes"]
        wanted = set(symbols)
        for conn in [c for c in self.live.values() if c.state == OPEN]:
            quotes = conn.doc.get("quotes") or {}
            for sym in conn.symbols:
                if sym not in wanted or sym not in rest:
                    continue
                mine, theirs = quotes.get(sym), rest[sym]
                if mine is None:
                    self.mismatch(conn, sym, mine, theirs)
                elif mine.get("last_updated") != theirs.get("last_updated"):
                    self.inconclusive += 1
                elif mine != theirs:
                    self.mismatch(conn, sym, mine, theirs)
                else:
                    self.verified += 1

    def mismatch(self, conn: LoadConnection, sym: str, mine: Any, theirs: Any) -> None:
        self.mismatches += 1
        if len(self.mismatch_lines) < 3:
            self.mismatch_lines.append(f"connection {conn.index} {sym}: {mine} != REST {theirs}")

    async def close_all(self) -> None:
        self._closing = defer.Deferred()
        conns = [*self.live.values(), *self.slow_conns]
        for c in conns:
            c.close(CLOSE_NORMAL)
        if not self._all_closed():
            self._closing.addTimeout(CLOSE_WAIT, self.reactor)
            try:
                await self._closing
            except defer.TimeoutError:
                pass
        for c in conns:
            c.abort()

    def summary(self, window: float, elapsed: float) -> dict[str, Any]:
        s, lat, con = self.stats, self.latency, self.connect_hist
        cpu = cpu_seconds()

        def pct(h: HdrHistogram, p: float, scale: float = 1.0) -> float | None:
            return round(h.get_value_at_percentile(p) / scale, 3) if h.get_total_count() else None

        return {
            "connected": s.connected,
            "failed": s.failed,
            "messages": s.messages,
            "updates": s.updates,
            "bytes": s.bytes,
            "latency_ms": {
                "p50": pct(lat, 50),
                "p95": pct(lat, 95),
                "p99": pct(lat, 99),
                "max": lat.get_max_value() if lat.get_total_count() else None,
            },
            "connect_ms": {"p50": pct(con, 50, 1000), "p99": pct(con, 99, 1000)},
            "mismatches": self.mismatches,
            "inconclusive": self.inconclusive,
            "verified": self.verified,
            "seq_gaps": s.seq_gaps,
            "stale_updates": s.stale,
            "patch_mismatches": s.patch_mismatches,
            "patch_errors": s.patch_errors,
            "protocol_errors": s.protocol_errors,
            "closed": dict(s.closed),
            "slow": {
                "opened": self.slow_opened,
                "closed": sum(self.slow_codes.values()),
                "codes": dict(self.slow_codes),
            },
            "churn": {"opened": self.churn_opened, "closed": self.churn_closed},
            "duration_s": round(window, 3),
            "elapsed_s": round(elapsed, 3),
            "cpu_s": round(cpu, 3),
            "failed_by": dict(s.failed_by),
            "failed_codes": dict(s.failed_codes),
            "interrupted": self.interrupted,
            "publish": None if self.publisher is None else self.publisher.summary(),
        }


async def run(opts: Options, reactor: Any, err: TextIO | None = None) -> dict[str, Any]:
    """One load run on ``reactor``; the summary. Raises Unreachable when the server does
    not answer /v1/instruments."""
    return await Runner(opts, reactor, sys.stderr if err is None else err).run()
