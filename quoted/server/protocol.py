"""The WebSocket connection: Autobahn protocol and factory for /ws/quotes.

Every check runs before the upgrade (quoted.server.gate); a protocol is only ever
built for a handshake that was accepted, and receives what the gate decided
(user, token claims, symbols) in ``accepted``. The protocol registers itself
as a push producer on its transport: while the socket is full the hub keeps
only which symbols moved (conflation), and a client that stays paused is
closed with 4008. Every frame in either direction goes through the connection's
budgets (quoted.server.budget): bytes queued for it, frames and fragments from it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from quoted.server.auth import Claims, TokenError, TokenVerifier
from quoted.server.budget import FrameBudget
from quoted.server.config import WebSocketConfig
from quoted.server.edge import (
    NoDebugLogger,
    TLSDirect,
    break_close_cycle,
    close_frame_payload,
    direct_socket,
    direct_tls,
    fail_connection,
    install_class_defaults,
    per_factory_protocol,
    trim,
)
from quoted.server.errors import not_websocket
from quoted.server.hub import FanOutHub, Subscription
from quoted.server.metrics import Metrics
from quoted.server.outbound import Outbound
from quoted.server.pool import ConnectionPool, Liveness
from quoted.server.store import Entry, QuoteStore
from quoted.wire.closecodes import (
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_MESSAGES,
    CLOSE_UNSUPPORTED,
    close_payload_error,
)
from quoted.wire.frames import (
    text_frame,
)
from quoted.wire.messages import (
    CODE_BAD_REQUEST,
    CODE_RATE_LIMITED,
    CODE_SUBJECT_MISMATCH,
    CODE_TOKEN_EXPIRED,
    CODE_TOO_MANY_SYMBOLS,
    CODE_UNKNOWN_TYPE,
    MAX_MESSAGE_BYTES,
    MSG_CONNECTION_TOKEN_EXPIRED,
    MSG_SUBJECT_MISMATCH,
    MSG_SYMBOLS_REQUIRED,
    MSG_TOKEN_MISSING,
    TOKEN_ERROR_MESSAGES,
    ClientMessage,
    ProtocolError,
    decode_client_message,
    encode_authenticated,
    encode_error,
    encode_pong,
    encode_subscribed,
    rate_limited_message,
    too_many_symbols_message,
    unknown_type_message,
)
from quoted.wire.symbols import normalize_symbols


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the gate decided about a handshake it let through."""

    user: str
    claims: Claims
    entries: tuple[Entry, ...]
    invalid: tuple[str, ...]
    forbidden: tuple[str, ...]


# misc: with a second base, mypy compares Autobahn's own two bases (``peer``,
# ``_transport_details`` typed differently in each), which is nothing of ours
@implementer(IPushProducer)
class QuoteProtocol(Outbound, WebSocketServerProtocol):  # type: ignore[misc]
    """One client connection (its write side: quoted.server.outbound)."""

    factory: QuoteFactory
    log = NoDebugLogger()

    accepted: Accepted
    sub: Subscription | None = None
    live: Liveness | None = None  # the pool's record, from onOpen to onClose
    _sock: socket.socket | None = None
    _tls: TLSDirect | None = None
    _deflate: Any = None  # our zlib compressor, when permessage-deflate was negotiated
    # security: the token's expiry timer; the frame budget (made at the first frame, so idle
    # connections hold none)
    _expiry: IDelayedCall | None = None
    _budget: FrameBudget | None = None

    # -- transport ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # twisted.web's channel was this transport's producer until the upgrade
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        self._sock = direct_socket(transport)  # plain TCP: frames may go direct
        if self._sock is None:
            self._tls = direct_tls(transport)  # TLS over TCP: encrypted, then direct
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        break_close_cycle(self)

    def dataReceived(self, data: bytes) -> None:
        live = self.live
        if live is not None:
            live.heard(self.factory.clock.seconds())
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
        self.live = f.pool.add(self)
        a = self.accepted
        self.sub = f.hub.open(self)
        f.metrics.handshakes.labels(result="accepted").inc()
        f.metrics.connections.inc()
        f.hub.snapshot(self.sub, a.entries, a.invalid, a.forbidden)
        self.accepted = Accepted(a.user, a.claims, (), (), ())  # the snapshot is sent
        self._schedule_expiry()
        trim(self)  # what Autobahn no longer needs per connection

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._frame_budget().begin_message()

    def onMessageFrameBegin(self, length: int) -> None:
        """Every data frame, each fragment of a message (zero-length continuations too), takes
        a token of the rate budget and counts towards the message's fragment limit (Autobahn
        counts its bytes towards the 4 KiB)."""
        super().onMessageFrameBegin(length)
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        budget = self._frame_budget()
        if not budget.fragment():
            fail_connection(self, CLOSE_TOO_BIG, "message in too many frames")
        elif not self._admit():
            budget.refused = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f = self.factory
        if isBinary:
            self.close_with(CLOSE_UNSUPPORTED, "binary messages are not supported")
            return
        budget = self._budget
        if budget is not None and budget.refused:
            rate = f.config.message_rate
            self.send_control(
                encode_error(CODE_RATE_LIMITED, rate_limited_message(rate, int(2 * rate)))
            )
            return
        f.metrics.messages_received.inc()
        f.metrics.bytes_received.inc(len(payload))
        try:
            self._handle(decode_client_message(payload))
        except ProtocolError as e:
            self.send_control(encode_error(e.code, e.message, e.id))

    def processControlFrame(self) -> bool:
        """A client's close frame with a bad payload gets 1002/1007 (Autobahn answers a one-byte
        payload as a normal close, and aborts the socket before its 1002/1007 frame leaves)."""
        payload = close_frame_payload(self)
        if payload is not None:
            problem = close_payload_error(payload)
            if problem is not None:
                self.close_with(*problem)
                transport: Any = self.transport
                transport.loseConnection()  # after the close frame is written
                return False
        result: bool = super().processControlFrame()
        return result

    def onPing(self, payload: bytes) -> None:
        """A client's ping frame costs a frame of its budget; over budget, no pong. The pong
        goes through the outbound budget like every other frame (not Autobahn's sendPong)."""
        if self.state == WebSocketProtocol.STATE_OPEN and self._admit():
            self._write(text_frame(payload, 0x8A))

    def onPong(self, payload: bytes) -> None:
        """A pong, asked for or not, costs a frame of the budget; over budget it is ignored."""
        if self.state == WebSocketProtocol.STATE_OPEN and self._admit() and self.live is not None:
            self.live.ponged()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        f = self.factory
        self._cancel_expiry()
        if self.sub is not None:
            f.hub.close(self.sub)
            self.sub = None
            f.metrics.connections.dec()
        if self.live is not None:
            f.pool.remove(self.live)
            self.live = None
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
            raise ProtocolError(CODE_UNKNOWN_TYPE, unknown_type_message(m.type), m.id)

    def _change_subscription(self, m: ClientMessage) -> None:
        f = self.factory
        sub = self.sub
        if sub is None:
            return
        if not m.symbols:
            raise ProtocolError(CODE_BAD_REQUEST, MSG_SYMBOLS_REQUIRED, m.id)
        entries, invalid = f.store.resolve(normalize_symbols(m.symbols))
        forbidden: list[str] = []
        if m.type == "subscribe":
            claims = self.accepted.claims
            allowed = [e for e in entries if claims.entitled(e.symbol)]
            forbidden = [e.symbol for e in entries if not claims.entitled(e.symbol)]
            n = sub.count_with(allowed)
            if n > f.config.max_symbols:
                raise ProtocolError(
                    CODE_TOO_MANY_SYMBOLS, too_many_symbols_message(n, f.config.max_symbols), m.id
                )
            f.hub.subscribe(sub, allowed)
        else:
            f.hub.unsubscribe(sub, entries)
        self.send_control(encode_subscribed(m.id, sub.symbols(), invalid, forbidden))
        if not sub.paused:
            f.hub.flush(sub)

    def _refresh(self, m: ClientMessage) -> None:
        """``auth``: verify the new token (after a JWK Set fetch if its kid is new), then
        apply it: the new exp reschedules the expiry, lost entitlements drop symbols."""
        if self.sub is None:
            return
        if not m.token:
            raise ProtocolError(CODE_BAD_REQUEST, MSG_TOKEN_MISSING, m.id)
        d = self.factory.verifier.verify_deferred(m.token)
        d.addCallbacks(self._refreshed, self._refresh_refused, callbackArgs=(m,), errbackArgs=(m,))
        d.addErrback(self._refresh_failed)

    def _refreshed(self, claims: Claims, m: ClientMessage) -> None:
        f = self.factory
        sub = self.sub
        if sub is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        if claims.subject != self.accepted.user:
            self.send_control(encode_error(CODE_SUBJECT_MISMATCH, MSG_SUBJECT_MISMATCH, m.id))
            return
        a = self.accepted
        self.accepted = Accepted(a.user, claims, a.entries, a.invalid, a.forbidden)
        self._schedule_expiry()
        dropped = [e for e in sub.sent if not claims.entitled(e.symbol)]
        f.hub.unsubscribe(sub, dropped)
        self.send_control(
            encode_authenticated(m.id, claims.expires_at, sorted(e.symbol for e in dropped))
        )
        if dropped and not sub.paused:
            f.hub.flush(sub)

    def _refresh_refused(self, failure: Failure, m: ClientMessage) -> None:
        failure.trap(TokenError)
        e = failure.value
        assert isinstance(e, TokenError)
        self.send_control(encode_error(e.code, TOKEN_ERROR_MESSAGES.get(e.code, e.message), m.id))

    def _refresh_failed(self, failure: Failure) -> None:
        self.log.failure("auth message failed", failure, log_id="quoted.protocol.auth_failed")

    # -- security: token expiry and message rate ----------------------------------

    def _schedule_expiry(self) -> None:
        """(Re)arm the timer that closes the connection when its token expires."""
        self._cancel_expiry()
        f = self.factory
        deadline = self.accepted.claims.expires_at + f.verifier.leeway
        self._expiry = f.clock.callLater(max(0.0, deadline - f.clock.seconds()), self._expired)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            if self._expiry.active():
                self._expiry.cancel()
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        self.send_control(encode_error(CODE_TOKEN_EXPIRED, MSG_CONNECTION_TOKEN_EXPIRED))
        self.close_with(CLOSE_TOKEN_EXPIRED, "token expired")

    def _frame_budget(self) -> FrameBudget:
        budget = self._budget
        if budget is None:
            f = self.factory
            budget = self._budget = FrameBudget(f.config.message_rate, f.clock.seconds())
        return budget

    def _admit(self) -> bool:
        """Take one frame of the budget (``[websocket] message_rate``, burst twice that).
        Over budget: refuse; the 20th refusal in a row closes 4029, after which the client's
        data frames are ignored."""
        f = self.factory
        budget = self._frame_budget()
        if budget.admit(f.clock.seconds()):
            return True
        f.metrics.rate_limited_messages.inc()
        if budget.flooding:
            fail_connection(self, CLOSE_TOO_MANY_MESSAGES, "too many messages")
        return False


install_class_defaults(QuoteProtocol)


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
            # a client's close is answered with its own code and reason (RFC 6455 5.5.1)
            echoCloseCodeReason=True,
            allowedOrigins=["*"],  # the gate checks Origin before the upgrade
            perMessageCompressionAccept=self._accept_compression,
            webStatus=False,
            tcpNoDelay=True,
        )
        # Autobahn copies ~45 options onto every connection; a subclass per factory
        # holds them once instead (quoted.server.edge)
        self.protocol = cast("type[QuoteProtocol]", per_factory_protocol(self, QuoteProtocol))

    def _accept_compression(self, offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        """Accept permessage-deflate through Autobahn's public accept; the compressing is
        quoted's own (send_patch), not Autobahn's: its compressor runs only in sendMessage, at
        level 6, where ``window_bits=``/``mem_level=`` here would tune it (quoted.server.edge,
        negotiated_deflate, says why and what it measured)."""
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
