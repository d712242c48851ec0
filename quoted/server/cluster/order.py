"""The shared order of published ticks: one Lua script decides, for every instance at once.

With ``[redis] enabled`` and a source other than the simulator, the sink
(quoted.server.feeds.sink.FeedSink) hands each checked batch to
:meth:`quoted.server.cluster.bridge.RedisBridge.record`, which runs :data:`RECORD` once: in
one atomic step Redis compares each tick's time with the symbol's shared quote (``stale``
when the shared one is later), gives the tick the next version, carries the volume and
reference price forward when the tick names none, stores the value
(``version ms price volume base``, quoted.server.cluster.lease) and publishes it on the
symbol's channel. Two instances posting for one symbol are thus ordered by Redis, and every
instance applies the same values in the same order.

The script answers the values it wrote, not only their versions, so the recording instance
applies exactly what its peers receive on the channels (the volume and base merged in
Redis included): the same bytes everywhere. A previous value that does not parse (written by
something else), or stamped further ahead of the caller's clock than any writer stamps
(quoted.server.cluster.codec.MAX_AHEAD_MS, which every reader refuses too), does not freeze
the symbol: the tick replaces it, with its time in unix ms
as version (above any version counted from 1, as a new fence is).

A Redis Stream source's cursor moves in the same script: it checks that the cursor is where
the source last saw it and moves it with the ticks, or writes nothing, so entries are applied
once across a failover (quoted.server.feeds.sink.Cursor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import txredisapi
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.server.cluster.codec import MAX_AHEAD_MS, Shared, decode
from quoted.server.cluster.lease import root_failure
from quoted.server.feeds.items import Tick
from quoted.server.feeds.sink import BrokerUnavailable, Cursor, CursorMoved
from quoted.server.store import Entry, format_number

__all__ = ["CURSOR_MOVED", "RECORD", "record_args", "recorded", "unavailable"]

CURSOR_MOVED = -1
Apply = Callable[[list[tuple[Entry, Shared]]], object]
_log = Logger()

# KEYS: quotes hash, stream cursor. ARGV: channel prefix, expected cursor, new cursor (both ""
# without one), the largest stamp believable now (the caller's clock + codec.MAX_AHEAD_MS: a
# previous value stamped later, version or ms, is treated as malformed), then per tick:
# symbol, unix ms, price, volume, base (the last two "" when not given). With a cursor not at
# expected (absent is "0-0"): -1, and nothing written. Otherwise, per tick in order, the value
# written and published, or 0 when the tick is stale (the shared quote's time is later); the
# cursor, when given, is set to new.
RECORD = """
local ahead = tonumber(ARGV[4])
local function int(s)
  if #s <= 15 and string.find(s, '^%d+$') then return tonumber(s) end
end
local function decimal(s, max)
  if string.find(s, '^%d+$') or string.find(s, '^%d+%.%d+$') then
    local n = tonumber(s)
    return n > 0 and n < math.huge and (max == nil or n <= max)
  end
  return false
end
local function volume(s)
  return s == '-' or (string.find(s, '^%d+$') ~= nil
    and (#s < 19 or (#s == 19 and s <= '9223372036854775807')))
end
local function parse(v)
  local a, b, p, vol, base = string.match(v, '^(%d+) (%d+) (%S+) (%S+) (%S+)$')
  if a == nil then  -- the simulator's form: a price in cents
    a, b, p = string.match(v, '^(%d+) (%d+) (%d+%.?%d?%d?)$')
    vol, base = '-', '-'
    if p ~= nil and string.find(p, '%.$') then return nil end
  end
  if a == nil then return nil end
  local n, ms = int(a), int(b)
  if n == nil or ms == nil or not decimal(p, 1e12) or not volume(vol) then return nil end
  if n > ahead or ms > ahead then return nil end
  if base ~= '-' and not decimal(base, 1e12) then return nil end
  return n, ms, vol, base
end
if ARGV[2] ~= '' and (redis.call('GET', KEYS[2]) or '0-0') ~= ARGV[2] then
  return -1
end
local out = {}
for i = 5, #ARGV, 5 do
  local sym, ms, vol, base = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 3], ARGV[i + 4]
  local version = math.max(1, ms)
  local stale = false
  local prev = redis.call('HGET', KEYS[1], sym)
  if prev then
    local n, pms, pvol, pbase = parse(prev)
    if n ~= nil then
      stale = pms > ms
      version = math.min(n + 1, 999999999999999)  -- 15 digits, as read (never reached)
      if vol == '' then vol = pvol end
      if base == '' then base = pbase end
    end
  else
    version = 1
  end
  if stale then
    out[#out + 1] = 0
  else
    if vol == '' then vol = '-' end
    if base == '' then base = '-' end
    local value = string.format('%d', version) .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2]
      .. ' ' .. vol .. ' ' .. base
    redis.call('HSET', KEYS[1], sym, value)
    redis.call('PUBLISH', ARGV[1] .. sym, value)
    out[#out + 1] = value
  end
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3])
end
return out
"""


def record_args(
    channel: str, batch: Sequence[tuple[Entry, Tick]], cursor: Cursor | None, now_ms: int
) -> list[object]:
    """RECORD's ARGV for ``batch`` (exact prices; "" for a volume or reference price not
    given), ``now_ms`` the local clock bounding the previous values' stamps."""
    expected, new = cursor if cursor is not None else ("", "")
    args: list[object] = [channel, expected, new, now_ms + MAX_AHEAD_MS]
    for _, t in batch:
        volume = "" if t.volume is None else str(t.volume)
        base = "" if t.reference_price is None else format_number(t.reference_price)
        args += (t.symbol, str(t.at_ms), format_number(t.price), volume, base)
    return args


def recorded(reply: object, batch: Sequence[tuple[Entry, Tick]], apply: Apply) -> list[bool]:
    """Apply what RECORD wrote for ``batch`` (one ``apply`` call) and say, per tick, whether it
    was recorded (False: stale); CursorMoved when the cursor was elsewhere (nothing written).
    A reply that does not fit the batch is a ValueError (a bug, never a partial answer)."""
    if reply == CURSOR_MOVED:
        raise CursorMoved("the stream cursor moved: read it again")
    if not isinstance(reply, list) or len(reply) != len(batch):
        raise ValueError(f"RECORD answered {reply!r:.80} for {len(batch)} ticks")
    written = [None if v == 0 else decode(str(v)) for v in reply]
    apply([(e, s) for (e, _), s in zip(batch, written, strict=True) if s is not None])
    return [s is not None for s in written]


def unavailable(failure: Failure) -> Failure:
    """A failed RECORD as :class:`BrokerUnavailable` when Redis could not be asked or did
    not answer in time (lost connection, reply timeout) or refused the command (an error
    reply: BUSY, LOADING, OOM, a read-only replica; logged, as that is for an operator to
    fix); any other failure as it is."""
    f = root_failure(failure)
    if f.check(txredisapi.ResponseError):
        _log.error(
            "redis refused to record published ticks: {error}",
            error=f.getErrorMessage(),
            log_id="quoted.redis.record_refused",
        )
    elif not f.check(
        txredisapi.ConnectionError, ConnectionLost, ConnectionDone, TimeoutError, CancelledError
    ):
        return f
    return Failure(BrokerUnavailable(f"redis: {f.getErrorMessage()}"))
