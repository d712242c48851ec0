"""An example feed plugin for quoted: publish items as NDJSON lines over TCP.

A producer connects to ``listen`` (a Twisted server endpoint string) and writes one publish
item per line, ``{"symbol": "AAPL", "price": 151.25, "time": "2026-12-02T14:30:00.125Z"}``.
The complete lines of one ``dataReceived`` go to the sink in one ``publish`` call (one
broadcast to the subscribers), and the connection is answered with one NDJSON line per
refused line, ``{"index": 3, "symbol": "NOPE", "code": "unknown_symbol", "message": "..."}``,
where ``index`` counts the lines of that connection from 0 (blank lines included), so a
producer can tell which of its lines was refused however TCP cut them. Accepted lines are not
answered.

Bounded, because a producer is a client like any other:

- a line (or an unfinished one) longer than ``max_line`` bytes (default 64 KiB) is answered
  ``{"code": "line_too_long", ...}`` and the connection is closed, after the complete lines
  before it were published and answered;
- at most ``max_clients`` connections (default 16); one more is answered
  ``{"code": "too_many_clients", ...}`` and closed;
- one batch at a time per connection: while the sink has not answered, or while the
  producer does not read the answers, the connection is not read (TCP pushes back).

Options come from ``[feed:ndjson_tcp]`` as strings and are checked by :func:`parse_options`;
a bad one raises ``FeedOptionError`` and quoted stops naming ``[feed:ndjson_tcp] key``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IPushProducer,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from quoted.server.feeds.plugins import FeedOptionError
from quoted.server.feeds.sink import BrokerUnavailable, PublishResult

__all__ = ["NDJSONFeedFactory", "NDJSONFeedService", "Options", "make_feed", "parse_options"]

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_CLIENTS = 16
_LIMITS = {"max_line": (1, 16 * 1024 * 1024), "max_clients": (1, 10_000)}
ACCEPTED = ("listen", "max_line", "max_clients")

_log = Logger()


class Sink(Protocol):
    """What quoted hands ``makeFeed``: its FeedSink, seen through the one method used here."""

    def publish(
        self, items: Sequence[object], *, symbols: frozenset[str] | None = None
    ) -> Deferred[PublishResult]: ...


@dataclass(frozen=True, slots=True)
class Options:
    """The checked ``[feed:ndjson_tcp]`` section."""

    endpoint: IStreamServerEndpoint
    listen: str
    max_line: int = DEFAULT_MAX_LINE
    max_clients: int = DEFAULT_MAX_CLIENTS


def _integer(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    low, high = _LIMITS[key]
    try:
        value = int(text.strip())
    except ValueError:
        raise FeedOptionError(key, f"{text!r} is not an integer") from None
    if not low <= value <= high:
        raise FeedOptionError(key, f"{value} is out of range; accepted: {low} to {high}")
    return value


def parse_options(options: Mapping[str, str], reactor: Any) -> Options:
    """The options, checked; :class:`FeedOptionError` names the first bad key."""
    for key in sorted(options):
        if key not in ACCEPTED:
            raise FeedOptionError(key, f"unknown option; accepted: {', '.join(ACCEPTED)}")
    listen = options.get("listen", "").strip()
    if not listen:
        raise FeedOptionError(
            "listen", "required: a server endpoint string such as tcp:9010:interface=127.0.0.1"
        )
    try:
        endpoint = serverFromString(reactor, listen)
    except Exception as e:  # endpoint parsers raise ValueError, TypeError, KeyError, OSError...
        raise FeedOptionError(
            "listen", f"{listen!r} is not a server endpoint string: {e}"
        ) from None
    return Options(
        endpoint,
        listen,
        _integer(options, "max_line", DEFAULT_MAX_LINE),
        _integer(options, "max_clients", DEFAULT_MAX_CLIENTS),
    )


def _line(value: Mapping[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> tuple[object, str | None]:
    """The JSON value of one line, or why it is not one."""
    try:
        return json.loads(line.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "the line is not UTF-8"
    except json.JSONDecodeError as e:
        return None, f"the line is not JSON: {e}"
    except RecursionError:
        return None, "the line is nested too deeply"
    except ValueError:  # an integer of more digits than Python reads
        return None, "the line holds a number too long to read"


@implementer(IPushProducer)
class NDJSONFeedProtocol(TwistedProtocol):
    """One producer's connection (module docstring)."""

    factory: NDJSONFeedFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._lines = 0  # lines received so far: the index of the next one
        self._paused: set[str] = set()  # why the transport is not read: "sink", "answers"
        self._closing = False  # refusing or closed: read nothing more
        self._lost = False
        self.counted = False

    @property
    def _tcp(self) -> Any:
        """The transport: a TCP (or TLS, or UNIX) connection, also a producer and consumer."""
        return self.transport

    # -- the connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        if len(factory.connections) >= factory.options.max_clients:
            self._refuse(
                "too_many_clients",
                f"at most {factory.options.max_clients} connections (max_clients); closing",
            )
            return
        factory.connections.add(self)
        self.counted = True
        # told when our answers back up (a producer that does not read them)
        self._tcp.registerProducer(self, True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = self._lost = True
        if self.counted:
            self.factory.lost(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        limit = self.factory.options.max_line
        *lines, rest = (self._buffer + data).split(b"\n")
        self._buffer = rest
        too_long = len(rest) > limit
        batch: list[bytes] = []
        for line in lines:
            if len(line) > limit:
                too_long = True
                break
            batch.append(line)
        done = self._publish(batch) if batch else succeed(None)
        if too_long:
            self._closing = True
            self._buffer = b""
            message = f"a line is longer than {limit} bytes (max_line); closing"
            done.addCallback(lambda _: self._refuse("line_too_long", message))

    # -- one batch -----------------------------------------------------------------------------

    def _publish(self, lines: list[bytes]) -> Deferred[None]:
        """Hand the batch's items to the sink; answer its refused lines; read on after."""
        first = self._lines
        self._lines += len(lines)
        items: list[object] = []
        where: list[int] = []  # the connection's line index of each item
        answers: list[tuple[int, str, str, str]] = []  # (index, symbol, code, message)
        for offset, raw in enumerate(lines):
            text = raw.strip()
            if not text:
                continue
            value, problem = _decode(text)
            if problem is not None:
                answers.append((first + offset, "", "bad_item", problem))
                continue
            items.append(value)
            where.append(first + offset)
        if not items:
            self._answer(answers)
            return succeed(None)

        def published(result: PublishResult) -> None:
            answers.extend((where[r.index], r.symbol, r.code, r.message) for r in result.rejected)

        def failed(failure: Failure) -> None:
            if failure.check(BrokerUnavailable):
                code, message = "broker_unavailable", "the shared market cannot be reached"
            else:
                _log.failure("the sink failed", failure, log_id="ndjson_tcp.publish.failed")
                code, message = "internal_error", "the server failed"
            answers.extend((i, "", code, f"{message}: nothing was applied") for i in where)

        def answered(result: object) -> object:
            self._resume("sink")  # whatever happened: never leave the connection unread
            self._answer(answers)
            return result  # a failure of ours goes on to the log below

        d: Deferred[Any] = maybeDeferred(self.factory.sink.publish, items)
        d.addCallbacks(published, failed)
        d.addBoth(answered)
        d.addErrback(lambda f: _log.failure("cannot answer", f, log_id="ndjson_tcp.answer.failed"))
        if not d.called:
            self._pause("sink")
        return d

    def _answer(self, answers: list[tuple[int, str, str, str]]) -> None:
        if self._lost or not answers:
            return
        answers.sort()
        self._tcp.write(
            b"".join(
                _line({"index": i, "symbol": s, "code": c, "message": m}) for i, s, c, m in answers
            )
        )

    def _refuse(self, code: str, message: str) -> None:
        self._closing = True
        self._tcp.write(_line({"code": code, "message": message}))
        self._tcp.loseConnection()

    # -- flow control: our reading waits for the sink and for the producer reading answers -----

    def _pause(self, why: str) -> None:
        if not self._paused:
            self._tcp.pauseProducing()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        if why not in self._paused:
            return
        self._paused.discard(why)
        if not self._paused and not self._closing:
            self._tcp.resumeProducing()

    def pauseProducing(self) -> None:
        self._pause("answers")

    def resumeProducing(self) -> None:
        self._resume("answers")

    def stopProducing(self) -> None:
        self._closing = True


class NDJSONFeedFactory(Factory[NDJSONFeedProtocol]):
    """The connections of one feed, and what they share: options and sink."""

    protocol = NDJSONFeedProtocol
    noisy = False  # the service logs the port once; no line per start and stop

    def __init__(self, options: Options, sink: Sink) -> None:
        self.options = options
        self.sink = sink
        self.connections: set[NDJSONFeedProtocol] = set()
        self._waiting: dict[NDJSONFeedProtocol, Deferred[None]] = {}

    def lost(self, proto: NDJSONFeedProtocol) -> None:
        self.connections.discard(proto)
        d = self._waiting.pop(proto, None)
        if d is not None:
            d.callback(None)

    def close_all(self) -> Deferred[Any]:
        """Close every connection; fires once all are gone."""
        waits = []
        for proto in list(self.connections):
            d: Deferred[None] = Deferred()
            self._waiting[proto] = d
            waits.append(d)
            proto._tcp.loseConnection()
        return DeferredList(waits)


class NDJSONFeedService(Service):
    """Listens while running: the port opens on start (a bind error is raised from
    ``startService``, so quoted does not run without its feed) and closes on stop, with every
    producer's connection."""

    def __init__(self, options: Options, sink: Sink) -> None:
        self.options = options
        self.factory = NDJSONFeedFactory(options, sink)
        self.port: IListeningPort | None = None
        self._listen: Deferred[IListeningPort | None] | None = None

    def privilegedStartService(self) -> None:
        """Bind (before twistd drops privileges, so a port below 1024 works)."""
        super().privilegedStartService()
        if self._listen is not None:
            return
        starting = True
        failed_now: list[Failure] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            _log.info(
                "ndjson_tcp feed listening on {address}",
                address=str(port.getHost()),
                log_id="ndjson_tcp.listening",
            )
            return port

        def failed(failure: Failure) -> None:
            if starting:
                failed_now.append(failure)
            elif not failure.check(CancelledError):  # an endpoint that binds later
                _log.failure(
                    "cannot listen on {listen}",
                    failure,
                    listen=self.options.listen,
                    log_id="ndjson_tcp.listen.failed",
                )

        d: Deferred[Any] = self.options.endpoint.listen(self.factory)
        self._listen = d.addCallbacks(listening, failed)
        starting = False
        if failed_now:
            self._listen = None
            failed_now[0].raiseException()

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        d, self._listen = self._listen, None
        if d is None:
            return succeed(None)
        d.cancel()  # still binding: give up (nothing when it listens already)

        def stop(port: IListeningPort | None) -> Deferred[None] | None:
            self.port = None
            return port.stopListening() if port is not None else None

        return d.addCallback(stop).addCallback(lambda _: self.factory.close_all())


def make_feed(options: Mapping[str, str], sink: Sink, reactor: Any) -> NDJSONFeedService:
    """The feed, from its ``[feed:ndjson_tcp]`` options (IFeedMaker.makeFeed)."""
    return NDJSONFeedService(parse_options(options, reactor), sink)
