"""The WebSocket connection: Autobahn protocol and factory for /ws/quotes.

Every check runs before the upgrade (quoted.gate); a protocol is only ever
built for a handshake that was accepted, and receives what the gate decided
(user, token claims, symbols) in ``accepted``. The protocol registers itself
as a push producer on its transport: while the socket is full the hub keeps
only which symbols moved (conflation), and a client that stays paused is
closed with 4008.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from quoted.auth import Claims, TokenError, TokenVerifier
from quoted.config import WebSocketConfig
from quoted.errors import not_websocket
from quoted.hub import FanOutHub, Subscription
from quoted.messages import (
    MAX_MESSAGE_BYTES,
    ClientMessage,
    ProtocolError,
    decode_client_message,
    encode_authenticated,
    encode_error,
    encode_pong,
    encode_subscribed,
)
from quoted.metrics import Metrics
from quoted.model import normalize_symbols
from quoted.pool import ConnectionPool
from quoted.store import Entry, QuoteStore

CLOSE_UNSUPPORTED = 1003
CLOSE_SLOW_CONSUMER = 4008
# kernel send buffer per connection: a stuck client pins at most this much
# kernel memory, and a stall shows within a tick or two instead of after the
# ~2.7 MB tcp_wmem autotuning would absorb
SEND_BUFFER_BYTES = 64 * 1024
# a client closed for slowness cannot read its close frame: drop it soon after
SLOW_CLOSE_GRACE = 0.5


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the gate decided about a handshake it let through."""

    user: str
    claims: Claims
    entries: tuple[Entry, ...]
    invalid: tuple[str, ...]
    forbidden: tuple[str, ...]


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


@implementer(IPushProducer)
class QuoteProtocol(WebSocketServerProtocol):
    """One client connection."""

    factory: QuoteFactory
    log = Logger()

    accepted: Accepted
    sub: Subscription | None = None
    # liveness, kept by the pool's sweep
    last_seen = 0.0
    next_ping = 0.0
    ping_outstanding = False
    _closing_slow = False

    # -- transport ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # twisted.web's channel was this transport's producer until the upgrade
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.last_seen = self.factory.clock.seconds()
        super().dataReceived(data)

    def pauseProducing(self) -> None:
        if self.sub is not None:
            self.factory.hub.pause(self.sub)

    def resumeProducing(self) -> None:
        if self.sub is not None and self.state == WebSocketProtocol.STATE_OPEN:
            self.factory.hub.resume(self.sub)

    def stopProducing(self) -> None:
        pass

    # -- Autobahn callbacks ---------------------------------------------------

    def onConnect(self, request: Any) -> None:
        return None  # everything was checked by the gate before the upgrade

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Autobahn refused the handshake itself: answer in our JSON shape."""
        self.factory.metrics.handshakes.labels(result="upgrade_failed").inc()
        self.sendData(not_websocket(reason).raw_response())

    def onOpen(self) -> None:
        f = self.factory
        f.pool.add(self)
        a = self.accepted
        self.sub = f.hub.open(self)
        f.metrics.handshakes.labels(result="accepted").inc()
        f.metrics.connections.inc()
        f.hub.snapshot(self.sub, a.entries, a.invalid, a.forbidden)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f = self.factory
        if isBinary:
            self.close_with(CLOSE_UNSUPPORTED, "binary messages are not supported")
            return
        f.metrics.messages_received.inc()
        f.metrics.bytes_received.inc(len(payload))
        try:
            self._handle(decode_client_message(payload))
        except ProtocolError as e:
            self.send_control(encode_error(e.code, e.message, e.id))

    def onPong(self, payload: bytes) -> None:
        self.ping_outstanding = False

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        f = self.factory
        if self.sub is not None:
            f.hub.close(self.sub)
            self.sub = None
            f.metrics.connections.dec()
            f.pool.remove(self)
        if getattr(self, "accepted", None) is not None:
            f.pool.release(self.accepted.user)
            del self.accepted
        if self.localCloseCode is not None and self.closedByMe:
            f.metrics.server_closes.labels(code=str(self.localCloseCode)).inc()

    # -- client messages ------------------------------------------------------

    def _handle(self, m: ClientMessage) -> None:
        if m.type in ("subscribe", "unsubscribe"):
            self._change_subscription(m)
        elif m.type == "ping":
            self.send_control(encode_pong(m.id))
        elif m.type == "auth":
            self._refresh(m)
        else:
            raise ProtocolError(
                "unknown_type", f"unknown message type {m.type[:32]!r}".replace("'", '"'), m.id
            )

    def _change_subscription(self, m: ClientMessage) -> None:
        f = self.factory
        sub = self.sub
        if sub is None:
            return
        if not m.symbols:
            raise ProtocolError("bad_request", '"symbols" must be a non-empty list', m.id)
        entries, invalid = f.store.resolve(normalize_symbols(m.symbols))
        forbidden: list[str] = []
        if m.type == "subscribe":
            claims = self.accepted.claims
            allowed = [e for e in entries if claims.entitled(e.symbol)]
            forbidden = [e.symbol for e in entries if not claims.entitled(e.symbol)]
            n = sub.count_with(allowed)
            if n > f.config.max_symbols:
                raise ProtocolError(
                    "too_many_symbols",
                    f"subscription would hold {n} symbols; the limit is {f.config.max_symbols}",
                    m.id,
                )
            f.hub.subscribe(sub, allowed)
        else:
            f.hub.unsubscribe(sub, entries)
        self.send_control(encode_subscribed(m.id, sub.symbols(), invalid, forbidden))
        if not sub.paused:
            f.hub.flush(sub)

    def _refresh(self, m: ClientMessage) -> None:
        f = self.factory
        sub = self.sub
        if sub is None:
            return
        if not m.token:
            raise ProtocolError("bad_request", '"token" is missing', m.id)
        try:
            claims = f.verifier.verify(m.token)
        except TokenError as e:
            raise ProtocolError(e.code, e.message, m.id) from None
        if claims.subject != self.accepted.user:
            raise ProtocolError(
                "subject_mismatch",
                "the token is for another user; open a new connection for it",
                m.id,
            )
        a = self.accepted
        self.accepted = Accepted(a.user, claims, a.entries, a.invalid, a.forbidden)
        dropped = [e for e in sub.sent if not claims.entitled(e.symbol)]
        f.hub.unsubscribe(sub, dropped)
        self.send_control(
            encode_authenticated(m.id, claims.expires_at, sorted(e.symbol for e in dropped))
        )
        if dropped and not sub.paused:
            f.hub.flush(sub)

    # -- sending ------------------------------------------------------------

    def send_patch(self, payload: bytes) -> None:
        """Write one quotes_patch; compressed when the client negotiated it."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        m = self.factory.metrics
        m.messages_sent.inc()
        if self._perMessageCompress is None:
            frame = text_frame(payload)
            m.bytes_sent.inc(len(frame))
            self._write(frame)
        else:
            m.bytes_sent.inc(len(payload))
            self.sendMessage(payload)

    def send_control(self, payload: bytes) -> None:
        """Write a small reply (subscribed, error, pong...), never compressed."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        frame = text_frame(payload)
        m = self.factory.metrics
        m.messages_sent.inc()
        m.bytes_sent.inc(len(frame))
        self._write(frame)

    def _write(self, frame: bytes) -> None:
        transport: Any = self.transport
        transport.write(frame)

    # -- closing --------------------------------------------------------------

    def close_with(self, code: int, reason: str) -> None:
        """Close with any code (Autobahn's sendClose allows only 1000 and 3000-4999)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)

    def slow_consumer(self) -> None:
        """The hub gave up on this client: close 4008 (best effort) and drop the socket."""
        f = self.factory
        f.metrics.slow_consumer_closes.inc()
        self.close_with(CLOSE_SLOW_CONSUMER, "slow consumer")
        # the close frame sits behind bytes the client does not read
        f.clock.callLater(SLOW_CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.state != WebSocketProtocol.STATE_CLOSED:
            transport.abortConnection()


class QuoteFactory(WebSocketServerFactory):
    """Builds QuoteProtocols for handshakes the gate accepted."""

    protocol = QuoteProtocol  # type: ignore[assignment]

    def __init__(
        self,
        clock: IReactorTime,
        config: WebSocketConfig,
        store: QuoteStore,
        hub: FanOutHub,
        pool: ConnectionPool,
        verifier: TokenVerifier,
        metrics: Metrics,
        url: str = "ws://localhost/ws/quotes",
    ) -> None:
        super().__init__(url=url, reactor=clock)
        self.clock = clock
        self.config = config
        self.store = store
        self.hub = hub
        self.pool = pool
        self.verifier = verifier
        self.metrics = metrics
        self.pending: Accepted | None = None
        self.setProtocolOptions(
            # client messages: 4 KiB after reassembly and inflation
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            utf8validateIncoming=True,
            requireMaskedClientFrames=True,
            # our own sweep pings; Autobahn's per-connection timers stay off
            autoPingInterval=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,
            echoCloseCodeReason=False,
            allowedOrigins=["*"],  # the gate checks Origin before the upgrade
            perMessageCompressionAccept=self._accept_compression,
            webStatus=False,
            tcpNoDelay=True,
        )

    def _accept_compression(self, offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        if not self.config.compression:
            return None
        for offer in offers:
            if not isinstance(offer, PerMessageDeflateOffer):
                continue
            if offer.request_max_window_bits not in (0, 15):
                return None  # a smaller window than ours: run uncompressed
            return PerMessageDeflateOfferAccept(offer, request_no_context_takeover=True)
        return None

    def buildProtocol(self, addr: Any) -> QuoteProtocol:  # type: ignore[override]
        proto = super().buildProtocol(addr)
        assert isinstance(proto, QuoteProtocol)
        if self.pending is not None:
            proto.accepted = self.pending
        return proto
