"""The fan-out hub: symbol -> subscriptions, one message per connection per tick.

Each tick's quotes arrive already encoded (``Quote.patch`` and ``Quote.replace``
are bytes made once by the store). Per connection the hub only picks, for each
moved symbol, the bytes that take the client from the version it was last
sent to the latest one, joins them behind the connection's own ``seq`` and
hands the message to the connection. A connection whose transport is paused
(its socket is full) keeps only *which* symbols moved: when it resumes it gets
one message with the latest value of each (a whole-quote ``replace`` where it
missed versions). After ``circuit_breaker_threshold`` ticks in a row that it
could not take, it is closed with 4008.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from quoted.server.metrics import Metrics
from quoted.server.store import Entry, Quote
from quoted.wire.messages import json_text

SNAPSHOT_HEAD = b'{"op":"add","path":"/quotes","value":{}}'


class Connection(Protocol):
    """What the hub needs of a client connection."""

    def send_patch(self, payload: bytes) -> int:
        """Write one ``quotes_patch`` text message now; the bytes written (0: closed)."""

    def slow_consumer(self) -> None:
        """Close the connection with 4008: it did not drain for too long."""


class Follower(Protocol):
    """What the hub tells of which entries are used here (the Redis bridge follows them)."""

    def follow(self, entry: Entry) -> None:
        """The entry got its first subscriber."""

    def unfollow(self, entry: Entry) -> None:
        """The entry lost its last subscriber."""


class BroadcastListener(Protocol):
    """Told when a tick's fan-out starts and when its messages are all written (the garbage
    collector collects after a broadcast, never during one)."""

    def broadcast_started(self) -> None: ...

    def broadcast_finished(self) -> None: ...


class Subscription:
    """One connection's fan-out state: its symbols, what it was sent, what moved."""

    __slots__ = ("conn", "extra", "paused", "pending", "sent", "seq", "stalled")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # entry -> version last sent to this connection; insertion-ordered
        self.sent: dict[Entry, int] = {}
        # entries that moved since the last message (an ordered set)
        self.pending: dict[Entry, None] = {}
        # add/remove operations queued by subscribe/unsubscribe, sent first
        self.extra: list[bytes] = []
        self.seq = 0
        self.paused = False
        self.stalled = 0

    def symbols(self) -> list[str]:
        """The subscribed symbols, sorted."""
        return sorted(e.symbol for e in self.sent)

    def count_with(self, entries: Iterable[Entry]) -> int:
        """How many symbols the connection would hold after subscribing entries."""
        return len(self.sent.keys() | set(entries))


class FanOutHub:
    """Symbol -> subscriptions, and the delivery of each tick."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        breaker_threshold: int,
        *,
        follower: Follower | None = None,
        listeners: Sequence[BroadcastListener] = (),
    ) -> None:
        """``follower`` is told when an entry gets its first subscriber and loses its last;
        each of ``listeners`` when a tick's fan-out starts and ends."""
        self._clock = clock
        self._follower = follower
        self._listeners = tuple(listeners)
        self._metrics = metrics
        self._threshold = breaker_threshold
        self._subscribers: dict[Entry, set[Subscription]] = {}
        self.subscriptions: set[Subscription] = set()
        # counted during a tick, reported to the metrics once at its end
        self._messages = self._bytes = self._delivered = self._conflated = 0

    # -- membership ---------------------------------------------------------

    def open(self, conn: Connection) -> Subscription:
        sub = Subscription(conn)
        self.subscriptions.add(sub)
        self._metrics.connections_idle.inc()
        return sub

    def close(self, sub: Subscription) -> None:
        """Forget a connection (idempotent)."""
        if sub not in self.subscriptions:
            return
        self.subscriptions.discard(sub)
        if sub.sent:
            self._leave(sub, list(sub.sent))  # leaves it counted idle
        self._metrics.connections_idle.dec()
        sub.pending.clear()
        sub.extra.clear()

    def snapshot(
        self,
        sub: Subscription,
        entries: Sequence[Entry],
        invalid: Sequence[str],
        forbidden: Sequence[str],
    ) -> None:
        """Subscribe the handshake's symbols and send the snapshot (seq 1)."""
        self._join(sub, entries)
        ops = [SNAPSHOT_HEAD]
        for e in entries:
            q = e.latest
            ops.append(q.add_op)
            sub.sent[e] = q.version
        sub.seq = 1
        payload = b"".join(
            (
                b'{"type":"quotes_patch","seq":1,"operations":[',
                b",".join(ops),
                b'],"invalid_symbols":',
                json_text(list(invalid)),
                b',"forbidden_symbols":',
                json_text(list(forbidden)),
                b"}",
            )
        )
        self._count(len(entries), sub.conn.send_patch(payload))
        self._report()

    def subscribe(self, sub: Subscription, entries: Sequence[Entry]) -> list[Entry]:
        """Add entries; their ``add`` operations go out with the next message.

        Returns the entries that were newly subscribed.
        """
        new = [e for e in entries if e not in sub.sent]
        if not new:
            return new
        self._join(sub, new)
        for e in new:
            q = e.latest
            sub.extra.append(q.add_op)
            sub.sent[e] = q.version
        return new

    def unsubscribe(self, sub: Subscription, entries: Sequence[Entry]) -> list[Entry]:
        """Drop entries; their ``remove`` operations go out with the next message."""
        gone = [e for e in entries if e in sub.sent]
        if not gone:
            return gone
        self._leave(sub, gone)
        for e in gone:
            sub.extra.append(e.remove_op)
        return gone

    def set_threshold(self, breaker_threshold: int) -> None:
        """``[websocket] circuit_breaker_threshold`` from now on (a reload)."""
        self._threshold = breaker_threshold

    def retire(self, entries: Sequence[Entry]) -> int:
        """Take retired entries from every subscription holding them: each gets their
        ``remove`` operations at once, in its own sequence. How many subscriptions."""
        retired = set(entries)
        holders = {sub for e in retired for sub in self._subscribers.get(e, ())}
        for sub in holders:
            self.unsubscribe(sub, [e for e in sub.sent if e in retired])
            self.flush(sub)
        return len(holders)

    def active(self) -> list[Entry]:
        """Entries with at least one subscriber: the ones the oscillator moves."""
        return list(self._subscribers)

    def _join(self, sub: Subscription, entries: Iterable[Entry]) -> None:
        was_idle = not sub.sent
        n = 0
        for e in entries:
            if e in sub.sent:
                continue
            subs = self._subscribers.get(e)
            if subs is None:
                subs = self._subscribers[e] = set()
                if self._follower is not None:
                    self._follower.follow(e)
            subs.add(sub)
            sub.sent[e] = 0
            n += 1
        if n:
            self._metrics.subscriptions.inc(n)
            self._metrics.active_symbols.set(len(self._subscribers))
            if was_idle:
                self._metrics.connections_idle.dec()

    def _leave(self, sub: Subscription, entries: Iterable[Entry]) -> None:
        n = 0
        for e in entries:
            if sub.sent.pop(e, None) is None:
                continue
            sub.pending.pop(e, None)
            n += 1
            subs = self._subscribers.get(e)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[e]
                    if self._follower is not None:
                        self._follower.unfollow(e)
        if n:
            self._metrics.subscriptions.dec(n)
            self._metrics.active_symbols.set(len(self._subscribers))
            if not sub.sent:
                self._metrics.connections_idle.inc()

    # -- delivery -----------------------------------------------------------

    def publish(self, quotes: Sequence[Quote]) -> None:
        """Deliver one tick: mark each subscriber of each moved symbol, then flush each once."""
        touched: set[Subscription] = set()
        subscribers = self._subscribers
        for q in quotes:
            subs = subscribers.get(q.entry)
            if not subs:
                continue
            e = q.entry
            for sub in subs:
                sub.pending[e] = None
            touched |= subs
        if not touched:
            return
        oldest_ms = min(q.last_updated_ms for q in quotes)
        listeners = self._listeners
        for listener in listeners:
            listener.broadcast_started()
        flush = self._flush
        for sub in touched:
            if sub.paused:
                self._stalled(sub)
            else:
                flush(sub)
        self._report()
        for listener in listeners:
            listener.broadcast_finished()
        # once per tick: from when the tick's prices were computed to when its
        # last message was written (the latency of the last client served)
        self._metrics.fanout_latency.observe(max(0.0, self._clock.seconds() - oldest_ms / 1000.0))

    def flush(self, sub: Subscription) -> None:
        """Send one message with everything the connection has not seen yet, if anything."""
        self._flush(sub)
        self._report()

    def _count(self, delivered: int, written: int) -> None:
        self._delivered += delivered
        if written:
            self._messages += 1
            self._bytes += written

    def _report(self) -> None:
        """Move the counts into the metrics: once per tick, not once per message
        (a prometheus-client increment takes a lock: ~8% of a broadcast's CPU)."""
        m = self._metrics
        if self._messages:
            m.messages_sent.inc(self._messages)
            m.bytes_sent.inc(self._bytes)
            self._messages = self._bytes = 0
        if self._delivered:
            m.symbol_updates_delivered.inc(self._delivered)
            self._delivered = 0
        if self._conflated:
            m.conflated_updates.inc(self._conflated)
            self._conflated = 0

    def _flush(self, sub: Subscription) -> None:
        ops = sub.extra
        delivered = len(ops)
        sub.extra = []
        if sub.pending:
            sent = sub.sent
            conflated = 0
            for e in sub.pending:
                v = sent.get(e)
                if v is None:
                    continue
                q = e.latest
                if v == q.version:
                    continue
                if v == q.version - 1:
                    ops.append(q.patch)
                else:
                    ops.append(q.replace)
                    conflated += q.version - v - 1
                sent[e] = q.version
                delivered += 1
            sub.pending.clear()
            self._conflated += conflated
        if not ops:
            return
        sub.seq += 1
        sub.stalled = 0
        written = sub.conn.send_patch(
            b'{"type":"quotes_patch","seq":%d,"operations":[%b]}' % (sub.seq, b",".join(ops))
        )
        self._count(delivered, written)

    def pause(self, sub: Subscription) -> None:
        sub.paused = True

    def resume(self, sub: Subscription) -> None:
        """The connection's socket drained: send what it missed, as one message."""
        sub.paused = False
        sub.stalled = 0
        if sub in self.subscriptions:
            self.flush(sub)

    def _stalled(self, sub: Subscription) -> None:
        sub.stalled += 1
        self._metrics.write_stalls.inc()
        if sub.stalled >= self._threshold:
            self.log.info(
                "closing a slow consumer after {ticks} ticks it could not take",
                ticks=sub.stalled,
                log_id="quoted.hub.slow_consumer",
            )
            self.close(sub)
            sub.conn.slow_consumer()
