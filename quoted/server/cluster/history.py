"""The shared history: every symbol's ticks and bars in Redis, so every instance answers
``GET /v1/history`` alike, one started late or restarted included.

Per symbol and kind a Redis list, trimmed to its bound (``[history]``): ``PREFIXhist:tick:SYM``
holds ``ms price volume`` items, ``PREFIXhist:1s:SYM`` (1m, 5m, 1h) ``start open high low
close volume`` items, oldest first, the last one the open bar. Prices are written in their
shortest form (quoted.server.store.format_number), so they read back as the very floats the
WebSocket sent; an unknown volume is ``-``.

Only the process that decided a quote writes it: the lease holder for the simulator's ticks
(after its fenced publish succeeded), the caller of the RECORD script for published ones
(quoted.server.cluster.bridge calls :meth:`RedisHistory.write` with the batch it decided,
before applying it). The :data:`HISTORY` script appends each tick and folds it into every
bar in one atomic step, and refuses a tick earlier than its symbol's last (a new leader
whose clock is behind the old one's), as the feed refuses an older item. Reads are LRANGEs
through txredisapi, never blocking the reactor; a value that does not parse (written by
something else) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.cluster.lease import Shared, root_failure
from quoted.server.history.store import INTERVALS, TICK, Bounds, Row
from quoted.server.store import Entry, format_number

__all__ = ["HISTORY", "RedisHistory", "history_args", "parse_row"]

_log = Logger()
_UNKNOWN = "-"
# keys per symbol in HISTORY: the ticks, then the bars of each of INTERVALS
_KINDS = (TICK, *INTERVALS)

# KEYS: per symbol, its tick list then its bar lists in _KINDS order.
# ARGV: the bound of each kind (5 numbers), then per symbol: ms, price, volume (texts).
# Answers 1 per kept tick, 0 per refused one (earlier than the symbol's last).
HISTORY = """
local kinds = 5
local caps, spans = {}, {0, 1000, 60000, 300000, 3600000}
for k = 1, kinds do caps[k] = tonumber(ARGV[k]) end
local out = {}
local n = (#ARGV - kinds) / 3
for i = 0, n - 1 do
  local ms_text = ARGV[kinds + 1 + 3 * i]
  local price_text = ARGV[kinds + 2 + 3 * i]
  local volume = ARGV[kinds + 3 + 3 * i]
  local ms, price = tonumber(ms_text), tonumber(price_text)
  local base = kinds * i
  local last = redis.call('LINDEX', KEYS[base + 1], -1)
  local last_ms = last and tonumber(string.match(last, '^(%d+) '))
  if last_ms and ms < last_ms then
    out[i + 1] = 0
  else
    redis.call('RPUSH', KEYS[base + 1], ms_text .. ' ' .. price_text .. ' ' .. volume)
    redis.call('LTRIM', KEYS[base + 1], -caps[1], -1)
    for k = 2, kinds do
      local key = KEYS[base + k]
      local start = ms - ms % spans[k]
      local bar = redis.call('LINDEX', key, -1)
      local s, o, h, l
      if bar then
        s, o, h, l = string.match(bar, '^(%d+) (%S+) (%S+) (%S+) ')
      end
      if s and tonumber(s) == start then
        if price > tonumber(h) then h = price_text end
        if price < tonumber(l) then l = price_text end
        redis.call('LSET', key, -1,
          table.concat({s, o, h, l, price_text, volume}, ' '))
      else
        local st = string.format('%.0f', start)
        redis.call('RPUSH', key,
          table.concat({st, price_text, price_text, price_text, price_text, volume}, ' '))
        redis.call('LTRIM', key, -caps[k], -1)
      end
    end
    out[i + 1] = 1
  end
end
return out
"""


class Commands(Protocol):
    """What the history needs of the bridge: its command connection."""

    up: bool

    def command(self, *args: object) -> Deferred[Any]: ...

    def script(self, script: str, keys: list[str], args: list[object]) -> Deferred[Any]: ...


def key_of(prefix: str, kind: str, symbol: str) -> str:
    return f"{prefix}hist:{kind}:{symbol}"


def history_args(
    prefix: str, bounds: Bounds, batch: Sequence[tuple[Entry, Shared]]
) -> tuple[list[str], list[object]]:
    """HISTORY's KEYS and ARGV for a decided batch (a quote's volume: the one it names, else
    its instrument's, as the quote the WebSocket sends carries)."""
    keys: list[str] = []
    args: list[object] = [bounds.kept(kind) for kind in _KINDS]
    for e, s in batch:
        keys += [key_of(prefix, kind, e.symbol) for kind in _KINDS]
        volume = s.volume if s.volume is not None else e.volume
        args += [str(s.stamp.ms), format_number(s.price), str(volume)]
    return keys, args


def _number(text: str) -> float:
    if text == _UNKNOWN:
        return math.nan
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(text)
    return v


def parse_row(item: object, width: int) -> Row | None:
    """One list item as a row of ``width`` numbers (time first), or None when it does not
    parse (never a crash on what another writer left)."""
    text = item.decode() if isinstance(item, bytes) else item
    if not isinstance(text, str):
        return None
    parts = text.split(" ")
    if len(parts) != width or not parts[0].isdigit():
        return None
    try:
        row = tuple(_number(p) for p in parts)
    except ValueError:
        return None
    return None if any(math.isnan(v) for v in row[:-1]) else row


class RedisHistory:
    """quoted.server.history.route.SharedHistory on Redis, through the bridge's connection."""

    def __init__(self, bridge: Commands, prefix: str, bounds: Bounds) -> None:
        self._bridge = bridge
        self._prefix = prefix
        self._bounds = bounds
        self.refused = 0  # ticks HISTORY refused as earlier than their symbol's last

    @property
    def available(self) -> bool:
        return bool(self._bridge.up)

    def write(self, batch: Sequence[tuple[Entry, Shared]]) -> Deferred[None]:
        """Keep a batch this process decided (the bridge's ``on_decided``); errors logged."""
        keys, args = history_args(self._prefix, self._bounds, batch)
        d = self._bridge.script(HISTORY, keys, args)
        d.addCallback(self._written)
        d.addErrback(self._failed)
        return d

    def rows(
        self, symbol: str, interval: str, limit: int, since_ms: int | None
    ) -> Deferred[list[Row]]:
        key = key_of(self._prefix, interval, symbol)
        start = -limit if since_ms is None else 0  # since: the whole (bounded) list
        d = self._bridge.command("LRANGE", key, start, -1)
        width = 3 if interval == TICK else 6
        return d.addCallback(_rows, width, limit, since_ms)

    def _written(self, reply: object) -> None:
        if isinstance(reply, list):
            self.refused += sum(1 for v in reply if v == 0)

    def _failed(self, failure: Failure) -> None:
        f = root_failure(failure)
        _log.warn(
            "shared history not written: {error}",
            error=f.getErrorMessage(),
            log_id="quoted.history.write_failed",
        )


def _rows(items: object, width: int, limit: int, since_ms: int | None) -> list[Row]:
    if not isinstance(items, list):
        raise ValueError(f"LRANGE answered {items!r:.80}")
    rows = [r for r in (parse_row(i, width) for i in items) if r is not None]
    if since_ms is not None:
        rows = [r for r in rows if r[0] > since_ms]
    return rows[-limit:]
