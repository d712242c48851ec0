"""The write side of a client connection: every frame the server sends it, through one budget.

``quotes_patch`` (compressed when negotiated), the control replies, pong and ping frames all
go through :meth:`Outbound._write`: a frame goes straight to the kernel when nothing is queued
(quoted.server.edge; over TLS encrypted in place first), and a connection that already holds
more than :data:`~quoted.server.budget.MAX_QUEUED_BYTES` it did not read is closed 4008 instead
of being written to, whatever it was sent. Only the close frame itself bypasses the budget (one a
connection).
"""

from __future__ import annotations

import socket
import zlib
from typing import Any, Protocol

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from quoted.server.budget import MAX_QUEUED_BYTES
from quoted.server.edge import (
    PING_FRAME,
    TLSDirect,
    negotiated_deflate,
    send_close,
    write_frame,
    write_tls_frame,
)
from quoted.server.hub import FanOutHub, Subscription
from quoted.server.metrics import Metrics
from quoted.wire.closecodes import CLOSE_SLOW_CONSUMER
from quoted.wire.frames import (
    DEFLATE_LEVEL,
    DEFLATE_MEM_LEVEL,
    DEFLATE_TAIL,
    DEFLATE_WINDOW_BITS,
    text_frame,
)

__all__ = ["SLOW_CLOSE_GRACE", "Outbound", "Sender"]

# a client closed for slowness cannot read its close frame: drop it soon after
SLOW_CLOSE_GRACE = 0.5
# events without the protocol as their source: a log buffer never holds a closed connection
_log = Logger()


class Sender(Protocol):
    """What the write side needs of its factory (QuoteFactory)."""

    clock: IReactorTime
    hub: FanOutHub
    metrics: Metrics


class Outbound:
    """The sending half of QuoteProtocol (a mixin before Autobahn's protocol in its bases)."""

    factory: Sender
    state: int
    transport: Any
    sub: Subscription | None
    _sock: socket.socket | None
    _tls: TLSDirect | None
    _deflate: Any

    def send_patch(self, payload: bytes) -> int:
        """Write one quotes_patch, compressed when the client negotiated it.

        Returns the bytes it put on the wire (0 when the connection is not open); the hub
        counts them, once per tick rather than once per message.
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            return 0
        pmd = negotiated_deflate(self)
        if pmd is None:
            frame = text_frame(payload)
        else:
            deflate = self._deflate
            if deflate is None:
                deflate = zlib.compressobj(
                    DEFLATE_LEVEL, zlib.DEFLATED, -DEFLATE_WINDOW_BITS, DEFLATE_MEM_LEVEL
                )
            data = deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH)
            # the client may ask that each message be compressed on its own
            self._deflate = None if pmd.server_no_context_takeover else deflate
            frame = text_frame(data[:-4] if data.endswith(DEFLATE_TAIL) else data, 0xC1)
        return len(frame) if self._write(frame) else 0

    def send_control(self, payload: bytes) -> None:
        """Write a small reply (subscribed, error, pong...), never compressed."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        frame = text_frame(payload)
        m = self.factory.metrics
        m.messages_sent.inc()
        m.bytes_sent.inc(len(frame))
        self._write(frame)

    def _write(self, frame: bytes) -> bool:
        """Send a frame now when nothing is queued before it (quoted.server.edge), unless more
        than MAX_QUEUED_BYTES are queued already: then close 4008 (False)."""
        tls = self._tls
        if tls is not None:
            if write_tls_frame(tls, frame, MAX_QUEUED_BYTES):
                return True
        elif write_frame(self.transport, self._sock, frame, MAX_QUEUED_BYTES):
            return True
        self._over_budget()
        return False

    def _over_budget(self) -> None:
        """The client does not read what it is sent, whatever that is: leave the hub (no more
        fan-out work for it) and close it as a slow consumer."""
        f = self.factory
        _log.info(
            "closing a connection that holds more than {limit} bytes it did not read",
            limit=MAX_QUEUED_BYTES,
            log_id="quoted.protocol.over_budget",
        )
        if self.sub is not None:
            f.hub.close(self.sub)
        self.slow_consumer()

    def send_ping(self) -> None:
        """A ping frame with an empty payload (Autobahn's sendPing costs ~10x more)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self._write(PING_FRAME)

    # -- closing --------------------------------------------------------------

    def close_with(self, code: int, reason: str) -> None:
        """Close with any code (Autobahn's sendClose allows only 1000 and 3000-4999)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            send_close(self, code, reason)

    def slow_consumer(self) -> None:
        """The hub (or the outbound budget) gave up on this client: close 4008 (best effort)
        and drop the socket."""
        f = self.factory
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        f.metrics.slow_consumer_closes.inc()
        self.close_with(CLOSE_SLOW_CONSUMER, "slow consumer")
        # the close frame sits behind bytes the client does not read
        f.clock.callLater(SLOW_CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.state != WebSocketProtocol.STATE_CLOSED:
            transport.abortConnection()
