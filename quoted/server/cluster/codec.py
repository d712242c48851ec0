"""The shared quotes' codec: what a value in ``<prefix>quotes`` (and on a symbol's channel)
says, and the bounds a value must keep before any process applies it.

A shared quote is one hash field per symbol (and the same text on the symbol's channel), in one
of two forms, told apart by their number of space-separated fields:

- ``fence unix_ms price``: a simulator tick (:func:`encode`), the price rounded to cents, written
  by the lease holder's PUBLISH script (quoted.server.cluster.lease).
- ``version unix_ms price volume base``: a published tick (:func:`encode_published`), written
  by the RECORD script (quoted.server.cluster.order), which decides in one step whether the
  tick is stale and its version (the previous value's first field + 1, so a published quote
  outranks the simulator quote it follows). The price is exact (``format_number``: a
  published price is not rounded); ``volume`` (an integer) and ``base`` (the reference
  price) are ``-`` when no tick of the symbol ever gave one, and otherwise the last given.

Every field is checked when read (:func:`decode`), so that nothing out of range is ever
recorded as applied (a value that cannot be served must not outrank the genuine ones after
it): integers of at most 15 digits (exact in Lua's doubles); ``unix_ms`` at most
:data:`MAX_MS` (9999-12-31T23:59:59.999Z, the last time RFC 3339 can write); a simulator price
in cents (at most two decimals), a published price and a base plain decimals, all in
``(0, 1e12]``; a volume below 2**63. Against the local clock (``now_ms``), a value whose
``unix_ms`` or first field is more than :data:`MAX_AHEAD_MS` ahead is refused as well: no
genuine writer stamps so far ahead (a fence is ``max(previous + 1, the leader's now)``, a
version counts ticks from a fence or from 1, a published time is at most ``[auth] leeway``,
10 min at most, ahead of the receiving instance), and such a stamp would outrank every
genuine tick for as long. Readers skip a refused value, logging it once (:class:`Refusals`),
and the next recorded tick overwrites it.

Every peer, the recorder included, builds the quote with ``Entry.put(price, unix_ms, volume,
base)``, which gives the same JSON bytes everywhere, and applies it only if its
:class:`Stamp` (first field, then time) is newer than the last one it applied for the symbol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from twisted.logger import Logger

from quoted.server.store import MAX_MS, MAX_PRICE, Entry, format_number, round2

__all__ = [
    "MAX_AHEAD_MS",
    "MAX_BASE",
    "MAX_MS",
    "Refusals",
    "Shared",
    "Stamp",
    "decode",
    "encode",
    "encode_published",
    "parse_shared",
    "publish_args",
]

MAX_BASE = MAX_PRICE  # a reference price's bound (quoted.server.feeds.items.MAX_PRICE)
MAX_AHEAD_MS = 15 * 60_000
"""How far ahead of the local clock a shared stamp (its ``unix_ms`` or its fence/version) may
be: the largest ``[auth] leeway`` (10 min, how far ahead a published item's time may be)
plus 5 min of clock skew between instances."""


class Stamp(NamedTuple):
    """Orders shared quotes: a higher first field wins (a later leader's fence, a later
    recorded version), then a later millisecond.

    Tuple order is the order: ``Stamp(2, 1) > Stamp(1, 9)``; ``Stamp(0, 0)`` is older than any
    published quote.
    """

    version: int
    ms: int


class Shared(NamedTuple):
    """One quote as Redis carries it; ``volume`` and ``base`` None when it names none."""

    stamp: Stamp
    price: float
    volume: int | None = None
    base: float | None = None


_INT = re.compile(r"[0-9]{1,15}")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_CENTS = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
_VOLUME = re.compile(r"[0-9]{1,19}")
_UNKNOWN = "-"


def encode(fence: int, ms: int, price: float) -> str:
    """``fence ms price``: the price rounded to cents, in its shortest form."""
    return f"{fence} {ms} {format_number(round2(price))}"


def encode_published(
    version: int, ms: int, price: float, volume: int | None, base: float | None
) -> str:
    """``version ms price volume base``, as the RECORD script writes it: the exact price,
    ``-`` for an unknown volume or base."""
    vol = _UNKNOWN if volume is None else str(volume)
    ref = _UNKNOWN if base is None else format_number(base)
    return f"{version} {ms} {format_number(price)} {vol} {ref}"


def _decimal(text: str, form: re.Pattern[str], what: str) -> float:
    if form.fullmatch(text) is None:
        raise ValueError(f"{what} {text[:20]!r} is not a plain decimal")
    v = float(text)
    if not (math.isfinite(v) and 0 < v <= MAX_PRICE):
        raise ValueError(f"{what} {text[:20]} is not in (0, 1e12]")
    return v


def decode(payload: str | bytes, now_ms: int | None = None) -> Shared:
    """Parse either form (module docstring); ValueError, saying which field, when any field
    is malformed or out of range, ``now_ms`` (the local clock) bounding the stamp when given."""
    if isinstance(payload, bytes):
        payload = payload.decode("ascii")  # UnicodeDecodeError is a ValueError
    parts = payload.split(" ")
    if len(parts) not in (3, 5) or not all(_INT.fullmatch(p) for p in parts[:2]):
        raise ValueError("not 'version ms price[ volume base]' with integer stamps")
    stamp = Stamp(int(parts[0]), int(parts[1]))
    if stamp.ms > MAX_MS:
        raise ValueError(f"ms {stamp.ms} is past year 9999")
    if now_ms is not None and max(stamp) > now_ms + MAX_AHEAD_MS:
        raise ValueError(f"stamp {stamp.version} {stamp.ms} is more than 15 min ahead of {now_ms}")
    if len(parts) == 3:  # the simulator's form: cents, as encode writes them
        return Shared(stamp, _decimal(parts[2], _CENTS, "price"))
    price = _decimal(parts[2], _DECIMAL, "price")
    volume: int | None = None
    if parts[3] != _UNKNOWN:
        if _VOLUME.fullmatch(parts[3]) is None or int(parts[3]) >= 2**63:
            raise ValueError(f"volume {parts[3][:20]!r} is not an integer below 2**63")
        volume = int(parts[3])
    base = None if parts[4] == _UNKNOWN else _decimal(parts[4], _DECIMAL, "base")
    return Shared(stamp, price, volume, base)


def publish_args(
    token: str, channel: str, fence: int, moves: Iterable[tuple[Entry, float]], at_ms: int
) -> tuple[list[object], list[tuple[Entry, Shared]]]:
    """PUBLISH's ARGV for a simulator tick, and the shared quotes it writes: each price
    rounded to cents, the entries whose quote it would not change left out, and so is a price
    that rounds outside [0.01, 1e12] (an exact published price below 0.005 being seeded: it
    is never written, nor served, as 0)."""
    args: list[object] = [token, channel]
    batch: list[tuple[Entry, Shared]] = []
    stamp = Stamp(fence, at_ms)
    for e, p in moves:
        price = round2(p)
        cur = e.latest
        if not 0 < price <= MAX_PRICE:
            continue
        if price == cur.current_price and at_ms == cur.last_updated_ms:
            continue
        args += (e.symbol, encode(fence, at_ms, price))
        batch.append((e, Shared(stamp, price)))
    return args, batch


class Refusals:
    """Logs each refused shared value once per (key, value), so a bad value read again by
    every repair or resync is not logged every 2 s; a bounded memory (cleared at ``limit``)."""

    log = Logger()

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._limit = limit
        self.count = 0

    def refused(self, key: str, value: object, why: str) -> None:
        self.count += 1
        text = value if isinstance(value, str) else repr(value)
        seen = (key, text[:200])
        if seen in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(seen)
        self.log.warn(
            "ignored the shared quote {key} = {value}: {why}",
            key=key,
            value=text[:200],
            why=why,
            log_id="quoted.redis.refused",
        )


def parse_shared(
    lookup: Callable[[str], Entry | None],
    symbols: Sequence[str],
    payloads: Sequence[str | None],
    now_ms: int | None = None,
    refusals: Refusals | None = None,
    where: str = "",
) -> Iterator[tuple[Entry, Shared]]:
    """The (entry, shared quote) of each symbol served here with a well-formed payload; each
    other payload given to ``refusals`` with its key (``where`` + symbol)."""
    for sym, payload in zip(symbols, payloads, strict=True):
        e = lookup(sym)
        if e is None or payload is None:
            continue
        try:
            yield e, decode(payload, now_ms)
        except ValueError as err:
            if refusals is not None:
                refusals.refused(where + sym, payload, str(err))
