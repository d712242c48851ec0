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
publishes. Over wss (``tls``) every connection and REST call goes through one
:class:`~quoted.loadgen.tls.ClientTLS`; ``storm_at`` starts a reconnect storm
(quoted.loadgen.storm) that moment into the window, and the run's check waits until every
storm client is back or failed.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter, deque
from typing import Any, TextIO
from urllib.parse import quote

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTCP

from quoted.loadgen.check import DocumentCheck
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
from quoted.loadgen.options import Options, Unreachable, cpu_seconds
from quoted.loadgen.publish import PUBLISH_SCOPE, Publisher
from quoted.loadgen.storm import Storm
from quoted.loadgen.tls import ClientTLS
from quoted.wire.closecodes import CLOSE_NORMAL
from quoted.wire.tokens import mint_token

MAX_IN_FLIGHT = 500  # handshakes under way at once
CLOSE_WAIT = 3.0  # how long the final closes may take before the rest are aborted
CATCH_UP_QUIET = 0.25  # after the publisher: caught up once nothing was read for this long
CATCH_UP_MAX = 60.0  # and the backlog is empty, or after this long whatever the state
CATCH_UP_POLL = 0.05

__all__ = ["Options", "Runner", "Unreachable", "cpu_seconds", "run"]


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
        self.checked = DocumentCheck()
        self.initial_left = opts.conns + opts.slow
        self.initial_done: defer.Deferred[None] = defer.Deferred()
        self.interrupted = False
        self._waits: list[defer.Deferred[None]] = []
        self._loops: list[task.LoopingCall] = []
        self._closing: defer.Deferred[None] | None = None
        self._progress_last = (reactor.seconds(), cpu_seconds(), 0, 0)
        self.tls = (
            ClientTLS(opts.server_name or opts.host, opts.ca, opts.resume) if opts.tls else None
        )
        self.https = None if self.tls is None else self.tls.policy
        self.storm = Storm(reactor, opts.storm_drop, CLOSE_WAIT) if opts.storm_at else None

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

    def client_address(self, i: int) -> str | None:
        """Connection ``i``'s own address behind the proxy (--forwarded-for), if any: the
        network's hosts in turn (the same one again for a reconnect of ``i``)."""
        net = self.opts.forwarded_for
        if net is None:
            return None
        hosts = max(net.num_addresses - 2, 1)  # between network and broadcast (a /31: one)
        return str(net[1 + i % hosts])

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

    def dial(self, i: int, slow: bool, session: Any = None) -> None:
        symbols = self.symbols_for(i) if self.pool else []
        query = "symbols=" + ",".join(quote(s, safe="") for s in symbols) if symbols else ""
        host = f"{self.opts.host}:{self.opts.port}"
        request = upgrade_request(
            host,
            "/ws/quotes",
            query,
            self.token_for(i),
            self.opts.compress,
            forwarded_for=self.client_address(i),
        )
        conn = LoadConnection(
            i,
            symbols,
            request,
            self.stats,
            self,
            self.reactor,
            compress=self.opts.compress,
            slow=slow,
            tls=self.tls,
        )
        bind = None
        if self.opts.source_ips:
            bind = (self.opts.source_ips[self.next_ip % len(self.opts.source_ips)], 0)
            self.next_ip += 1
        self.in_flight += 1
        tcp: IReactorTCP = self.reactor
        factory: Any = OneShotFactory(conn)
        if self.tls is not None:
            factory = self.tls.wrap(factory, session)
        connector = tcp.connectTCP(self.opts.host, self.opts.port, factory, self.opts.timeout, bind)
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
        if self.storm is not None:
            self.storm.failed(conn, reason)
        self._answered(conn)

    def snapshot(self, conn: LoadConnection) -> None:
        if self.storm is not None:
            self.storm.snapshot(conn)

    def closed(self, conn: LoadConnection, code: int, by_us: bool) -> None:
        if self.live.get(conn.index) is conn:
            del self.live[conn.index]
        if self.storm is not None and self.storm.gone(conn):
            # at once: no --rate and no MAX_IN_FLIGHT, as clients coming back after an outage
            self.dial(conn.index, False, conn.session)
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

    def start_storm(self) -> None:
        if self.storm is None or self.interrupted:
            return
        conns = [c for c in self.live.values() if c.state == OPEN]
        self.err.write(f"quoted-load: storm: {len(conns)} connections reconnect\n")
        self.storm.start(conns)

    async def storm_over(self) -> None:
        """Wait until every client of the storm is back or failed (or an interrupt); every
        dial ends within --timeout, every close within CLOSE_WAIT."""
        storm = self.storm
        if storm is None or not storm.started or storm.done.called:
            return
        bound = self.wait(self.opts.timeout + 2 * CLOSE_WAIT)
        await defer.DeferredList([storm.done, bound], fireOnOneCallback=True)
        if not bound.called:
            bound.callback(None)

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
            status, body = await http_get(
                self.reactor, url, self.rest_token(), self.opts.timeout, self.https
            )
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
            tls=self.https,
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
        storm_call = None
        if self.opts.storm_at is not None:
            storm_call = self.reactor.callLater(self.opts.storm_at, self.start_storm)
        await self.wait(self.opts.duration)
        if storm_call is not None and storm_call.active():
            storm_call.cancel()
        await self.storm_over()
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
        if self.storm is not None:
            self.storm.stop()
        await self.close_all()
        for lc in self._loops:
            lc.stop()
        self._loops.clear()
        self.fold()
        if self.err.isatty():
            self.err.write("\n")
        for line in self.checked.mismatch_lines[:3]:
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
        """Compare every live document with GET /v1/quotes (quoted.loadgen.check)."""

        async def get(url: str) -> tuple[int, bytes]:
            return await http_get(
                self.reactor, url, self.rest_token(), self.opts.timeout, self.https
            )

        await self.checked.run(self.opts.http_base, list(self.live.values()), get, self.err)

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
            "mismatches": self.checked.mismatches,
            "inconclusive": self.checked.inconclusive,
            "verified": self.checked.verified,
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
            "tls": None if self.tls is None else self.tls.summary(),
            "storm": None if self.storm is None else self.storm.summary(),
        }


async def run(opts: Options, reactor: Any, err: TextIO | None = None) -> dict[str, Any]:
    """One load run on ``reactor``; the summary. Raises Unreachable when the server does
    not answer /v1/instruments."""
    return await Runner(opts, reactor, sys.stderr if err is None else err).run()
