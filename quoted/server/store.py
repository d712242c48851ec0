"""The current quote of every instrument: immutable, versioned values encoded once.

A :class:`Quote` is one version of an instrument's price. It never changes once built: a tick
makes a new one with ``version + 1``. Its JSON, its whole-quote ``replace`` operation and its
``patch`` (the operations that turn the previous version into this one, whichever encoding is
shorter, protocol.md section 4) are encoded when it is built, once, and shared by every reader:
snapshots, REST and the fan-out to every connection join these bytes and never encode again.

Every :class:`Entry` holds the JSON pieces of its instrument that never change (symbol, name,
type, base price, volume, market cap, the RFC 6901 paths as JSON strings), so building a quote
is a few number formats and a bytes join.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import cast

from quoted.server.instruments import Instrument, InstrumentError
from quoted.wire.symbols import escape_pointer

__all__ = [
    "MAX_MS",
    "MAX_PRICE",
    "Entry",
    "PriceAt",
    "Quote",
    "QuoteStore",
    "apply_prices",
    "format_number",
    "format_time_ms",
    "round2",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last millisecond RFC 3339 (and ``datetime``) can write."""
MAX_PRICE = 1e12
"""A price's bound, as an instrument's base price's (quoted.server.instruments)."""

# The fields a tick can change, in the order of a patch's operations.
DYNAMIC_FIELDS = ("current_price", "change", "change_percent", "last_updated")


def round2(v: float) -> float:
    """Round to two decimals, halves away from zero, as Go's ``math.Round(v*100)/100``.

    Python's ``round`` rounds halves to even (``round(0.125, 2) == 0.12``); this gives 0.13.
    A negative zero comes out as ``0.0``, so ``change`` is never written ``-0``.
    """
    frac, whole = math.modf(v * 100)  # both exact
    if abs(frac) >= 0.5:
        whole += math.copysign(1.0, frac)
    return whole / 100 + 0.0


def format_number(v: float) -> str:
    """The shortest decimal that reads back as ``v``, without exponent or trailing ``.0``.

    Like Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: ``175.5``, ``65000``, ``-3.36``.
    """
    r = repr(v)
    if r.endswith(".0"):
        return r[:-2]
    if "e" in r:  # 1e+16, 1e-05: the same digits, written out
        return format(Decimal(r), "f")
    if not math.isfinite(v):
        raise ValueError(f"{r} is not a JSON number")
    return r


@lru_cache(maxsize=8)
def format_time_ms(ms: int) -> str:
    """Unix milliseconds as RFC 3339 in UTC with three decimals: ``2026-11-28T17:06:11.780Z``.

    Cached: every quote of one tick shares the millisecond.
    """
    t = _EPOCH + timedelta(milliseconds=ms)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond // 1000:03d}Z"
    )


@lru_cache(maxsize=8)
def _time_json(ms: int) -> bytes:
    return b'"' + format_time_ms(ms).encode() + b'"'


def _json_string(s: str) -> bytes:
    """``s`` as a JSON string, escaped as Go's encoding/json does (``&`` is ``\\u0026``)."""
    out = json.dumps(s, ensure_ascii=False)
    for c, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        out = out.replace(c, esc)
    out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        return out.encode()
    except UnicodeEncodeError:  # a lone surrogate: keep the text valid UTF-8
        return json.dumps(s).encode()


class Quote:
    """One version of an instrument's price. Immutable by convention: built only by Entry.

    ``json`` is the whole quote object, ``replace`` the operation replacing the whole quote,
    ``patch`` the comma-joined operations (no brackets) turning version ``version - 1`` into
    this one: one ``replace`` per changed field, or ``replace`` unless the fields are strictly
    shorter. For version 1, ``patch`` is ``replace``.
    """

    __slots__ = (
        "_add_op",
        "change",
        "change_percent",
        "current_price",
        "entry",
        "json",
        "last_updated_ms",
        "patch",
        "replace",
        "version",
    )

    entry: Entry
    current_price: float
    change: float
    change_percent: float
    last_updated_ms: int
    version: int
    json: bytes
    replace: bytes
    patch: bytes
    _add_op: bytes | None

    def __init__(
        self,
        entry: Entry,
        *,
        current_price: float,
        change: float,
        change_percent: float,
        last_updated_ms: int,
        version: int,
        json: bytes,
        replace: bytes,
        patch: bytes,
    ) -> None:
        self.entry = entry
        self.current_price = current_price
        self.change = change
        self.change_percent = change_percent
        self.last_updated_ms = last_updated_ms
        self.version = version
        self.json = json
        self.replace = replace
        self.patch = patch
        self._add_op = None

    @property
    def add_op(self) -> bytes:
        """``{"op":"add","path":"/quotes/SYM","value":<json>}``, built on first use."""
        op = self._add_op
        if op is None:
            op = self._add_op = self.entry._add_prefix + self.json + b"}"
        return op

    @property
    def last_updated(self) -> str:
        """``last_updated`` as written in the JSON."""
        return format_time_ms(self.last_updated_ms)

    def as_dict(self) -> dict[str, object]:
        """The quote as a dict (for REST and tests)."""
        d: dict[str, object] = json.loads(self.json)
        return d

    def __repr__(self) -> str:
        return f"<Quote {self.entry.symbol} v{self.version} {format_number(self.current_price)}>"


_REPLACE_OP = b'{"op":"replace","path":'
_VALUE = b',"value":'
_CHANGE_PERCENT = b',"change_percent":'
_LAST_UPDATED = b',"last_updated":'


class Entry:
    """One instrument in the store with its current quote; lives as long as the store.

    ``latest`` is the current quote: read it freely; :meth:`set` replaces it, never mutates it.
    """

    __slots__ = (
        "_add_prefix",
        "_base",
        "_field_ops",
        "_head",
        "_replace_prefix",
        "_tail",
        "base_price",
        "index",
        "instrument",
        "key_json",
        "latest",
        "remove_op",
        "symbol",
        "volume",
    )

    instrument: Instrument
    base_price: float
    volume: int
    symbol: str
    index: int
    key_json: bytes
    remove_op: bytes
    latest: Quote

    def __init__(self, instrument: Instrument, index: int, start_ms: int) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.index = index
        self.key_json = _json_string(instrument.symbol)
        path = "/quotes/" + escape_pointer(instrument.symbol)
        path_json = _json_string(path)
        self._replace_prefix = _REPLACE_OP + path_json + _VALUE
        self._add_prefix = b'{"op":"add","path":' + path_json + _VALUE
        self.remove_op = b'{"op":"remove","path":' + path_json + b"}"
        self._field_ops = tuple(
            _REPLACE_OP + _json_string(f"{path}/{field}") + _VALUE for field in DYNAMIC_FIELDS
        )
        self._head = b"".join(
            (
                b'{"symbol":',
                self.key_json,
                b',"name":',
                _json_string(instrument.name),
                b',"type":',
                _json_string(instrument.type),
                b',"current_price":',
            )
        )
        self._set_base(instrument.base_price)
        self._set_volume(int(instrument.volume))
        self.latest = self._build(None, round2(instrument.base_price), start_ms)

    def _set_base(self, base_price: float) -> None:
        self.base_price = base_price
        self._base = self._base_json(base_price)

    @staticmethod
    def _base_json(base_price: float | None) -> bytes:
        if base_price is None or not (math.isfinite(base_price) and 0 < base_price <= MAX_PRICE):
            raise ValueError(f"base price {base_price!r} is not in (0, 1e12]")
        return b',"base_price":' + format_number(base_price).encode() + b',"change":'

    def _set_volume(self, volume: int) -> None:
        self.volume = volume
        self._tail = self._tail_json(volume)

    def _tail_json(self, volume: int | None) -> bytes:
        if volume is None or not 0 <= volume < 2**63:
            raise ValueError(f"volume {volume!r} is not in [0, 2**63)")
        tail = b',"volume":' + str(volume).encode()
        if self.instrument.market_cap:
            tail += b',"market_cap":' + str(int(self.instrument.market_cap)).encode()
        return tail + b"}"

    @property
    def add_op(self) -> bytes:
        """``{"op":"add","path":"/quotes/SYM","value":<latest.json>}``."""
        return self.latest.add_op

    def set(self, price: float, at_ms: int) -> Quote | None:
        """Make the quote at ``round2(price)``, computed at ``at_ms``, current and return it.

        Return None, and change nothing, when neither the rounded price nor the millisecond
        differs from the current quote; ValueError, and nothing changed, when the rounded
        price is not in (0, 1e12] (a price below 0.005 is never served as 0) or the time is
        past :data:`MAX_MS`.
        """
        price = round2(price)
        prev = self.latest
        if price == prev.current_price and at_ms == prev.last_updated_ms:
            return None
        q = self._build(prev, price, at_ms)
        self.latest = q
        return q

    def put(
        self,
        price: float,
        at_ms: int,
        volume: int | None = None,
        base_price: float | None = None,
    ) -> Quote | None:
        """Make the quote at exactly ``price`` (a published price is not rounded), at
        ``at_ms``, current and return it; ``volume`` and ``base_price``, when given, replace
        the instrument's (a published volume, a reference price such as the previous close).

        ``change`` and ``change_percent`` are rounded as for :meth:`set`. A quote whose base
        price or volume changed is patched with a whole-quote ``replace`` (protocol.md
        section 4: field replaces cover only the four fields a tick moves). Return None, and
        change nothing, when nothing differs from the current quote; ValueError, and nothing
        changed, when a value is out of range (:meth:`_build`).
        """
        prev = self.latest
        base = self._base_json(base_price) if base_price not in (None, self.base_price) else None
        tail = self._tail_json(volume) if volume not in (None, self.volume) else None
        whole = base is not None or tail is not None
        if not whole and price == prev.current_price and at_ms == prev.last_updated_ms:
            return None
        # built before anything changes: a quote that cannot be built (ValueError) changes nothing
        q = self._build(
            prev, price, at_ms, whole, base_price if base is not None else None, base, tail
        )
        if base is not None:
            self.base_price, self._base = cast(float, base_price), base
        if tail is not None:
            self.volume, self._tail = cast(int, volume), tail
        self.latest = q
        return q

    def _build(
        self,
        prev: Quote | None,
        price: float,
        at_ms: int,
        whole: bool = False,
        base_price: float | None = None,
        base_json: bytes | None = None,
        tail_json: bytes | None = None,
    ) -> Quote:
        """The quote at ``price`` and ``at_ms`` after ``prev`` (the entry's base and tail, or
        the ones given); ValueError, and nothing built, for a price outside (0, 1e12] (never
        served as 0) or a time outside [0, MAX_MS]."""
        if not (math.isfinite(price) and 0 < price <= MAX_PRICE):
            raise ValueError(f"price {price!r} is not in (0, 1e12]")
        if not 0 <= at_ms <= MAX_MS:
            raise ValueError(f"time {at_ms!r} ms is not in [0, 9999-12-31]")
        base = self.base_price if base_price is None else base_price
        change = round2(price - base)
        change_percent = round2(change / base * 100)
        p = format_number(price).encode()
        c = format_number(change).encode()
        cp = format_number(change_percent).encode()
        t = _time_json(at_ms)
        body = b"".join(
            (
                self._head,
                p,
                self._base if base_json is None else base_json,
                c,
                _CHANGE_PERCENT,
                cp,
                _LAST_UPDATED,
                t,
                self._tail if tail_json is None else tail_json,
            )
        )
        replace = self._replace_prefix + body + b"}"
        patch = replace
        version = 1
        if prev is not None:
            version = prev.version + 1
            ops = self._field_ops
            diff: list[bytes] = []
            if price != prev.current_price:
                diff.append(ops[0] + p + b"}")
            if change != prev.change:
                diff.append(ops[1] + c + b"}")
            if change_percent != prev.change_percent:
                diff.append(ops[2] + cp + b"}")
            if at_ms != prev.last_updated_ms:
                diff.append(ops[3] + t + b"}")
            fields = b",".join(diff)
            if diff and not whole and len(fields) < len(replace):
                patch = fields
        return Quote(
            self,
            current_price=price,
            change=change,
            change_percent=change_percent,
            last_updated_ms=at_ms,
            version=version,
            json=body,
            replace=replace,
            patch=patch,
        )

    def __repr__(self) -> str:
        return f"<Entry {self.symbol} #{self.index} v{self.latest.version}>"


PriceAt = tuple[Entry, float, int]
"""A new price for an entry and the millisecond it was computed at."""


def apply_prices(prices: Iterable[PriceAt], publish: Callable[[list[Quote]], None]) -> list[Quote]:
    """Set each entry's price (:meth:`Entry.set`), then hand the quotes that moved to
    ``publish`` as one batch (not called when none moved); returns them.

    The one way a batch of prices goes into the store, whoever decided them (the simulator, a
    peer through Redis, this process through Redis), so a tick is published once.
    """
    quotes: list[Quote] = []
    for e, price, at_ms in prices:
        q = e.set(price, at_ms)
        if q is not None:
            quotes.append(q)
    if quotes:
        publish(quotes)
    return quotes


class QuoteStore:
    """Every instrument and its current quote. A reload may :meth:`add` instruments or
    :meth:`retire` them (no longer looked up; an entry object itself is never reused)."""

    __slots__ = ("_by_symbol", "entries")

    entries: tuple[Entry, ...]

    def __init__(self, instruments: Sequence[Instrument], start_ms: int) -> None:
        """Every quote starts at its base price, version 1, last updated at ``start_ms``.

        Raises InstrumentError for an instrument that cannot be served or a symbol listed twice.
        """
        by_symbol: dict[str, Entry] = {}
        for inst in instruments:
            inst.validate()
            if inst.symbol in by_symbol:
                raise InstrumentError(f"symbol {inst.symbol} listed twice")
            by_symbol[inst.symbol] = Entry(inst, len(by_symbol), start_ms)
        self._by_symbol = by_symbol
        self.entries = tuple(by_symbol.values())

    def add(self, instrument: Instrument, start_ms: int) -> Entry:
        """Serve one more instrument (a reload), from its base price, version 1."""
        instrument.validate()
        if instrument.symbol in self._by_symbol:
            raise InstrumentError(f"symbol {instrument.symbol} listed twice")
        # indexes stay unique: a retired entry's is never given again
        index = max((e.index for e in self.entries), default=-1) + 1
        entry = self._by_symbol[instrument.symbol] = Entry(instrument, index, start_ms)
        self.entries = (*self.entries, entry)
        return entry

    def retire(self, symbol: str) -> Entry | None:
        """Stop serving ``symbol`` (a reload): lookups and REST no longer see it; the entry
        removed, for the hub to take from its subscribers. None when it was not served."""
        entry = self._by_symbol.pop(symbol, None)
        if entry is not None:
            self.entries = tuple(e for e in self.entries if e is not entry)
        return entry

    def lookup(self, symbol: str) -> Entry | None:
        """The entry of an (already upper-case) symbol, or None."""
        return self._by_symbol.get(symbol)

    def resolve(self, symbols: Iterable[str]) -> tuple[list[Entry], list[str]]:
        """Split symbols into the served entries and the unknown symbols, each in input order.

        A symbol given twice appears once.
        """
        found: list[Entry] = []
        unknown: list[str] = []
        seen: set[str] = set()
        get = self._by_symbol.get
        for s in symbols:
            if s in seen:
                continue
            seen.add(s)
            e = get(s)
            if e is None:
                unknown.append(s)
            else:
                found.append(e)
        return found, unknown

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)
