"""The TLS direct write path (quoted.server.edge: direct_tls, write_tls_frame) over a real TLS
connection on loopback, each private name of Twisted's TLSMemoryBIOProtocol it reads checked
against the installed version; and the server's TLS options (quoted.server.tls)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.testing import StringTransport
from twisted.protocols import tls

from quoted.server import edge
from quoted.server.listener import Listener, ListenError
from quoted.server.tls import DEFAULT_CIPHERS, TLSProblem, server_endpoint, tls_options
from quoted.wire.frames import text_frame
from tests.certs import self_signed
from tests.harness import eventually
from tests.server.test_edge import _Collect as EdgeCollect

ensure = pytest_twisted.ensureDeferred


class _Collect(EdgeCollect):
    """test_edge's reader, and when its connection is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    cert_pem, key_pem = self_signed("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert_pem)
    (d / "key.pem").write_bytes(key_pem)
    return d / "key.pem", d / "cert.pem", cert_pem


def options(key: Path, cert: Path, **kw: Any) -> Any:
    settings: dict[str, Any] = {
        "protocols": ("TLSv1.2", "TLSv1.3"),
        "ciphers": DEFAULT_CIPHERS,
        "session_tickets": True,
    }
    settings.update(kw)
    return tls_options({"privateKey": str(key), "certKey": str(cert)}, **settings)


async def tls_connect(port: int, cert_pem: bytes, client: protocol.Protocol, **extra: Any) -> Any:
    creator = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(cert_pem),
        extraCertificateOptions=extra or None,
    )
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    return await endpoint.connect(protocol.Factory.forProtocol(lambda: client))


@pytest_twisted.async_yield_fixture
async def tls_pair(cert: tuple[Path, Path, bytes]) -> AsyncIterator[tuple[Any, _Collect]]:
    """A real server-side TLS transport (Twisted's BufferingTLSTransport over tcp.Server), its
    handshake done, and the client that reads it."""
    key, crt, cert_pem = cert
    accepted: defer.Deferred[Any] = defer.Deferred()

    class Server(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:  # the client's hello: the handshake is done
            if not accepted.called:  # after Twisted's TLS layer has done with this read
                reactor.callLater(0, accepted.callback, self.transport)

    port = reactor.listenSSL(
        0, protocol.Factory.forProtocol(Server), options(key, crt), interface="127.0.0.1"
    )
    client = _Collect()
    proto = await tls_connect(port.getHost().port, cert_pem, client)
    proto.transport.write(b"hello")
    transport = await accepted
    # the session tickets the server sends after the handshake: on the wire before the test
    await eventually(lambda: edge.queued_bytes(transport) == 0)
    yield transport, client
    proto.transport.loseConnection()
    transport.loseConnection()
    await port.stopListening()


@ensure
async def test_direct_tls_reads_twisteds_tls_state(tls_pair: tuple[Any, _Collect]) -> None:
    transport, _ = tls_pair
    assert type(transport) is tls.BufferingTLSTransport
    direct = edge.direct_tls(transport)
    assert direct is not None
    assert direct.conn is transport.getHandle() and isinstance(direct.conn, SSL.Connection)
    assert direct.tcp is transport.transport and direct.sock is direct.tcp.socket
    # the state write_tls_frame reads, as Twisted names it
    assert transport._handshakeDone is True
    assert transport._appSendBuffer == []
    assert transport._lostTLSConnection is False
    assert transport._aggregator._buffer == []
    transport.write(b"x")  # Twisted's own path: held by the aggregator until the next turn
    assert transport._aggregator._buffer == [b"x"]
    assert direct.unencrypted is transport._aggregator._buffer  # the same list, in place
    assert edge.direct_tls(direct.tcp) is None  # plain TCP is direct_socket's
    assert edge.direct_tls(StringTransport()) is None


@ensure
async def test_write_tls_frame_encrypts_and_sends_at_once(tls_pair: tuple[Any, _Collect]) -> None:
    transport, client = tls_pair
    direct = edge.direct_tls(transport)
    assert direct is not None
    frame = text_frame(b'{"type":"pong"}')
    assert edge.write_tls_frame(direct, frame, 1 << 20) is True
    # nothing left in any of Twisted's queues: the kernel has the encrypted record
    assert transport._aggregator._buffer == []
    assert (direct.tcp.dataBuffer, direct.tcp._tempDataBuffer) == (b"", [])
    assert await client.until(len(frame)) == frame


@ensure
async def test_a_large_frame_goes_as_several_records(tls_pair: tuple[Any, _Collect]) -> None:
    transport, client = tls_pair
    direct = edge.direct_tls(transport)
    assert direct is not None
    frame = text_frame(b"x" * 100_000)  # seven records, more than the socket takes at once
    assert edge.write_tls_frame(direct, frame, 1 << 20) is True
    assert await client.until(len(frame)) == frame


def test_encrypt_uses_pyopenssls_binding_and_refuses_when_openssl_does(
    cert: tuple[Path, Path, bytes],
) -> None:
    """_encrypt reads ``OpenSSL._util.lib``/``ffi`` and a Connection's ``_ssl`` and
    ``_from_ssl``; before its handshake OpenSSL writes nothing: None, and no error left."""
    from OpenSSL._util import ffi, lib

    key, crt, _ = cert
    conn = SSL.Connection(options(key, crt).getContext(), None)
    conn.set_accept_state()
    assert ffi.typeof(conn._ssl).cname == "SSL *"
    assert ffi.typeof(conn._from_ssl).cname == "BIO *"
    assert all(hasattr(lib, name) for name in ("SSL_write", "BIO_read", "ERR_clear_error"))
    assert edge._encrypt(conn, b"too early") is None
    assert lib.ERR_peek_error() == 0


def encrypted(transport: Any, plain: bytes) -> bytes:
    """``plain`` as the next TLS record(s) of ``transport``'s connection."""
    conn = transport.getHandle()
    conn.send(plain)
    data: bytes = conn.bio_read(1 << 16)
    return data


@ensure
async def test_write_tls_frame_keeps_the_order_behind_twisteds_queues(
    tls_pair: tuple[Any, _Collect],
) -> None:
    transport, client = tls_pair
    direct = edge.direct_tls(transport)
    assert direct is not None
    transport.write(b"first,")  # in the aggregator: the frame must not overtake it
    assert edge.write_tls_frame(direct, b"second,", 1 << 20) is True
    assert await client.until(13) == b"first,second,"
    direct.tcp.write(encrypted(transport, b"third,"))  # queued on the TCP transport
    assert edge.write_tls_frame(direct, b"fourth", 1 << 20) is True
    assert direct.tcp.dataBuffer or direct.tcp._tempDataBuffer  # behind it, not sent before
    assert await client.until(25) == b"first,second,third,fourth"


@ensure
async def test_write_tls_frame_refuses_a_frame_over_the_limit(
    tls_pair: tuple[Any, _Collect],
) -> None:
    transport, client = tls_pair
    direct = edge.direct_tls(transport)
    assert direct is not None
    record = encrypted(transport, b"a" * 100)
    direct.tcp.write(record)
    held = edge.queued_bytes(transport)
    assert held == len(record)
    assert edge.write_tls_frame(direct, b"refused", held - 1) is False
    assert edge.queued_bytes(transport) == held  # nothing was added, nothing encrypted
    assert edge.write_tls_frame(direct, b"b", held) is True
    assert await client.until(101) == b"a" * 100 + b"b"


def test_the_context_releases_idle_buffers_and_issues_tickets(
    cert: tuple[Path, Path, bytes],
) -> None:
    key, crt, _ = cert
    context = options(key, crt).getContext()
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # set_mode returns the mode now
    assert not context.set_options(0) & SSL.OP_NO_TICKET  # set_options returns them too
    off = options(key, crt, session_tickets=False).getContext()
    assert off.set_options(0) & SSL.OP_NO_TICKET


@ensure
async def test_only_the_configured_protocols_are_offered(cert: tuple[Path, Path, bytes]) -> None:
    key, crt, cert_pem = cert
    port = reactor.listenSSL(
        0,
        protocol.Factory.forProtocol(protocol.Protocol),
        options(key, crt, protocols=("TLSv1.3",)),
        interface="127.0.0.1",
    )
    try:
        client = _Collect()
        proto = await tls_connect(
            port.getHost().port, cert_pem, client, lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2
        )
        proto.transport.write(b"hello")
        await client.lost  # the handshake failed: the connection is gone, nothing read
        assert client.data == b""
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    ("kw", "line"),
    [
        ({"certKey": "/nonexistent/cert.pem"}, "[server] listen: certKey= /nonexistent/cert.pem"),
        ({"certKey": "{key}"}, "[server] listen: certKey={key}: no PEM certificate"),
        ({"privateKey": "{cert}"}, "[server] listen: privateKey={cert}: no unencrypted PEM"),
        ({"sslmethod": "TLSv1_2_METHOD"}, "sslmethod= is not read"),
    ],
)
def test_a_tls_file_or_argument_that_cannot_serve_is_one_line(
    cert: tuple[Path, Path, bytes], kw: dict[str, str], line: str
) -> None:
    key, crt, _ = cert
    args = {"privateKey": str(key), "certKey": str(crt)}
    args.update({k: v.format(key=key, cert=crt) for k, v in kw.items()})
    with pytest.raises(TLSProblem) as e:
        tls_options(args, ("TLSv1.2", "TLSv1.3"), DEFAULT_CIPHERS, True)
    assert line.format(key=key, cert=crt) in str(e.value)


def test_a_certkey_holding_the_chain_sends_it_after_the_leaf(
    cert: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    key, _, cert_pem = cert
    ca_pem, _ = self_signed("intermediate")
    full = tmp_path / "fullchain.pem"
    full.write_bytes(cert_pem + ca_pem)
    kw = {"privateKey": str(key), "certKey": str(full)}
    made = tls_options(kw, ("TLSv1.3",), DEFAULT_CIPHERS, True)
    assert [c.subject for c in made.extraCertChain] == [
        x509.load_pem_x509_certificate(ca_pem).subject
    ]


def test_ciphers_openssl_does_not_know_are_refused(cert: tuple[Path, Path, bytes]) -> None:
    key, crt, _ = cert
    with pytest.raises(TLSProblem, match=r"\[server\] tls_ciphers: no cipher OpenSSL knows"):
        options(key, crt, ciphers="NOSUCHCIPHER")


def test_the_listener_stops_the_start_with_the_line(cert: tuple[Path, Path, bytes]) -> None:
    key, _, _ = cert
    description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey=/nonexistent.pem"

    def make(r: Any, d: str) -> Any:
        return server_endpoint(r, d, ("TLSv1.2", "TLSv1.3"), DEFAULT_CIPHERS, True)

    listener = Listener(reactor, description, protocol.Factory(), make_endpoint=make)
    with pytest.raises(ListenError, match=r"^\[server\] listen: certKey= /nonexistent.pem"):
        listener.privilegedStartService()
