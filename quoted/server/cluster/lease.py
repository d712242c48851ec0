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

The shared quotes' codec and its bounds are quoted.server.cluster.codec (re-exported here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.cluster.codec import (
    MAX_AHEAD_MS,
    MAX_BASE,
    Refusals,
    Shared,
    Stamp,
    decode,
    encode,
    encode_published,
    parse_shared,
    publish_args,
)
from quoted.server.store import Entry

__all__ = [
    "ACQUIRE",
    "BATCH",
    "CONNECT_TIMEOUT",
    "MAX_AHEAD_MS",
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
    "Refusals",
    "Shared",
    "Stamp",
    "SubscriberFactory",
    "decode",
    "encode",
    "encode_published",
    "endpoint",
    "interest_args",
    "on",
    "parse_shared",
    "parse_url",
    "publish_args",
    "read_shared",
    "root_failure",
]

# KEYS: lease, fence. ARGV: token, ttl ms, now ms, floor, renew ("1": a new fence even when
# the lease is ours). Answers {'ours', fence} when this token holds the lease now (taken, kept
# after a short outage, or given a new fence), {'other', 0} when another token holds it: a
# fence is never 0, so the two never read alike.
# The fence is kept only when the lease is ours, the fence key is a string of at most 15
# digits, above 0 and at least ``floor`` (the caller's last fence: a fence rewritten lower, or
# lost, would make every peer ignore this leader), and no new one was asked for. Otherwise the
# new fence is max(readable fence + 1, now, floor + 1). Every key's type is checked before any
# write (a GET or INCR on another type would stop the script half-way: Redis scripts are not
# rolled back), and the writes come last: the fence, then the lease.
ACQUIRE = """
local function str(key)
  if redis.call('TYPE', key).ok == 'string' then return redis.call('GET', key) end
end
local cur = str(KEYS[1])
if cur and cur ~= ARGV[1] then
  return {'other', 0}
end
local f = str(KEYS[2])
if f and #f <= 15 and string.find(f, '^%d+$') then f = tonumber(f) else f = nil end
local floor = tonumber(ARGV[4])
if cur and f and f > 0 and f >= floor and ARGV[5] ~= '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ours', f}
end
local n = math.max((f or 0) + 1, tonumber(ARGV[3]), floor + 1)
redis.call('SET', KEYS[2], string.format('%d', n))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'ours', n}
"""

# KEYS: lease. ARGV: token, ttl ms. 1 when renewed, 0 when the lease is not ours.
RENEW = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token. Hands the lease over at once on a clean stop.
RELEASE = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, quotes hash. ARGV: token, channel prefix, then symbol, payload pairs.
# 1 when stored and published, 0 (and nothing written) when the lease is not ours.
PUBLISH = """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
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


def interest_args(until_ms: int, symbols: Sequence[str]) -> Iterator[list[object]]:
    """ZADD's score, member pairs scoring ``symbols`` at ``until_ms``, BATCH a command."""
    for i in range(0, len(symbols), BATCH):
        yield [x for s in symbols[i : i + BATCH] for x in (until_ms, s)]


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
    100 ms doubling to 5 s, with txredisapi's jitter, whatever went wrong, until
    ``disconnect()``.

    txredisapi's factory is used below its documented face (``lazyConnection`` and friends,
    which build on the global reactor): its constructor's keywords, the ``pool`` list, the
    ``addConnection``/``delConnection`` hooks every connection calls, ``replyTimeout`` and
    ``dbid``, read when a connection is made, and two hooks its connections call when their
    AUTH or SELECT fails (an error or a reply timeout, as against a Redis stopped by SIGSTOP):
    ``stopTrying()``, which would end the reconnecting for good (an instance degraded for
    ever), and ``connectionError(why)``. Here the first does nothing (``disconnect()``, which
    stops our connections, does not go through it) and the second logs, once until a
    connection is usable again; the failed connection is closed and retried with backoff.
    tests/server/cluster/test_txredisapi.py checks each of these names against the installed
    version."""

    initialDelay = 0.1
    maxDelay = 5.0
    factor = 2.0
    log = Logger()

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
        self._complained = False
        self.deferred.addErrback(lambda _: None)  # connectionError logged why

    def stopTrying(self) -> Deferred[None]:
        """Called by txredisapi only when a new connection's AUTH or SELECT failed: go on
        trying (the connection is closed by the caller and made again after the backoff)."""
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:
        """A new connection's AUTH or SELECT failed: logged once until one is usable."""
        if not self._complained:
            self._complained = True
            self.log.warn(
                "redis connection not usable, retrying: {why}",
                why=why,
                log_id="quoted.redis.unusable",
            )
        super().connectionError(why)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._complained = False
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
        self._floor = 0  # a new fence must be above this (refence)
        self._renew = False

    def leading(self) -> bool:
        return self.held and self._seconds() < self.valid_until

    def tick(self, run: Run, failed: Failed) -> None:
        """Renew while leading, else try to take it; one attempt at a time."""
        if self._busy:
            return
        self._busy = True
        sent = self._seconds()
        if self.leading() and not self._renew:
            d = run(RENEW, [self._keys.lease], [self.token, self._ttl_ms])
            d.addCallback(self._renewed, sent)
        else:
            keys = [self._keys.lease, self._keys.fence]
            floor = max(self.fence, self._floor)
            renew = "1" if self._renew else "0"
            d = run(ACQUIRE, keys, [self.token, self._ttl_ms, int(sent * 1000), floor, renew])
            d.addCallback(self._acquired, sent)
        d.addErrback(failed, "feed lease")
        d.addBoth(self._done)

    def refence(self, run: Run, failed: Failed, above: int) -> None:
        """This leader's own tick was older than a stamp applied here (its clock stepped back,
        or a value stamped ahead was applied): take a new fence above ``above`` and that
        stamp's version, so its next ticks outrank it on every peer (Stamp order: fence
        first)."""
        if self._renew and self._floor >= above:
            return
        self._floor = max(self._floor, above)
        self._renew = True
        self.log.warn(
            "this leader's tick was older than the shared quote: taking a fence above {above}",
            above=above,
            log_id="quoted.redis.refence",
        )
        self.tick(run, failed)

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

    def _acquired(self, reply: object, sent: float) -> None:
        """ACQUIRE's answer: ``['ours', fence]`` (fence >= 1) or ``['other', 0]``."""
        if not isinstance(reply, list) or len(reply) != 2 or reply[0] not in ("ours", "other"):
            raise ValueError(f"ACQUIRE answered {reply!r:.80}")
        if reply[0] == "other":
            self.lost("another process took the feed lease")
            return
        f = int(str(reply[1]))
        if f < 1:
            raise ValueError(f"ACQUIRE answered fence {f}")
        new = not self.held or f != self.fence
        self.held, self.fence, self.valid_until = True, f, sent + self._ttl
        self._renew = False
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


def on(conn: Any, method: str, *args: object) -> Deferred[Any]:
    """``conn.method(*args)`` as a Deferred; a ConnectionError when there is no connection."""
    if conn is None:
        return defer.fail(txredisapi.ConnectionError("redis is not connected"))
    return defer.maybeDeferred(getattr(conn, method), *args)


def root_failure(failure: Failure) -> Failure:
    """The first failure inside gatherResults' FirstError wrappers."""
    while isinstance(failure.value, FirstError):
        failure = failure.value.subFailure
    return failure


Read = tuple[list[tuple[Entry, Shared]], list[Entry]]  # present, missing


def read_shared(
    call: Callable[..., Deferred[Any]],
    key: str,
    lookup: Callable[[str], Entry | None],
    entries: Sequence[Entry],
    now_ms: Callable[[], int],
    refusals: Refusals,
) -> Deferred[Read]:
    """HMGET the entries' shared quotes from the hash ``key``, BATCH a command: (present,
    missing); a value out of bounds (quoted.server.cluster.codec) is neither, and given to
    ``refusals``."""
    chunks = [entries[i : i + BATCH] for i in range(0, len(entries), BATCH)]
    ds = [call("HMGET", key, *[e.symbol for e in c]) for c in chunks]

    def split(replies: list[list[str | None]]) -> Read:
        es = [e for c in chunks for e in c]
        vs = [v for r in replies for v in r]
        missing = [e for e, v in zip(es, vs, strict=True) if v is None]
        syms = [e.symbol for e in es]
        present = parse_shared(lookup, syms, vs, now_ms(), refusals, key + " ")
        return list(present), missing

    return gatherResults(ds, consumeErrors=True).addCallback(split)
