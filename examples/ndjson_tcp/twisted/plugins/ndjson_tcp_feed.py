"""quoted's feed plugin ``ndjson_tcp``: publish items as NDJSON lines over TCP.

``[feed] source = ndjson_tcp`` selects it; ``[feed:ndjson_tcp]`` holds its options. The feed
itself is the module ``ndjson_tcp``, named here as a string and imported only when quoted
makes the feed, so a scan of the plugins (twistd, a dropin.cache rebuild) stays cheap. No
``__init__.py`` in ``twisted/`` or ``twisted/plugins/``: Twisted finds this folder through
``sys.path`` (twisted.plugin.pluginPackagePaths) and skips a folder that is a package.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from twisted.application.service import IService
from twisted.plugin import IPlugin
from zope.interface import implementer

from quoted.server.feeds.plugins import IFeedMaker


@implementer(IPlugin, IFeedMaker)
class LazyFeedMaker:
    """An IFeedMaker whose feed lives in ``module`` (its ``make_feed``), imported when used."""

    def __init__(self, name: str, description: str, module: str) -> None:
        self.name = name
        self.description = description
        self.module = module

    def __repr__(self) -> str:
        return f"<feed plugin {self.name} ({self.module}.make_feed)>"

    def makeFeed(self, options: Mapping[str, str], sink: Any, reactor: Any) -> IService:
        service: IService = import_module(self.module).make_feed(options, sink, reactor)
        return service


ndjson_tcp = LazyFeedMaker(
    "ndjson_tcp",
    "publish items as NDJSON lines on a TCP socket, refused lines answered",
    "ndjson_tcp",
)
