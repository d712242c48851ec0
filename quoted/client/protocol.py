"""quoted.client's connection: Autobahn's client protocol, reading refused handshakes.

Autobahn's client drops a handshake that is not answered with 101 and keeps only the status
line; quoted answers refusals with a JSON body and ``Retry-After``, so :class:`WireProtocol`
waits for the whole body and keeps a :class:`~quoted.client.reconnect.Rejection` for the client's
policy. Everything else a connection hears goes to its listener (the QuoteClient).
"""

from __future__ import annotations

from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.interfaces import IReactorTime

from quoted.client.reconnect import Rejection, parse_rejection


class Listener(Protocol):
    def wire_opened(self, proto: WireProtocol) -> None: ...

    def wire_message(self, proto: WireProtocol, payload: bytes) -> None: ...

    def wire_closed(self, proto: WireProtocol, code: int | None, reason: str) -> None: ...


def make_factory(url: str, token: str, clock: IReactorTime, listener: Listener) -> WireFactory:
    """A factory for one attempt: the token in ``Authorization``, compression offered."""
    factory = WireFactory(url, headers={"Authorization": f"Bearer {token}"}, reactor=clock)
    factory.protocol = WireProtocol
    factory.listener = listener
    factory.setProtocolOptions(
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        autoPingInterval=0,
        tcpNoDelay=True,
        perMessageCompressionOffers=[PerMessageDeflateOffer()],
        perMessageCompressionAccept=_accept_deflate,
    )
    return factory


def _accept_deflate(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class WireFactory(WebSocketClientFactory):
    """Autobahn's client factory, for one connection attempt."""

    listener: Listener

    def buildProtocol(self, addr: Any) -> WireProtocol:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, WireProtocol)
        proto.listener = self.listener
        return proto


class WireProtocol(WebSocketClientProtocol):
    """One connection; everything it hears goes to its listener."""

    listener: Listener
    rejection: Rejection | None = None

    def processHandshake(self) -> Any:
        end = self.data.find(b"\r\n\r\n")
        if end >= 0 and self.rejection is None:
            head = self.data[:end].decode("latin-1").split("\r\n")
            parts = head[0].split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 101:
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = self.data[end + 4 :]
                length = headers.get("content-length", "")
                if length.isdigit() and len(body) < int(length):
                    return None  # wait for the whole JSON body
                self.rejection = parse_rejection(status, headers, body)
        return super().processHandshake()

    def onOpen(self) -> None:
        self.listener.wire_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.listener.wire_message(self, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        remote = getattr(self, "remoteCloseCode", None)
        if remote is not None:
            code, reason = remote, getattr(self, "remoteCloseReason", None)
        self.listener.wire_closed(self, code, reason or "")
