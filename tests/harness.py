"""A real quoted on the real reactor, and real clients over real sockets.

``QuotedServer`` runs ``quoted.server.app.build`` in this process on a free port;
``WSClient`` is Autobahn's client keeping every message and the close code;
``http`` sends one raw HTTP request and reads the whole answer, so tests see
exactly the status, headers and body a client would.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl as stdssl
from collections.abc import Callable
from typing import Any

import jsonpatch
import jwt
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol

from quoted.server.app import QuotedService, build
from quoted.server.config import Config, load_config
from quoted.server.listener import Listener
from quoted.wire.tokens import mint_token
from tests.certs import tls_files

SECRET = b"test-secret-that-is-at-least-32-bytes-long!"


def make_config(*, tls: bool = False, **sections: dict[str, Any]) -> Config:
    """Defaults on a free loopback port, with per-section overrides:
    ``make_config(websocket={"max_connections": 2})``; over TLS (wss, https) with ``tls``."""
    base = load_config(
        None, environ={"JWT_SECRET": SECRET.decode()}, listen="tcp:0:interface=127.0.0.1"
    )
    changes = {
        name: dataclasses.replace(getattr(base, name), **values)
        for name, values in sections.items()
    }
    config = dataclasses.replace(base, **changes)
    return with_tls(config) if tls else config


def with_tls(config: Config) -> Config:
    """``config`` listening on ``ssl:`` (the certificate of :func:`tests.certs.tls_files`) on
    the interface and port its ``tcp:`` listen string names."""
    listen = config.server.listen
    if not listen.startswith("tcp:"):
        return config
    files = tls_files()
    tls_listen = "ssl:" + listen[4:] + f":privateKey={files.key}:certKey={files.cert}"
    return dataclasses.replace(config, server=dataclasses.replace(config.server, listen=tls_listen))


# the ports of the servers this process runs over TLS: a client of one speaks TLS to it
_TLS_PORTS: set[int] = set()


class SocketClient:
    """A client on a plain non-blocking socket (with a receive buffer of ``rcvbuf`` bytes if
    given), inside TLS (Python's ssl module, verifying the test certificate) when the server
    of this process on ``port`` serves TLS. Unlike Twisted's, it does only what it is told:
    it never reads unless asked, and never answers a TLS close_notify."""

    def __init__(self, port: int, rcvbuf: int | None = None, source: str | None = None) -> None:
        sock = socket.socket()
        if source is not None:
            sock.bind((source, 0))
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))  # loopback: the kernel completes it, not the reactor
        self.tls = port in _TLS_PORTS
        if self.tls:
            context = stdssl.create_default_context(cadata=tls_files().cert_pem.decode())
            sock = context.wrap_socket(
                sock, server_hostname="localhost", do_handshake_on_connect=False
            )
        sock.setblocking(False)
        self.sock = sock
        self._handshaken = not self.tls
        self.ended = False

    async def handshake(self) -> None:
        """Once the TLS handshake is done (at once over plain TCP)."""

        def done() -> bool:
            if not self._handshaken:
                assert isinstance(self.sock, stdssl.SSLSocket)
                try:
                    self.sock.do_handshake()
                except (stdssl.SSLWantReadError, stdssl.SSLWantWriteError):
                    return False
                self._handshaken = True
            return True

        await eventually(done)

    def send(self, data: bytes) -> bool:
        """False when the server has dropped the connection or the socket takes no more."""
        try:
            self.sock.sendall(data)
        except (OSError, stdssl.SSLError):  # a reset, a full socket (TLS: want-write)
            return False
        return True

    def read(self) -> bytes:
        """What has arrived (b"" if nothing yet); ``ended`` is true once the stream ended
        (for TLS: the server's close_notify) or was reset."""
        got = b""
        try:
            while chunk := self.sock.recv(65536):
                got += chunk
            self.ended = True
        except (BlockingIOError, stdssl.SSLWantReadError):
            pass
        except (ConnectionError, stdssl.SSLError):
            self.ended = True
        return got

    def close(self) -> None:
        self.sock.close()


def server_url(port: int, query: str = "") -> str:
    """The quotes stream's URL on a server of this process (``wss:`` when it serves TLS)."""
    scheme = "wss" if port in _TLS_PORTS else "ws"
    return f"{scheme}://127.0.0.1:{port}/ws/quotes" + (f"?{query}" if query else "")


def client_endpoint(
    port: int,
    host: str = "127.0.0.1",
    *,
    source: str | None = None,
    tls: bool | None = None,
) -> IStreamClientEndpoint:
    """A client endpoint to a quoted of this process: TCP, inside TLS (verifying the test
    certificate) when that server listens on ``ssl:``, unless ``tls`` says otherwise."""
    bind = (source, 0) if source else None
    tcp = TCP4ClientEndpoint(reactor, host, port, bindAddress=bind)
    if not (port in _TLS_PORTS if tls is None else tls):
        return tcp
    trust = ssl.Certificate.loadPEM(tls_files().cert_pem)
    return wrapClientTLS(ssl.optionsForClientTLS("localhost", trustRoot=trust), tcp)


def sleep(seconds: float) -> defer.Deferred[None]:
    """Real time passing, for tests against a real server on the real reactor."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def eventually(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> None:
    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(step)
        waited += step


class QuotedServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        # quoted's full collection at start would walk the whole test process's heap (about
        # 0.1 s a server here); the real twistd tests (test_process, cluster) manage it
        self.service: QuotedService = build(config, reactor, manage_gc=False)
        self.port = 0

    async def start(self) -> None:
        self.service.startService()
        listener = self.service.getServiceNamed("listener")
        assert isinstance(listener, Listener)
        port = await listener.listening()
        self.port = port.getHost().port
        if self.tls:
            _TLS_PORTS.add(self.port)

    async def stop(self) -> None:
        await self.service.stopService()
        _TLS_PORTS.discard(self.port)

    @property
    def tls(self) -> bool:
        """Whether this server listens on ``ssl:`` (wss and https)."""
        return self.config.server.listen.startswith("ssl:")

    @property
    def parts(self) -> Any:
        return self.service.parts

    def token(self, sub: str = "alice", ttl: float = 3600, **kw: Any) -> str:
        return mint_token(SECRET, sub, now=reactor.seconds(), ttl=ttl, **kw)

    def url(self, query: str = "") -> str:
        return server_url(self.port, query)

    async def connect(
        self,
        query: str = "",
        token: str | None = None,
        compress: bool = False,
        headers: dict[str, str] | None = None,
    ) -> WSClient:
        tok = self.token() if token is None else token
        return await WSClient.open(self.port, query, tok, compress=compress, headers=headers)

    async def get(
        self, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return await http(self.port, f"GET {path} HTTP/1.1", hdrs)

    async def post(
        self,
        path: str,
        body: bytes,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """POST ``body`` (Content-Type application/json unless ``headers`` say otherwise)."""
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return await http(self.port, f"POST {path} HTTP/1.1", hdrs, body)

    def publisher_token(self, scope: str = "quotes:publish", **claims: Any) -> str:
        """An HS256 token whose scope claim is ``scope`` (plus any other ``claims``)."""
        now = int(reactor.seconds())
        payload = {"sub": "feed", "iat": now, "exp": now + 3600, "scope": scope, **claims}
        return jwt.encode(payload, SECRET, algorithm="HS256")

    async def rest_quotes(self, symbols: list[str]) -> dict[str, Any]:
        r = await self.get("/v1/quotes?symbols=" + ",".join(symbols), self.token())
        assert r.status == 200, r
        return r.json()["quotes"]  # type: ignore[no-any-return]


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Collect(Protocol):
    """Reads until the server closes, or until a response with Content-Length is whole."""

    def __init__(self, whole_response: bool) -> None:
        self.data = b""
        self.whole_response = whole_response
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.whole_response and _complete(self.data):
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.data)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return False


async def raw(
    port: int,
    payload: bytes,
    host: str = "127.0.0.1",
    whole_response: bool = False,
    tls: bool | None = None,
) -> bytes:
    """Send bytes; read until the server closes (or a whole response, if asked). Inside TLS
    to a server of this process on ``ssl:`` unless ``tls`` says otherwise."""
    proto = _Collect(whole_response)
    p = await client_endpoint(port, host, tls=tls).connect(_factory(proto))
    p.transport.write(payload)
    return await proto.done


def _factory(proto: Protocol) -> Any:
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(lambda: proto)


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Response(status, headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


async def http(
    port: int, request_line: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Response:
    """One HTTP/1.1 request with Connection: close; the whole answer, parsed."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    hdrs.update(headers or {})
    head = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return parse_response(await raw(port, head.encode("latin-1") + body, whole_response=True))


def upgrade_headers(**extra: str) -> dict[str, str]:
    h = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    h.update(extra)
    return h


class WSClient(WebSocketClientProtocol):
    """Autobahn's client, recording every message and applying every quotes_patch."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.document: dict[str, Any] = {}
        self.seqs: list[int] = []
        self.opened: defer.Deferred[WSClient] = defer.Deferred()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], defer.Deferred[Any]]] = []
        self.close_code: int | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        query: str,
        token: str | None,
        *,
        compress: bool = False,
        headers: dict[str, str] | None = None,
    ) -> WSClient:
        url = server_url(port, query)
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        factory = WebSocketClientFactory(url, headers=hdrs, reactor=reactor)
        factory.protocol = cls
        if compress:
            factory.setProtocolOptions(
                perMessageCompressionOffers=[PerMessageDeflateOffer()],
                perMessageCompressionAccept=_accept_deflate,
            )
        proto: WSClient = await client_endpoint(port).connect(factory)
        return await proto.opened

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        msg = json.loads(payload)
        self.messages.append(msg)
        if msg.get("type") == "quotes_patch":
            self.seqs.append(msg["seq"])
            self.document = jsonpatch.apply_patch(self.document, msg["operations"])
        for pair in list(self._waiters):
            if pair[0](msg):
                self._waiters.remove(pair)
                pair[1].callback(msg)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        self.closed.callback((code, reason))
        for _, d in self._waiters:
            d.errback(ConnectionError(f"closed {code} {reason}"))
        self._waiters.clear()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0, start: int = 0
    ) -> defer.Deferred[dict[str, Any]]:
        """The first message from index ``start`` on that matches (already received or not)."""
        for m in self.messages[start:]:
            if match(m):
                return defer.succeed(m)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((match, d))
        d.addTimeout(timeout, reactor)
        return d

    def wait_type(self, type_: str, start: int = 0, timeout: float = 10.0) -> defer.Deferred[Any]:
        return self.wait_for(lambda m: m.get("type") == type_, timeout, start)

    def send_json(self, value: Any) -> None:
        self.sendMessage(json.dumps(value).encode())

    def quotes(self) -> dict[str, Any]:
        return self.document.get("quotes", {})  # type: ignore[no-any-return]


def _accept_deflate(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
