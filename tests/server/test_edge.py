"""quoted.server.edge: each private name of Twisted and Autobahn that quoted relies on, checked
against the installed versions. A failure here means an upgrade changed an assumption: read the
function's docstring in quoted/server/edge.py before changing anything else.

Autobahn's side runs in memory (a StringTransport and a Clock); Twisted's TCP transport over a
real loopback socket, since the direct write path is about the real one.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.base import ReactorBase
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from quoted.server import edge
from quoted.wire.frames import text_frame

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked with a zero key, so the payload stays readable)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer, request_no_context_takeover=True)
    return None


def open_connection(
    cls: type[WebSocketServerProtocol] = WebSocketServerProtocol, *, deflate: bool = False
) -> tuple[Any, StringTransport]:
    """A plain Autobahn server connection, opened in memory."""
    factory = WebSocketServerFactory("ws://localhost/ws", reactor=Clock())
    factory.protocol = cls
    factory.setProtocolOptions(autoPingInterval=0, perMessageCompressionAccept=accept_deflate)
    proto: Any = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.registerProducer(proto, True)  # as QuoteProtocol does
    proto.dataReceived(HANDSHAKE + (DEFLATE_OFFER if deflate else b"") + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 101 "), transport.value()
    assert proto.state == proto.STATE_OPEN
    transport.clear()
    return proto, transport


# -- Autobahn -----------------------------------------------------------------------------------


def test_every_class_default_is_set_per_connection_to_its_default() -> None:
    """trim() drops a per-connection attribute only while it holds the class default: a name
    Autobahn no longer sets, or sets to another value, would make the list stale."""
    proto, _ = open_connection()
    missing = [n for n in edge.CLASS_DEFAULTS if n not in proto.__dict__]
    assert missing == []
    changed = [n for n, v in edge.CLASS_DEFAULTS.items() if proto.__dict__[n] is not v]
    assert changed == []


def test_every_handshake_leftover_is_kept_per_connection() -> None:
    proto, _ = open_connection()
    assert [n for n in edge.HANDSHAKE_LEFTOVERS if n not in proto.__dict__] == []


def test_trim_leaves_a_working_connection_with_a_smaller_dict() -> None:
    class Trimmed(WebSocketServerProtocol):
        received: list[bytes]

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.received.append(payload)

    edge.install_class_defaults(Trimmed)
    proto, transport = open_connection(Trimmed)
    before = len(proto.__dict__)
    edge.trim(proto)
    assert len(proto.__dict__) < before - len(edge.HANDSHAKE_LEFTOVERS)
    proto.received = []
    proto.dataReceived(masked(0x1, b"hello"))
    assert proto.received == [b"hello"]
    proto.dataReceived(masked(0x9, b"p"))  # a ping is still answered
    assert transport.value() == b"\x8a\x01p"


def test_per_factory_protocol_holds_the_options_on_the_class() -> None:
    assert "maxMessagePayloadSize" in WebSocketServerProtocol.CONFIG_ATTRS
    factory = WebSocketServerFactory("ws://localhost/ws", reactor=Clock())
    factory.setProtocolOptions(maxMessagePayloadSize=4096, autoPingInterval=0)
    factory.protocol = edge.per_factory_protocol(factory, WebSocketServerProtocol)
    proto: Any = factory.buildProtocol(None)
    assert "maxMessagePayloadSize" not in proto.__dict__
    assert proto.maxMessagePayloadSize == 4096


def closed_connection() -> Any:
    """An opened connection after connectionLost, its transport gone as Twisted's would be."""
    proto, transport = open_connection()
    transport.unregisterProducer()
    proto.connectionLost(Failure(ConnectionDone()))
    return proto


def test_is_closed_holds_the_protocol_until_the_cycle_is_broken() -> None:
    proto = closed_connection()
    assert "is_closed" in proto.__dict__ and "is_open" in proto.__dict__
    gc.disable()
    try:
        edge.break_close_cycle(proto)
        ref = weakref.ref(proto)
        del proto
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_a_closed_connection_without_the_break_needs_a_full_collection() -> None:
    """The reason break_close_cycle exists: if this starts failing, Autobahn broke the cycle
    itself and the workaround can go."""
    proto = closed_connection()
    gc.disable()
    try:
        ref = weakref.ref(proto)
        del proto
        assert ref() is not None
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("code", [1001, 1002, 1003, 1007, 1008, 4008])
def test_send_close_sends_any_code(code: int) -> None:
    proto, transport = open_connection()
    edge.send_close(proto, code, "why")
    assert transport.value() == b"\x88\x05" + struct.pack("!H", code) + b"why"
    assert proto.state == proto.STATE_CLOSING


def test_close_frame_payload_inside_process_control_frame() -> None:
    seen: list[bytes | None] = []

    class Watching(WebSocketServerProtocol):
        def processControlFrame(self) -> bool:
            seen.append(edge.close_frame_payload(self))
            result: bool = super().processControlFrame()
            return result

    proto, _ = open_connection(Watching)
    proto.dataReceived(masked(0x9, b"hi"))
    proto.dataReceived(masked(0x8, b"\x03\xe8bye"))
    assert seen == [None, b"\x03\xe8bye"]


def test_fail_connection_closes_and_ignores_the_rest_of_the_message() -> None:
    received: list[bytes] = []

    class Recording(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            received.append(payload)

    proto, transport = open_connection(Recording)
    proto.failByDrop = False  # as QuoteFactory sets it: a close frame, not a drop
    proto.dataReceived(bytes((0x01, 0x80 | 3)) + b"\0\0\0\0" + b"abc")  # FIN=0: a first fragment
    edge.fail_connection(proto, 4029, "why")
    assert transport.value() == b"\x88\x05" + struct.pack("!H", 4029) + b"why"
    assert proto.state == proto.STATE_CLOSING and proto.failedByMe
    proto.dataReceived(masked(0x0, b"def"))  # the last fragment: ignored
    proto.dataReceived(masked(0x1, b"next"))
    assert received == []
    proto.dataReceived(masked(0x8, b"\x03\xe8"))  # the client's closing reply is still read
    assert transport.disconnecting


def test_negotiated_deflate() -> None:
    plain, _ = open_connection()
    assert edge.negotiated_deflate(plain) is None
    proto, _ = open_connection(deflate=True)
    pmd = edge.negotiated_deflate(proto)
    assert pmd is not None
    assert pmd.server_no_context_takeover is False


def test_autobahn_logs_the_handshake_through_the_protocols_log_attribute() -> None:
    """NoDebugLogger guards the token only while Autobahn's debug events go through
    ``self.log``; and it drops debug events while keeping the others."""
    debug_calls: list[str] = []

    class Loud(WebSocketServerProtocol):
        class log:
            @staticmethod
            def debug(format: str | None = None, **kwargs: object) -> None:
                debug_calls.append(format or "")

            info = warn = error = failure = debug

    open_connection(Loud)
    assert debug_calls, "Autobahn no longer logs through self.log: NoDebugLogger guards nothing"
    events: list[dict[str, Any]] = []
    quiet = edge.NoDebugLogger(observer=events.append)
    quiet.debug("Authorization: Bearer {token}", token="eyJ...")
    quiet.info("kept")
    assert [e["log_format"] for e in events] == ["kept"]


# -- Twisted ------------------------------------------------------------------------------------


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.waiting: list[tuple[int, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for n, d in list(self.waiting):
            if len(self.data) >= n:
                self.waiting.remove((n, d))
                d.callback(self.data)

    def until(self, n: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append((n, d))
        self.dataReceived(b"")
        return d


@pytest_twisted.async_yield_fixture
async def tcp_pair() -> AsyncIterator[tuple[Any, _Collect]]:
    """A real server-side tcp.Server transport and the client that reads it."""
    accepted: defer.Deferred[Any] = defer.Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    client = _Collect()
    creator = protocol.ClientCreator(reactor, lambda: client)
    connector = await creator.connectTCP("127.0.0.1", port.getHost().port)
    transport = await accepted
    yield transport, client
    connector.transport.loseConnection()
    transport.loseConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_direct_socket_is_the_plain_tcp_socket_with_a_bounded_send_buffer(
    tcp_pair: tuple[Any, _Collect],
) -> None:
    transport, _ = tcp_pair
    assert type(transport) is tcp.Server
    sock = edge.direct_socket(transport)
    assert sock is transport.socket
    # Linux doubles the value set (for bookkeeping): within that, not the 2.7 MB autotuned
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * edge.SEND_BUFFER_BYTES
    assert edge.direct_socket(StringTransport()) is None


@pytest_twisted.ensureDeferred
async def test_the_tcp_transport_has_the_two_write_buffers(
    tcp_pair: tuple[Any, _Collect],
) -> None:
    transport, _ = tcp_pair
    assert transport.dataBuffer == b""
    assert transport._tempDataBuffer == []
    assert not transport.disconnecting
    transport.write(b"queued")  # written on the next loop turn: held in a buffer until then
    assert transport.dataBuffer or transport._tempDataBuffer


@pytest_twisted.ensureDeferred
async def test_write_frame_goes_direct_when_nothing_is_queued(
    tcp_pair: tuple[Any, _Collect],
) -> None:
    transport, client = tcp_pair
    sock = edge.direct_socket(transport)
    frame = text_frame(b'{"type":"pong"}')
    edge.write_frame(transport, sock, frame, 1 << 20)
    assert (transport.dataBuffer, transport._tempDataBuffer) == (b"", [])  # the kernel has it
    assert await client.until(len(frame)) == frame


@pytest_twisted.ensureDeferred
async def test_write_frame_keeps_the_order_behind_queued_bytes(
    tcp_pair: tuple[Any, _Collect],
) -> None:
    transport, client = tcp_pair
    sock = edge.direct_socket(transport)
    transport.write(b"first,")
    edge.write_frame(transport, sock, b"second", 1 << 20)
    assert await client.until(12) == b"first,second"


@pytest_twisted.ensureDeferred
async def test_queued_bytes_counts_what_twisted_holds(tcp_pair: tuple[Any, _Collect]) -> None:
    """queued_bytes reads FileDescriptor's buffer state (dataBuffer, offset, _tempDataLen),
    through a wrapper's ``transport`` as for TLS; other transports count 0."""
    transport, client = tcp_pair
    assert edge.queued_bytes(transport) == 0
    assert (transport.offset, transport._tempDataLen) == (0, 0)
    transport.write(b"x" * 1000)
    assert edge.queued_bytes(transport) == 1000

    class Wrapper:  # what TLSMemoryBIOProtocol is to the TCP transport under it
        def __init__(self, inner: Any) -> None:
            self.transport = inner

    assert edge.queued_bytes(Wrapper(transport)) == 1000
    assert edge.queued_bytes(StringTransport()) == 0
    await client.until(1000)
    assert edge.queued_bytes(transport) == 0  # all sent: the buffers are empty again


@pytest_twisted.ensureDeferred
async def test_write_frame_refuses_a_frame_over_the_limit(tcp_pair: tuple[Any, _Collect]) -> None:
    transport, client = tcp_pair
    sock = edge.direct_socket(transport)
    transport.write(b"a" * 100)
    assert edge.write_frame(transport, sock, b"refused", 99) is False
    assert edge.queued_bytes(transport) == 100  # nothing was added
    assert edge.write_frame(transport, sock, b"b", 100) is True
    assert edge.write_frame(StringTransport(), None, b"c", 0) is True  # nothing counted there
    assert await client.until(101) == b"a" * 100 + b"b"


def test_the_reactor_records_its_exit_signal() -> None:
    assert "_exitSignal" in vars(ReactorBase)
    assert getattr(reactor, "_exitSignal", "absent") in (None, 15, 2, 1)

    class Stopped:
        _exitSignal: int | None = 15

    stopped = Stopped()
    edge.clear_exit_signal(stopped)
    assert stopped._exitSignal is None
    edge.clear_exit_signal(object())  # a reactor without it: nothing to do


def test_twistd_re_raises_the_recorded_signal() -> None:
    """clear_exit_signal exists because twistd's runner copies the reactor's _exitSignal after
    the reactor stops and kills the process with it (tests/server/test_process.py proves the
    exit status 0 after SIGTERM end to end)."""
    import inspect

    from twisted.application import app
    from twisted.scripts import twistd

    assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner)
    assert "_exitWithSignal(runner._exitSignal)" in inspect.getsource(twistd)


# -- HTTP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_every_refusal_of_twisted_web_goes_through_the_bad_request_method(data: bytes) -> None:
    from twisted.web.http import HTTPChannel

    calls: list[object] = []

    class Channel(HTTPChannel):
        pass

    def refuse(self: Any) -> None:  # as quoted's does: nothing after it is parsed
        calls.append(self)
        self.dataReceived = self.lineReceived = lambda *args: None

    edge.answer_bad_requests(Channel, refuse)
    assert hasattr(HTTPChannel, edge.BAD_REQUEST)
    channel = Channel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(data)
    assert calls == [channel]
    channel.connectionLost(Failure(ConnectionDone()))


def test_upgraded_protocol_reads_back_the_protocol_autobahn_installed() -> None:
    import io
    from types import SimpleNamespace

    from autobahn.twisted.resource import WebSocketResource
    from twisted.web.http_headers import Headers

    factory = WebSocketServerFactory("ws://localhost/ws", reactor=Clock())
    factory.protocol = WebSocketServerProtocol
    resource = WebSocketResource(factory)
    transport: Any = StringTransport()
    transport.protocol = None  # twisted.web's channel, on a TCP transport
    transport.registerProducer(SimpleNamespace(), True)  # the channel, until the upgrade
    request = SimpleNamespace(
        channel=SimpleNamespace(transport=transport),
        transport=transport,
        method=b"GET",
        uri=b"/ws",
        requestHeaders=Headers(),
        content=io.BytesIO(),
    )
    resource.render(request)
    proto = edge.upgraded_protocol(transport)
    assert isinstance(proto, WebSocketServerProtocol)
    assert proto.transport is transport


@pytest.mark.parametrize("how", ["lost", "dropped"])
def test_when_closed_fires_once_however_the_connection_ends(how: str) -> None:
    factory = WebSocketServerFactory("ws://localhost/ws", reactor=Clock())
    factory.protocol = WebSocketServerProtocol
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    if how == "dropped":  # Autobahn unregisters itself as it drops
        transport.registerProducer(proto, True)
    fired: list[int] = []
    edge.when_closed(proto, lambda: fired.append(1))
    if how == "dropped":
        proto.dropConnection(abort=True)
    proto.connectionLost(Failure(ConnectionDone()))
    assert fired == [1]


# -- endpoint strings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "kind", "names"),
    [
        ("tcp:8080:interface=127.0.0.1", "tcp", ["port", "interface", "backlog"]),
        ("tcp6:8080", "tcp6", ["port", "backlog", "interface"]),
        ("unix:/run/q.sock", "unix", ["address", "mode", "backlog", "lockfile"]),
        ("ssl:8443:privateKey=k.pem", "ssl", ["port", "privateKey", "certKey", "sslmethod"]),
        ("systemd:domain=INET:name=quoted", "systemd", ["domain", "index", "name"]),
    ],
)
def test_endpoint_arguments_match_what_twisted_accepts(
    description: str, kind: str, names: list[str]
) -> None:
    got, _, _, signature = edge.endpoint_arguments(description)
    assert got == kind
    assert names == [n for n in signature.parameters if n in names]


def test_endpoint_arguments_undo_escapes_as_twisted_does() -> None:
    _, args, kw, _ = edge.endpoint_arguments(r"ssl:8443:privateKey=/etc/a\:b.pem")
    assert (args, kw) == (("8443",), {"privateKey": "/etc/a:b.pem"})


def test_a_misspelt_argument_is_what_serverfromstring_refuses() -> None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    _, _, kw, signature = edge.endpoint_arguments("tcp:0:interfase=127.0.0.1")
    assert "interfase" in kw and "interfase" not in signature.parameters
    with pytest.raises(TypeError, match="interfase"):
        serverFromString(MemoryReactor(), "tcp:0:interfase=127.0.0.1")
    serverFromString(MemoryReactor(), "tcp:0:interface=127.0.0.1:backlog=5")  # the right names


def test_an_unknown_endpoint_type_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown endpoint type"):
        edge.endpoint_arguments("udp:53")
