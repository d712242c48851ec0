"""quoted-watch's sparkline column: a symbol's recent prices as Unicode block characters.

:class:`Trend` keeps one symbol's 1-minute closes and raw ticks, loaded once from
``GET /v1/history`` (docs/protocol.md, "History") and then extended from the stream: each quote's
``current_price`` at its ``last_updated`` updates the open minute or starts the next, so nothing
polls. Like the browser board it draws the ticks while there are fewer than ``ENOUGH_BARS``
bars. :class:`HistoryFetcher` asks the endpoint with :class:`twisted.web.client.Agent` on the
injected reactor (never blocking it), with the board's token and CA file; any refusal or
failure is ``None``, and the column then fills from the stream alone.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.ssl import Certificate
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = "_.-:=+*#"
BAR_SECONDS = 60
ENOUGH_BARS = 10
FETCH_TIMEOUT = 10.0


def blocks(encoding: str) -> str:
    return BLOCKS if "utf" in encoding.lower() else ASCII_BLOCKS


def sparkline(values: Sequence[float], width: int, chars: str = BLOCKS) -> str:
    """The last ``width`` values, lowest to highest over ``chars``, right-aligned in ``width``;
    a flat series sits in the middle."""
    shown = list(values)[-width:] if width > 0 else []
    if not shown:
        return " " * max(0, width)
    lo, hi = min(shown), max(shown)
    top = len(chars) - 1
    if hi == lo:
        line = chars[top // 2] * len(shown)
    else:
        line = "".join(chars[round((v - lo) / (hi - lo) * top)] for v in shown)
    return line.rjust(width)


def parse_time(stamp: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 stamp (``...Z``), or None."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Trend:
    """One symbol's 1-minute closes (``bars``: ``[start, close]``, oldest first) and ticks."""

    def __init__(self, limit: int = 60) -> None:
        self.bars: deque[list[float]] = deque(maxlen=limit)
        self.ticks: deque[tuple[float, float]] = deque(maxlen=limit)
        self.loaded = False
        self._pending: list[tuple[float, float]] = []

    def load(self, bars: Mapping[str, Any] | None, ticks: Mapping[str, Any] | None) -> None:
        """Answers of /v1/history (interval 1m, and tick), either None; then the prices the
        stream delivered meanwhile."""
        for bar in (bars or {}).get("bars", []):
            start = parse_time(bar.get("time"))
            if start is not None and isinstance(bar.get("close"), int | float):
                self.bars.append([start, float(bar["close"])])
        for tick in (ticks or {}).get("ticks", []):
            at = parse_time(tick.get("time"))
            if at is not None and isinstance(tick.get("price"), int | float):
                self.ticks.append((at, float(tick["price"])))
        self.loaded = True
        for at, price in self._pending:
            self._put(at, price)
        self._pending.clear()

    def add(self, quote: Mapping[str, Any]) -> None:
        """A quote from the stream."""
        at = parse_time(quote.get("last_updated"))
        price = quote.get("current_price")
        if at is None or not isinstance(price, int | float):
            return
        if self.loaded:
            self._put(at, float(price))
        else:
            self._pending.append((at, float(price)))

    def _put(self, at: float, price: float) -> None:
        last = self.ticks[-1] if self.ticks else None
        if last is None or at > last[0] or (at == last[0] and price != last[1]):
            self.ticks.append((at, price))
        start = at - at % BAR_SECONDS
        if self.bars and start < self.bars[-1][0]:
            return  # older than the open minute: history has it
        if self.bars and start == self.bars[-1][0]:
            self.bars[-1][1] = price
        else:
            self.bars.append([start, price])

    def values(self) -> list[float]:
        if len(self.bars) >= ENOUGH_BARS or len(self.ticks) <= len(self.bars):
            return [close for _, close in self.bars]
        return [price for _, price in self.ticks]


def history_url(ws_url: str) -> str:
    """``ws[s]://host/PREFIX/ws/quotes`` -> ``http[s]://host/PREFIX/v1/history``."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    path = parts.path
    prefix = path[: -len("/ws/quotes")] if path.endswith("/ws/quotes") else ""
    return urlunsplit((scheme, parts.netloc, prefix + "/v1/history", "", ""))


class HistoryFetcher:
    """``GET /v1/history`` on the reactor: ``fetch(symbol, interval, limit)`` fires with the
    JSON answer, or None when the server refuses, has no history, or does not answer in time."""

    log = Logger()

    def __init__(
        self,
        ws_url: str,
        token_source: Callable[[], str],
        *,
        reactor: Any,
        cafile: str | None = None,
        agent: Any = None,
    ) -> None:
        self.url = history_url(ws_url)
        self.reactor = reactor
        self.token_source = token_source
        if agent is None:
            trust = Certificate.loadPEM(Path(cafile).read_bytes()) if cafile else None
            policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
            agent = Agent(reactor, contextFactory=policy, connectTimeout=FETCH_TIMEOUT)
        self.agent = agent

    def fetch(self, symbol: str, interval: str, limit: int) -> Deferred[dict[str, Any] | None]:
        query = urlencode({"symbol": symbol, "interval": interval, "limit": str(limit)})
        try:
            token = self.token_source()
        except OSError as e:
            self.log.warn("no token for the history of {symbol}: {error}", symbol=symbol, error=e)
            return succeed(None)
        headers = Headers({b"Authorization": [f"Bearer {token}".encode()]})
        d: Deferred[Any] = self.agent.request(b"GET", f"{self.url}?{query}".encode(), headers, None)
        d.addCallback(self._read)
        d.addTimeout(FETCH_TIMEOUT, self.reactor)
        d.addErrback(self._failed, symbol)
        return d

    def _read(self, response: IResponse) -> Deferred[dict[str, Any] | None]:
        d: Deferred[bytes] = readBody(response)
        ok = response.code == 200
        return d.addCallback(lambda body: _json_object(body) if ok else None)

    def _failed(self, f: Failure, symbol: str) -> None:
        self.log.warn("no history for {symbol}: {error}", symbol=symbol, error=f.getErrorMessage())


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
