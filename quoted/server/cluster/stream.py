"""``[feed] source = redis_stream``: ticks read from an existing Redis Stream.

Each entry of ``[feed] stream`` (default ``quoted:ticks``) is one publish item whose values
are strings (``XADD quoted:ticks * symbol AAPL price 151.25 time 2026-12-02T14:30:00.125Z``),
read with ``XREAD COUNT 500 BLOCK 1000`` on a connection of the reader's own: a blocking read
must not hold up the bridge's commands, and its reply timeout (READ_TIMEOUT) must outlast
the block. One XREAD reply is one :meth:`FeedSink.publish` call, and the next XREAD goes out
only once it has answered, so at most one batch is in flight.

Bad input never stops the reader. An entry whose fields are not name/value pairs, or not
UTF-8, goes to the sink as :class:`Malformed` and is refused as ``bad_item``; any other bad
entry is refused by the sink's own checks (an unknown field, symbol, price or time). The sink
counts each refusal in ``quoted_publish_items_total{result=CODE}``; the reader logs them at
most once a minute per code, with the count and one example. A Redis error or a lost
connection pauses reading for RETRY_AFTER (txredisapi reconnects with backoff); a stream
that does not exist yet is simply empty.

Where it reads from:

- **Alone** (no ``[redis] enabled``): from ``0-0``, the whole stream, so a restarted quoted
  gets the current prices back (the latest tick of each symbol wins); the position is kept in
  memory, so a Redis restart resumes after the last entry read.
- **With the bridge**: only while this process holds the feed lease (checked every
  WAKE_EVERY). On becoming leader it GETs the shared cursor ``<prefix>cursor:<stream>``
  (absent: ``0-0``) and hands the sink ``cursor=(read from, last id of the reply)``; the
  bridge moves the cursor atomically with the ticks, or refuses with
  :class:`CursorMoved` and applies nothing, so across a failover no entry is lost or applied
  twice. On CursorMoved it reads the cursor again; on BrokerUnavailable, a Redis error or a
  lost lease it stops and reads the cursor again when it next leads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import txredisapi
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.cluster.lease import CommandFactory, Keys, RedisTarget, endpoint, parse_url
from quoted.server.feeds.items import from_text
from quoted.server.feeds.sink import BrokerUnavailable, Cursor, CursorMoved, PublishResult
from quoted.server.timers import Periodic

if TYPE_CHECKING:
    from quoted.server.cluster.bridge import RedisBridge
    from quoted.server.config import Config

__all__ = [
    "BLOCK_MS",
    "COUNT",
    "READ_TIMEOUT",
    "Malformed",
    "StreamFeed",
    "StreamSink",
    "entry_item",
    "stream_feed",
]

COUNT = 500  # entries per XREAD, and so per publish call
BLOCK_MS = 1000  # how long one XREAD waits for an entry
READ_TIMEOUT = 3.0  # the reader connection's reply timeout: beyond the block, or it never ends
WAKE_EVERY = 0.5  # the leadership check, the retry after a pause and the log flush
RETRY_AFTER = 1.0  # the pause after a Redis error or BrokerUnavailable
LOG_EVERY = 60.0  # refusals (and errors) logged at most this often per code
START = "0-0"  # before the first entry of any stream


class StreamSink(Protocol):
    """What the reader needs of quoted.server.feeds.sink.FeedSink."""

    def publish(
        self, items: Sequence[object], *, cursor: Cursor | None = None
    ) -> Deferred[PublishResult]: ...


@dataclass(frozen=True, slots=True)
class Malformed:
    """An entry that is no item at all; the sink refuses it as ``bad_item`` (it is not a
    mapping), and the reader logs ``reason`` for it."""

    reason: str


def _text(value: object) -> str | None:
    """A reply string as text: txredisapi hands over str where it decoded UTF-8, bytes where
    it could not (or where it was told no charset)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def entry_item(fields: object) -> dict[str, object] | Malformed:
    """The publish item of one entry's flat field list, or why it is none."""
    if not isinstance(fields, list) or len(fields) % 2:
        return Malformed("its fields are not name/value pairs")
    texts: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        name, value = _text(fields[i]), _text(fields[i + 1])
        if name is None or value is None:
            return Malformed("a field name or value is not UTF-8")
        if name in texts:
            return Malformed(f"the field {name[:40]!r} appears twice")
        texts[name] = value
    return from_text(texts)


def _entries(reply: object) -> list[tuple[str, object]]:
    """(id, fields) of each entry of a one-stream XREAD reply (nil when it timed out)."""
    if not reply:
        return []
    if not isinstance(reply, list) or not isinstance(reply[0], list) or len(reply[0]) != 2:
        raise ValueError(f"unexpected XREAD reply {str(reply)[:80]}")
    out: list[tuple[str, object]] = []
    for entry in reply[0][1] or []:
        entry_id = _text(entry[0]) if isinstance(entry, list) and len(entry) == 2 else None
        if entry_id is None:
            raise ValueError(f"unexpected stream entry {str(entry)[:80]}")
        out.append((entry_id, entry[1]))
    return out


class _Tally:
    """Counts what happened by code and says when a code is due to be logged again."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, str] = {}
        self._logged: dict[str, float] = {}

    def add(self, code: str, example: str, now: float) -> tuple[int, str] | None:
        self._counts[code] = self._counts.get(code, 0) + 1
        self._examples.setdefault(code, example)
        return self._due(code, now)

    def due(self, now: float) -> list[tuple[str, int, str]]:
        """Every code with counts not yet logged whose minute has passed."""
        out = []
        for code in list(self._counts):
            d = self._due(code, now)
            if d is not None:
                out.append((code, *d))
        return out

    def _due(self, code: str, now: float) -> tuple[int, str] | None:
        if now - self._logged.get(code, -LOG_EVERY) < LOG_EVERY:
            return None
        self._logged[code] = now
        return self._counts.pop(code), self._examples.pop(code)


class _ReaderFactory(CommandFactory):
    """The reader's own connection: a reply may take the whole block, so a longer timeout."""

    def __init__(self, owner: StreamFeed, target: RedisTarget) -> None:
        super().__init__(owner, target)
        self.replyTimeout = READ_TIMEOUT


class StreamFeed(MultiService):
    """Reads ``stream`` into ``sink`` (module docstring); its one timer is a child.

    ``leading`` is the bridge's ``leading`` with ``[redis] enabled``: then it reads only
    while that says True and keeps its position in the shared cursor at ``cursor``. Without
    it, it reads from ``0-0`` and keeps its position in memory.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        stream: str,
        sink: StreamSink,
        *,
        leading: Callable[[], bool] | None = None,
        cursor: str | None = None,
    ) -> None:
        super().__init__()
        if (leading is None) != (cursor is None):
            raise ValueError("a shared reader needs both leading and cursor")
        self._reactor = reactor
        self._target = parse_url(url)
        self.stream = stream
        self._sink = sink
        self._leading = leading
        self._cursor_key = cursor
        self._factory: _ReaderFactory | None = None
        self._conn: Any = None  # the usable connection (a txredisapi protocol)
        # the id read from next; None: read the shared cursor first
        self.position: str | None = None if leading is not None else START
        self._busy = False  # a read (GET, XREAD, publish) is in flight
        self._resume_at = 0.0
        self._next: IDelayedCall | None = None
        self._idle: list[Deferred[None]] = []
        self._refused = _Tally()
        self._errors = _Tally()
        Periodic(
            reactor,
            WAKE_EVERY,
            self._wake,
            failed="the redis stream reader's loop stopped by an error",
            log_id="quoted.stream.loop_failed",
            log=self.log,
        ).setServiceParent(self)

    # -- service ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._factory = _ReaderFactory(self, self._target)
        self._factory.startConnecting(endpoint(self._reactor, self._target))
        self.log.info(
            "redis stream source: {stream} on {host}:{port}, {how}",
            stream=self.stream,
            host=self._target.host,
            port=self._target.port,
            how="read by the feed leader" if self._leading else "read from its start",
            log_id="quoted.stream.started",
        )

    def stopService(self) -> Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()  # not running from here on; the timer stopped
        if self._next is not None and self._next.active():
            self._next.cancel()
        if self._factory is not None:  # a pending XREAD fails with ConnectionError
            try:
                await self._factory.disconnect()
            except Exception as e:
                self.log.warn("redis stream reader: disconnect failed: {error}", error=str(e))
        self._conn = None
        if self._busy:  # a batch the sink is applying (moving the shared cursor): let it end
            d: Deferred[None] = Deferred()
            self._idle.append(d)
            await d

    # CommandFactory's hooks
    def _connected(self, factory: Any, conn: Any) -> None:
        if self.running and factory is self._factory:
            self._conn = conn
            self._soon()

    def _disconnected(self, factory: Any, conn: Any) -> None:
        if self._conn is conn:
            self._conn = None
            if self.running:
                self.log.info(
                    "redis stream reader: connection lost, reconnecting",
                    log_id="quoted.stream.disconnected",
                )

    # -- the loop -----------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._reactor.seconds())

    def _wake(self) -> None:
        now = self._now()
        for code, n, example in self._refused.due(now):
            self._log_refused(code, n, example)
        for _, n, example in self._errors.due(now):
            self._log_error(n, example)
        self._step()

    def _soon(self) -> None:
        if self._next is None or not self._next.active():
            self._next = self._reactor.callLater(0, self._step)

    def _may_read(self) -> bool:
        return self._leading is None or self._leading()

    def _step(self) -> None:
        """One read: the cursor if needed, one XREAD, one publish; then the next at once."""
        if self._busy or not self.running or self._conn is None or self._now() < self._resume_at:
            return
        if not self._may_read():
            if self.position is not None:
                self._stand_down()
            return
        self._busy = True
        d = defer.succeed(self.position) if self.position is not None else self._load()
        d.addCallback(self._read)
        d.addErrback(self._failed)
        d.addBoth(self._done)

    def _stand_down(self) -> None:
        """Not the leader (any more): forget the position; the cursor is read again on leading."""
        self.position = None
        self.log.info(
            "redis stream reader: not the feed leader, stopped reading",
            log_id="quoted.stream.follower",
        )

    def _done(self, again: object) -> None:
        self._busy = False
        if again is True:
            self._soon()
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def _command(self, *args: object) -> Deferred[Any]:
        if self._conn is None:
            return defer.fail(txredisapi.ConnectionError("redis is not connected"))
        return defer.maybeDeferred(self._conn.execute_command, *args)

    def _load(self) -> Deferred[str]:
        def got(value: object) -> str:
            text = _text(value) if value is not None else START
            if text is None:
                raise ValueError(f"the cursor {self._cursor_key} is not an entry id")
            self.position = text
            self.log.info(
                "redis stream reader: feed leader, reading {stream} after {position}",
                stream=self.stream,
                position=text,
                log_id="quoted.stream.leader",
            )
            return text

        return self._command("GET", self._cursor_key).addCallback(got)

    def _read(self, start: str) -> Deferred[bool]:
        d = self._command("XREAD", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS", self.stream, start)
        return d.addCallback(self._publish, start)

    def _publish(self, reply: object, start: str) -> Deferred[bool] | bool:
        entries = _entries(reply)
        if not entries:
            return True
        if not self.running:
            return False
        if not self._may_read():  # the lease went while XREAD waited: the next leader reads them
            self._stand_down()
            return False
        ids = [i for i, _ in entries]
        items: list[object] = [entry_item(fields) for _, fields in entries]
        last = ids[-1]
        cursor = (start, last) if self._leading is not None else None
        d = self._sink.publish(items, cursor=cursor)

        def applied(result: PublishResult) -> bool:
            self.position = last
            now = self._now()
            for r in result.rejected:
                item = items[r.index]
                why = item.reason if isinstance(item, Malformed) else r.message
                due = self._refused.add(r.code, f"{ids[r.index]}: {why}", now)
                if due is not None:
                    self._log_refused(r.code, *due)
            return True

        def refused(failure: Failure) -> bool:
            failure.trap(CursorMoved, BrokerUnavailable)
            self.position = None
            if failure.check(CursorMoved):
                self.log.info(
                    "redis stream reader: the cursor moved since {start}, reading it again",
                    start=start,
                    log_id="quoted.stream.cursor_moved",
                )
                return True
            self._pause(f"the broker is unavailable: {failure.getErrorMessage()}")
            return False

        return d.addCallbacks(applied, refused)

    def _failed(self, failure: Failure) -> bool:
        """A Redis error, a lost connection or a bad reply: pause, and in a shared reader
        read the cursor again (another process may have moved it meanwhile)."""
        if self._leading is not None:
            self.position = None
        if failure.check(txredisapi.ConnectionError):  # includes the reply timeout
            self.log.debug(
                "redis stream reader: {error}",
                error=failure.getErrorMessage(),
                log_id="quoted.stream.connection",
            )
        elif failure.check(txredisapi.ResponseError, ValueError):
            self._pause(failure.getErrorMessage())
            return False
        else:
            self.log.failure(
                "redis stream reader: a read failed", failure, log_id="quoted.stream.failed"
            )
        self._resume_at = self._now() + RETRY_AFTER
        return False

    def _pause(self, why: str) -> None:
        self._resume_at = self._now() + RETRY_AFTER
        due = self._errors.add("error", why, self._now())
        if due is not None:
            self._log_error(*due)

    def _log_error(self, n: int, example: str) -> None:
        self.log.warn(
            "redis stream reader: {n} failed reads of {stream} (retrying), e.g. {example}",
            n=n,
            stream=self.stream,
            example=example,
            log_id="quoted.stream.error",
        )

    def _log_refused(self, code: str, n: int, example: str) -> None:
        self.log.warn(
            "redis stream {stream}: {n} entries refused as {code}, e.g. {example}",
            stream=self.stream,
            n=n,
            code=code,
            example=example,
            log_id="quoted.stream.refused_entries",
        )


def stream_feed(
    config: Config, sink: StreamSink, reactor: Any, bridge: RedisBridge | None
) -> StreamFeed:
    """The ``redis_stream`` source of ``config``: shared through ``bridge`` when there is one."""
    if bridge is None:
        return StreamFeed(reactor, config.redis.url, config.feed.stream, sink)
    return StreamFeed(
        reactor,
        config.redis.url,
        config.feed.stream,
        sink,
        leading=bridge.leading,
        cursor=Keys.of(config.redis.prefix).cursor_of(config.feed.stream),
    )
