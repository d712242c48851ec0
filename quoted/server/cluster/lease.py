"""What peers share through Redis: key names, the Lua scripts and the ``fence ms price`` codec.

The feed lease is one key holding the leader's random token, set with ``NX PX ttl`` and renewed
with a compare-and-renew script. Taking it also takes a fencing number, ``max(previous + 1,
now_ms)``, so it grows with every new leader and keeps growing after a Redis restart that lost
the counter (as long as the peers' clocks agree within the lease time). A tick is written by one
script that first checks that the lease still holds the caller's token, so a leader paused past
its lease (GC, SIGSTOP, a partition) cannot publish once another took over.

:class:`FeedLease` is one process's view of the lease; :class:`CommandFactory` and
:class:`SubscriberFactory` are txredisapi's reconnecting factories, telling their owner when a
connection becomes usable and when it is lost.

A shared quote travels as ``fence unix_ms price``: every peer, the leader included, builds the
quote with ``Entry.set(price, unix_ms)``, which gives the same JSON bytes everywhere, and applies
it only if its :class:`Stamp` is newer than the last one it applied for that symbol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.store import Entry, format_number, round2

__all__ = [
    "ACQUIRE",
    "CONNECT_TIMEOUT",
    "PUBLISH",
    "RELEASE",
    "RENEW",
    "REPLY_TIMEOUT",
    "CommandFactory",
    "FeedLease",
    "Keys",
    "RedisTarget",
    "Shared",
    "Stamp",
    "SubscriberFactory",
    "decode",
    "encode",
    "endpoint",
    "parse_shared",
    "parse_url",
    "root_failure",
]

# KEYS: lease, fence. ARGV: token, ttl ms, now ms.
# Returns the fencing number when this token holds the lease now (taken, or still held after
# a short outage), 0 when another token holds it.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local f = redis.call('INCR', KEYS[2])
local now = tonumber(ARGV[3])
if f < now then
  redis.call('SET', KEYS[2], ARGV[3])
  f = now
end
return f
"""

# KEYS: lease. ARGV: token, ttl ms. 1 when renewed, 0 when the lease is not ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token. Hands the lease over at once on a clean stop.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, quotes hash. ARGV: token, channel prefix, then symbol, payload pairs.
# 1 when stored and published, 0 (and nothing written) when the lease is not ours.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('PUBLISH', ARGV[2] .. ARGV[i], ARGV[i + 1])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and channel of one prefix."""

    lease: str
    fence: str
    quotes: str
    interest: str
    channel: str  # + SYMBOL

    @classmethod
    def of(cls, prefix: str) -> Keys:
        return cls(
            lease=prefix + "lease",
            fence=prefix + "fence",
            quotes=prefix + "quotes",
            interest=prefix + "interest",
            channel=prefix + "sym:",
        )


class Stamp(NamedTuple):
    """Orders shared quotes: a later leader (fence) wins, then a later millisecond.

    Tuple order is the order: ``Stamp(2, 1) > Stamp(1, 9)``; ``Stamp(0, 0)`` is older than any
    published quote.
    """

    fence: int
    ms: int


class Shared(NamedTuple):
    """One quote as Redis carries it."""

    stamp: Stamp
    price: float


def encode(fence: int, ms: int, price: float) -> str:
    """``fence ms price``: the price rounded to cents, in its shortest form."""
    return f"{fence} {ms} {format_number(round2(price))}"


def decode(payload: str | bytes) -> Shared:
    """Parse ``fence ms price``; ValueError when it is not three numbers with a positive price."""
    if isinstance(payload, bytes):
        payload = payload.decode("ascii")
    parts = payload.split(" ")
    if len(parts) != 3:
        raise ValueError("malformed shared quote")
    fence, ms, price = int(parts[0]), int(parts[1]), float(parts[2])
    if fence < 0 or ms < 0 or not math.isfinite(price) or not price > 0:
        raise ValueError("malformed shared quote")
    return Shared(Stamp(fence, ms), price)


REPLY_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is, from its URL; never printed with its password."""

    host: str
    port: int
    tls: bool
    db: int | None
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)


def parse_url(url: str) -> RedisTarget:
    """``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return RedisTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        db=int(path) if path else None,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class CommandFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """One command connection that calls ``bridge._connected(factory, conn)`` when it is
    usable and ``bridge._disconnected(factory, conn)`` when it is gone; reconnects from
    100 ms doubling to 5 s, with txredisapi's jitter.

    txredisapi's factory is used below its documented face (``lazyConnection`` and friends,
    which build on the global reactor): its constructor's keywords, the ``pool`` list, the
    ``addConnection``/``delConnection`` hooks every connection calls, and ``replyTimeout`` and
    ``dbid``, read when a connection is made. tests/server/cluster/test_txredisapi.py checks
    each of these names against the installed version."""

    initialDelay = 0.1
    maxDelay = 5.0
    factor = 2.0

    def __init__(self, bridge: Any, target: RedisTarget) -> None:
        super().__init__(
            uuid=None,
            dbid=target.db,
            poolsize=1,
            isLazy=False,
            handler=txredisapi.ConnectionHandler,
            charset="utf-8",
            password=target.password,
            replyTimeout=REPLY_TIMEOUT,
            convertNumbers=False,
            username=target.username,
        )
        self.bridge = bridge

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.bridge._connected(self, conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.bridge._disconnected(self, conn)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.bridge._message(channel, message)


class SubscriberFactory(CommandFactory):
    protocol = _Subscriber

    def __init__(self, bridge: Any, target: RedisTarget) -> None:
        super().__init__(bridge, target)
        self.replyTimeout = None  # SUBSCRIBE waits as long as the connection lives
        self.dbid = None


Run = Callable[[str, list[str], list[object]], "Deferred[Any]"]
Failed = Callable[[Failure, str], None]


class FeedLease:
    """This process's feed lease: taken or renewed by :meth:`tick`, believed held until the
    send time of the last successful renewal plus the TTL (never later than Redis keeps it)."""

    log = Logger()

    def __init__(
        self,
        seconds: Callable[[], float],
        ttl: float,
        keys: Keys,
        token: str,
        on_new: Callable[[], None],
    ) -> None:
        """``on_new`` is called when this process becomes the leader (a new fence)."""
        self._seconds = seconds
        self._ttl = ttl
        self._ttl_ms = round(ttl * 1000)
        self._keys = keys
        self.token = token
        self._on_new = on_new
        self.held = False
        self.fence = 0
        self.valid_until = 0.0
        self._busy = False

    def leading(self) -> bool:
        return self.held and self._seconds() < self.valid_until

    def tick(self, run: Run, failed: Failed) -> None:
        """Renew while leading, else try to take it; one attempt at a time."""
        if self._busy:
            return
        self._busy = True
        sent = self._seconds()
        if self.leading():
            d = run(RENEW, [self._keys.lease], [self.token, self._ttl_ms])
            d.addCallback(self._renewed, sent)
        else:
            keys = [self._keys.lease, self._keys.fence]
            d = run(ACQUIRE, keys, [self.token, self._ttl_ms, int(sent * 1000)])
            d.addCallback(self._acquired, sent)
        d.addErrback(failed, "feed lease")
        d.addBoth(self._done)

    def release(self, run: Run) -> Deferred[Any]:
        """Delete the lease if it is ours, so another process takes over at once."""
        self.held = False
        return run(RELEASE, [self._keys.lease], [self.token])

    def lost(self, why: str) -> None:
        if self.held:
            self.log.warn("feed lease lost: {why}", why=why, log_id="quoted.redis.lost")
        self.held = False

    def _done(self, _: object) -> None:
        self._busy = False

    def _acquired(self, fence: object, sent: float) -> None:
        f = int(str(fence))
        if f == 0:
            self.lost("another process took the feed lease")
            return
        new = not self.held or f != self.fence
        self.held, self.fence, self.valid_until = True, f, sent + self._ttl
        if new:
            self.log.info(
                "feed leader: this process publishes prices (fence {fence})",
                fence=f,
                log_id="quoted.redis.leader",
            )
            self._on_new()

    def _renewed(self, ok: object, sent: float) -> None:
        if int(str(ok)) == 1:
            self.valid_until = sent + self._ttl
        else:
            self.lost("the feed lease was gone at renewal")


def endpoint(reactor: Any, t: RedisTarget) -> Any:
    """A client endpoint to Redis on ``reactor`` (TLS for rediss://)."""
    tcp = TCP4ClientEndpoint(reactor, t.host, t.port, timeout=CONNECT_TIMEOUT)
    if t.tls:
        return wrapClientTLS(optionsForClientTLS(t.host), tcp)
    return tcp


def root_failure(failure: Failure) -> Failure:
    """The first failure inside gatherResults' FirstError wrappers."""
    while isinstance(failure.value, FirstError):
        failure = failure.value.subFailure
    return failure


_log = Logger()


def parse_shared(
    lookup: Callable[[str], Entry | None], symbols: Sequence[str], payloads: Sequence[str | None]
) -> Iterator[tuple[Entry, Shared]]:
    """The (entry, shared quote) of each symbol served here with a well-formed payload."""
    for sym, payload in zip(symbols, payloads, strict=True):
        e = lookup(sym)
        if e is None or payload is None:
            continue
        try:
            yield e, decode(payload)
        except ValueError:
            _log.warn("ignored a malformed shared quote of {symbol}", symbol=sym)
