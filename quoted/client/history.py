"""The client side of ``GET /v1/history`` (docs/protocol.md, "History"), for
:meth:`quoted.client.quoteclient.QuoteClient.history`: one GET on twisted.web's Agent, on the
injected reactor, to the server of the client's WebSocket URL (``ws`` -> ``http``, ``wss`` ->
``https`` verified with the same trust), the answer parsed or its error raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

__all__ = ["HISTORY_TIMEOUT", "fetch_history", "history_url", "parse_history"]

HISTORY_TIMEOUT = 10.0  # for the whole answer


def history_url(ws_url: str, symbol: str, interval: str, limit: int) -> str:
    """The /v1/history URL beside a ``ws(s)://HOST/PREFIX/ws/quotes`` URL."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    base = parts.path.rsplit("/ws/quotes", 1)[0]
    query = urlencode({"symbol": symbol, "interval": interval, "limit": str(limit)})
    return f"{scheme}://{parts.netloc}{base}/v1/history?{query}"


def fetch_history(
    reactor: Any,
    ws_url: str,
    token: str,
    symbol: str,
    interval: str,
    limit: int,
    *,
    error: type[Exception],
    cafile: str | None = None,
) -> Deferred[list[dict[str, Any]]]:
    """GET the history; a Deferred of its bars or ticks (:func:`parse_history`), or failing
    with ``error(code, message)`` (the client's ServerError) for a refusal."""
    policy = _Trust(cafile) if cafile else BrowserLikePolicyForHTTPS()
    agent = Agent(reactor, contextFactory=policy, connectTimeout=HISTORY_TIMEOUT)
    headers = Headers({b"Authorization": [f"Bearer {token}".encode()]})
    url = history_url(ws_url, symbol, interval, limit)
    d: Deferred[Any] = agent.request(b"GET", url.encode("ascii"), headers)

    def read(response: IResponse) -> Deferred[list[dict[str, Any]]]:
        body = _Body()
        response.deliverBody(body)
        return body.done.addCallback(parse_history, response.code, error)

    d.addCallback(read)
    d.addTimeout(HISTORY_TIMEOUT, reactor)
    return d


def parse_history(body: bytes, status: int, error: type[Exception]) -> list[dict[str, Any]]:
    """The bars or ticks of an answer, or ``error(code, message)`` for a refusal."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise error("bad_response", f"HTTP {status} with a body that is not JSON") from None
    if status != 200:
        refusal = doc.get("error", {}) if isinstance(doc, dict) else {}
        raise error(str(refusal.get("code", status)), str(refusal.get("message", "")))
    rows = doc.get("ticks", doc.get("bars")) if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise error("bad_response", "the answer holds neither bars nor ticks")
    return rows


class _Body(Protocol):
    """Reads a response body to its end (twisted.web's readBody warns on the proxied
    transport of an Agent's response)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IPolicyForHTTPS)
class _Trust:
    """https:// verified against the host name with the client's ``cafile``."""

    def __init__(self, cafile: str) -> None:
        self._root = Certificate.loadPEM(Path(cafile).read_bytes())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)
