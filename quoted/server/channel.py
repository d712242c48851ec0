"""The HTTP connection under the router: twisted.web's channel, request and site with every
limit of docs/protocol.md section 2 enforced where the bytes arrive, each refusal a JSON body.

- **One deadline per request** (slowloris, trickled bodies): the head within ``head_timeout``
  (10 s) of the connection or of the previous response, then its body, if any, within
  ``body_timeout`` (30 s) of the head. Bytes do not extend either; past it, 408
  ``request_timeout`` and the connection is closed. Every request is bounded by 40 s, GET,
  POST, an upgrade with a body and a chunked body alike.
- **The body** is kept in memory, never past ``max_body``: a larger ``Content-Length`` is
  answered 413 ``body_too_large`` before a byte of it is read; a chunked body at the byte
  that passes the limit (twisted.web would spill a body over 100 kB to a temporary file, a
  blocking disk write in the reactor).
- **Open connections per IP** (:class:`PeerConnections`): counted from accept to close,
  whether the connection is in its head, its body, kept alive or a WebSocket; the one past
  ``[server] max_connections_per_ip`` is answered 429 ``too_many_ip_connections`` and closed
  at once. The address is the TCP peer's: X-Forwarded-For is not yet read at accept, so
  connections from ``[server] trusted_proxies`` are not counted (the proxy limits its own).
- **twisted.web's own refusals** (a malformed request line, an HTTP version other than 1.0
  and 1.1, a header line without a colon or with NUL, CR or LF in its value, a bad
  ``Content-Length`` or ``Transfer-Encoding``, a line over 64 KiB, more headers than
  twisted.web counts) are answered with our JSON body, like every other refusal, instead of
  its bare ``400 Bad Request``; an exception while rendering is a JSON 500, not an HTML page.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from quoted.server import edge
from quoted.server.errors import RETRY_AFTER, HTTPError

__all__ = [
    "BODY_TIMEOUT",
    "CLOSE_GRACE",
    "HARD_LINE_BYTES",
    "HEAD_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_HEADER_COUNT",
    "PeerConnections",
    "QuotedChannel",
    "QuotedRequest",
    "QuotedSite",
]

# twisted.web's own limits sit above ours (8 KiB URL, 16 KiB headers: the router's 414/431)
# so that ours answer first; past these the channel answers 414/431 itself
HARD_LINE_BYTES = 64 * 1024
# more header lines than this is 431 (16 KiB of the shortest header lines is about 3,300)
MAX_HEADER_COUNT = 4096
# slowloris: the whole request head must arrive within this many seconds of the connection
# (or of the previous response, on a kept-alive connection), however it trickles in
HEAD_TIMEOUT = 10.0
# and a request's body within this many seconds of its head
BODY_TIMEOUT = 30.0
# a refused connection is aborted this many seconds after its answer if it is still open (a
# TLS client that never answers the close_notify)
CLOSE_GRACE = 5.0
# the largest body read when the site is not told ([publish] max_body's default)
MAX_BODY_BYTES = 1024 * 1024

_VERSION = re.compile(rb"^HTTP/\d\.\d$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _bad_request(why: str) -> HTTPError:
    return HTTPError(400, "bad_request", f"the request is malformed: {why}")


class QuotedChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel with the request deadline, JSON answers for its own
    refusals, and its peer's slot in :class:`PeerConnections` (released when it closes, or
    by the WebSocket that takes the connection over: quoted.server.gate)."""

    MAX_LENGTH = HARD_LINE_BYTES
    totalHeadersSize = HARD_LINE_BYTES
    # ours (headerReceived) answers 431 first; twisted.web's own bare 400 never comes
    maxHeaders = MAX_HEADER_COUNT + 1
    _header_lines = 0
    _deadline: IDelayedCall | None = None
    # the next line is a request line (not a header)
    _at_request_line = True
    # why twisted.web is about to refuse the request (our JSON answer), when we know
    _why: HTTPError | None = None
    _answered = False
    peer_slot: PeerSlot | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    # -- the deadline -------------------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        self._at_request_line = False
        # the body's deadline; requestReceived cancels it as soon as the request is whole,
        # which for a request without a body is at once
        self._arm(self._site_value("body_timeout", BODY_TIMEOUT))
        super().allHeadersReceived()

    def body_received(self) -> None:
        """The request is all in (QuotedRequest): no deadline until the response."""
        self._cancel()

    def requestDone(self, request: http.Request) -> None:
        self._at_request_line = True
        if self.persistent and self.transport is not None:
            # armed before the base class plays a pipelined request back, which disarms it
            self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        self.release_peer()
        super().connectionLost(reason)

    def release_peer(self) -> None:
        slot, self.peer_slot = self.peer_slot, None
        if slot is not None:
            slot.release()

    def _site_value(self, name: str, default: float) -> float:
        return float(getattr(getattr(self, "site", None), name, default))

    def _arm(self, timeout: float | None = None) -> None:
        self._cancel()
        if timeout is None:
            timeout = self._site_value("head_timeout", HEAD_TIMEOUT)
        self._deadline = self.callLater(timeout, self._timed_out)

    def _cancel(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self.answer(HTTPError(408, "request_timeout", "the request did not arrive in time"))

    # -- refusals -----------------------------------------------------------------------------

    def answer(self, error: HTTPError) -> None:
        """Answer ``error`` as the whole response and close (once; nothing after it)."""
        transport: Any = self.transport
        if transport is None or self._answered:  # handed over to the WebSocket, or closing
            return
        self._answered = True
        self._cancel()
        transport.write(error.raw_response())
        # HTTPChannel's: it unregisters itself as the transport's producer first, without
        # which a TLS transport never sends its close_notify (it waits for the producer)
        self.loseConnection()
        # TLS then waits for the client's close_notify: one that never sends it is cut off
        self._deadline = self.callLater(CLOSE_GRACE, transport.abortConnection)
        # whatever the client still sends is not parsed
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign]

    def lineReceived(self, line: bytes) -> None:
        if self._at_request_line and line:
            parts = line.split(b" ")
            if len(parts) == 3 and _VERSION.match(parts[2]) and parts[2][5:6] != b"1":
                self.answer(
                    HTTPError(
                        505,
                        "http_version_not_supported",
                        "this server speaks HTTP/1.1 (and 1.0); "
                        f"the request line names {parts[2].decode('latin-1')}",
                    )
                )
                return
            self._why = _bad_request("the request line is not 'METHOD TARGET HTTP/1.1'")
            self._header_lines = 0
            try:
                super().lineReceived(line)
            finally:
                self._why = None
            self._at_request_line = False
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        self._header_lines += 1
        if self._header_lines > MAX_HEADER_COUNT:
            self.answer(_headers_too_large())
            return False
        self._why = _bad_request(
            "a header line has no colon, a bad name, NUL, CR or LF in its value, or a bad "
            "Content-Length or Transfer-Encoding"
        )
        try:
            ok: bool = super().headerReceived(line)
        finally:
            self._why = None
        return ok

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._at_request_line:
            self.answer(
                HTTPError(414, "uri_too_long", f"the request line is over {HARD_LINE_BYTES} bytes")
            )
        else:
            self.answer(_headers_too_large())

    def respond_to_bad_request(self) -> None:
        """twisted.web's own refusal of the request (edge.BAD_REQUEST): our JSON instead."""
        why = self._why
        if why is None:
            # the headers' total size or count, checked by twisted.web, or a bad chunk
            if self._at_request_line or self._receiving_head():
                why = _headers_too_large()
            else:
                why = _bad_request("the body is malformed (its chunked encoding or form data)")
        self.answer(why)

    def _receiving_head(self) -> bool:
        return bool(self.requests) and not getattr(self.requests[-1], "_head_done", False)


def _headers_too_large() -> HTTPError:
    return HTTPError(
        431,
        "headers_too_large",
        f"the request head is over {HARD_LINE_BYTES} bytes or {MAX_HEADER_COUNT} header lines",
    )


edge.answer_bad_requests(QuotedChannel, QuotedChannel.respond_to_bad_request)


class QuotedRequest(Request):
    """twisted.web's request with its body bounded: at most the site's ``max_body`` bytes
    are kept, in memory. A body declared or found larger is answered 413
    ``body_too_large`` at once, without reading further, and the connection is closed."""

    _body_bytes = 0
    _refused = False
    _head_done = False

    def _limit(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body", MAX_BODY_BYTES))

    def gotLength(self, length: int | None) -> None:
        self._head_done = True
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            self._refuse_body(f"the body has {length} bytes; the limit is {self._limit()}")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._limit():
            self._refuse_body(f"the body has more than {self._limit()} bytes")
            return
        content: Any = self.content
        content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:  # answered already; the connection is closing
            return
        channel = self.channel
        if isinstance(channel, QuotedChannel):
            channel.body_received()
        super().requestReceived(command, path, version)

    def processingFailed(self, reason: Failure) -> Failure:
        """An exception while rendering: logged, and answered with our JSON 500."""
        self._log.failure("request failed", failure=reason)
        error = HTTPError(500, "internal", "the server failed; retry later")
        body = error.render(self)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason

    def _refuse_body(self, why: str) -> None:
        self._refused = True
        self.content = io.BytesIO()
        # no "100 Continue" after the refusal (twisted.web sends it after gotLength)
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        if isinstance(channel, QuotedChannel):
            channel.answer(HTTPError(413, "body_too_large", why))


# -- open connections per IP ----------------------------------------------------------------------


class PeerSlot:
    """One counted connection; :meth:`release` (idempotent) gives its place back."""

    __slots__ = ("_count", "_host")

    def __init__(self, count: PeerConnections, host: str) -> None:
        self._count: PeerConnections | None = count
        self._host = host

    def release(self, *_: object) -> None:
        count, self._count = self._count, None
        if count is not None:
            count.release(self._host)


class PeerConnections:
    """Open TCP connections per peer address (IPv6 per /64, like the handshake rate), at
    most ``limit`` each (0: no limit). Peers in ``trusted`` (reverse proxies) are not
    counted: every client behind them shares their address."""

    def __init__(self, limit: int, trusted: Sequence[Network] = ()) -> None:
        self.limit = limit
        self.trusted = tuple(trusted)
        self.open: dict[str, int] = {}

    def admit(self, addr: IAddress | None) -> PeerSlot | bool:
        """A slot for a new connection from ``addr``; True when it is not counted, False
        when the address holds ``limit`` connections already."""
        host = getattr(addr, "host", None)
        if not self.limit or not isinstance(host, str):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return True
        if any(ip in net for net in self.trusted):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            key = str(mapped) if mapped else str(ipaddress.IPv6Network((ip, 64), strict=False))
        else:
            key = host
        n = self.open.get(key, 0)
        if n >= self.limit:
            return False
        self.open[key] = n + 1
        return PeerSlot(self, key)

    def release(self, key: str) -> None:
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)


class TooManyFromPeer(Protocol):
    """The connection past the per-IP limit: 429 JSON at once, then closed, and aborted
    ``CLOSE_GRACE`` later if still open (over TLS: a client that never answers the
    close_notify)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._abort: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        error = HTTPError(
            429,
            "too_many_ip_connections",
            "this address holds the maximum number of open connections "
            "([server] max_connections_per_ip); close one first",
            RETRY_AFTER,
        )
        transport.write(error.raw_response())
        transport.loseConnection()
        self._abort = self._clock.callLater(CLOSE_GRACE, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None


class QuotedSite(Site):
    """twisted.web's Site on our channel and request, counting connections per IP, without
    its access log (request lines carry ?token=)."""

    protocol = QuotedChannel  # type: ignore[assignment]
    requestFactory = QuotedRequest
    head_timeout = HEAD_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_body = MAX_BODY_BYTES
    peers = PeerConnections(0)
    # called with the code of each connection refused at accept (a metric)
    on_refused: Any = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        slot = self.peers.admit(addr)
        if slot is False:
            if self.on_refused is not None:
                self.on_refused("too_many_ip_connections")
            return TooManyFromPeer(self.reactor)
        channel = super().buildProtocol(addr)
        if isinstance(channel, QuotedChannel) and isinstance(slot, PeerSlot):
            channel.peer_slot = slot
        return channel

    def log(self, request: http.Request) -> None:
        pass
