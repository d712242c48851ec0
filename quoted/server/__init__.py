"""The daemon, ``twistd quoted``: configuration, the quote store, feeds, the hub, WebSocket and
HTTP handling, authentication, metrics and logs. ``app.build`` wires them; ``tap`` is the
twistd face. The optional Redis scale-out is :mod:`quoted.server.cluster`.

Importing this package imports none of its modules (the plugin loads ``tap`` lazily, and a
module may need the reactor twistd installs first); its public API is the modules below.
"""

__all__ = [
    "app",
    "auth",
    "collector",
    "config",
    "edge",
    "errors",
    "gate",
    "hub",
    "instruments",
    "jwks",
    "keys",
    "listener",
    "logs",
    "metrics",
    "pool",
    "protocol",
    "ratelimit",
    "settingkinds",
    "store",
    "tap",
    "timers",
    "web",
]
