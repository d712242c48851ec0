"""quoted-load's TLS: the one client connection creator of a wss:// run, its https policy
for the REST calls, session resumption and the handshake counts.

Every connection goes through Twisted's TLS (a :class:`TLSMemoryBIOFactory` around the
connection's own factory, over the same ``connectTCP`` as ws://), so the lean protocol of
quoted.loadgen.conn is the protocol of both. One :class:`ClientTLS` per run holds the one
OpenSSL context (``optionsForClientTLS``: the certificate checked against ``--ca`` or the
system's trust store, the name of ``--server-name`` verified and sent as SNI, session
tickets enabled), so a session taken from one connection resumes on the next.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["ClientTLS", "load_trust", "session_reused"]

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def load_trust(path: str) -> Any:
    """The trust root of a PEM file of one or more certificates (ValueError when it holds
    none, OSError when it cannot be read)."""
    data = Path(path).read_bytes()
    pems = [PEM_BEGIN + part for part in data.split(PEM_BEGIN)[1:]]
    if not pems:
        raise ValueError("no PEM certificate in it")
    try:
        certs = [ssl.Certificate.loadPEM(pem) for pem in pems]
    except SSL.Error as e:
        raise ValueError(f"not a PEM certificate: {e}") from None
    return certs[0] if len(certs) == 1 else ssl.trustRootFromCertificates(certs)


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake of ``connection`` resumed a session.

    pyOpenSSL has get_session/set_session but no SSL_session_reused; its own binding of
    OpenSSL (``OpenSSL._util.lib``, the cryptography package's) has it. A public method, if
    pyOpenSSL gains one, is used first; tests/loadgen/test_tls.py checks the private path
    still answers."""
    public = getattr(connection, "session_reused", None)
    if public is not None:
        return bool(public())
    from OpenSSL._util import lib  # noqa: PLC0415 (private: only when there is no public one)

    return bool(lib.SSL_session_reused(connection._ssl))


@implementer(IOpenSSLClientConnectionCreator)
class _Resuming:
    """One connection's creator: the run's, then the session of its previous connection."""

    __slots__ = ("inner", "session")

    def __init__(self, inner: Any, session: SSL.Session) -> None:
        self.inner, self.session = inner, session

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection: SSL.Connection = self.inner.clientConnectionForTLS(tlsProtocol)
        connection.set_session(self.session)
        return connection


@implementer(IPolicyForHTTPS)
class _Policy:
    """The REST calls' https: the same creator whatever the URL's host (the server name is
    --server-name's)."""

    def __init__(self, creator: Any) -> None:
        self.creator = creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator


class ClientTLS:
    """A run's TLS: wraps each connection's factory, counts the handshakes."""

    def __init__(self, server_name: str, ca: str = "", resume: bool = False) -> None:
        trust = load_trust(ca) if ca else ssl.platformTrust()
        self.creator = ssl.optionsForClientTLS(
            server_name, trustRoot=trust, extraCertificateOptions={"enableSessionTickets": True}
        )
        self.policy = _Policy(self.creator)
        self.resume = resume
        self.resumed = self.full = 0
        self.versions: Counter[str] = Counter()
        self.ciphers: Counter[str] = Counter()

    def wrap(self, factory: IProtocolFactory, session: SSL.Session | None = None) -> Any:
        """The factory to give connectTCP: TLS around ``factory``, offering ``session``."""
        creator = self.creator if session is None else _Resuming(self.creator, session)
        return TLSMemoryBIOFactory(creator, True, factory)

    def handshake(self, connection: SSL.Connection) -> bool:
        """Count one finished handshake; whether it resumed a session."""
        reused = session_reused(connection)
        if reused:
            self.resumed += 1
        else:
            self.full += 1
        self.versions[connection.get_protocol_version_name()] += 1
        self.ciphers[connection.get_cipher_name() or ""] += 1
        return reused

    def summary(self) -> dict[str, Any]:
        def most(c: Counter[str]) -> str | None:
            return c.most_common(1)[0][0] if c else None

        return {
            "resumed": self.resumed,
            "full": self.full,
            "version": most(self.versions),
            "cipher": most(self.ciphers),
        }
