"""quoted-load's TLS: the client side of a wss:// run, its https policy for the REST calls,
session resumption and the handshake counts.

Each connection is the lean protocol of quoted.loadgen.conn over :class:`TLSConnection`, a
small Twisted protocol between it and the TCP transport that runs the standard library's
TLS in memory (``ssl.SSLObject`` over two ``MemoryBIO``). Twisted's TLSMemoryBIOProtocol
did the same through pyOpenSSL, but it cost this process about 25 µs more per message
(two pyOpenSSL exceptions per read, a send-BIO flush after every receive): at 10,000
connections on one core it made quoted-load, not the server, the bottleneck
(bench/run wss). Here a read is a BIO write, one ``read`` and two attribute checks, all
in C. The REST calls (a few GETs, the publisher's posts) keep Twisted's Agent with
``optionsForClientTLS`` (pyOpenSSL), trusting the same certificates for the same name.

One :class:`ClientTLS` per run holds the one ``ssl.SSLContext``: the certificate checked
against ``--ca`` or the system's trust store, the name of ``--server-name`` verified (in
OpenSSL) and sent as SNI. With ``resume`` a connection keeps its session once its
snapshot arrived (a TLS 1.3 ticket comes after the handshake) and the next connection of
the same client offers it; each finished handshake is counted as full or resumed.
"""

from __future__ import annotations

import ssl as stdssl
from collections import Counter
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["ClientTLS", "TLSConnection", "load_trust"]

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
READ = 65536


def load_trust(path: str) -> Any:
    """The trust root (for Twisted) of a PEM file of one or more certificates (ValueError
    when it holds none, OSError when it cannot be read)."""
    data = Path(path).read_bytes()
    pems = [PEM_BEGIN + part for part in data.split(PEM_BEGIN)[1:]]
    if not pems:
        raise ValueError("no PEM certificate in it")
    try:
        certs = [ssl.Certificate.loadPEM(pem) for pem in pems]
    except SSL.Error as e:
        raise ValueError(f"not a PEM certificate: {e}") from None
    return certs[0] if len(certs) == 1 else ssl.trustRootFromCertificates(certs)


@implementer(IPolicyForHTTPS)
class _Policy:
    """The REST calls' https: the same creator whatever the URL's host (the server name is
    --server-name's)."""

    def __init__(self, creator: Any) -> None:
        self.creator = creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator


class TLSConnection(Protocol):
    """TLS in memory between the TCP transport (below) and one connection (above, to which
    this is the transport): writes before the handshake wait for it; a certificate or
    protocol error ends the connection (the one above sees ``tls_failed``)."""

    __slots__ = ("_buffered", "_done", "_in", "_out", "_tcp", "obj", "tls", "wrappedProtocol")

    def __init__(self, tls: ClientTLS, inner: Any, session: Any = None) -> None:
        self.tls, self.wrappedProtocol = tls, inner
        self._in, self._out = stdssl.MemoryBIO(), stdssl.MemoryBIO()
        self.obj = tls.context.wrap_bio(
            self._in, self._out, server_hostname=tls.server_name, session=session
        )
        self._done = False
        self._buffered: list[bytes] = []
        self._tcp: Any = None  # the TCP transport, once connected

    def getHandle(self) -> stdssl.SSLObject:
        return self.obj

    def connectionMade(self) -> None:
        self._tcp = self.transport
        self._handshake()
        self.wrappedProtocol.makeConnection(self)

    def _handshake(self) -> None:
        try:
            self.obj.do_handshake()
        except stdssl.SSLWantReadError:
            self._flush()
            return
        except (stdssl.SSLError, OSError):
            self._flush()
            self.wrappedProtocol.tls_failed()
            self._tcp.abortConnection()
            return
        self._done = True
        self._flush()
        self.wrappedProtocol.handshakeCompleted()
        buffered, self._buffered = self._buffered, []
        for data in buffered:
            self.write(data)

    def _flush(self) -> None:
        if self._out.pending:
            self._tcp.write(self._out.read())

    def dataReceived(self, data: bytes) -> None:
        self._in.write(data)
        if not self._done:
            self._handshake()
            if not self._done:
                return
        obj, incoming = self.obj, self._in
        parts: list[bytes] = []
        try:
            while True:
                part = obj.read(READ)
                if not part:  # the peer's close_notify
                    self._tcp.loseConnection()
                    break
                parts.append(part)
                if not incoming.pending and not obj.pending():
                    break
        except stdssl.SSLWantReadError:
            pass
        except stdssl.SSLZeroReturnError:
            self._tcp.loseConnection()
        except (stdssl.SSLError, OSError):
            self._tcp.abortConnection()
        if self._out.pending:  # a key update, a TLS alert
            self._tcp.write(self._out.read())
        if parts:
            self.wrappedProtocol.dataReceived(parts[0] if len(parts) == 1 else b"".join(parts))

    # -- the transport of the connection above --------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._done:
            self._buffered.append(data)
            return
        try:
            self.obj.write(data)
        except (stdssl.SSLError, OSError):
            self._tcp.abortConnection()
            return
        self._tcp.write(self._out.read())

    def loseConnection(self) -> None:
        """Send close_notify (not waiting for the peer's), then close the TCP connection."""
        if self._done:
            try:
                self.obj.unwrap()
            except (stdssl.SSLError, OSError):
                pass
            self._flush()
        self._tcp.loseConnection()

    def abortConnection(self) -> None:
        self._tcp.abortConnection()

    def pauseProducing(self) -> None:
        self._tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.wrappedProtocol.connectionLost(reason)


class _TLSFactory(ClientFactory):
    """One connection attempt over TLS: the TLSConnection around the factory's protocol;
    a failed connect goes to the wrapped factory."""

    noisy = False

    def __init__(self, tls: ClientTLS, factory: Any, session: Any) -> None:
        self.tls, self.factory, self.session = tls, factory, session

    def buildProtocol(self, addr: Any) -> TLSConnection:
        return TLSConnection(self.tls, self.factory.buildProtocol(addr), self.session)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.factory.clientConnectionFailed(connector, reason)


class ClientTLS:
    """A run's TLS: the context of its connections, the creator of its REST calls, the
    handshake counts."""

    def __init__(self, server_name: str, ca: str = "", resume: bool = False) -> None:
        self.server_name, self.resume = server_name, resume
        self.context = stdssl.create_default_context(cafile=ca or None)
        trust = load_trust(ca) if ca else ssl.platformTrust()
        self.creator = ssl.optionsForClientTLS(server_name, trustRoot=trust)
        self.policy = _Policy(self.creator)
        self.resumed = self.full = 0
        self.versions: Counter[str] = Counter()
        self.ciphers: Counter[str] = Counter()

    def wrap(self, factory: IProtocolFactory, session: Any = None) -> ClientFactory:
        """The factory to give connectTCP: TLS around ``factory``, offering ``session``."""
        return _TLSFactory(self, factory, session)

    def handshake(self, obj: stdssl.SSLObject) -> bool:
        """Count one finished handshake; whether it resumed a session."""
        reused = obj.session_reused
        if reused:
            self.resumed += 1
        else:
            self.full += 1
        self.versions[obj.version() or ""] += 1
        cipher = obj.cipher()
        self.ciphers[cipher[0] if cipher else ""] += 1
        return reused

    @staticmethod
    def session(obj: stdssl.SSLObject) -> Any:
        """The session to resume with (once the connection has its snapshot)."""
        return obj.session

    def summary(self) -> dict[str, Any]:
        def most(c: Counter[str]) -> str | None:
            return c.most_common(1)[0][0] if c else None

        return {
            "resumed": self.resumed,
            "full": self.full,
            "version": most(self.versions),
            "cipher": most(self.ciphers),
        }
