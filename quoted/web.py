"""HTTP on the WebSocket's port: the router, REST, health and metrics (twisted.web).

Checks every request in the protocol's order: URL and header sizes (414,
431), method (405), path (404); then the route. ``/ws/quotes`` goes to the
gate (quoted.gate); REST answers only read the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from quoted.auth import TokenVerifier
from quoted.errors import RETRY_AFTER, HTTPError, method_not_allowed, not_found
from quoted.gate import Gate, requested_symbols, resolve_symbols, verify_request
from quoted.metrics import Metrics
from quoted.pool import ConnectionPool
from quoted.store import QuoteStore

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
# twisted.web's own limits sit above ours so that ours answer with JSON
HARD_LINE_BYTES = 64 * 1024
REST_MAX_SYMBOLS = 1000
# idle HTTP connections (keep-alive, a slow request head) are closed after this
HTTP_TIMEOUT = 60


def json_body(request: Request, value: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def header_bytes(request: Request) -> int:
    return sum(
        len(k) + len(v) + 4 for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs
    )


class Router(Resource):
    """Every request of the port, checked and routed."""

    isLeaf = True

    def __init__(
        self,
        gate: Gate,
        store: QuoteStore,
        pool: ConnectionPool,
        verifier: TokenVerifier,
        metrics: Metrics,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.store = store
        self.pool = pool
        self.verifier = verifier
        self.metrics = metrics
        self.metrics_resource = MetricsResource(registry=metrics.registry)
        self.routes: dict[bytes, Callable[[Request], bytes | int]] = {
            b"/ws/quotes": self.gate.handshake,
            b"/v1/quotes": self.quotes,
            b"/v1/instruments": self.instruments,
            b"/healthz": self.healthz,
            b"/readyz": self.readyz,
            b"/metrics": self.metrics_resource.render,
        }

    def render(self, request: Request) -> bytes | int:
        try:
            if len(request.uri) > MAX_URL_BYTES:
                raise HTTPError(
                    414,
                    "uri_too_long",
                    f"the URL has {len(request.uri)} bytes; the limit is {MAX_URL_BYTES}",
                )
            n = header_bytes(request)
            if n > MAX_HEADER_BYTES:
                raise HTTPError(
                    431,
                    "headers_too_large",
                    f"the headers have {n} bytes; the limit is {MAX_HEADER_BYTES}",
                )
            if request.method not in (b"GET", b"HEAD"):
                raise method_not_allowed()
            route = self.routes.get(request.path)
            if route is None:
                raise not_found()
            return route(request)
        except HTTPError as e:
            if request.path != b"/ws/quotes":
                self.metrics.rejections.labels(code=e.code).inc()
            return e.render(request)

    # -- REST -------------------------------------------------------------------

    def quotes(self, request: Request) -> bytes:
        """{"quotes":{SYM: quote}} for the requested (or every) entitled symbol."""
        claims = verify_request(request, self.verifier)
        symbols = requested_symbols(request)
        invalid: list[str] = []
        forbidden: list[str] = []
        if symbols is None:
            entries = [e for e in self.store.entries if claims.entitled(e.symbol)]
        else:
            entries, invalid, forbidden = resolve_symbols(
                self.store, symbols, REST_MAX_SYMBOLS, claims
            )
        parts = [
            b'{"quotes":{',
            b",".join(e.key_json + b":" + e.latest.json for e in entries),
            b"}",
        ]
        if invalid:
            parts += [b',"invalid_symbols":', json.dumps(invalid).encode()]
        if forbidden:
            parts += [b',"forbidden_symbols":', json.dumps(forbidden).encode()]
        parts.append(b"}\n")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"".join(parts)

    def instruments(self, request: Request) -> bytes:
        verify_request(request, self.verifier)
        out = []
        for e in self.store.entries:
            i = e.instrument
            item: dict[str, object] = {
                "symbol": i.symbol,
                "name": i.name,
                "type": i.type,
                "base_price": i.base_price,
                "volume": i.volume,
            }
            if i.market_cap:
                item["market_cap"] = i.market_cap
            out.append(item)
        return json_body(request, {"instruments": out})

    def healthz(self, request: Request) -> bytes:
        return json_body(request, {"status": "ok"})

    def readyz(self, request: Request) -> bytes:
        if self.pool.draining:
            request.setHeader(b"Retry-After", str(RETRY_AFTER).encode())
            return json_body(request, {"status": "draining"}, 503)
        return json_body(request, {"status": "ready"})


class QuotedChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel with its hard limits above the documented ones,
    so that a long URL or large headers get our 414/431 JSON answer."""

    MAX_LENGTH = HARD_LINE_BYTES
    totalHeadersSize = HARD_LINE_BYTES


class QuotedSite(Site):
    """twisted.web's Site on our channel, without its access log (request lines carry ?token=)."""

    protocol = QuotedChannel  # type: ignore[assignment]

    def log(self, request: http.Request) -> None:
        pass


def make_site(router: Router, clock: IReactorTime) -> Site:
    site = QuotedSite(router, timeout=HTTP_TIMEOUT, reactor=clock)
    site.displayTracebacks = False
    site.noisy = False
    return site
