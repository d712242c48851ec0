"""quoted-load's publisher: posts price batches to ``POST /v1/quotes`` at a constant rate.

Every ``1/rate`` seconds it posts ``{"quotes": [{"symbol", "price"}, ...]}`` with ``per_post``
symbols of the pool (post n takes symbols n*K .. n*K+K-1, round the pool), each price a small
random walk around the instrument's base price (/v1/instruments), sent in cents (the walk
itself is not rounded, so a $1 instrument's small steps add up to cents moves). Items
carry no ``time``: the server stamps them on receipt, so the subscribers' latency (arrival
minus ``last_updated``) is from the POST's receipt to their read.

Posts go over kept-alive HTTP/1.1 connections (an ``Agent`` on a persistent
``HTTPConnectionPool``). The rate is held whatever the server does (a publisher that slows
with the server hides its tail): a tick that finds ``max_in_flight`` posts unanswered is
counted as skipped, not delayed. Counted: posts, items sent, HTTP statuses, accepted items,
rejected items by code (from the 200 body), transport errors and timeouts, and each post's
round trip into an HDR histogram.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from quoted.loadgen.http import Body

__all__ = ["PUBLISH_SCOPE", "Publisher", "cents", "walk"]

PUBLISH_SCOPE = "quotes:publish"
MAX_IN_FLIGHT = 8  # posts unanswered at once (and kept-alive connections)
STEP = 0.002  # a price moves at most 0.2% a post
BAND = 0.2  # and stays within 20% of its base price
MAX_BODY_KEPT = 64 * 1024  # of a response body, read to the end but kept only this far


def walk(rng: random.Random, price: float, base: float) -> float:
    """The next price of the walk: ``price`` moved by at most STEP, kept within BAND of
    ``base`` (not rounded: :func:`cents` is what is sent)."""
    p = price * (1 + rng.uniform(-STEP, STEP))
    return min(max(p, base * (1 - BAND)), base * (1 + BAND))


def cents(price: float) -> float:
    """What is posted: the price in cents, at least one cent."""
    return max(round(price, 2), 0.01)


def _timed_out(result: object, timeout: float) -> None:
    """addTimeout's cancellation, whatever the cancelled attempt failed with (a connection
    attempt fails with ConnectingCancelledError, not CancelledError)."""
    raise defer.TimeoutError(f"no answer within {timeout}s")


@implementer(IBodyProducer)
class _Bytes:
    """A request body already in memory (no cooperator, no reactor)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Publisher:
    """Posts ``per_post`` of ``pool``'s symbols ``rate`` times a second to ``url``.

    ``pool`` is (symbol, base price) pairs. :meth:`start` begins the posts, :meth:`stop`
    ends them and fires once every post under way has its answer (or its timeout)."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        token: str,
        pool: Sequence[tuple[str, float]],
        *,
        rate: float,
        per_post: int,
        timeout: float,
        rng: random.Random,
        max_in_flight: int = MAX_IN_FLIGHT,
        tls: IPolicyForHTTPS | None = None,
    ) -> None:
        if not pool:
            raise ValueError("publisher: no symbols to publish")
        if rate <= 0 or per_post < 1:
            raise ValueError("publisher: the rate must be above 0 and per_post at least 1")
        self.reactor, self.url, self.timeout, self.rng = reactor, url.encode("ascii"), timeout, rng
        self.rate, self.max_in_flight = rate, max_in_flight
        self.per_post = min(per_post, len(pool))
        self.symbols = [s for s, _ in pool]
        self.base = {s: b for s, b in pool}
        self.price = dict(self.base)
        self.headers = Headers(
            {
                b"Authorization": [f"Bearer {token}".encode()],
                b"Content-Type": [b"application/json"],
            }
        )
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_in_flight
        self.pool.retryAutomatically = False  # a post is not idempotent: never sent twice
        self.agent = (
            Agent(reactor, connectTimeout=timeout, pool=self.pool)
            if tls is None  # https with --ca and --server-name: the run's policy
            else Agent(reactor, contextFactory=tls, connectTimeout=timeout, pool=self.pool)
        )
        self.next_post = 0
        self.in_flight: set[defer.Deferred[None]] = set()
        self.posts = self.items = self.accepted = self.skipped = 0
        self.statuses: Counter[str] = Counter()  # HTTP status -> posts
        self.rejected: Counter[str] = Counter()  # item code -> items
        self.errors: Counter[str] = Counter()  # transport failures and timeouts by kind
        self.bad_bodies = 0  # 200s whose body was not the publish API's
        self.first_errors: list[str] = []
        self.post_ms = HdrHistogram(1, 3_600_000, 3)
        self._loop: task.LoopingCall | None = None
        self._loop_done: defer.Deferred[Any] | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- the posts ------------------------------------------------------------------------

    def body(self) -> bytes:
        """The next post's body: the next per_post symbols of the pool, each a step further."""
        n, k = len(self.symbols), self.per_post
        start = self.next_post * k
        self.next_post += 1
        items = []
        for j in range(k):
            sym = self.symbols[(start + j) % n]
            self.price[sym] = p = walk(self.rng, self.price[sym], self.base[sym])
            items.append({"symbol": sym, "price": cents(p)})
        return json.dumps({"quotes": items}, separators=(",", ":")).encode()

    def tick(self, count: int = 1) -> None:
        """``count`` posts are due (LoopingCall.withCount: more than one after a late tick)."""
        for _ in range(count):
            if len(self.in_flight) >= self.max_in_flight:
                self.skipped += 1
                continue
            d = defer.ensureDeferred(self.post(self.body()))
            self.in_flight.add(d)
            d.addBoth(self._settled, d)

    def _settled(self, result: Any, d: defer.Deferred[None]) -> None:
        self.in_flight.discard(d)
        if isinstance(result, Failure):  # post() catches what it expects; this is a bug
            self.error("internal", result.getErrorMessage())

    async def post(self, body: bytes) -> None:
        self.posts += 1
        self.items += self.per_post
        sent = self.reactor.seconds()
        try:
            d = self.agent.request(b"POST", self.url, self.headers, _Bytes(body))
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
            response = await d
            reader = Body(keep=MAX_BODY_KEPT)
            response.deliverBody(reader)
            reader.done.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timed_out)
            answer = await reader.done
        except defer.TimeoutError as e:
            self.error("timeout", str(e))
            return
        except Exception as e:
            self.error(e.__class__.__name__, str(e))
            return
        ms = (self.reactor.seconds() - sent) * 1000
        self.post_ms.record_value(max(1, min(round(ms), 3_600_000)))
        self.statuses[str(response.code)] += 1
        if response.code != 200:
            self.note(f"{response.code} {answer[:200]!r}")
            return
        try:
            result = json.loads(answer)
            accepted, rejected = int(result["accepted"]), result["rejected"]
            codes = [str(r["code"]) for r in rejected]
        except (ValueError, KeyError, TypeError):
            self.bad_bodies += 1
            self.note(f"200 with {answer[:200]!r}")
            return
        self.accepted += accepted
        self.rejected.update(codes)
        if codes:
            self.note(f"rejected {rejected[0]}")

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.note(f"{kind}: {message}")

    def note(self, line: str) -> None:
        if len(self.first_errors) < 3:
            self.first_errors.append(line)

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Post now, then every 1/rate seconds."""
        self.started_at = self.reactor.seconds()
        self._loop = task.LoopingCall.withCount(self.tick)
        self._loop.clock = self.reactor
        self._loop_done = self._loop.start(1 / self.rate, now=True)
        self._loop_done.addErrback(lambda f: self.error("internal", f.getErrorMessage()))

    async def stop(self) -> None:
        """No more posts; fires when the ones under way have their answers, then closes the
        kept-alive connections."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.stopped_at is None:
            self.stopped_at = self.reactor.seconds()
        if self.in_flight:
            await defer.DeferredList(list(self.in_flight))
        await self.pool.closeCachedConnections()

    def summary(self) -> dict[str, Any]:
        h = self.post_ms
        window = (
            (self.stopped_at or self.reactor.seconds()) - self.started_at
            if self.started_at is not None
            else 0.0
        )

        def pct(p: float) -> float | None:
            return h.get_value_at_percentile(p) if h.get_total_count() else None

        return {
            "rate": self.rate,
            "symbols_per_post": self.per_post,
            "posts": self.posts,
            "items": self.items,
            "accepted": self.accepted,
            "rejected": sum(self.rejected.values()),
            "rejected_by": dict(self.rejected),
            "statuses": dict(self.statuses),
            "non_200": sum(n for code, n in self.statuses.items() if code != "200"),
            "errors": dict(self.errors),
            "bad_bodies": self.bad_bodies,
            "skipped": self.skipped,
            "post_ms": {"p50": pct(50), "p99": pct(99), "max": pct(100)},
            "window_s": round(window, 3),
        }
