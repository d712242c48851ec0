"""``twistd --logger=quoted.logs.observer``, the path written in the units and the docs: the
observer factory of :mod:`quoted.server.logs`, kept at its first address."""

from quoted.server.logs import observer

__all__ = ["observer"]
