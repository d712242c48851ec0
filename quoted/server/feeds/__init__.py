"""Where prices come from. The simulator moves prices itself (``store.apply_prices``); every
other source (the publish API, a replay file, a Redis Stream, a plugin feed) hands published
items to the sink, the one validated path into the store (``sink.FeedSink``)."""

__all__ = [
    "items",
    "plugins",
    "replay",
    "simulator",
    "sink",
    "sources",
]
