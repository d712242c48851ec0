"""The daemon, ``twistd quoted``: configuration, the quote store, feeds, the hub, WebSocket and
HTTP handling, authentication, metrics and logs. ``app.build`` wires them; ``tap`` is the
twistd face. The optional Redis scale-out is :mod:`quoted.server.cluster`.
"""
