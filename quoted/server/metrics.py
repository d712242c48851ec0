"""quoted's Prometheus metrics, all in one place and all named ``quoted_*``.

Every collector is registered on the CollectorRegistry given to :class:`Metrics`, never on the
module-global default registry, so tests (and two servers in one process) do not clash. The
families keep the meanings of the Go prototype's ``tickstream_*`` ones, except that
``write_stalls`` replaces ``write_timeouts`` and ``ticks_skipped`` is new.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from quoted import __version__

FANOUT_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds, from 1 ms to 10 s, dense around the 100 ms fan-out target."""


class Metrics:
    """The collectors the server updates; counters are named without their ``_total``."""

    __slots__ = (
        "active_symbols",
        "broker_up",
        "build_info",
        "bytes_received",
        "bytes_sent",
        "conflated_updates",
        "connections",
        "connections_idle",
        "fanout_latency",
        "feed_leader",
        "gc_during_broadcast",
        "gc_pause",
        "handshakes",
        "messages_received",
        "messages_sent",
        "publish_items",
        "publish_latency",
        "rate_limited_messages",
        "registry",
        "rejections",
        "server_closes",
        "slow_consumer_closes",
        "subscriptions",
        "symbol_updates",
        "symbol_updates_delivered",
        "ticks",
        "ticks_skipped",
        "tracked_objects",
        "write_stalls",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        r = registry

        # The running release: one series, always 1 (join on it to label other series).
        self.build_info = Gauge(
            "quoted_build_info",
            "Always 1; the label version is the running quoted's release (quoted.__version__).",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)

        # Connections.
        self.connections = Gauge("quoted_connections", "Open WebSocket connections.", registry=r)
        self.connections_idle = Gauge(
            "quoted_connections_idle",
            "Open WebSocket connections subscribed to no symbol; the others are active.",
            registry=r,
        )
        self.handshakes = Counter(
            "quoted_handshakes",
            "WebSocket handshakes by result: accepted, upgrade_failed, or the HTTP status of "
            "the rejection (401, 400, 403, 429, 503, ...).",
            ["result"],
            registry=r,
        )
        self.rejections = Counter(
            "quoted_rejections",
            "Refused requests (WebSocket handshakes and REST) by the error code of their JSON "
            "body, such as invalid_token or forbidden_origin.",
            ["code"],
            registry=r,
        )
        self.server_closes = Counter(
            "quoted_server_closes",
            "WebSocket connections the server closed, by the close code it sent.",
            ["code"],
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            "quoted_slow_consumer_closes",
            "WebSocket connections closed with 4008 because their socket did not drain.",
            registry=r,
        )

        # Traffic.
        self.rate_limited_messages = Counter(
            "quoted_rate_limited_messages",
            "Client frames (message fragments, pings, pongs) refused because the connection "
            "exceeded its message rate (they were not processed).",
            registry=r,
        )
        self.messages_sent = Counter(
            "quoted_messages_sent", "WebSocket messages sent to clients.", registry=r
        )
        self.bytes_sent = Counter(
            "quoted_bytes_sent",
            "Bytes written to WebSocket connections, frame headers included.",
            registry=r,
        )
        self.messages_received = Counter(
            "quoted_messages_received",
            "WebSocket data messages received from clients.",
            registry=r,
        )
        self.bytes_received = Counter(
            "quoted_bytes_received",
            "Payload bytes of the WebSocket data messages received from clients.",
            registry=r,
        )
        self.symbol_updates_delivered = Counter(
            "quoted_symbol_updates_delivered",
            "Symbol operations (add, replace, remove) written to clients.",
            registry=r,
        )
        self.conflated_updates = Counter(
            "quoted_conflated_updates",
            "Quote versions a connection skipped because it was behind; it got the latest instead.",
            registry=r,
        )
        self.write_stalls = Counter(
            "quoted_write_stalls",
            "Ticks at which a connection could not take a message because its transport "
            "was paused (one per connection and tick).",
            registry=r,
        )
        self.fanout_latency = Histogram(
            "quoted_fanout_latency_seconds",
            "Per tick: from when the tick's prices were computed (their last_updated) to when "
            "the last message carrying them was written: the latency of the last client served.",
            buckets=FANOUT_LATENCY_BUCKETS,
            registry=r,
        )

        # Garbage collection (quoted.server.collector).
        self.gc_pause = Histogram(
            "quoted_gc_pause_seconds",
            "Seconds each garbage collection held the reactor, by generation.",
            ["generation"],
            buckets=FANOUT_LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_during_broadcast = Counter(
            "quoted_gc_during_broadcast",
            "Garbage collections that started while a tick was being fanned out (should be 0).",
            registry=r,
        )
        self.tracked_objects = Gauge(
            "quoted_tracked_objects",
            "Objects the garbage collector tracks (not counting those frozen at start), counted "
            "at each scrape while quoted runs: it grows with connections and returns when "
            "they close.",
            registry=r,
        )

        # Feed.
        self.ticks = Counter(
            "quoted_ticks", "Price feed ticks that moved at least one symbol.", registry=r
        )
        self.ticks_skipped = Counter(
            "quoted_ticks_skipped",
            "Ticks the price oscillator skipped because it fell behind its interval.",
            registry=r,
        )
        self.symbol_updates = Counter(
            "quoted_symbol_updates", "Quote updates produced by the price feed.", registry=r
        )
        self.publish_items = Counter(
            "quoted_publish_items",
            "Published items (the publish API, a replay file, a Redis Stream, a plugin), by "
            "result: accepted, or the code it was refused with.",
            ["result"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "quoted_publish_latency_seconds",
            "Per publish request or batch: from its receipt to when the last message carrying "
            "its quotes was written to the subscribers (Redis included, when enabled).",
            buckets=FANOUT_LATENCY_BUCKETS,
            registry=r,
        )
        self.subscriptions = Gauge(
            "quoted_subscriptions",
            "Subscriptions: one per WebSocket connection and symbol.",
            registry=r,
        )
        self.active_symbols = Gauge(
            "quoted_active_symbols", "Symbols with at least one subscriber.", registry=r
        )
        self.broker_up = Gauge(
            "quoted_broker_up",
            "1 while the broker (Redis) answers, always 1 with the in-memory broker; 0 while "
            "this instance serves its own prices.",
            registry=r,
        )
        self.feed_leader = Gauge(
            "quoted_feed_leader",
            "1 on the one instance that publishes the prices (the holder of the feed lease, "
            "always 1 with the in-memory broker), 0 on the others.",
            registry=r,
        )
