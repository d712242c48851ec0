"""Feed plugins: an operator's own price source, found the Twisted way.

A module in any ``twisted/plugins/`` folder on the Python path provides an object
implementing :class:`IFeedMaker` (and ``twisted.plugin.IPlugin``, so ``getPlugins`` finds
it). ``[feed] source = NAME`` selects it, and the section ``[feed:NAME]`` of etc/quoted.conf
holds its options, passed as strings. Its service hands items to the sink, the same path
as the publish API (quoted.server.feeds.sink: the same checks and codes). README.rst,
"Feed plugins", shows a complete one (examples/).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface

__all__ = ["BUILTIN_SOURCES", "FeedOptionError", "IFeedMaker", "installed_feeds"]

BUILTIN_SOURCES = ("simulator", "publish", "replay", "redis_stream")


class IFeedMaker(Interface):
    """Makes one kind of feed: quoted's public interface for price sources."""

    name = Attribute("The name written in [feed] source: lower-case letters, digits, _ and -")
    description = Attribute("One line saying what the feed reads")

    def makeFeed(options: Mapping[str, str], sink: Any, reactor: Any) -> IService:
        """The feed's service, built from ``options`` (the ``[feed:NAME]`` section's keys and
        values, as strings), writing into ``sink`` (``sink.publish(items, *, symbols=None)
        -> Deferred[PublishResult]``) on ``reactor``. A bad option raises
        :class:`FeedOptionError`; quoted then refuses to start, naming ``[feed:NAME] key``.
        It only builds: ``python -m quoted.config`` calls it to check the options, with a sink
        that refuses every publish and a reactor that runs nothing, and never starts the service.
        """


class FeedOptionError(ValueError):
    """An option a feed plugin cannot use: the key and why (never the value if secret)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def installed_feeds() -> dict[str, IFeedMaker]:
    """Every feed plugin on the path, by name. A plugin named like a built-in source or like
    another plugin is refused with a ValueError naming both (the choice would be a guess)."""
    found: dict[str, IFeedMaker] = {}
    for maker in getPlugins(IFeedMaker):
        name = str(getattr(maker, "name", ""))
        if name in BUILTIN_SOURCES:
            raise ValueError(f"feed plugin {maker!r} is named {name!r}, like a built-in source")
        if name in found:
            raise ValueError(f"two feed plugins are named {name!r}: {found[name]!r} and {maker!r}")
        found[name] = maker
    return found
