"""The edge: every place quoted leans on private state or undocumented behaviour of Twisted or
Autobahn, each name with why it is needed. tests/server/test_edge.py checks each assumption
against the installed versions, so an upgrade that breaks one fails there, loudly, rather than
as a slow leak or a lost frame in production. setup.cfg caps both libraries below their next
major release; constraints.txt is the tested set.

What lives here:

- **The direct write path** (:func:`direct_socket`, :func:`write_frame`; over TLS
  :func:`direct_tls`, :func:`write_tls_frame`): one ``send()`` when nothing is queued.
- **The bytes queued for a connection** (:func:`queued_bytes`): what Twisted holds that the
  kernel has not taken, the measure of quoted.server.budget's outbound bound.
- **Raw control frames** (:func:`write_frame` with :data:`PING_FRAME`): a ping without
  Autobahn's ``sendPing`` (about ten times the cost, and a per-connection timer).
- **Closing** (:func:`send_close`, :func:`fail_connection`, :func:`close_frame_payload`): any
  close code, a close after which the peer's data frames are ignored, and the payload of the
  peer's close frame while Autobahn processes it.
- **The compressor's negotiation** (:func:`negotiated_deflate`): quoted compresses its
  pre-framed messages itself; Autobahn only negotiates.
- **Memory per connection** (:func:`per_factory_protocol`, :func:`install_class_defaults`,
  :func:`trim`, :func:`break_close_cycle`): what Autobahn copies onto every connection, and
  the reference cycle that keeps a closed one alive.
- **Logging** (:class:`NoDebugLogger`): Autobahn's debug events carry the whole handshake.
- **The exit status** (:func:`clear_exit_signal`): twistd re-raises the signal that stopped it.
- **HTTP** (:func:`answer_bad_requests`, :func:`upgraded_protocol`, :func:`when_closed`):
  twisted.web's own 400s answered with our JSON; the per-IP connection count following a
  connection into the WebSocket that takes it over.
- **Endpoint strings** (:func:`endpoint_arguments`): a server endpoint string split by
  Twisted's own grammar and matched with the parameters of the parser Twisted hands it to,
  without building the endpoint.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any, Final, NamedTuple

from autobahn.websocket.protocol import TrafficStats
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import abstract, endpoints, tcp
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.logger import Logger
from twisted.protocols import tls

__all__ = [
    "BAD_REQUEST",
    "CLASS_DEFAULTS",
    "HANDSHAKE_LEFTOVERS",
    "PING_FRAME",
    "SEND_BUFFER_BYTES",
    "NoDebugLogger",
    "TLSDirect",
    "answer_bad_requests",
    "break_close_cycle",
    "clear_exit_signal",
    "close_frame_payload",
    "direct_socket",
    "direct_tls",
    "endpoint_arguments",
    "fail_connection",
    "install_class_defaults",
    "negotiated_deflate",
    "per_factory_protocol",
    "queued_bytes",
    "send_close",
    "trim",
    "upgraded_protocol",
    "when_closed",
    "write_frame",
    "write_tls_frame",
]

# kernel send buffer per connection: a stuck client pins at most this much kernel memory, and
# a stall shows within a tick or two instead of after the ~2.7 MB tcp_wmem autotuning absorbs
SEND_BUFFER_BYTES: Final = 64 * 1024

PING_FRAME: Final = b"\x89\x00"
"""A ping frame with an empty payload (server frames are not masked)."""


# -- the direct write path ----------------------------------------------------------------------


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket a plain TCP connection's frames may be sent on directly, its send buffer
    bounded to SEND_BUFFER_BYTES; None for anything else (TLS, in-memory transports).

    Private: ``tcp.Server.socket`` is an attribute of Twisted's TCP transport, not of any
    interface. Only an exact ``tcp.Server`` qualifies: a subclass or a TLS wrapper may hold
    bytes of its own that a direct send would overtake.
    """
    if type(transport) is not tcp.Server:
        return None
    sock: socket.socket = transport.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return sock


def write_frame(transport: Any, sock: socket.socket | None, frame: bytes, limit: int) -> bool:
    """Send ``frame`` now when nothing is queued before it; hand Twisted the rest. False, and
    nothing written, when more than ``limit`` bytes are already queued (:func:`queued_bytes`).

    Twisted's ``write()`` buffers every frame and sends it on the next loop turn (a buffer
    append, two epoll_ctl calls and a doWrite per socket); when its buffer is empty the frame
    can go straight to the kernel, in order, with one ``send()``. What the kernel does not
    take goes through Twisted as usual, so its buffer, the push-producer pause and its error
    handling stay in charge. BENCHMARKS.md (stress vs baseline) has the measured effect. The
    limit is checked before the write, so one large message (a snapshot of many symbols) to an
    empty queue always goes, and a queue never holds more than ``limit`` plus one frame.

    Private: ``dataBuffer`` (bytes) and ``_tempDataBuffer`` (a list) are
    ``twisted.internet.abstract.FileDescriptor``'s two write buffers; both empty means
    nothing is waiting to be sent. ``disconnecting`` is set once loseConnection was called.
    """
    if sock is not None and not transport.dataBuffer and not transport._tempDataBuffer:
        if not transport.disconnecting:
            try:
                sent = sock.send(frame)
            except OSError:  # EAGAIN, or an error Twisted's write will meet and report
                sent = 0
            if sent == len(frame):
                return True
            frame = frame[sent:]
    elif queued_bytes(transport) > limit:
        return False
    transport.write(frame)
    return True


class TLSDirect(NamedTuple):
    """A TLS connection's ``TLSMemoryBIOProtocol``, its OpenSSL connection (memory BIOs),
    the TCP transport under it, that one's socket, and the TLS layer's list of writes not
    yet encrypted (its aggregator's, kept for the connection's life; empty without one)."""

    tls: Any
    conn: Any
    tcp: Any
    sock: socket.socket
    unencrypted: list[bytes]


def direct_tls(transport: Any) -> TLSDirect | None:
    """A TLS-over-TCP connection's direct path (send buffer bounded as plain's), or None.

    Private: ``_tlsConnection`` is the ``OpenSSL.SSL.Connection`` of Twisted's
    ``TLSMemoryBIOProtocol`` (``getHandle()`` returns it, documented only for
    ``Certificate.peerFromTransport``). Only Twisted's own two classes qualify.
    """
    if type(transport) not in (tls.BufferingTLSTransport, tls.TLSMemoryBIOProtocol):
        return None
    sock = direct_socket(tcp_ := transport.transport)
    if sock is None:
        return None
    aggregator = getattr(transport, "_aggregator", None)  # BufferingTLSTransport's only
    pending = aggregator._buffer if aggregator is not None else []
    return TLSDirect(transport, transport._tlsConnection, tcp_, sock, pending)


# one buffer for all (one reactor thread): a 16 KiB record with its header and tag, and more
_OUT_SIZE: Final = 2**14 + 256
_OUT = _ffi.new("char[]", _OUT_SIZE)


def _encrypt(conn: Any, frame: bytes) -> bytes | None:
    """``frame`` as TLS records, after what OpenSSL had waiting (a session ticket); None,
    nothing written, when OpenSSL refuses to write.

    Through pyOpenSSL's cffi binding, into one shared buffer: its ``send`` and ``bio_read``
    add argument checks, an error lookup and a fresh buffer per call (7.5 against 4.6 us
    for the pair, measured side by side; BENCHMARKS.md, wss).

    Private: pyOpenSSL's binding ``OpenSSL._util.lib``/``ffi``; a Connection's ``_ssl``
    (``SSL*``) and ``_from_ssl`` (the BIO OpenSSL writes into, as ``bio_read`` reads it).
    """
    done = 0
    while done < len(frame):  # partial writes: a record (16 KiB) at most per SSL_write
        n = _lib.SSL_write(conn._ssl, frame[done:] if done else frame, len(frame) - done)
        if n <= 0:  # refused; after a partial write, what was encrypted still goes
            _lib.ERR_clear_error()
            if not done:
                return None
            break
        done += n
    parts = []
    while True:
        n = _lib.BIO_read(conn._from_ssl, _OUT, _OUT_SIZE)
        if n <= 0:
            break
        parts.append(_ffi.buffer(_OUT, n)[:])
        if n < _OUT_SIZE:
            break
    return b"".join(parts)  # one part: that very bytes object, not a copy


def write_tls_frame(direct: TLSDirect, frame: bytes, limit: int) -> bool:
    """:func:`write_frame` for TLS: ``frame`` encrypted in place, then one ``send()`` when
    nothing is queued on the socket, else queued on the TCP transport, in order. False,
    nothing written, when more than ``limit`` bytes are queued already.

    Twisted's ``BufferingTLSTransport.write`` holds each write for a ``callLater(0)``, then
    encrypts and queues it again. Taken only when Twisted's TLS layer holds nothing the frame
    would overtake (else ``tls.write``); the rest stays with the TCP transport, so the
    producer pause, the budget and errors are a plain connection's.

    Private: ``_handshakeDone``, ``_appSendBuffer``, ``_lostTLSConnection`` are
    ``TLSMemoryBIOProtocol``'s; ``BufferingTLSTransport``'s ``_aggregator._buffer`` (in
    :func:`direct_tls`) is one list, emptied in place; the TCP buffers as in write_frame.
    """
    t = direct.tls
    tcp = direct.tcp
    held = tcp.dataBuffer or tcp._tempDataBuffer
    if held and queued_bytes(tcp) > limit:
        return False
    if (
        not t._handshakeDone
        or t._appSendBuffer
        or direct.unencrypted
        or t._lostTLSConnection
        or t.disconnecting
        or tcp.disconnecting
    ):
        t.write(frame)
        return True
    data = _encrypt(direct.conn, frame)
    if data is None:  # an error OpenSSL reported: Twisted's path meets it too and reports it
        t.write(frame)
        return True
    # the encrypted bytes, as plain TCP's; never refused here (the budget was checked before
    # encrypting, and bytes OpenSSL has sealed must go)
    return write_frame(tcp, direct.sock, data, limit)


def queued_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` that the kernel has not taken yet; 0 for a transport that
    is not over a Twisted file descriptor (the in-memory ones of tests).

    A TLS connection's transport is a ``TLSMemoryBIOProtocol`` whose encrypted bytes go to
    the TCP transport under it (its ``transport`` attribute, a ProtocolWrapper's): that one's
    buffers are counted.

    Private: ``dataBuffer`` with ``offset`` (how much of it was sent) and ``_tempDataLen`` (the
    length of ``_tempDataBuffer``) are ``twisted.internet.abstract.FileDescriptor``'s write
    buffer state; Twisted itself compares their sum to ``bufferSize`` to pause the producer.
    """
    for _ in range(4):  # TLS over TCP is two levels; a loop guards against a cycle
        if isinstance(transport, abstract.FileDescriptor):
            fd: Any = transport
            queued: int = len(fd.dataBuffer) - fd.offset + fd._tempDataLen
            return queued
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return 0


# -- closing ------------------------------------------------------------------------------------


def send_close(proto: Any, code: int, reason: str) -> None:
    """Start the closing handshake with any code.

    Autobahn's public ``sendClose`` allows only 1000 and 3000-4999, and quoted closes with
    1001, 1002, 1003, 1007 and 1008 as well (docs/protocol.md section 7). ``sendCloseFrame``
    is the method ``sendClose`` and Autobahn's own protocol failures use; not documented.
    """
    proto.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)


def fail_connection(proto: Any, code: int, reason: str) -> None:
    """Close with ``code`` and ignore the peer's data frames from now on (control frames, the
    peer's closing reply among them, are still read).

    For a client that floods: after :func:`send_close` alone Autobahn goes on collecting a
    fragmented message (a list entry per frame) until the close handshake ends. Private:
    ``_fail_connection`` is what Autobahn calls on its own protocol errors (1002, 1009); it
    sets ``failedByMe``, which its frame handlers check before keeping any data, and sends the
    close frame with ``sendCloseFrame`` as :func:`send_close` does (with ``failByDrop`` off,
    as QuoteFactory sets it; on, it would drop the socket instead).
    """
    proto._fail_connection(code, reason)


def close_frame_payload(proto: Any) -> bytes | None:
    """Inside ``processControlFrame``: the payload of the peer's close frame, or None when the
    frame being processed is another control frame.

    Private: ``current_frame`` (with its ``opcode``) and ``control_frame_data`` (the list of
    the frame's payload chunks) are Autobahn's frame parser state. quoted reads them because
    Autobahn answers a one-byte close payload as a normal close, and aborts the socket before
    a 1002/1007 close frame could leave.
    """
    if proto.current_frame.opcode != 8:
        return None
    return b"".join(proto.control_frame_data or ())


# -- compression --------------------------------------------------------------------------------


def negotiated_deflate(proto: Any) -> Any:
    """The permessage-deflate agreement of an open connection, or None.

    Private: ``_perMessageCompress`` is where Autobahn keeps the accepted extension. quoted
    reads only ``server_no_context_takeover`` from it and compresses its own frames: Autobahn's
    compressor runs only inside ``sendMessage`` (once per connection per message, the path
    quoted leaves for pre-framed bytes) at zlib's default level 6 with no public option for
    the level; quoted's level 1 with a 2 KiB window costs ~10 KB a connection instead of
    Autobahn's 256 KB and 33.7 instead of 101.7 us a message (BENCHMARKS.md, compression).
    """
    return proto._perMessageCompress


# -- memory per connection ----------------------------------------------------------------------

# Autobahn's per-connection copies of the opening handshake, unused once open
HANDSHAKE_LEFTOVERS: Final = (
    "http_request_data",
    "http_headers",
    "http_response_data",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "_wskey",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_transport_details",
    # never used by us: a shared, empty one is on the class (we send no sync or chopped
    # frames, the only users of the queue; traffic statistics are not read)
    "send_queue",
    "trafficStats",
)

# per-connection attributes Autobahn sets to these (immutable) values; while an instance holds
# the same value, the class attribute serves instead
CLASS_DEFAULTS: Final[dict[str, object]] = {
    name: value
    for names, value in (
        (
            (
                "wasServingFlashSocketPolicyFile",
                "wasServerConnectionDropTimeout",
                "wasOpenHandshakeTimeout",
                "wasMaxMessagePayloadSizeExceeded",
                "wasMaxFramePayloadSizeExceeded",
                "wasCloseHandshakeTimeout",
                "wasClean",
                "triggered",
                "inside_message",
                "failedByMe",
                "droppedByMe",
                "closedByMe",
            ),
            False,
        ),
        (
            (
                "websocket_protocol_in_use",
                "wasNotCleanReason",
                "trackedTimings",
                "remoteCloseReason",
                "remoteCloseCode",
                "openHandshakeTimeoutCall",
                "localCloseReason",
                "localCloseCode",
                "current_frame",
                "closeHandshakeTimeoutCall",
                "autoPingTimeoutCall",
                "autoPingPendingSent",
                "autoPingPendingCall",
                "autoPingPending",
                "_perMessageCompress",
            ),
            None,
        ),
    )
    for name in names
}


def install_class_defaults(cls: type) -> None:
    """Give ``cls`` the class attributes :func:`trim` relies on: CLASS_DEFAULTS, and one shared,
    empty send queue and traffic record (Autobahn makes both per connection)."""
    for name, value in CLASS_DEFAULTS.items():
        setattr(cls, name, value)
    cls.send_queue = ()  # type: ignore[attr-defined]
    cls.trafficStats = TrafficStats()  # type: ignore[attr-defined]


def per_factory_protocol(factory: Any, cls: type) -> type:
    """A subclass of ``cls`` holding the factory's protocol options once, instead of on every
    connection (about 1.3 KB a connection).

    Private: Autobahn's factory copies every name in the protocol's ``CONFIG_ATTRS`` onto
    each connection it builds; with the options on the class and ``CONFIG_ATTRS`` empty,
    instances read them from the class.
    """
    options = {name: getattr(factory, name) for name in cls.CONFIG_ATTRS}  # type: ignore[attr-defined]
    return type(cls.__name__, (cls,), {**options, "CONFIG_ATTRS": ()})


def trim(proto: Any) -> None:
    """Drop an open connection's handshake leftovers and defaults; rebuild its instance dict
    compact (BENCHMARKS.md: 12.8 -> 7.5 KB a connection with per_factory_protocol)."""
    d = proto.__dict__
    for name in HANDSHAKE_LEFTOVERS:
        d.pop(name, None)
    for name, default in CLASS_DEFAULTS.items():
        if name in d and d[name] is default:
            del d[name]
    proto.__dict__ = dict(d)


def break_close_cycle(proto: Any) -> None:
    """After ``connectionLost``: free a closed connection at once.

    Private: Autobahn resolves its ``is_closed`` future with the protocol itself (and keeps an
    ``is_open`` one): a reference cycle that only a full garbage collection would free, a
    minute away (quoted/server/collector.py); 175 MB after a minute of churn before this.
    """
    proto.__dict__.pop("is_closed", None)
    proto.__dict__.pop("is_open", None)


# -- logging ------------------------------------------------------------------------------------


class NoDebugLogger(Logger):
    """A Logger without debug events, for the protocol's ``log`` attribute: Autobahn logs every
    handshake whole at debug level (``Authorization: Bearer ...``, ``?token=...``), and a token
    must never reach a log. Autobahn logs through ``self.log`` (undocumented)."""

    def debug(self, format: str | None = None, **kwargs: object) -> None:
        pass


# -- the exit status ----------------------------------------------------------------------------


def clear_exit_signal(reactor: Any) -> None:
    """After an orderly shutdown: let twistd exit 0 instead of re-raising SIGTERM.

    Private: the reactor records the signal that stopped it in ``_exitSignal``
    (``twisted.internet.base._SignalReactorMixin``) and twistd's runner re-raises it after the
    reactor stops, so a clean drain would end "killed by signal 15".
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


# -- HTTP: twisted.web's own refusals, the WebSocket takeover -------------------------------------

BAD_REQUEST: Final = "_respondToBadRequestAndDisconnect"
"""twisted.web's ``HTTPChannel`` method that answers a request it refuses itself (a malformed
request line or header line, NUL/CR/LF in a value, a bad Content-Length or Transfer-Encoding,
too many or too large headers, a bad chunk, a bad multipart body) with a bare ``400 Bad
Request`` and no body."""


def answer_bad_requests(cls: type, respond: Any) -> None:
    """Make ``respond(channel)`` the answer of every request twisted.web refuses itself, on
    the channel class ``cls``: quoted answers them with its JSON body, as every other refusal
    (docs/protocol.md section 2).

    Private: :data:`BAD_REQUEST` is the one place every such refusal of ``HTTPChannel`` (and
    of ``http.Request.requestReceived``) goes through; there is no public hook.
    """
    setattr(cls, BAD_REQUEST, respond)


def upgraded_protocol(transport: Any) -> Any:
    """The protocol that took ``transport`` over from twisted.web in Autobahn's
    ``WebSocketResource.render``.

    Private: Autobahn sets ``transport.protocol`` (an attribute of Twisted's TCP transport, not
    of any interface), or ``wrappedProtocol`` when the transport, or its protocol, is a
    ``ProtocolWrapper`` (TLS); this reads it back the same way.
    """
    from twisted.protocols.policies import ProtocolWrapper  # noqa: PLC0415

    if isinstance(transport, ProtocolWrapper):
        return transport.wrappedProtocol
    if isinstance(transport.protocol, ProtocolWrapper):
        return transport.protocol.wrappedProtocol
    return transport.protocol


def when_closed(proto: Any, callback: Any) -> None:
    """Call ``callback()`` once the WebSocket connection ``proto`` is closed, however it ends
    (a closing handshake, a drop, a lost TCP connection, before or after the opening).

    Autobahn's ``is_closed`` Deferred (under txaio's Twisted flavour) is resolved both by
    ``dropConnection`` and ``_connectionLost``; it is an attribute, not a documented API.
    """

    def fire(result: object) -> object:
        callback()
        return result

    proto.is_closed.addBoth(fire)


# -- endpoint strings ---------------------------------------------------------------------------


def endpoint_arguments(
    description: str,
) -> tuple[str, tuple[str, ...], dict[str, str], inspect.Signature]:
    """A server endpoint string as Twisted reads it: its type, its positional and keyword
    arguments (escapes undone), and the signature of the function Twisted passes them to,
    without its first parameter (the factory or the reactor). ValueError for an unknown type.

    ``serverFromString`` offers no way to check a string without building the endpoint, which
    for ssl reads the key files, for systemd needs the descriptors systemd passes (absent
    when ``python -m quoted.config`` runs), and reports a misspelt argument as a bare
    ``TypeError``. So this uses three private names of twisted.internet.endpoints:
    ``_parse`` (the grammar: ``:`` and ``=`` with ``\\`` escapes), ``_serverParsers``
    (the argument lists of tcp, unix and ssl), and a plugin parser's ``_parseServer``
    (tcp6, systemd) or ``_actualParseStreamServer`` (tls), where its public
    ``parseStreamServer`` takes only ``*args, **kwargs``.
    """
    args, kw = endpoints._parse(description)
    kind = str(args[0])
    parser: Any = endpoints._serverParsers.get(kind)
    if parser is None:
        from twisted.plugin import getPlugins  # noqa: PLC0415 (a plugin scan, only when needed)

        plugin = next(
            (
                p
                for p in getPlugins(IStreamServerEndpointStringParser)
                if p.prefix.lower() == kind.lower()
            ),
            None,
        )
        if plugin is None:
            raise ValueError(f"unknown endpoint type {kind!r}")
        parser = getattr(plugin, "_parseServer", None) or getattr(
            plugin, "_actualParseStreamServer", plugin.parseStreamServer
        )
        signature = inspect.signature(parser)  # a bound method: no self
    else:
        signature = inspect.signature(parser)
    params = list(signature.parameters.values())
    return kind, tuple(args[1:]), dict(kw), signature.replace(parameters=params[1:])
