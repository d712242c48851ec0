"""quoted's Python client: :class:`QuoteClient` keeps a quote document in step with a quoted
server, reconnecting and refreshing its token; ``quoted-watch`` is a terminal board built on it.

It imports only :mod:`quoted.wire` of quoted, never the server.
"""

from quoted.client.quoteclient import ClientError, QuoteClient, ServerError
from quoted.client.reconnect import (
    CONNECTING,
    FAILED,
    LIVE,
    RECONNECTING,
    STOPPED,
    ClientState,
)

__all__ = [
    "CONNECTING",
    "FAILED",
    "LIVE",
    "RECONNECTING",
    "STOPPED",
    "ClientError",
    "ClientState",
    "QuoteClient",
    "ServerError",
]
