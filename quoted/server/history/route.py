"""``GET /v1/history``: a symbol's ticks or bars (docs/protocol.md, "History").

The router (quoted.server.web) has verified the token; this checks the query (``symbol``,
``interval``, ``limit``, ``since``: 400 ``bad_request`` naming what is accepted), the symbol
(404 ``unknown_symbol``) and the token's entitlement (403 ``forbidden_symbols``), then
answers from this process's :class:`~quoted.server.history.store.HistoryStore`, or, when
instances share a market, from the shared history (:class:`SharedHistory`: Redis, read
without blocking). When the shared history cannot be read (Redis down, no reply in time)
the answer is this process's own, flagged ``"partial": true``.

Numbers are written as the WebSocket writes them (quoted.server.store.format_number, the
same float: the same text), times as ``last_updated`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from quoted.server.auth import Claims
from quoted.server.errors import HTTPError, answer_later
from quoted.server.feeds.items import parse_time
from quoted.server.history.store import ACCEPTED, TICK, Bounds, HistoryStore, Row
from quoted.server.store import Entry, QuoteStore, format_number, format_time_ms
from quoted.wire.symbols import MAX_SYMBOL_LEN, upper

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "HistoryRoute", "Query", "SharedHistory", "render"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
# how long a read of the shared history may take before this process answers on its own
SHARED_TIMEOUT = 1.0
_log = Logger()


class SharedHistory(Protocol):
    """The history every instance shares (quoted.server.cluster.history.RedisHistory)."""

    @property
    def available(self) -> bool:
        """Whether it can be read now (Redis up)."""
        ...

    def rows(
        self, symbol: str, interval: str, limit: int, since_ms: int | None
    ) -> Deferred[list[Row]]:
        """As :meth:`HistoryStore.rows`, read from where it is shared."""
        ...


@dataclass(frozen=True, slots=True)
class Query:
    """One checked request."""

    entry: Entry
    interval: str
    limit: int
    since_ms: int | None


def _bad(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def _one(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name, [])
    if len(values) > 1:
        raise _bad(f"{name.decode()} is given {len(values)} times; give it once")
    return values[0].decode("utf-8", "replace") if values else None


def parse_query(request: Request, store: QuoteStore, claims: Claims, bounds: Bounds) -> Query:
    """The request's query, checked; an HTTPError (400, 404, 403) saying what is wrong."""
    raw = _one(request, b"symbol")
    symbol = upper(raw.strip()) if raw is not None else ""
    if not symbol or "," in symbol:
        raise _bad("symbol is required: exactly one symbol, such as symbol=AAPL")
    interval = _one(request, b"interval") or "1m"
    if interval not in ACCEPTED:
        raise _bad(f"interval must be one of {', '.join(ACCEPTED)}")
    text = _one(request, b"limit")
    limit = DEFAULT_LIMIT
    if text is not None:
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise _bad(f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
    since = _one(request, b"since")
    since_ms = None
    if since is not None:
        try:
            since_ms = parse_time(since)
        except ValueError:
            raise _bad(
                "since must be an RFC 3339 date-time such as 2026-12-02T14:30:00.000Z"
            ) from None
    entry = store.lookup(symbol) if len(symbol) <= MAX_SYMBOL_LEN else None
    if entry is None:
        raise HTTPError(
            404, "unknown_symbol", f"{symbol[:64]!r} is not an instrument of this server"
        )
    if not claims.entitled(entry.symbol):
        raise HTTPError(403, "forbidden_symbols", f"the token does not entitle {entry.symbol}")
    return Query(entry, interval, min(limit, bounds.kept(interval)), since_ms)


def _num(v: float) -> bytes:
    return b"null" if math.isnan(v) else format_number(v).encode()


def _time(ms: float) -> bytes:
    return b'"' + format_time_ms(int(ms)).encode() + b'"'


def render(entry: Entry, interval: str, rows: Sequence[Row], partial: bool = False) -> bytes:
    """The answer's JSON: ``{"symbol","interval","ticks"|"bars"[,"partial":true]}``."""
    if interval == TICK:
        items = [
            b'{"time":%b,"price":%b,"volume":%b}' % (_time(t), _num(p), _num(v)) for t, p, v in rows
        ]
        kind = b"ticks"
    else:
        items = [
            b'{"time":%b,"open":%b,"high":%b,"low":%b,"close":%b,"volume":%b}'
            % (_time(t), _num(o), _num(h), _num(lo), _num(c), _num(v))
            for t, o, h, lo, c, v in rows
        ]
        kind = b"bars"
    tail = b',"partial":true}\n' if partial else b"}\n"
    return b'{"symbol":%b,"interval":"%b","%b":[%b]%b' % (
        entry.key_json,
        interval.encode(),
        kind,
        b",".join(items),
        tail,
    )


class HistoryRoute:
    """The handler the router calls with a verified token's claims."""

    def __init__(
        self,
        store: QuoteStore,
        history: HistoryStore,
        clock: IReactorTime,
        shared: SharedHistory | None = None,
        timeout: float = SHARED_TIMEOUT,
    ) -> None:
        self.store = store
        self.history = history
        self.clock = clock
        self.shared = shared
        self.timeout = timeout

    def __call__(self, request: Request, claims: Claims) -> bytes | int:
        q = parse_query(request, self.store, claims, self.history.bounds)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        shared = self.shared
        if shared is None:
            return self._local(q, partial=False)
        if not shared.available:
            return self._local(q, partial=True)
        d = shared.rows(q.entry.symbol, q.interval, q.limit, q.since_ms)
        d.addTimeout(self.timeout, self.clock)
        return answer_later(
            request, d, lambda rows: render(q.entry, q.interval, rows), self._fallback(q)
        )

    def _local(self, q: Query, *, partial: bool) -> bytes:
        rows = self.history.rows(q.entry.symbol, q.interval, q.limit, q.since_ms)
        return render(q.entry, q.interval, rows, partial)

    def _fallback(self, q: Query) -> Callable[[Failure], bytes]:
        def answer(failure: Failure) -> bytes:
            _log.warn(
                "shared history unreadable, answering from this instance: {error}",
                error=failure.getErrorMessage(),
                log_id="quoted.history.partial",
            )
            return self._local(q, partial=True)

        return answer
