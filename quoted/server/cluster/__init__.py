"""The optional Redis scale-out: several processes serving one market, and the Redis Stream
source. The only place txredisapi is imported; nothing else of quoted imports this package
except the wiring in ``app``, and only when ``[redis] enabled`` is set or ``[feed] source`` is
``redis_stream`` (txredisapi imports the global reactor).
"""

__all__ = [
    "bridge",
    "lease",
    "order",
    "stream",
]
