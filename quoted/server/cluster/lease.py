"""What peers share through Redis: key names, the Lua scripts and the shared quotes' codec.

The feed lease is one key holding the leader's random token, set with ``NX PX ttl`` and renewed
with a compare-and-renew script. Taking it also takes a fencing number, ``max(previous + 1,
now_ms)``, so it grows with every new leader and keeps growing after a Redis restart that lost
the counter (as long as the peers' clocks agree within the lease time). A tick is written by one
script that first checks that the lease still holds the caller's token, so a leader paused past
its lease (GC, SIGSTOP, a partition) cannot publish once another took over.

:class:`FeedLease` is one process's view of the lease; :class:`CommandFactory` and
:class:`SubscriberFactory` are txredisapi's reconnecting factories, telling their owner when a
connection becomes usable and when it is lost.

A shared quote is one hash field per symbol (and the same text on the symbol's channel), in one
of two forms, told apart by their number of space-separated fields:

- ``fence unix_ms price``: a simulator tick (:func:`encode`), the price rounded to cents, written
  by the lease holder's PUBLISH script; what peers before published quotes wrote.
- ``version unix_ms price volume base``: a published tick (:func:`encode_published`), written
  by the RECORD script (quoted.server.cluster.order), which decides in one step whether the
  tick is stale and its version (the previous value's first field + 1, so a published quote
  outranks the simulator quote it follows). The price is exact (``format_number``: a
  published price is not rounded); ``volume`` (an integer) and ``base`` (the reference
  price) are ``-`` when no tick of the symbol ever gave one, and otherwise the last given
  (the script carries them forward).

Every field is checked when read (:func:`decode`): integers of at most 15 digits (exact in
Lua's doubles), prices and bases plain decimals above 0 (a base at most 1e12, as a reference
price), a volume below 2**63; anything else is malformed, skipped by readers and overwritten
by the next recorded tick. Every peer, the recorder included, builds the quote with
``Entry.put(price, unix_ms, volume, base)``, which gives the same JSON bytes everywhere, and
applies it only if its :class:`Stamp` (first field, then time) is newer than the last one it
applied for that symbol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.store import Entry, format_number, round2

__all__ = [
    "ACQUIRE",
    "BATCH",
    "CONNECT_TIMEOUT",
    "MAX_BASE",
    "PUBLISH",
    "RELEASE",
    "RENEW",
    "REPLY_TIMEOUT",
    "CommandFactory",
    "FeedLease",
    "Keys",
    "Read",
    "RedisTarget",
    "Shared",
    "Stamp",
    "SubscriberFactory",
    "decode",
    "encode",
    "encode_published",
    "endpoint",
    "interest_args",
    "parse_shared",
    "parse_url",
    "publish_args",
    "read_shared",
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
    market: str  # the pattern of every channel
    cursor: str  # + stream name

    @classmethod
    def of(cls, prefix: str) -> Keys:
        return cls(
            lease=prefix + "lease",
            fence=prefix + "fence",
            quotes=prefix + "quotes",
            interest=prefix + "interest",
            channel=prefix + "sym:",
            market=re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "sym:*",
            cursor=prefix + "cursor:",
        )

    def cursor_of(self, stream: str) -> str:
        """The key holding the id of the last entry of ``stream`` applied by any peer."""
        return self.cursor + stream


class Stamp(NamedTuple):
    """Orders shared quotes: a higher first field wins (a later leader's fence, a later
    recorded version), then a later millisecond.

    Tuple order is the order: ``Stamp(2, 1) > Stamp(1, 9)``; ``Stamp(0, 0)`` is older than any
    published quote.
    """

    version: int
    ms: int


class Shared(NamedTuple):
    """One quote as Redis carries it; ``volume`` and ``base`` None when it names none."""

    stamp: Stamp
    price: float
    volume: int | None = None
    base: float | None = None


MAX_BASE = 1e12  # a reference price's bound (quoted.server.feeds.items.MAX_PRICE)
_INT = re.compile(r"[0-9]{1,15}")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_VOLUME = re.compile(r"[0-9]{1,19}")
_UNKNOWN = "-"


def encode(fence: int, ms: int, price: float) -> str:
    """``fence ms price``: the price rounded to cents, in its shortest form."""
    return f"{fence} {ms} {format_number(round2(price))}"


def publish_args(
    token: str, channel: str, fence: int, moves: Iterable[tuple[Entry, float]], at_ms: int
) -> tuple[list[object], list[tuple[Entry, Shared]]]:
    """PUBLISH's ARGV for a simulator tick, and the shared quotes it writes: each price
    rounded to cents, the entries whose quote it would not change left out."""
    args: list[object] = [token, channel]
    batch: list[tuple[Entry, Shared]] = []
    stamp = Stamp(fence, at_ms)
    for e, p in moves:
        price = round2(p)
        cur = e.latest
        if price == cur.current_price and at_ms == cur.last_updated_ms:
            continue
        args += (e.symbol, encode(fence, at_ms, price))
        batch.append((e, Shared(stamp, price)))
    return args, batch


def interest_args(until_ms: int, symbols: Sequence[str]) -> Iterator[list[object]]:
    """ZADD's score, member pairs scoring ``symbols`` at ``until_ms``, BATCH a command."""
    for i in range(0, len(symbols), BATCH):
        yield [x for s in symbols[i : i + BATCH] for x in (until_ms, s)]


def encode_published(
    version: int, ms: int, price: float, volume: int | None, base: float | None
) -> str:
    """``version ms price volume base``, as the RECORD script writes it: the exact price,
    ``-`` for an unknown volume or base."""
    vol = _UNKNOWN if volume is None else str(volume)
    ref = _UNKNOWN if base is None else format_number(base)
    return f"{version} {ms} {format_number(price)} {vol} {ref}"


def _decimal(text: str, limit: float = math.inf) -> float:
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError("malformed shared quote")
    v = float(text)
    if not 0 < v <= limit or not math.isfinite(v):
        raise ValueError("malformed shared quote")
    return v


def decode(payload: str | bytes) -> Shared:
    """Parse either form (module docstring); ValueError when any field is malformed."""
    if isinstance(payload, bytes):
        payload = payload.decode("ascii")  # UnicodeDecodeError is a ValueError
    parts = payload.split(" ")
    if len(parts) not in (3, 5) or not all(_INT.fullmatch(p) for p in parts[:2]):
        raise ValueError("malformed shared quote")
    stamp = Stamp(int(parts[0]), int(parts[1]))
    price = _decimal(parts[2])
    if len(parts) == 3:
        return Shared(stamp, price)
    volume: int | None = None
    if parts[3] != _UNKNOWN:
        if _VOLUME.fullmatch(parts[3]) is None or int(parts[3]) >= 2**63:
            raise ValueError("malformed shared quote")
        volume = int(parts[3])
    base = None if parts[4] == _UNKNOWN else _decimal(parts[4], MAX_BASE)
    return Shared(stamp, price, volume, base)


BATCH = 500  # symbols a command
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
Read = tuple[list[tuple[Entry, Shared]], list[Entry]]  # present, missing


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


def read_shared(
    call: Callable[..., Deferred[Any]],
    key: str,
    lookup: Callable[[str], Entry | None],
    entries: Sequence[Entry],
) -> Deferred[Read]:
    """HMGET the entries' shared quotes from the hash ``key``, BATCH a command: (present,
    missing)."""
    chunks = [entries[i : i + BATCH] for i in range(0, len(entries), BATCH)]
    ds = [call("HMGET", key, *[e.symbol for e in c]) for c in chunks]

    def split(replies: list[list[str | None]]) -> Read:
        es = [e for c in chunks for e in c]
        vs = [v for r in replies for v in r]
        missing = [e for e, v in zip(es, vs, strict=True) if v is None]
        return list(parse_shared(lookup, [e.symbol for e in es], vs)), missing

    return gatherResults(ds, consumeErrors=True).addCallback(split)
