"""The duration grammar: how quoted's settings and quoted-load's options write a length of time.

Go-style: one or more parts, each a decimal number followed by its unit (``ms``, ``s``, ``m``
or ``h``), written together, such as ``500ms``, ``4s``, ``1.5m`` or ``1h30m``; or ``0`` alone.
Surrounding whitespace is ignored; inside, none is allowed. A bare number is refused
("missing unit"), so ``30`` is never read as seconds by one reader and milliseconds by another.
Digits are ASCII only. Parts are summed exactly (decimal), then given as float seconds.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)", re.ASCII)
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)
_UNIT_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration: ``500ms``, ``4s``, ``1.5m``, ``1h30m``; ``0`` alone.

    Raises ValueError with the reason: empty, negative, missing unit (ms, s, m or h), or not
    a duration.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty")
    if s.startswith("-"):
        raise ValueError("negative")
    if s == "0":
        return 0.0
    total, pos = Decimal(0), 0
    while pos < len(s):
        part = _PART.match(s, pos)
        if part is None:
            if _NUMBER.fullmatch(s, pos):
                raise ValueError("missing unit (ms, s, m or h)")
            raise ValueError("not a duration")
        total += Decimal(part[1]) * _UNIT_MS[part[2]]
        pos = part.end()
    return float(total / 1000)
