"""Metrics live on an injected registry, named quoted_*."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from quoted.server.metrics import FANOUT_LATENCY_BUCKETS, Metrics

FAMILIES = {
    "quoted_connections": "gauge",
    "quoted_connections_idle": "gauge",
    "quoted_handshakes": "counter",
    "quoted_rejections": "counter",
    "quoted_rate_limited_messages": "counter",
    "quoted_messages_sent": "counter",
    "quoted_bytes_sent": "counter",
    "quoted_messages_received": "counter",
    "quoted_bytes_received": "counter",
    "quoted_symbol_updates_delivered": "counter",
    "quoted_conflated_updates": "counter",
    "quoted_server_closes": "counter",
    "quoted_slow_consumer_closes": "counter",
    "quoted_write_stalls": "counter",
    "quoted_fanout_latency_seconds": "histogram",
    "quoted_gc_pause_seconds": "histogram",
    "quoted_gc_during_broadcast": "counter",
    "quoted_tracked_objects": "gauge",
    "quoted_ticks": "counter",
    "quoted_ticks_skipped": "counter",
    "quoted_symbol_updates": "counter",
    "quoted_publish_items": "counter",
    "quoted_publish_latency_seconds": "histogram",
    "quoted_subscriptions": "gauge",
    "quoted_active_symbols": "gauge",
    "quoted_broker_up": "gauge",
    "quoted_feed_leader": "gauge",
    "quoted_build_info": "gauge",
}


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_every_family_is_exposed_with_its_type() -> None:
    m = Metrics(CollectorRegistry())
    m.handshakes.labels(result="accepted").inc()
    m.rejections.labels(code="invalid_token").inc()
    m.server_closes.labels(code="4008").inc()
    m.publish_items.labels(result="accepted").inc()
    text = exposition(m.registry)
    # prometheus-client's text format names a counter's family with its _total.
    exposed = {name + "_total" if kind == "counter" else name for name, kind in FAMILIES.items()}
    for name, kind in FAMILIES.items():
        shown = name + "_total" if kind == "counter" else name
        assert f"# TYPE {shown} {kind}\n" in text, name
        assert f"# HELP {shown} " in text, name
    ours = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE quoted_")}
    assert {name for name in ours if not name.endswith("_created")} == exposed


def test_counters_are_exposed_with_total_and_labels() -> None:
    m = Metrics(CollectorRegistry())
    m.handshakes.labels(result="401").inc(2)
    m.rejections.labels(code="forbidden_origin").inc()
    m.server_closes.labels(code="1001").inc()
    m.bytes_sent.inc(100)
    m.write_stalls.inc()
    m.ticks_skipped.inc(3)
    m.feed_leader.set(1)
    text = exposition(m.registry)
    assert 'quoted_handshakes_total{result="401"} 2.0' in text
    assert 'quoted_rejections_total{code="forbidden_origin"} 1.0' in text
    assert 'quoted_server_closes_total{code="1001"} 1.0' in text
    assert "quoted_bytes_sent_total 100.0" in text
    assert "quoted_write_stalls_total 1.0" in text
    assert "quoted_ticks_skipped_total 3.0" in text
    assert "quoted_feed_leader 1.0" in text


def test_fanout_latency_buckets() -> None:
    assert FANOUT_LATENCY_BUCKETS[0] == 0.001
    assert FANOUT_LATENCY_BUCKETS[-1] == 10.0
    assert 0.1 in FANOUT_LATENCY_BUCKETS
    assert list(FANOUT_LATENCY_BUCKETS) == sorted(FANOUT_LATENCY_BUCKETS)
    m = Metrics(CollectorRegistry())
    m.fanout_latency.observe(0.05)
    text = exposition(m.registry)
    assert 'quoted_fanout_latency_seconds_bucket{le="0.05"} 1.0' in text
    assert 'quoted_fanout_latency_seconds_bucket{le="0.025"} 0.0' in text
    assert "quoted_fanout_latency_seconds_count 1.0" in text


def test_process_platform_and_gc_collectors_are_registered() -> None:
    text = exposition(Metrics(CollectorRegistry()).registry)
    assert "python_info{" in text
    assert "python_gc_objects_collected_total" in text
    assert "process_" in text or "linux" not in __import__("sys").platform


def test_two_metrics_on_two_registries_do_not_clash() -> None:
    a = Metrics(CollectorRegistry())
    b = Metrics(CollectorRegistry())
    a.connections.inc()
    a.messages_sent.inc(5)
    assert "quoted_connections 1.0" in exposition(a.registry)
    assert "quoted_connections 0.0" in exposition(b.registry)
    assert "quoted_messages_sent_total 0.0" in exposition(b.registry)


def test_nothing_lands_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    Metrics(CollectorRegistry())
    assert "quoted_" not in generate_latest(REGISTRY).decode()


def test_build_info_names_the_running_version() -> None:
    from quoted import __version__

    text = exposition(Metrics(CollectorRegistry()).registry)
    assert f'quoted_build_info{{version="{__version__}"}} 1.0\n' in text
