"""Wiring: one function builds quoted from its configuration.

``build`` is the only place that knows every part. It takes the reactor as a
parameter (only the plugin's makeService imports the global one), so tests
build the same service on the real reactor or a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from quoted.server.auth import TokenVerifier
from quoted.server.collector import GarbageCollector
from quoted.server.config import Config
from quoted.server.feeds.simulator import OscillatorService
from quoted.server.feeds.sink import FeedSink
from quoted.server.feeds.sources import plugin_feed, replay_feed
from quoted.server.gate import Gate
from quoted.server.history import Bounds, HistoryStore
from quoted.server.history.route import HistoryRoute, SharedHistory
from quoted.server.hub import FanOutHub
from quoted.server.instruments import load_instruments
from quoted.server.jwks import KeySetService
from quoted.server.listener import Listener
from quoted.server.metrics import Metrics
from quoted.server.pool import ConnectionPool
from quoted.server.protocol import QuoteFactory
from quoted.server.publish import PublishRoute
from quoted.server.ratelimit import IPRateLimiter
from quoted.server.store import Entry, Quote, QuoteStore
from quoted.server.tls import server_endpoint
from quoted.server.web import QuotedSite, Router, make_site

if TYPE_CHECKING:
    from quoted.server.cluster.bridge import RedisBridge


@dataclass(frozen=True, slots=True)
class Parts:
    """The built parts, for tests and the plugin."""

    store: QuoteStore
    hub: FanOutHub
    pool: ConnectionPool
    verifier: TokenVerifier
    metrics: Metrics
    oscillator: OscillatorService | None  # [feed] source = simulator only
    factory: QuoteFactory
    sink: FeedSink
    feed: IService | None = None  # the replay, redis_stream or plugin source
    bridge: RedisBridge | None = None
    history: HistoryStore | None = None  # [history] enabled
    # what a reload (quoted.server.reload) sets anew
    gate: Gate | None = None
    site: QuotedSite | None = None
    publish: PublishRoute | None = None  # [feed] source = publish


class QuotedService(MultiService):
    """Starts every part; on stop, drains the clients first, then stops the parts."""

    log = Logger()

    def __init__(self, parts: Parts, shutdown_timeout: float) -> None:
        super().__init__()
        self.parts = parts
        self.shutdown_timeout = shutdown_timeout

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.parts.pool.drain(self.shutdown_timeout)
        await super().stopService()
        self.log.info("quoted stopped", log_id="quoted.app.stopped")


# the kernel queue of accepted-but-not-yet-served connections; Twisted's 50
# drops SYNs when thousands of clients reconnect at once (a restart, a failover), and 1024
# overflowed 2,381 times in a storm of 3,000 wss clients (each a 1 s SYN retransmit); the
# kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4)
LISTEN_BACKLOG = 4096


def with_backlog(listen: str) -> str:
    """A tcp/ssl endpoint string with a backlog of LISTEN_BACKLOG unless it names one."""
    kind = listen.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in listen:
        return f"{listen}:backlog={LISTEN_BACKLOG}"
    return listen


def build(
    config: Config, reactor: Any, *, secret: bytes | None = None, manage_gc: bool = True
) -> QuotedService:
    """Every part of quoted as one service, on ``reactor`` (IReactorTime, IReactorTCP...).

    ``secret`` overrides the configured HMAC secret (development mode passes a random one).
    ``manage_gc`` False leaves the process's garbage collector alone (no freeze, no schedule
    of quoted's: quoted.server.collector), for a process that embeds quoted among other
    work, such as a test runner, whose heap quoted's full collection at start would walk
    every time; twistd quoted always manages it.
    """
    metrics = Metrics(CollectorRegistry())
    instruments = load_instruments(config.feed.instruments_file, config.feed.synthetic_symbols)
    store = QuoteStore(instruments, int(reactor.seconds() * 1000))
    keyset = KeySetService(reactor, config.auth.jwks_url) if config.auth.jwks_url else None
    verifier = TokenVerifier.from_config(config.auth, reactor, secret, keyset)
    ws = config.websocket
    collector = GarbageCollector(reactor, metrics) if manage_gc else None
    bridge: RedisBridge | None = None
    # every applied batch, from any source, is kept in the history before the hub fans it
    # out (the hub's publish sees every batch, subscribed symbols or not)
    history = HistoryStore(Bounds.of(config.history)) if config.history.enabled else None

    def deliver(quotes: list[Quote]) -> None:
        if history is not None:
            history.record(quotes)
        hub.publish(quotes)

    shared_history: SharedHistory | None = None
    if config.redis.enabled:
        # imported here: txredisapi imports the global reactor, which must not happen before
        # twistd installs its own
        from quoted.server.cluster.bridge import RedisBridge  # noqa: PLC0415

        # The bridge publishes into the hub, and the hub tells the bridge which symbols are
        # used (it is the hub's follower): the bridge comes first, and reaches the hub, built
        # next, through deliver, which it calls only once running.
        # peers share one price source: the oscillator ticks only on the lease holder; any
        # other source's ticks are ordered in Redis (the sink's shared order)
        bridge = RedisBridge(
            reactor,
            config.redis,
            store,
            deliver,
            metrics,
            stream=config.feed.stream,
            simulated=config.feed.source == "simulator",
        )
        if history is not None:  # written by the process that decides a quote, read by all
            from quoted.server.cluster.history import RedisHistory  # noqa: PLC0415

            redis_history = RedisHistory(bridge, config.redis.prefix, history.bounds)
            bridge.on_decided = redis_history.write
            shared_history = redis_history
    hub = FanOutHub(
        reactor,
        metrics,
        ws.circuit_breaker_threshold,
        follower=bridge,
        listeners=[] if collector is None else [collector],
    )
    pool = ConnectionPool(reactor, ws)

    def active() -> list[Entry]:
        return hub.active() if bridge is None else bridge.movable()

    def on_tick(moved: int, skipped: int) -> None:
        if moved:
            metrics.ticks.inc()
            metrics.symbol_updates.inc(moved)
        if skipped:
            metrics.ticks_skipped.inc(skipped)

    source = config.feed.source
    oscillator = None
    if source == "simulator":
        oscillator = OscillatorService(
            reactor,
            config.feed.update_interval,
            config.feed.oscillation_percent,
            config.feed.mode,
            active,
            deliver,
            on_tick=on_tick,
            emit=None if bridge is None else bridge.emit,
        )
    sink = FeedSink(
        store,
        deliver,
        reactor,
        metrics,
        future_ms=int(config.auth.leeway * 1000),
        shared=None if bridge is None or oscillator is not None else bridge,
    )
    feed: IService | None = None
    if source == "replay":
        fc = config.feed
        feed = replay_feed(fc.replay_file, fc.replay_speed, fc.replay_loop, sink, reactor)
    elif source == "redis_stream":
        # imported here, as the bridge is: txredisapi imports the global reactor
        from quoted.server.cluster.stream import stream_feed  # noqa: PLC0415

        feed = stream_feed(config, sink, reactor, bridge)
    elif source not in ("simulator", "publish"):
        feed = plugin_feed(source, config.feed_options, sink, reactor)
    factory = QuoteFactory(reactor, ws, store, hub, pool, verifier, metrics)
    limiter = IPRateLimiter(reactor, ws.handshake_rate_per_ip)
    gate = Gate(factory, config.server, ws, store, pool, verifier, limiter, metrics)
    publish = PublishRoute(sink, config.publish.max_items) if source == "publish" else None
    router = Router(
        gate,
        store,
        pool,
        verifier,
        metrics,
        None if bridge is None else bridge.readiness,
        publish=publish,
        history=None if history is None else HistoryRoute(store, history, reactor, shared_history),
    )
    site = make_site(router, reactor, config.publish.max_body)
    if bridge is None:
        metrics.broker_up.set(1)
        metrics.feed_leader.set(1)

    parts = Parts(
        store,
        hub,
        pool,
        verifier,
        metrics,
        oscillator,
        factory,
        sink,
        feed,
        bridge,
        history,
        gate,
        site,
        publish,
    )
    service = QuotedService(parts, config.server.shutdown_timeout)
    if keyset is not None:  # first: it starts fetching before the listener opens
        keyset.setServiceParent(service)
    if bridge is not None:  # started first; stopped after the drain (QuotedService._stop)
        bridge.setServiceParent(service)
    if collector is not None:
        collector.setServiceParent(service)
    pool.setServiceParent(service)
    for part in (oscillator, feed):
        if part is not None:
            part.setServiceParent(service)
    server = config.server
    listener = Listener(
        reactor,
        with_backlog(server.listen),
        site,
        make_endpoint=partial(
            server_endpoint,
            protocols=server.tls_protocols,
            ciphers=server.tls_ciphers,
            session_tickets=server.tls_session_tickets,
        ),
    )
    listener.setName("listener")
    listener.setServiceParent(service)
    return service
