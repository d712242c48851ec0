"""Published items: what a feed hands quoted, checked before anything is recorded.

One item is ``{"symbol": "AAPL", "price": 151.25, "time": "2026-12-02T14:30:00.125Z",
"volume": 1200, "reference_price": 149.10}`` (docs/protocol.md, "Publishing"); ``symbol`` and
``price`` are required. :func:`parse_item` turns one into a :class:`Tick` or raises
:class:`ItemError` with the code the publish API answers for it. Every source (the publish
API, a replay file, a Redis Stream, a plugin) goes through it, so each refuses the same input
with the same code. :func:`from_text` reads the all-strings form (a CSV row, a Redis Stream
entry) into an item first.

No Twisted here: the checks are pure functions of the item, the receipt time and the store's
answer to "is this a symbol of ours".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, NamedTuple

from quoted.wire.symbols import upper

__all__ = [
    "BAD_ITEM",
    "BAD_PRICE",
    "BAD_TIME",
    "CODES",
    "FIELDS",
    "FORBIDDEN_SYMBOL",
    "MAX_PRICE",
    "STALE",
    "UNKNOWN_SYMBOL",
    "ItemError",
    "Tick",
    "from_text",
    "parse_item",
    "parse_time",
]

UNKNOWN_SYMBOL: Final = "unknown_symbol"
BAD_PRICE: Final = "bad_price"
BAD_TIME: Final = "bad_time"
STALE: Final = "stale"
FORBIDDEN_SYMBOL: Final = "forbidden_symbol"
BAD_ITEM: Final = "bad_item"
CODES: Final = (UNKNOWN_SYMBOL, BAD_PRICE, BAD_TIME, STALE, FORBIDDEN_SYMBOL, BAD_ITEM)

FIELDS: Final = ("symbol", "price", "time", "volume", "reference_price")
MAX_PRICE: Final = 1e12  # as an instrument's base price (quoted.server.instruments)
_MAX_VOLUME: Final = 2**63 - 1
_MAX_SYMBOL_CHARS: Final = 64
_MAX_TIME_CHARS: Final = 64


class ItemError(ValueError):
    """An item refused with one of :data:`CODES` and a message saying why (never echoing
    more than a short, repr-quoted part of what was sent)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Tick(NamedTuple):
    """A checked item: an upper-case symbol of the store, a finite price in (0, 1e12], the
    time in unix milliseconds, and the optional volume and reference price."""

    symbol: str
    price: float
    at_ms: int
    volume: int | None = None
    reference_price: float | None = None


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """An RFC 3339 date-time (section 5.6) as unix milliseconds; ValueError if it is not one.

    ``2026-12-02T14:30:00.125Z``, ``2026-12-02T15:30:00+01:00``; fractions beyond the
    millisecond are cut; a leap second (``:60``) is the next second's start. Years before
    1970 are refused (unix milliseconds are not negative here).
    """
    m = _RFC3339.fullmatch(text) if len(text) <= _MAX_TIME_CHARS else None
    if m is None:
        raise ValueError("not an RFC 3339 date-time such as 2026-12-02T14:30:00.125Z")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    leap = second == 60
    try:
        t = datetime(year, month, day, hour, minute, 59 if leap else second, tzinfo=UTC)
    except ValueError as e:
        raise ValueError(f"not a valid date-time: {e}") from None
    offset_min = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise ValueError("not a valid UTC offset")
        offset_min = (oh * 60 + om) * (1 if m.group(9) == "+" else -1)
    frac = m.group(7)
    ms = int((frac[1:] + "00")[:3]) if frac else 0
    seconds = (t - _EPOCH).days * 86400 + (t - _EPOCH).seconds + (1 if leap else 0)
    total = (seconds - offset_min * 60) * 1000 + ms
    if total < 0:
        raise ValueError("before 1970")
    return total


def _number(value: object) -> float | None:
    """A JSON number (never a bool) as a float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond a float
        return None


def _price(value: object, name: str, code: str) -> float:
    p = _number(value)
    if p is None or not math.isfinite(p) or not 0 < p <= MAX_PRICE:
        raise ItemError(code, f"{name} must be a finite number above 0 and at most 1e12")
    return p


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_item(
    item: object,
    *,
    receipt_ms: int,
    future_ms: int,
    known: Callable[[str], bool],
    entitled: Callable[[str], bool],
) -> Tick:
    """Check one item; the :class:`Tick` it says, or :class:`ItemError`.

    In this order: the shape (an object with a string ``symbol``, no unknown field:
    ``bad_item``), the symbol (``unknown_symbol`` unless ``known``, ``forbidden_symbol``
    unless ``entitled``), the price (``bad_price``), the time (``bad_time``: not RFC 3339, or
    more than ``future_ms`` after ``receipt_ms``; absent means ``receipt_ms``), then the
    volume and reference price. Whether it is ``stale`` is the sink's to say: it depends on
    what was applied before.
    """
    if not isinstance(item, Mapping):
        raise ItemError(BAD_ITEM, "an item must be a JSON object")
    symbol = item.get("symbol")
    if not isinstance(symbol, str):
        raise ItemError(BAD_ITEM, "symbol is required and must be a string")
    for key in item:
        if key not in FIELDS:
            raise ItemError(BAD_ITEM, f"unknown field {_short(key)}; accepted: {', '.join(FIELDS)}")
    symbol = upper(symbol.strip()) if len(symbol) <= _MAX_SYMBOL_CHARS else symbol
    if len(symbol) > _MAX_SYMBOL_CHARS or not known(symbol):
        raise ItemError(UNKNOWN_SYMBOL, f"{_short(symbol)} is not an instrument of this server")
    if not entitled(symbol):
        raise ItemError(FORBIDDEN_SYMBOL, f"the token may not publish {symbol}")
    if "price" not in item:
        raise ItemError(BAD_PRICE, "price is required")
    price = _price(item["price"], "price", BAD_PRICE)
    at_ms = receipt_ms
    when = item.get("time")
    if when is not None:
        if not isinstance(when, str):
            raise ItemError(BAD_TIME, "time must be an RFC 3339 string")
        try:
            at_ms = parse_time(when)
        except ValueError as e:
            raise ItemError(BAD_TIME, f"time {_short(when)}: {e}") from None
        if at_ms > receipt_ms + future_ms:
            raise ItemError(
                BAD_TIME, f"time {when} is more than {future_ms} ms ahead of this server's clock"
            )
    volume: int | None = None
    if item.get("volume") is not None:
        v = item["volume"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_VOLUME:
            raise ItemError(BAD_ITEM, "volume must be an integer >= 0")
        volume = v
    reference: float | None = None
    if item.get("reference_price") is not None:
        reference = _price(item["reference_price"], "reference_price", BAD_PRICE)
    return Tick(symbol, price, at_ms, volume, reference)


_INTEGER = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def from_text(fields: Mapping[str, str]) -> dict[str, object]:
    """An item whose values are all strings (a CSV row, a Redis Stream entry) as a publish
    item: ``price`` and ``reference_price`` as numbers, ``volume`` as an integer, where they
    read as such; an empty value is an absent field. Anything that does not read stays the
    string it was, so :func:`parse_item` refuses it with its code."""
    item: dict[str, object] = {}
    for key, text in fields.items():
        if text == "":
            continue
        value: object = text
        if key in ("price", "reference_price") and _DECIMAL.fullmatch(text):
            value = float(text)
        elif key == "volume" and _INTEGER.fullmatch(text):
            value = int(text)
        item[key] = value
    return item
