"""HTTP on the WebSocket's port: the router, REST, health and metrics (twisted.web).

Checks every request in the protocol's order: URL and header sizes (414,
431), a repeated Host or Origin (400), method (405), path (404); then the route.
The connection under it (deadlines, body and per-IP limits, twisted.web's own
refusals in JSON) is quoted.server.channel's. ``/ws/quotes`` goes to the
gate (quoted.server.gate); REST answers only read the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from quoted.server.auth import Claims, TokenVerifier
from quoted.server.channel import (
    BODY_TIMEOUT,
    HARD_LINE_BYTES,
    HEAD_TIMEOUT,
    MAX_BODY_BYTES,
    PeerConnections,
    QuotedChannel,
    QuotedRequest,
    QuotedSite,
)
from quoted.server.errors import RETRY_AFTER, HTTPError, method_not_allowed, not_found
from quoted.server.gate import Gate, requested_symbols, resolve_symbols, respond_verified, token_of
from quoted.server.metrics import Metrics
from quoted.server.pool import ConnectionPool
from quoted.server.store import QuoteStore
from quoted.wire.messages import json_text

__all__ = [
    "BODY_TIMEOUT",
    "HARD_LINE_BYTES",
    "HEAD_TIMEOUT",
    "MAX_BODY_BYTES",
    "QuotedChannel",
    "QuotedRequest",
    "QuotedSite",
    "Router",
    "make_site",
]

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
REST_MAX_SYMBOLS = 1000
# idle HTTP connections (keep-alive) are closed after this
HTTP_TIMEOUT = 60
# headers that name one thing: more than one of them is 400 (RFC 9110 5.3, RFC 9112 3.2)
SINGLE_HEADERS = (b"host", b"origin")


def json_body(request: Request, value: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def check_single_headers(request: Request) -> None:
    """Host and Origin at most once each: with two, which one a check reads (the gate's
    Origin, Autobahn's Host) is not the one another part reads; 400 ``duplicate_header``."""
    for name in SINGLE_HEADERS:
        values = request.requestHeaders.getRawHeaders(name) or []
        if len(values) > 1 or any(b"," in v for v in values):
            raise HTTPError(
                400,
                "duplicate_header",
                f"the request has more than one {name.decode().capitalize()} header",
            )


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
        broker_readiness: Callable[[], tuple[int, dict[str, str]] | None] | None = None,
        publish: Callable[[Request, Claims], bytes | int] | None = None,
        history: Callable[[Request, Claims], bytes | int] | None = None,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.store = store
        self.pool = pool
        self.verifier = verifier
        self.metrics = metrics
        self.metrics_resource = MetricsResource(registry=metrics.registry)
        # quoted.server.cluster.bridge's readiness: (status, body) while Redis is not up, else None
        self.broker_readiness = broker_readiness
        # POST /v1/quotes (quoted.server.publish), when [feed] source = publish
        self.publish = None if publish is None else self.authenticated(publish)
        self.routes: dict[bytes, Callable[[Request], bytes | int]] = {
            b"/ws/quotes": self.gate.handshake,
            b"/v1/quotes": self.authenticated(self.quotes),
            b"/v1/instruments": self.authenticated(self.instruments),
            b"/healthz": self.healthz,
            b"/readyz": self.readyz,
            b"/metrics": self.metrics_resource.render,
        }
        if history is not None:  # GET /v1/history (quoted.server.history.route), unless off
            self.routes[b"/v1/history"] = self.authenticated(history)
        self.routes.update(static_routes())  # the browser board: / and /static/...

    def render(self, request: Request) -> bytes | int:
        body = self.dispatch(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            # the length of the GET's body, and no body: twisted.web would eat it too, but log
            # a warning for each (every load balancer probe)
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def dispatch(self, request: Request) -> bytes | int:
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
            check_single_headers(request)
            if self.publish is not None and request.path == b"/v1/quotes":
                if request.method == b"POST":
                    return self.publish(request)
                if request.method not in (b"GET", b"HEAD"):
                    raise method_not_allowed(b"GET, HEAD, POST")
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

    def authenticated(
        self, handler: Callable[[Request, Claims], bytes | int]
    ) -> Callable[[Request], bytes | int]:
        """A route answering ``handler(request, claims)`` once the token is verified (later,
        when a JWK Set fetch is needed first)."""

        def route(request: Request) -> bytes | int:
            return respond_verified(
                request,
                self.verifier,
                token_of(request),
                lambda claims: handler(request, claims),
                lambda e: self.refuse(request, e),
            )

        return route

    def refuse(self, request: Request, e: HTTPError) -> bytes:
        self.metrics.rejections.labels(code=e.code).inc()
        return e.render(request)

    def quotes(self, request: Request, claims: Claims) -> bytes:
        """{"quotes":{SYM: quote}} for the requested (or every) entitled symbol."""
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
            parts += [b',"invalid_symbols":', json_text(invalid)]
        if forbidden:
            parts += [b',"forbidden_symbols":', json_text(forbidden)]
        parts.append(b"}\n")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"".join(parts)

    def instruments(self, request: Request, claims: Claims) -> bytes:
        out = []
        for e in self.store.entries:
            i = e.instrument
            item: dict[str, object] = {
                "symbol": i.symbol,
                "name": i.name,
                "type": i.type,
                "base_price": e.base_price,  # a published reference price, if any
                "volume": e.volume,
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
        if not self.verifier.ready:
            request.setHeader(b"Retry-After", str(RETRY_AFTER).encode())
            return json_body(request, {"status": "waiting_for_jwks"}, 503)
        broker = self.broker_readiness() if self.broker_readiness is not None else None
        if broker is not None:
            status, body = broker
            if status == 503:
                request.setHeader(b"Retry-After", str(RETRY_AFTER).encode())
            return json_body(request, body, status)
        return json_body(request, {"status": "ready"})


STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
# the board talks only to its own origin (its WebSocket and /v1/quotes)
STATIC_CSP = (
    b"default-src 'self'; connect-src 'self'; img-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def static_routes() -> dict[bytes, Callable[[Request], bytes]]:
    """The browser board's files (quoted/static), read once: ``/`` and ``/static/NAME``."""
    routes: dict[bytes, Callable[[Request], bytes]] = {}
    for path in sorted(STATIC_DIR.glob("*")):
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None:
            continue
        route = _static(path.read_bytes(), kind)
        routes[b"/static/" + path.name.encode()] = route
        if path.name == "index.html":
            routes[b"/"] = route
    return routes


def _static(body: bytes, kind: bytes) -> Callable[[Request], bytes]:
    def render(request: Request) -> bytes:
        request.setHeader(b"Content-Type", kind)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", STATIC_CSP)
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return body

    return render


def make_site(router: Router, clock: IReactorTime, max_body: int = MAX_BODY_BYTES) -> QuotedSite:
    """The port's site: the router on QuotedChannel, with the body limit and the per-IP
    connection limit (``[server] max_connections_per_ip``, proxies in trusted_proxies aside)."""
    site = QuotedSite(router, timeout=HTTP_TIMEOUT, reactor=clock)
    site.max_body = max_body
    server = router.gate.server
    site.peers = PeerConnections(server.max_connections_per_ip, server.trusted_proxies)
    site.on_refused = lambda code: router.metrics.rejections.labels(code=code).inc()
    site.displayTracebacks = False
    site.noisy = False
    return site
