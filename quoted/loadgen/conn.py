"""quoted-load's client side: one lean WebSocket connection keeping its quote document.

Autobahn's client costs too much per message for ten thousand connections on one
core, so this is a minimal RFC 6455 client: it writes the upgrade request itself,
reads the 101 (or the error status and its JSON body), parses the server's
unmasked frames and masks each frame it sends (pong, close). With compression it
inflates RSV1 messages (RFC 7692); framing and patching are quoted.wire.frames and
quoted.wire.patch.
Each connection applies every quotes_patch to
its document with a fast path for the operations quoted sends, checks ``seq``,
and on a sample applies the same patch with ``jsonpatch`` to compare. Counters go
to one shared :class:`Stats`; latencies are counted per millisecond in a dict and
folded into the HdrHistogram once a second by the runner.
Over wss the transport is quoted.loadgen.tls's TLSConnection around the TCP one: the
connection counts its handshake when TLS tells it (handshakeCompleted, as Twisted's
IHandshakeListener) and, to resume on its next connection, keeps the TLS session once its
snapshot arrived (a TLS 1.3 ticket comes after the handshake).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import time
import zlib
from collections import Counter, deque
from datetime import datetime
from typing import Any
from typing import Protocol as TypingProtocol

import jsonpatch
from twisted.internet.error import NotConnectingError
from twisted.internet.interfaces import IConnector, IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from quoted.wire.closecodes import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CLOSE_NORMAL
from quoted.wire.frames import (
    DEFLATE_TAIL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    client_frame,
)
from quoted.wire.patch import MISSING, PatchError, apply_ops

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024
SAMPLE_EVERY = 500  # one message in this many is also applied with jsonpatch
SLOW_RCVBUF = 4096  # a slow connection's receive buffer, so the server notices it soon
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST

# connection states
HANDSHAKE, REJECTED, OPEN, CLOSING, CLOSED = range(5)


class Stats:
    """Counters shared by every connection of a run."""

    __slots__ = (
        "backlog",
        "bytes",
        "closed",
        "connect_us",
        "connected",
        "failed",
        "failed_by",
        "failed_codes",
        "latency",
        "lu_cache",
        "messages",
        "patch_errors",
        "patch_mismatches",
        "protocol_errors",
        "sample",
        "seq_gaps",
        "stale",
        "updates",
    )

    def __init__(self) -> None:
        self.connected = self.failed = 0
        self.messages = self.updates = self.bytes = 0
        self.stale = 0  # updates repeating (or older than) the symbol's last_updated
        self.seq_gaps = self.patch_mismatches = self.patch_errors = self.protocol_errors = 0
        self.failed_by: Counter[str] = Counter()
        self.failed_codes: Counter[str] = Counter()  # "401 invalid_token"
        self.closed: Counter[str] = Counter()  # server-initiated closes of normal connections
        self.latency: dict[int, int] = {}  # ms -> count since the last fold into the histogram
        self.connect_us: list[int] = []  # since the last fold
        self.lu_cache: dict[str, int] = {}  # last_updated text -> epoch ms
        self.sample = 0
        self.backlog: Backlog | None = None

    def last_updated_ms(self, text: str) -> int:
        ms = self.lu_cache.get(text)
        if ms is None:
            if len(self.lu_cache) > 256:
                self.lu_cache.clear()
            ms = round(datetime.fromisoformat(text).timestamp() * 1000)
            self.lu_cache[text] = ms
        return ms


class Backlog:
    """Bytes read but not yet processed, each with the time it was read.

    Latency is measured to when the client read a message off its socket, not to
    when this one process got round to parsing it: a tick's burst of 10,000
    messages takes it far longer to parse than the server takes to send, and
    parsing in the read callback would charge the client's own backlog to the
    server. Reads only stamp and queue; the queue is worked off in slices of at
    most SLICE seconds, between which the reactor reads (and stamps) again.
    """

    SLICE = 0.005

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.queue: deque[tuple[LoadConnection, bytes, float]] = deque()
        self.scheduled = False
        self.last_read = clock.seconds()  # when bytes last came in

    def add(self, conn: LoadConnection, data: bytes) -> None:
        self.last_read = now = self.clock.seconds()
        self.queue.append((conn, data, now))
        if not self.scheduled:
            self.scheduled = True
            self.clock.callLater(0, self.drain)

    def drain(self) -> None:
        queue = self.queue
        deadline = time.perf_counter() + self.SLICE
        while queue and time.perf_counter() < deadline:
            conn, data, read_at = queue.popleft()
            if conn.state in (OPEN, CLOSING):
                conn._frames(data, read_at)
        if queue:
            self.clock.callLater(0, self.drain)
        else:
            self.scheduled = False


class Hooks(TypingProtocol):
    """What a connection tells its runner."""

    def opened(self, conn: LoadConnection) -> None: ...

    def failed(self, conn: LoadConnection, reason: str) -> None: ...

    def closed(self, conn: LoadConnection, code: int, by_us: bool) -> None: ...

    def snapshot(self, conn: LoadConnection) -> None:
        """The connection's first quotes_patch (seq 1) was applied."""


class TLSCounter(TypingProtocol):
    """What a wss connection tells about its handshake (quoted.loadgen.tls.ClientTLS)."""

    resume: bool

    def handshake(self, obj: Any) -> bool: ...

    def session(self, obj: Any) -> Any: ...


@implementer(IHandshakeListener)
class LoadConnection(Protocol):
    """One client WebSocket: handshake, frames, document, seq and latency."""

    __slots__ = (
        "_body_len",
        "_code",
        "_connector",
        "_head",
        "_inflater",
        "_no_context",
        "_started",
        "_status",
        "_tcp",
        "_timer",
        "by_us",
        "clock",
        "compress",
        "doc",
        "hooks",
        "host",
        "index",
        "reader",
        "record",
        "request",
        "resumed",
        "seq",
        "session",
        "slow",
        "state",
        "stats",
        "symbols",
        "tls",
    )

    def __init__(
        self,
        index: int,
        symbols: list[str],
        request: bytes,
        stats: Stats,
        hooks: Hooks,
        clock: IReactorTime,
        *,
        compress: bool = False,
        slow: bool = False,
        tls: TLSCounter | None = None,
    ) -> None:
        self.index, self.symbols, self.request = index, symbols, request
        self.stats, self.hooks, self.clock = stats, hooks, clock
        self.compress, self.slow, self.tls = compress, slow, tls
        self.resumed = False  # the TLS handshake resumed a session
        self.session: Any = None  # the TLS session to resume with next time (wss, resume)
        self.state = HANDSHAKE
        self.record = True  # count messages and latency
        self.doc: dict[str, Any] = {}
        self.seq = 0
        self.reader = FrameReader()
        self.by_us = False
        self._head = bytearray()
        self._status = 0
        self._body_len = 0
        self._code = CLOSE_ABNORMAL  # until a close frame gives one
        self._inflater: Any = None
        self._no_context = False
        self._started = clock.seconds()
        self._timer: IDelayedCall | None = None
        self._connector: IConnector | None = None
        self._tcp: Any = None  # the TCP transport, once connected

    def start(self, connector: IConnector, timeout: float) -> None:
        self._connector = connector
        self._timer = self.clock.callLater(timeout, self._timed_out)

    # -- handshake ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._tcp = self.transport
        if self.slow:
            self.socket().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        self._tcp.write(self.request)  # over TLS: sent once the handshake is done

    def socket(self) -> socket.socket:
        """The TCP socket (under the TLS transport's, over wss)."""
        t = self._tcp
        if getattr(t, "wrappedProtocol", None) is self:  # TLSConnection
            t = t.transport
        sock: socket.socket = t.getHandle()
        return sock

    def handshakeCompleted(self) -> None:
        """TLS's handshake finished (IHandshakeListener; wss only)."""
        if self.tls is not None:
            self.resumed = self.tls.handshake(self._tcp.getHandle())

    def tls_failed(self) -> None:
        """The TLS handshake failed (an untrusted certificate, a wrong name, an alert)."""
        self._fail("tls")

    def dataReceived(self, data: bytes) -> None:
        if self.state in (OPEN, CLOSING):
            backlog = self.stats.backlog
            if backlog is None:
                self._frames(data, self.clock.seconds())
            else:
                backlog.add(self, data)
        elif self.state == HANDSHAKE:
            self._handshake(data)
        elif self.state == REJECTED:
            self._head += data
            self._rejected_body(final=False)

    def _handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._fail("bad_response")
            return
        head = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        rest = bytes(self._head[end + 4 :])
        parts = head[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        try:
            self._status = int(parts[1])
        except (IndexError, ValueError):
            self._fail("bad_response")
            return
        if self._status != 101:
            self.state = REJECTED
            self._body_len = int(headers.get("content-length", "-1") or -1)
            self._head = bytearray(rest)
            self._rejected_body(final=False)
            return
        if headers.get("sec-websocket-accept") != self.accept_key() or "upgrade" not in (
            headers.get("connection", "").lower()
        ):
            self._fail("bad_upgrade")
            return
        self._negotiate(headers.get("sec-websocket-extensions", ""))
        self.state = OPEN
        self._cancel_timer()
        self.stats.connected += 1
        self.stats.connect_us.append(round((self.clock.seconds() - self._started) * 1e6))
        self._head = bytearray()
        self.hooks.opened(self)
        if rest and self.state == OPEN:
            self._frames(rest, self.clock.seconds())

    def accept_key(self) -> str:
        start = self.request.index(b"Sec-WebSocket-Key: ") + 19
        key = self.request[start : self.request.index(b"\r\n", start)]
        return base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()

    def _negotiate(self, extensions: str) -> None:
        for ext in extensions.split(","):
            params = [p.strip().lower() for p in ext.split(";")]
            if params[0] == "permessage-deflate" and self.compress:
                self._inflater = zlib.decompressobj(-15)
                self._no_context = "server_no_context_takeover" in params

    def _rejected_body(self, final: bool) -> None:
        if not final and (self._body_len < 0 or len(self._head) < self._body_len):
            return
        code = ""
        try:
            code = str(json.loads(bytes(self._head))["error"]["code"])
        except (ValueError, KeyError, TypeError):
            pass
        self.stats.failed_codes[f"{self._status} {code}".strip()] += 1
        self._fail(str(self._status))

    def _timed_out(self) -> None:
        self._timer = None
        self._fail("timeout")

    def connect_failed(self, reason: Failure) -> None:
        self._fail("connect")

    def _fail(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._cancel_timer()
        self.stats.failed += 1
        self.stats.failed_by[reason] += 1
        if self._tcp is not None:
            self._tcp.abortConnection()
        elif self._connector is not None:
            try:
                self._connector.stopConnecting()
            except NotConnectingError:  # the connect itself failed (refused, its timeout)
                pass
        self.hooks.failed(self, reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    # -- frames -----------------------------------------------------------------------------

    def _frames(self, data: bytes, read_at: float) -> None:
        try:
            events = self.reader.feed(data)
            for opcode, payload, rsv1, wire in events:
                if opcode == OP_TEXT:
                    self._message(payload, rsv1, wire, read_at)
                elif opcode == OP_PING:
                    self._tcp.write(client_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    self._close_received(payload)
                    return
                elif opcode == OP_BINARY:
                    raise FrameError("binary message")
        except (FrameError, zlib.error, ValueError, KeyError, TypeError):
            self.stats.protocol_errors += 1
            self._tcp.abortConnection()

    def _message(self, payload: bytes, rsv1: bool, wire: int, read_at: float) -> None:
        stats = self.stats
        if rsv1:
            if self._inflater is None:
                raise FrameError("RSV1 without permessage-deflate")
            payload = self._inflater.decompress(payload + DEFLATE_TAIL)
            if self._no_context:
                self._inflater = zlib.decompressobj(-15)
        msg = json.loads(payload)
        if self.slow and self.seq == 0:
            self._tcp.pauseProducing()
        if msg.get("type") != "quotes_patch":
            return
        seq = msg["seq"]
        if seq != self.seq + 1:
            stats.seq_gaps += 1
        self.seq = seq
        if seq == 1:
            if self.tls is not None and self.tls.resume:
                self.session = self.tls.session(self._tcp.getHandle())
            self.hooks.snapshot(self)
        ops = msg["operations"]
        stats.sample += 1
        expected = None
        if stats.sample % SAMPLE_EVERY == 0 or (self.index == 0 and seq <= 3):
            try:
                expected = jsonpatch.apply_patch(self.doc, json.loads(payload)["operations"])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
                expected = MISSING
        updates: list[str] = []
        try:
            stats.stale += apply_ops(self.doc, ops, updates)
        except PatchError:
            stats.patch_errors += 1
        if expected is not None and expected != self.doc:
            stats.patch_mismatches += 1
        if not self.record:
            return
        stats.messages += 1
        stats.bytes += wire
        if updates:
            stats.updates += len(updates)
            now_ms = int(read_at * 1000)
            latency = stats.latency
            for text in updates:
                ms = now_ms - stats.last_updated_ms(text)
                ms = max(ms, 1)
                latency[ms] = latency.get(ms, 0) + 1

    # -- closing ------------------------------------------------------------------------------

    def _close_received(self, payload: bytes) -> None:
        self._code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NO_STATUS
        if self.state == OPEN:
            reply = payload[:2] if len(payload) >= 2 else b""
            self._tcp.write(client_frame(OP_CLOSE, reply))
        self.state = CLOSING
        self._tcp.loseConnection()

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Start the closing handshake (the server echoes, then drops the TCP connection)."""
        if self.state == OPEN:
            self.by_us = True
            self.state = CLOSING
            self._tcp.write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
            if self.slow:
                self._tcp.resumeProducing()

    def drop(self) -> None:
        """End the connection with a TCP reset (SO_LINGER 0), as a crashed client would."""
        if self._tcp is not None and self.state != CLOSED:
            self.by_us = True
            self.socket().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            self._tcp.abortConnection()

    def abort(self) -> None:
        if self._tcp is not None and self.state != CLOSED:
            self._tcp.abortConnection()

    def resume(self) -> None:
        """Read again (a slow connection, at the end of the run), without counting."""
        self.record = False
        if self._tcp is not None and self.state in (OPEN, CLOSING):
            self._tcp.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state == REJECTED:
            self._rejected_body(final=True)
        elif self.state == HANDSHAKE:
            self._fail("closed")
        elif self.state in (OPEN, CLOSING):
            self.state = CLOSED
            self.hooks.closed(self, self._code, self.by_us)
        self.state = CLOSED


class OneShotFactory(ClientFactory):
    """The factory of one connection attempt: hands out its prebuilt protocol."""

    noisy = False

    def __init__(self, conn: LoadConnection) -> None:
        self.conn = conn

    def buildProtocol(self, addr: Any) -> LoadConnection:
        return self.conn

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.conn.connect_failed(reason)


def upgrade_request(
    host: str,
    path: str,
    query: str,
    token: str,
    compress: bool,
    key: bytes | None = None,
    forwarded_for: str | None = None,
) -> bytes:
    """The HTTP upgrade request of one connection (the token in Authorization; the client's
    address in X-Forwarded-For when it stands behind a proxy)."""
    key = base64.b64encode(os.urandom(16) if key is None else key)
    lines = [
        f"GET {path}{'?' + query if query else ''} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {token}",
    ]
    if compress:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    if forwarded_for is not None:
        lines.append(f"X-Forwarded-For: {forwarded_for}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
