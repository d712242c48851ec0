"""Instruments: what the server can serve.

An :class:`Instrument` is the static description of a tradable symbol. The list comes from the
20 built-in instruments or an ``INSTRUMENTS_FILE`` (CSV), plus generated ``SYN00001``... for load
tests. Symbols are upper-case tickers with the punctuation real tickers use (``BRK.B``,
``BTC/USD``, ``ES=F``, ``^GSPC``); anything else (paths, markup, control characters) is refused.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from quoted.wire.symbols import SYMBOL_RULE, upper, valid_symbol

__all__ = [
    "TYPE_ETF",
    "TYPE_STOCK",
    "Instrument",
    "InstrumentError",
    "builtin_instruments",
    "load_instruments",
    "read_instruments",
    "synthetic_instruments",
]

TYPE_STOCK = "STOCK"
TYPE_ETF = "ETF"

_MAX_BASE_PRICE = 1e12
_INT64_MAX = 2**63 - 1
_INT_RE = re.compile(r"[+-]?[0-9]+")
_CSV_HEADER = ("symbol", "name", "type", "base_price", "volume", "market_cap")


class InstrumentError(ValueError):
    """An instrument that cannot be served, or an instrument list that cannot be read.

    Errors from :func:`read_instruments` name the file and the line:
    ``bad.csv: line 3: symbol '../X': symbol must be ...``.
    """


@dataclass(frozen=True, slots=True)
class Instrument:
    """The static description of a tradable symbol."""

    symbol: str
    name: str
    type: str  # TYPE_STOCK or TYPE_ETF
    base_price: float
    volume: int
    market_cap: int = 0  # 0: left out of the quote's JSON

    def validate(self) -> None:
        """Raise :class:`InstrumentError` saying why this instrument cannot be served."""
        if not valid_symbol(self.symbol):
            raise InstrumentError(f"symbol {self.symbol!r}: {SYMBOL_RULE}")
        if not self.name:
            raise InstrumentError(f"symbol {self.symbol}: empty name")
        if self.type not in (TYPE_STOCK, TYPE_ETF):
            raise InstrumentError(
                f"symbol {self.symbol}: type {self.type!r} is not {TYPE_STOCK} or {TYPE_ETF}"
            )
        # "not >=" also refuses NaN.
        if not self.base_price >= 1 or self.base_price > _MAX_BASE_PRICE:
            raise InstrumentError(
                f"symbol {self.symbol}: base_price {self.base_price!r} must be between 1 and 1e12"
            )
        if self.volume < 0 or self.market_cap < 0:
            raise InstrumentError(
                f"symbol {self.symbol}: volume and market_cap must not be negative"
            )


def builtin_instruments() -> list[Instrument]:
    """The 20 instruments served without an ``INSTRUMENTS_FILE``.

    Volumes and market caps are illustrative; the ETFs have none.
    """
    s, e = TYPE_STOCK, TYPE_ETF
    return [
        Instrument("AAPL", "Apple Inc.", s, 175.50, 52_000_000, 2_750_000_000_000),
        Instrument("MSFT", "Microsoft Corporation", s, 420.25, 21_000_000, 3_120_000_000_000),
        Instrument("GOOGL", "Alphabet Inc.", s, 140.80, 25_000_000, 1_760_000_000_000),
        Instrument("AMZN", "Amazon.com Inc.", s, 155.30, 38_000_000, 1_610_000_000_000),
        Instrument("TSLA", "Tesla Inc.", s, 248.75, 98_000_000, 790_000_000_000),
        Instrument("NVDA", "NVIDIA Corporation", s, 875.20, 41_000_000, 2_160_000_000_000),
        Instrument("META", "Meta Platforms Inc.", s, 485.60, 15_000_000, 1_240_000_000_000),
        Instrument("NFLX", "Netflix Inc.", s, 485.90, 4_000_000, 210_000_000_000),
        Instrument("JPM", "JPMorgan Chase & Co.", s, 185.40, 9_000_000, 535_000_000_000),
        Instrument("V", "Visa Inc.", s, 275.80, 6_000_000, 565_000_000_000),
        Instrument("SPY", "SPDR S&P 500 ETF Trust", e, 485.20, 75_000_000, 0),
        Instrument("QQQ", "Invesco QQQ Trust", e, 395.75, 42_000_000, 0),
        Instrument("VTI", "Vanguard Total Stock Market ETF", e, 245.30, 3_500_000, 0),
        Instrument("IWM", "iShares Russell 2000 ETF", e, 195.85, 28_000_000, 0),
        Instrument("EFA", "iShares MSCI EAFE ETF", e, 78.90, 17_000_000, 0),
        Instrument("GLD", "SPDR Gold Shares", e, 185.45, 8_000_000, 0),
        Instrument("TLT", "iShares 20+ Year Treasury Bond ETF", e, 92.30, 36_000_000, 0),
        Instrument("VNQ", "Vanguard Real Estate ETF", e, 85.75, 4_500_000, 0),
        Instrument("XLF", "Financial Select Sector SPDR Fund", e, 38.20, 40_000_000, 0),
        Instrument("XLK", "Technology Select Sector SPDR Fund", e, 195.60, 7_000_000, 0),
    ]


def synthetic_instruments(n: int) -> list[Instrument]:
    """``n`` generated stocks SYN00001, SYN00002, ... with deterministic prices and volumes."""
    return [
        Instrument(
            f"SYN{k:05d}",
            f"Synthetic Instrument {k}",
            TYPE_STOCK,
            float(10 + (k * 7919) % 990),
            100_000 + (k * 104_729) % 9_900_000,
        )
        for k in range(1, n + 1)
    ]


def _parse_int(field: str, raw: str) -> int:
    s = raw.strip()
    if not s:
        return 0
    if _INT_RE.fullmatch(s) is None or abs(int(s)) > _INT64_MAX:
        raise InstrumentError(f"{field}: {s!r} is not an integer")
    return int(s)


def _parse_float(field: str, raw: str) -> float:
    s = raw.strip()
    try:
        if "_" in s:  # Python accepts 1_000, Go's ParseFloat does not
            raise ValueError(s)
        return float(s)
    except ValueError:
        raise InstrumentError(f"{field}: {s!r} is not a number") from None


def _parse_row(row: list[str]) -> Instrument:
    inst = Instrument(
        symbol=upper(row[0].strip()),
        name=row[1].strip(),
        type=upper(row[2].strip()),
        base_price=_parse_float("base_price", row[3]),
        volume=_parse_int("volume", row[4]),
        market_cap=_parse_int("market_cap", row[5]),
    )
    inst.validate()
    return inst


def read_instruments(path: str) -> list[Instrument]:
    """Read instruments from a CSV file with the header
    ``symbol,name,type,base_price,volume,market_cap``.

    Symbols and types are upper-cased, every row is validated, a symbol listed twice and a file
    without instruments are refused. Errors are :class:`InstrumentError` naming the file and line.
    """
    out: list[Instrument] = []
    seen: set[str] = set()
    header_seen = False
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, skipinitialspace=True, strict=True)
            while True:
                try:
                    row = next(reader, None)
                except csv.Error as e:
                    raise InstrumentError(f"line {reader.line_num}: {e}") from None
                if row is None:
                    break
                line = reader.line_num - sum(field.count("\n") for field in row)
                if not row:  # a blank line, skipped as Go's csv does
                    continue
                if not header_seen:
                    if tuple(h.strip().lower() for h in row) != _CSV_HEADER:
                        raise InstrumentError(
                            f"line {line}: header: got {','.join(row)!r}, "
                            f"want {','.join(_CSV_HEADER)!r}"
                        )
                    header_seen = True
                    continue
                if len(row) != len(_CSV_HEADER):
                    raise InstrumentError(
                        f"line {line}: {len(row)} fields, want {len(_CSV_HEADER)}"
                    )
                try:
                    inst = _parse_row(row)
                except InstrumentError as e:
                    raise InstrumentError(f"line {line}: {e}") from None
                if inst.symbol in seen:
                    raise InstrumentError(f"line {line}: symbol {inst.symbol} listed twice")
                seen.add(inst.symbol)
                out.append(inst)
    except InstrumentError as e:
        raise InstrumentError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise InstrumentError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise InstrumentError(f"{path}: {e.strerror or type(e).__name__}") from None
    if not header_seen:
        raise InstrumentError(f"{path}: empty file, want the header {','.join(_CSV_HEADER)}")
    if not out:
        raise InstrumentError(f"{path}: no instruments")
    return out


def load_instruments(instruments_file: str, synthetic: int) -> list[Instrument]:
    """The instruments to serve: those of ``instruments_file`` (the built-in 20 when empty), then
    ``synthetic`` generated ones. A symbol listed twice is refused."""
    out = read_instruments(instruments_file) if instruments_file else builtin_instruments()
    out.extend(synthetic_instruments(synthetic))
    seen: set[str] = set()
    for inst in out:
        if inst.symbol in seen:
            raise InstrumentError(f"symbol {inst.symbol} listed twice")
        seen.add(inst.symbol)
    return out
