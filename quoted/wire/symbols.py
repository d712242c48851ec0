"""Symbols: their syntax, comma-separated lists, and JSON Pointer escaping (RFC 6901).

Symbols are upper-case tickers with the punctuation real tickers use (``BRK.B``, ``BTC/USD``,
``ES=F``, ``^GSPC``); anything else (paths, markup, control characters) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "MAX_SYMBOL_LEN",
    "SYMBOL_RULE",
    "escape_pointer",
    "normalize_symbols",
    "parse_symbol_list",
    "unescape_pointer",
    "upper",
    "valid_symbol",
]

MAX_SYMBOL_LEN = 32
"""The longest symbol served. Real tickers, even ``EUR/USD:FX``, are far shorter."""

SYMBOL_RULE = (
    "symbol must be 1-32 characters of A-Z 0-9 . / - _ = : ^ ~, start with a letter, digit or ^, "
    "end with a letter or digit, and have no two punctuation marks in a row"
)

# A leading "^" counts as punctuation, so it must be followed by a letter or digit; after that,
# runs of letters and digits separated by single punctuation marks.
_SYMBOL_RE = re.compile(r"\^?[A-Z0-9]+(?:[./\-_=:^~][A-Z0-9]+)*")


def valid_symbol(s: str) -> bool:
    """Whether ``s`` has the syntax of a symbol (see :data:`SYMBOL_RULE`)."""
    return len(s) <= MAX_SYMBOL_LEN and _SYMBOL_RE.fullmatch(s) is not None


def upper(s: str) -> str:
    # Like Go's strings.ToUpper: one character to one character, so "ß" stays "ß" rather than
    # becoming "SS" (which would turn a non-symbol into a valid one).
    if s.isascii():
        return s.upper()
    return "".join(u if len(u := c.upper()) == 1 else c for c in s)


def normalize_symbols(items: Iterable[str]) -> list[str]:
    """Trim and upper-case symbols, dropping empty ones and duplicates (first seen kept)."""
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        s = upper(item.strip())
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def parse_symbol_list(raw: str) -> list[str]:
    """Split a comma-separated symbol list (``?symbols=aapl, MSFT,,aapl``) and normalize it."""
    return normalize_symbols(raw.split(","))


def escape_pointer(token: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901): ``~`` is ``~0``, ``/`` is ``~1``."""
    if "~" not in token and "/" not in token:
        return token
    return token.replace("~", "~0").replace("/", "~1")


def unescape_pointer(token: str) -> str:
    """Unescape one JSON Pointer reference token (RFC 6901): ``~1`` is ``/``, then ``~0`` is
    ``~``, so ``~01`` stays ``~1``."""
    if "~" not in token:
        return token
    return token.replace("~1", "/").replace("~0", "~")
