"""Peers kept in step through Redis: one price source, the same quotes on every process.

:class:`RedisBridge` is an IService on the injected reactor with two txredisapi connections
(commands and Pub/Sub), each reconnected with backoff (100 ms doubling to 5 s, with jitter)
whatever failed, a SELECT or AUTH timing out against a hung Redis included
(quoted.server.cluster.lease.CommandFactory). What it does (lease.py: keys and scripts;
codec.py: the values and their bounds; applier.py: applying them):

- **Lease.** quoted.server.cluster.lease.FeedLease, renewed or tried every ``lease_ttl / 3``.
  The simulator moves prices only while this process leads (:meth:`movable`): every symbol
  a peer uses.
- **Publish.** A tick (:meth:`emit`) is one EVALSHA that checks the lease still holds this
  process's token, then writes ``fence ms price`` to the quotes hash and publishes it on the
  symbol's channel. The leader applies the tick once the script said yes; the others apply
  what arrives on the channels. Both go through :meth:`apply`: newer stamps only, one
  ``publish`` per batch, the same bytes on every process. A leader whose own tick is older
  than what it applied (its clock stepped back) takes a new fence above it (FeedLease.refence).
- **Record.** With another source (``simulated`` False), :meth:`record` orders published
  ticks in Redis (quoted.server.cluster.order). Every process follows the whole market (one
  PSUBSCRIBE), so REST shows every published quote; a new leader seeds nothing.
- **Follow.** The hub (the bridge is its follower) calls :meth:`follow` when a symbol gets its
  first local subscriber: the bridge SUBSCRIBEs to its channel, then reads it with HMGET and
  applies it if newer. Every second it UNSUBSCRIBEs, in one command, the symbols nobody here
  uses any more and scores this process's symbols in the interest ZSET; every 2 s it re-reads
  the followed symbols (HMGET, 500 a batch) to make good a lost message.
- **Outage.** A lost connection or a reply later than 1 s (PING every 500 ms) marks Redis down:
  ``quoted_broker_up`` 0, nobody leads, no client is dropped, ``/readyz`` 200 degraded and
  503 once the outage lasted OUTAGE_GRACE. The process that led keeps ticking its own clients'
  symbols locally only while its lease is valid by its clock (the last renewal's send time plus
  the TTL): after that another process may lead, and two sources would serve two documents.
  When both connections are back it forgets what it applied, subscribes again, applies the
  whole hash (HGETALL), and only then reports up; a new leader publishes its current quote for
  every used symbol the hash lacks, and every client converges through ordinary updates.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import txredisapi
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.cluster.applier import Applier
from quoted.server.cluster.interest import Interest
from quoted.server.cluster.lease import (
    PUBLISH,
    CommandFactory,
    FeedLease,
    Keys,
    Read,
    Shared,
    SubscriberFactory,
    endpoint,
    on,
    parse_url,
    publish_args,
    read_shared,
    root_failure,
)
from quoted.server.cluster.order import RECORD, record_args, recorded, unavailable
from quoted.server.config import RedisConfig
from quoted.server.feeds.sink import Batch, BrokerUnavailable, Cursor
from quoted.server.metrics import Metrics
from quoted.server.store import Entry, Quote, QuoteStore, apply_prices
from quoted.server.timers import Periodic

__all__ = ["RedisBridge"]

PING_EVERY = 0.5
UPKEEP_EVERY = 1.0
REPAIR_EVERY = 2.0
OUTAGE_GRACE = 10.0  # s unreachable before /readyz 503: a Redis restart fits in it, and
# a load balancer soon stops sending new clients to an instance cut off from the market

Move = tuple[Entry, float]


class RedisBridge(MultiService):
    """The lease, the fenced publish and the following of used symbols (module docstring).

    Its periodic jobs are child timers, each first one period after start: the lease every
    ``lease_ttl / 3``, the upkeep every UPKEEP_EVERY, the PING every PING_EVERY.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: RedisConfig,
        store: QuoteStore,
        publish: Callable[[list[Quote]], None],
        metrics: Metrics,
        *,
        token: str | None = None,
        stream: str = "quoted:ticks",
        simulated: bool = True,
    ) -> None:
        """``publish`` delivers each applied batch of quotes (the hub's publish); it is called
        only while the bridge runs. The hub tells the bridge which entries are used here
        (:meth:`follow`, :meth:`unfollow`): the bridge is the hub's follower. ``stream`` names
        the Redis Stream whose cursor :meth:`record` moves (``[feed] stream``); ``simulated``
        says whether the simulator feeds the market (else published ticks do: module
        docstring)."""
        super().__init__()
        self._reactor = reactor
        self._target = parse_url(config.url)
        self._keys = Keys.of(config.prefix)
        self._cursor_key = self._keys.cursor_of(stream)
        self._simulated = simulated
        self._ttl = config.lease_ttl
        self._down_since: float | None = None
        token = token if token is not None else secrets.token_hex(16)
        self._lease = FeedLease(self._seconds, self._ttl, self._keys, token, self._new_leader)
        self._store = store
        self._publish_quotes = publish
        # told every batch this process decided (its fenced publish, its RECORD), before it
        # is applied: the shared history's writer (quoted.server.cluster.history)
        self.on_decided: Callable[[list[tuple[Entry, Shared]]], object] | None = None
        self._metrics = metrics
        self._cmd_factory: CommandFactory | None = None
        self._sub_factory: SubscriberFactory | None = None
        self._cmd: Any = None  # the usable command connection (txredisapi protocol)
        self._sub: Any = None  # the usable Pub/Sub connection
        self.up = False
        self.reached = False  # Redis answered and the hash was applied at least once
        self._resyncing = False
        self._local_feed = False  # led when Redis went away: ticks locally until it returns
        # entries with local subscribers, in the hub's order (its follow/unfollow calls)
        self._used: dict[Entry, None] = {}
        self._followed: set[Entry] = set()  # entries whose channel is subscribed
        self._to_follow: set[Entry] = set()
        self._applier = Applier(store, publish, self._now_ms)
        interest = self._keys.interest
        self._interest = Interest(interest, store, self._now_ms, self.command, self._failed)
        self._inbox: list[tuple[Entry, Shared]] = []
        self._calls: dict[str, IDelayedCall] = {}
        self._last_repair = 0.0
        for every, fn, what in (
            (self._ttl / 3, self._lease_tick, "lease"),
            (UPKEEP_EVERY, self._upkeep, "upkeep"),
            (PING_EVERY, self._ping, "ping"),
        ):
            Periodic(
                reactor,
                every,
                fn,
                failed=f"the redis bridge's {what} loop stopped by an error",
                log_id="quoted.redis.loop_failed",
                log=self.log,
            ).setServiceParent(self)
        metrics.broker_up.set(0)
        metrics.feed_leader.set_function(lambda: 1.0 if self.leading() else 0.0)

    # -- what the rest of quoted calls ------------------------------------------------------------

    def leading(self) -> bool:
        """Whether this process holds the feed lease now (counted from its last renewal)."""
        return self.up and self._lease.leading()

    @property
    def fence(self) -> int:
        """The fencing number of this process's latest lease (0 before any)."""
        return self._lease.fence

    def movable(self) -> list[Entry]:
        """The entries the oscillator may move now: every used one while leading, this
        process's own while it ticks locally through an outage, none otherwise."""
        if self.leading():
            return list(dict.fromkeys([*self._interest.union, *self._used]))
        if self._local_feeding():
            return list(self._used)
        return []

    def emit(self, moves: Sequence[Move], at_ms: int) -> int:
        """One tick's new prices from the oscillator; returns how many quotes it moves."""
        if not self.up:
            return self._apply_local(moves, at_ms) if self._local_feeding() else 0
        if not self.leading():
            return 0
        return self._publish(moves, at_ms)

    def follow(self, entry: Entry) -> None:
        """The hub's hook: the entry got its first local subscriber."""
        self._used[entry] = None
        if entry not in self._followed and self.up:
            self._to_follow.add(entry)
            self._soon("follow", self._follow_pending)

    def unfollow(self, entry: Entry) -> None:
        """The hub's hook: the entry lost its last local subscriber (the sweep unsubscribes)."""
        self._used.pop(entry, None)
        self._to_follow.discard(entry)

    def readiness(self) -> tuple[int, dict[str, str]] | None:
        """/readyz's answer while Redis is not up, or None when it is."""
        if not self.reached:
            return 503, {"status": "starting", "reason": "redis not reached yet"}
        if not self.up:
            down = self._seconds() - (self._down_since or self._seconds())
            if down >= OUTAGE_GRACE:
                why = f"redis unreachable for {down:.0f}s (more than {OUTAGE_GRACE:g}s)"
                return 503, {"status": "unavailable", "reason": why}
            serving = "local prices" if self._local_feeding() else "the last prices"
            serving += "" if self._simulated else ", publishing refused"
            return 200, {"status": "degraded", "reason": f"redis unreachable: serving {serving}"}
        return None

    def _local_feeding(self) -> bool:
        """Whether this process ticks its own clients' symbols through an outage: it led when
        Redis went away and its lease is still valid by its clock (module docstring)."""
        valid = self._seconds() < self._lease.valid_until
        return self._simulated and self._local_feed and not self.up and valid

    def apply(self, batch: Iterable[tuple[Entry, Shared]]) -> list[Quote]:
        """Apply each shared quote newer than the last applied for its entry; publish the new
        quotes as one batch and return them (quoted.server.cluster.applier)."""
        return self._applier.apply(batch)

    def _now_ms(self) -> int:
        return int(self._seconds() * 1000)

    def record(self, batch: Batch, cursor: Cursor | None) -> Deferred[list[bool]]:
        """quoted.server.feeds.sink.SharedOrder: one RECORD script for ``batch`` (and the
        cursor); the recorded quotes applied here, as one batch, before the Deferred fires."""
        if not self.up:
            return defer.fail(BrokerUnavailable("redis is not reachable"))
        keys = [self._keys.quotes, self._cursor_key]
        args = record_args(self._keys.channel, batch, cursor, self._now_ms())
        d = self.script(RECORD, keys, args)
        return d.addCallbacks(recorded, unavailable, (batch, self._decided))

    def _decided(self, batch: list[tuple[Entry, Shared]]) -> list[Quote]:
        """A batch this process decided: told to ``on_decided``, then applied."""
        if self.on_decided is not None and batch:
            self.on_decided(batch)
        return self.apply(batch)

    def command(self, *args: object) -> Deferred[Any]:
        """One command on the command connection (fails at once while not connected)."""
        return on(self._cmd, "execute_command", *args)

    def script(self, script: str, keys: list[str], args: list[object]) -> Deferred[Any]:
        """One Lua script (EVALSHA, EVAL once) on the command connection."""
        return on(self._cmd, "eval", script, keys, args)

    # -- service ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # the timers
        self._cmd_factory = CommandFactory(self, self._target)
        self._sub_factory = SubscriberFactory(self, self._target)
        for f in (self._cmd_factory, self._sub_factory):
            f.startConnecting(endpoint(self._reactor, self._target))
        self.log.info(
            "redis bridge started: {host}:{port}, prefix {prefix}",
            host=self._target.host,
            port=self._target.port,
            prefix=self._keys.channel[: -len("sym:")],
            log_id="quoted.redis.started",
        )

    def stopService(self) -> Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()  # not running from here on; the timers stopped
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        if self._lease.held and self._cmd is not None:
            try:  # hand the lease over now rather than after its TTL
                await self._lease.release(self.script)
            except Exception as e:
                self.log.warn("could not release the feed lease: {error}", error=str(e))
        self._lease.held = False
        factories = [f for f in (self._cmd_factory, self._sub_factory) if f is not None]
        await defer.gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        self.up = False
        self._metrics.broker_up.set(0)

    def _seconds(self) -> float:
        return float(self._reactor.seconds())

    def _soon(self, name: str, fn: Callable[[], None]) -> None:
        call = self._calls.get(name)
        if call is None or not call.active():
            self._calls[name] = self._reactor.callLater(0, fn)

    # -- connection state -------------------------------------------------------------------------

    def _connected(self, factory: CommandFactory, conn: Any) -> None:
        if not self.running:
            return
        if factory is self._sub_factory:
            self._sub = conn
        else:
            self._cmd = conn
        self._resync()

    def _disconnected(self, factory: CommandFactory, conn: Any) -> None:
        if factory is self._sub_factory and self._sub is conn:
            self._sub = None
            self._followed.clear()
        elif factory is self._cmd_factory and self._cmd is conn:
            self._cmd = None
        else:
            return
        if self.up and not self.running:  # stopping: not an outage
            self.up = False
        elif self.up:
            self._local_feed = self.leading()
            self._down_since = self._seconds()
            self.up = False
            self._lease.held = False
            self._metrics.broker_up.set(0)
            self.log.warn(
                "redis unreachable: serving {what} until it returns",
                what="local prices" if self._local_feed else "the last prices",
                log_id="quoted.redis.down",
            )

    def _resync(self) -> None:
        """Both connections usable: subscribe again, apply the whole hash, then report up."""
        if self.up or self._resyncing or self._cmd is None or self._sub is None:
            return
        self._resyncing = True
        self._applier.forget()
        self._followed = set(self._used)
        d = self._subscribe(self._followed) if self._simulated else self._subscribe_market()
        d.addCallback(lambda _: self.command("HGETALL", self._keys.quotes))
        d.addCallback(self._loaded)
        d.addErrback(self._failed, "resynchronise")
        d.addBoth(self._resynced)

    def _loaded(self, flat: list[str]) -> None:
        batch = self._applier.parse(flat[0::2], flat[1::2], self._keys.quotes + " ")
        self.apply(batch)
        was_reached, self.reached = self.reached, True
        self.up = True
        self._local_feed = False
        self._down_since = None
        self._metrics.broker_up.set(1)
        self.log.info(
            "redis {what}: {n} shared quotes applied, following {f} symbols",
            what="up again" if was_reached else "reached",
            n=len(batch),
            f=len(self._followed),
            log_id="quoted.redis.up",
        )
        self._lease_tick()
        self._add_interest()

    def _resynced(self, _: object) -> None:
        self._resyncing = False

    def _ping(self) -> None:
        if self._cmd is not None:  # a reply later than REPLY_TIMEOUT drops the connection
            self.command("PING").addErrback(self._failed, "ping")

    # -- commands -------------------------------------------------------------------------------

    def _subscribe(self, entries: Iterable[Entry]) -> Deferred[Any]:
        chans = [self._keys.channel + e.symbol for e in entries]
        if not chans or not self._simulated:  # the market's pattern covers every channel
            return defer.succeed(None)
        return on(self._sub, "subscribe", chans)

    def _subscribe_market(self) -> Deferred[Any]:
        """PSUBSCRIBE every symbol's channel (the prefix's glob characters escaped)."""
        return on(self._sub, "psubscribe", self._keys.market)

    def _failed(self, failure: Failure, what: str) -> None:
        f = root_failure(failure)
        if f.check(txredisapi.ConnectionError):  # the connection's loss sets the state
            self.log.debug("redis {what}: {error}", what=what, error=f.getErrorMessage())
            return
        self.log.failure("redis {what} failed", f, what=what, log_id="quoted.redis.error")

    def _read(self, entries: Sequence[Entry]) -> Deferred[Read]:
        refusals = self._applier.refusals
        lookup = self._store.lookup
        return read_shared(self.command, self._keys.quotes, lookup, entries, self._now_ms, refusals)

    # -- the lease ------------------------------------------------------------------------------

    def _lease_tick(self) -> None:
        if self.up:
            self._lease.tick(self.script, self._failed)

    def _new_leader(self) -> None:
        if not self._simulated:  # nothing to seed: start-up quotes would outrank published ones
            return
        d = self._interest.refresh()
        d.addCallback(lambda _: self._seed_missing())
        d.addErrback(self._failed, "seed")

    def _seed_missing(self) -> Deferred[None]:
        """A new leader publishes its current quote of every used symbol the hash lacks."""
        used = self.movable()

        def seed(result: Read) -> None:
            missing = result[1]
            if missing and self.leading():
                at_ms = int(self._seconds() * 1000)
                n = self._publish([(e, e.latest.current_price) for e in missing], at_ms)
                self.log.info("seeded {n} shared quotes", n=n, log_id="quoted.redis.seeded")

        return self._read(used).addCallback(seed)

    # -- publish and apply ----------------------------------------------------------------------

    def _publish(self, moves: Sequence[Move], at_ms: int) -> int:
        args, batch = publish_args(self._lease.token, self._keys.channel, self.fence, moves, at_ms)
        if not batch:
            return 0
        d = self.script(PUBLISH, [self._keys.lease, self._keys.quotes], args)
        d.addCallback(self._published, batch)
        d.addErrback(self._failed, "publish")
        return len(batch)

    def _published(self, ok: object, batch: list[tuple[Entry, Shared]]) -> None:
        if int(str(ok)) == 1:
            self._decided(batch)
            behind = self._applier.behind
            if behind is not None:  # this leader's own tick was older: outrank it
                self._lease.refence(self.script, self._failed, behind.version)
        else:
            self._lease.lost("the publish script found another token: tick dropped")

    def _apply_local(self, moves: Sequence[Move], at_ms: int) -> int:
        """Redis is away and this process led: its own prices, forgetting the shared stamps
        (whatever Redis holds when it returns replaces them)."""
        self._applier.forget(e for e, _ in moves)
        return len(apply_prices([(e, p, at_ms) for e, p in moves], self._publish_quotes))

    def _message(self, channel: str, payload: str) -> None:
        prefix = self._keys.channel
        if not channel.startswith(prefix):
            return
        self._inbox.extend(self._applier.parse([channel[len(prefix) :]], [payload], prefix))
        self._soon("inbox", self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox, batch = [], self._inbox
        self.apply(batch)

    # -- following ------------------------------------------------------------------------------

    def _follow_pending(self) -> None:
        entries = [e for e in self._to_follow if e not in self._followed]
        self._to_follow.clear()
        if entries and self.up:
            self._follow(entries)

    def _follow(self, entries: list[Entry]) -> None:
        """SUBSCRIBE first, then HMGET: a tick published in between is not lost, and the
        stamps make the newer of the two win."""
        self._followed.update(entries)
        d = self._subscribe(entries)
        d.addCallback(lambda _: self._read(entries))
        d.addCallback(lambda r: self.apply(r[0]))
        d.addErrback(self._failed, "follow")
        self._add_interest(entries)

    def _upkeep(self) -> None:
        if not self.up:
            self._resync()
            return
        self._sweep()
        self._add_interest()
        if self.leading() and self._simulated:
            self._interest.refresh().addErrback(self._failed, "read interest")
        now = self._seconds()
        if now - self._last_repair >= REPAIR_EVERY:
            self._last_repair = now
            d = self._read(sorted(self._followed, key=lambda e: e.index))
            d.addCallback(lambda r: self.apply(r[0]))
            d.addErrback(self._failed, "repair")

    def _sweep(self) -> None:
        """UNSUBSCRIBE, in one command, what nobody here uses; follow what is used but not
        followed (a follow that failed, or a subscriber that came during an outage)."""
        drop = self._followed - self._used.keys()
        if drop and self._sub is not None:
            self._followed -= drop
            if self._simulated:
                chans = [self._keys.channel + e.symbol for e in drop]
                d = on(self._sub, "unsubscribe", chans)
                d.addErrback(self._failed, "unsubscribe")
        todo = [e for e in self._used if e not in self._followed]
        if todo:
            self._follow(todo)

    def _add_interest(self, entries: Iterable[Entry] | None = None) -> None:
        """Score this process's used symbols (or ``entries``) for the leader's simulator."""
        if self._simulated:
            self._interest.add(self._used if entries is None else entries)
