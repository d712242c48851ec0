"""The WebSocket handshake: every check before the upgrade, cheapest first.

The order is the protocol's (docs/protocol.md section 2): draining 503, per-IP
rate 429, Origin 403, token 401, upgrade headers 400, symbols 400, entitlement
403, per-user 429, full 503. Only a handshake that passed them all reaches
Autobahn, with the verdict attached, so a refused socket holds no WebSocket
state. (Sizes 414/431, method 405 and path 404 are checked by the router.)

With a JWK Set, a token whose ``kid`` is unknown waits for a (throttled) fetch of the set:
the handshake then returns NOT_DONE_YET and is answered, or handed to Autobahn, from a
callback (:func:`respond_verified`); the reactor never blocks. REST requests do the same.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from quoted.server import edge
from quoted.server.auth import Claims, TokenError, TokenVerifier, bearer_token
from quoted.server.channel import QuotedChannel
from quoted.server.config import ServerConfig, WebSocketConfig
from quoted.server.errors import HTTPError, server_full, shutting_down
from quoted.server.metrics import Metrics
from quoted.server.pool import ConnectionPool
from quoted.server.protocol import Accepted, QuoteFactory
from quoted.server.ratelimit import IPRateLimiter
from quoted.server.store import Entry, QuoteStore
from quoted.wire.symbols import parse_symbol_list


def query_values(request: Request, name: bytes) -> list[str]:
    return [v.decode("utf-8", "replace") for v in (request.args or {}).get(name, [])]


def token_of(request: Request) -> str:
    """The token of a request, Authorization: Bearer first, else ?token=; a 401 HTTPError
    when there is none or it is malformed."""
    headers = list(request.requestHeaders.getRawHeaders(b"authorization") or [])
    tokens = query_values(request, b"token")
    try:
        return bearer_token(headers, tokens[0] if tokens else None)
    except TokenError as e:
        raise HTTPError.from_token(e) from None


_log = Logger(namespace="quoted.server.gate")


def respond_verified(
    request: Request,
    verifier: TokenVerifier,
    token: str,
    proceed: Callable[[Claims], bytes | int],
    refuse: Callable[[HTTPError], bytes],
) -> bytes | int:
    """Verify ``token``, then answer with ``proceed(claims)``, or ``refuse(error)`` for a
    refused token or any HTTPError ``proceed`` raises.

    When the verification needs a JWK Set fetch, return NOT_DONE_YET and finish the request
    from the callback (unless the client has gone meanwhile); otherwise return the answer.
    """
    state: dict[str, object] = {}

    def settle(result: Claims | Failure) -> None:
        try:
            if isinstance(result, Failure):
                if result.check(TokenError):
                    raise HTTPError.from_token(result.value)  # type: ignore[arg-type]
                result.raiseException()
            assert isinstance(result, Claims)
            body = proceed(result)
        except HTTPError as e:
            body = refuse(e)
        except Exception:
            _log.failure("request failed", log_id="quoted.gate.failed")
            body = refuse(HTTPError(500, "internal_error", "the server failed; retry later"))
        if "waiting" not in state:
            state["answer"] = body
        elif "gone" not in state and body != NOT_DONE_YET:
            assert isinstance(body, bytes)
            request.write(body)
            request.finish()

    verifier.verify_deferred(token).addBoth(settle)
    if "answer" in state:
        answer = state["answer"]
        assert isinstance(answer, bytes | int)
        return answer
    state["waiting"] = True

    def gone(_: Failure) -> None:
        state["gone"] = True

    request.notifyFinish().addErrback(gone)
    return NOT_DONE_YET


def requested_symbols(request: Request) -> list[str] | None:
    """The normalized ``symbols`` parameter (lists joined), or None when absent."""
    raw = query_values(request, b"symbols")
    if not raw:
        return None
    return parse_symbol_list(",".join(raw))


def resolve_symbols(
    store: QuoteStore, symbols: list[str], limit: int, claims: Claims
) -> tuple[list[Entry], list[str], list[str]]:
    """Check a symbol list: (entitled entries, unknown symbols, forbidden symbols)."""
    if len(symbols) > limit:
        raise HTTPError(
            400, "too_many_symbols", f"{len(symbols)} symbols requested; the limit is {limit}"
        )
    entries, invalid = store.resolve(symbols)
    if not entries:
        raise HTTPError(
            400, "no_valid_symbols", '"symbols" names no served symbol; see /v1/instruments'
        )
    allowed = [e for e in entries if claims.entitled(e.symbol)]
    forbidden = [e.symbol for e in entries if not claims.entitled(e.symbol)]
    if not allowed:
        raise HTTPError(
            403, "forbidden_symbols", "the token does not entitle any of the requested symbols"
        )
    return allowed, invalid, forbidden


def check_upgrade(request: Request) -> None:
    """RFC 6455 4.2.1: the headers that make a request a WebSocket upgrade."""
    h = request.requestHeaders

    def tokens(name: bytes) -> set[str]:
        values = h.getRawHeaders(name) or []
        return {t.strip().lower() for v in values for t in v.decode("latin-1").split(",")}

    if request.method != b"GET":
        why = "the method must be GET"
    elif request.clientproto != b"HTTP/1.1":
        why = "the HTTP version must be 1.1"
    elif "websocket" not in tokens(b"upgrade"):
        why = "Upgrade: websocket is missing"
    elif "upgrade" not in tokens(b"connection"):
        why = "Connection: Upgrade is missing"
    elif (h.getRawHeaders(b"sec-websocket-version") or [b""])[-1].strip() != b"13":
        why = "Sec-WebSocket-Version must be 13"
    elif not _valid_key(h.getRawHeaders(b"sec-websocket-key") or []):
        why = "Sec-WebSocket-Key must be 16 bytes in base64"
    elif not h.getRawHeaders(b"host"):
        why = "the Host header is missing"
    else:
        return
    raise HTTPError(400, "not_websocket", f"the request is not a WebSocket upgrade: {why}")


def _valid_key(values: Sequence[bytes]) -> bool:
    if len(values) != 1:
        return False
    key = values[0].strip()
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def origin_allowed(request: Request, allowed: Sequence[str]) -> bool:
    """A browser's Origin must be listed (default: the request's own host)."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return True
    origin = raw.decode("latin-1").strip().lower()
    if not allowed:
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
        netloc = urlsplit(origin).netloc
        return bool(netloc) and netloc == host
    return "*" in allowed or origin in allowed


def client_ip(
    request: Request,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The client's address; from X-Forwarded-For only when the peer is a trusted proxy."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unix"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if trusted and _trusted(ip, trusted):
        hops = ",".join(
            v.decode("latin-1")
            for v in request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        )
        for hop in reversed(hops.split(",")):
            try:
                ip = ipaddress.ip_address(hop.strip())
            except ValueError:
                break
            if not _trusted(ip, trusted):
                break
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address)
    return str(ip)


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    return any(ip in net for net in trusted)


class Gate(WebSocketResource):
    """GET /ws/quotes: checks, then hands the socket to Autobahn."""

    def __init__(
        self,
        factory: QuoteFactory,
        server: ServerConfig,
        config: WebSocketConfig,
        store: QuoteStore,
        pool: ConnectionPool,
        verifier: TokenVerifier,
        limiter: IPRateLimiter,
        metrics: Metrics,
    ) -> None:
        super().__init__(factory)
        self.factory = factory
        self.server = server
        self.config = config
        self.store = store
        self.pool = pool
        self.verifier = verifier
        self.limiter = limiter
        self.metrics = metrics

    def handshake(self, request: Request) -> int | bytes:
        try:
            self.check_before_token(request)
            token = token_of(request)
        except HTTPError as e:
            return self.refuse(request, e)
        return respond_verified(
            request,
            self.verifier,
            token,
            lambda claims: self.upgrade(request, claims),
            lambda e: self.refuse(request, e),
        )

    def refuse(self, request: Request, e: HTTPError) -> bytes:
        self.metrics.handshakes.labels(result=str(e.status)).inc()
        self.metrics.rejections.labels(code=e.code).inc()
        return e.render(request)

    def upgrade(self, request: Request, claims: Claims) -> int | bytes:
        """The checks after the token; then the socket goes to Autobahn."""
        accepted = self.check_after_token(request, claims)
        self.pool.reserve(accepted.user)
        self.factory.pending = accepted
        channel = request.channel
        transport = channel.transport
        try:
            result: int | bytes = super().render(request)
        finally:
            self.factory.pending = None
        if result != NOT_DONE_YET:  # Autobahn could not take the socket
            self.pool.release(accepted.user)
            self.metrics.handshakes.labels(result="upgrade_failed").inc()
        elif isinstance(channel, QuotedChannel) and channel.peer_slot is not None:
            # the connection's place in the per-IP count goes with it to the WebSocket
            slot, channel.peer_slot = channel.peer_slot, None
            edge.when_closed(edge.upgraded_protocol(transport), slot.release)
        return result

    def check_before_token(self, request: Request) -> None:
        if self.pool.draining:
            raise shutting_down()
        wait = self.limiter.wait(client_ip(request, self.server.trusted_proxies))
        if wait > 0:
            raise HTTPError(
                429,
                "rate_limited",
                "too many WebSocket handshakes from this address; retry later",
                max(1, int(wait + 0.999)),
            )
        if not origin_allowed(request, self.server.allowed_origins):
            raise HTTPError(
                403,
                "forbidden_origin",
                "this Origin may not open WebSockets here; see [server] allowed_origins",
            )

    def check_after_token(self, request: Request, claims: Claims) -> Accepted:
        if self.pool.draining:  # a JWK Set fetch may have taken a while
            raise shutting_down()
        check_upgrade(request)
        symbols = requested_symbols(request)
        entries: list[Entry] = []
        invalid: list[str] = []
        forbidden: list[str] = []
        if symbols is not None:
            entries, invalid, forbidden = resolve_symbols(
                self.store, symbols, self.config.max_symbols, claims
            )
        if self.pool.user_is_full(claims.subject):
            raise HTTPError(
                429,
                "too_many_connections",
                "this user holds the maximum number of connections on this server "
                "([websocket] user_max_connections); close one first",
                5,
            )
        if self.pool.is_full():
            raise server_full()
        return Accepted(claims.subject, claims, tuple(entries), tuple(invalid), tuple(forbidden))
