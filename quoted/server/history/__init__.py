"""Quote history: each symbol's last ticks and OHLC bars, kept as quotes are applied, and
``GET /v1/history`` (docs/protocol.md, "History").

- :mod:`.bars`: fixed rings of ticks and bars in flat arrays;
- :mod:`.store`: :class:`HistoryStore`, this process's history, fed every applied batch;
- :mod:`.route`: the REST route, answering from the store, or from the shared history in Redis
  (quoted.server.cluster.history) when instances share a market.
"""

from quoted.server.history.store import INTERVALS, TICK, Bounds, HistoryStore

__all__ = ["INTERVALS", "TICK", "Bounds", "HistoryStore"]
