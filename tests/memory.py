"""quoted on a MemoryReactorClock, and clients joined to it in memory (``twisted.test.iosim``).

``MemoryQuoted`` builds the same service as ``tests.harness.QuotedServer`` (``app.build``), but on a
fake reactor: its listener is recorded, not opened, and each client is a pair of in-memory
transports pumped by ``flush``. Time passes only by ``advance``, so a 2 s close handshake timeout
or a 7 s token lifetime costs nothing. Autobahn schedules its own timers (open and close
handshake timeouts) through txaio's loop, not the factory's reactor: while this server moves
bytes or time, txaio's loop is its clock (``txaio.testutil.replace_loop``). What needs a real
socket (the direct ``socket.send`` path of ``QuoteProtocol._write``, TLS, signals) stays in the
real-socket tests.
"""

from __future__ import annotations

import itertools
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from txaio.testutil import replace_loop

from quoted.server.app import QuotedService, build
from quoted.server.config import Config
from quoted.wire.tokens import mint_token
from tests.harness import SECRET, WSClient

T0 = 1_796_000_000.0  # 2026-11-30, in seconds: tokens are minted on the fake clock
_ports = itertools.count(40000)


class MemoryQuoted:
    """A started quoted on a MemoryReactorClock; ``connect`` joins a client to its site."""

    def __init__(self, config: Config, start: float = T0) -> None:
        self.config = config
        self.clock = MemoryReactorClock()
        self.clock.advance(start)
        self.service: QuotedService = build(config, self.clock, manage_gc=False)
        self.service.startService()
        port, self.site = self.clock.tcpServers[-1][:2]
        self.port: int = port or 8080  # nothing listens; the number only fills Host and URLs
        self.pumps: list[iosim.IOPump] = []

    @property
    def parts(self) -> Any:
        return self.service.parts

    def token(self, sub: str = "alice", ttl: float = 3600, **kw: Any) -> str:
        return mint_token(SECRET, sub, now=self.clock.seconds(), ttl=ttl, **kw)

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws/quotes" + (f"?{query}" if query else "")

    def join(self, client: Protocol, source: str = "127.0.0.1") -> iosim.IOPump:
        """Connect ``client`` to a new server-side protocol of the site, in memory."""
        server_address = IPv4Address("TCP", "127.0.0.1", self.port)
        client_address = IPv4Address("TCP", source, next(_ports))
        server = self.site.buildProtocol(client_address)
        server_io = iosim.FakeTransport(
            server, isServer=True, hostAddress=server_address, peerAddress=client_address
        )
        client_io = iosim.FakeTransport(
            client, isServer=False, hostAddress=client_address, peerAddress=server_address
        )
        pump: iosim.IOPump = iosim.connect(
            server, server_io, client, client_io, greet=False, clock=self.clock
        )
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """Move every byte both ways until nothing is left (several rounds: replies)."""
        with replace_loop(self.clock):
            self._flush()

    def _flush(self) -> None:
        for _ in range(100):
            moved = False
            for pump in list(self.pumps):
                if pump.pump(advanceClock=False):
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Let ``seconds`` pass in ``step``s, delivering what each step sends."""
        with replace_loop(self.clock):
            self._flush()
            left = seconds
            while left > 1e-9:
                dt = min(step, left)
                self.clock.advance(dt)
                self._flush()
                left -= dt

    def connect(
        self,
        query: str = "symbols=AAPL",
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> WSClient:
        """Autobahn's client (``tests.harness.WSClient``), joined and through its handshake."""
        tok = self.token() if token is None else token
        hdrs = dict(headers or {})
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        factory = WebSocketClientFactory(self.url(query), headers=hdrs, reactor=self.clock)
        factory.protocol = WSClient
        with replace_loop(self.clock):
            client = factory.buildProtocol(None)
            assert isinstance(client, WSClient)
            self.join(client)
            self._flush()
        return client

    def endpoint(self) -> MemoryEndpoint:
        """An IStreamClientEndpoint whose every connect joins this server in memory."""
        return MemoryEndpoint(self)

    def stop(self) -> None:
        """Stop the service, letting its drain run on the fake clock."""
        d = self.service.stopService()
        self.advance(self.config.server.shutdown_timeout + 1)
        assert d.called, "the service did not stop"


class MemoryEndpoint:
    """``connect(factory)`` builds the factory's protocol and joins it to the server."""

    def __init__(self, server: MemoryQuoted) -> None:
        self.server = server
        self.connects = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.connects += 1
        with replace_loop(self.server.clock):
            proto = factory.buildProtocol(None)
            self.server.join(proto)
        return defer.succeed(proto)
