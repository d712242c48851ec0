"""quoted: a real-time market-data daemon.

Clients open a WebSocket, prove who they are with a JWT and name symbols;
quoted sends a snapshot of each quote, then RFC 6902 JSON Patch updates.
Run it with ``twistd quoted``.
"""

__version__ = "0.1.0"
