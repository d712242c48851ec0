"""The optional Redis scale-out: several processes serving one market. The only place txredisapi
is imported; nothing else of quoted imports this package except the wiring in ``app``, and only
when ``[redis] enabled`` is set (txredisapi imports the global reactor).
"""

__all__ = [
    "bridge",
    "lease",
    "order",
]
