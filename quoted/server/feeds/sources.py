"""``[feed] source``: the service that feeds the sink, for the sources that are one.

``simulator`` is the oscillator (quoted.server.feeds.simulator, wired by app.build because
with Redis it ticks through the lease); ``publish`` is no service, only the route
``POST /v1/quotes`` (quoted.server.publish). The others are built here: ``replay``
(quoted.server.feeds.replay), ``redis_stream`` (quoted.server.cluster.stream) and every
plugin feed (quoted.server.feeds.plugins). Errors are ValueErrors naming the setting, so
the start stops with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService

from quoted.server.feeds.plugins import BUILTIN_SOURCES, FeedOptionError, installed_feeds
from quoted.server.feeds.replay import SAMPLE_FILE, ReplayError, ReplayFeed, read_ticks
from quoted.server.feeds.sink import FeedSink

__all__ = ["plugin_feed", "replay_feed"]


def replay_feed(path: str, speed: float, loop: bool, sink: FeedSink, reactor: Any) -> IService:
    """The replay of ``path`` (empty: the synthetic sample), read whole now, before the
    reactor runs; a file that cannot be played stops the start naming ``[feed] replay_file``."""
    try:
        ticks = read_ticks(path or SAMPLE_FILE)
    except ReplayError as e:
        raise ValueError(f"[feed] replay_file: {e}") from None
    return ReplayFeed(reactor, ticks, speed, loop, sink)


def plugin_feed(name: str, options: Mapping[str, str], sink: FeedSink, reactor: Any) -> IService:
    """The service of the plugin feed ``name``, made from its ``[feed:NAME]`` options."""
    if name in BUILTIN_SOURCES:
        raise ValueError(f"[feed] source = {name!r} is a built-in source, not a plugin feed")
    makers = installed_feeds()
    maker = makers.get(name)
    if maker is None:
        raise ValueError(
            f"[feed] source = {name!r}: no such plugin feed; installed: "
            f"{', '.join(sorted(makers)) or 'none'}"
        )
    try:
        service = maker.makeFeed(options, sink, reactor)
    except FeedOptionError as e:
        raise ValueError(f"[feed:{name}] {e.key}: {e.message}") from None
    if not IService.providedBy(service):
        raise ValueError(f"feed plugin {name}: makeFeed returned {service!r}, not an IService")
    return service
