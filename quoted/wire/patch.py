"""quoted.client's document: RFC 6902 operations applied in place to ``{"quotes": {...}}``.

The shapes quoted sends (``add /quotes``; add, replace or remove of ``/quotes/SYM``; a field of
a quote) take a fast path; anything else goes to the ``jsonpatch`` library. The tests check the
fast path against ``jsonpatch`` on random operation sequences.
"""

from __future__ import annotations

from typing import Any

import jsonpatch


class PatchError(Exception):
    """A patch operation does not apply to the document: its state is lost."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_operations(quotes: dict[str, Any], ops: list[dict[str, Any]]) -> set[str]:
    """Apply RFC 6902 ``ops`` to the document ``{"quotes": quotes}``, changing ``quotes`` in
    place (the same dict object stays the ``quotes`` member); returns the symbols touched.
    The shapes quoted sends take a fast path; anything else goes to ``jsonpatch``."""
    changed: set[str] = set()
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise PatchError("an operation without a path")
        if path == "/quotes" and kind in ("add", "replace") and isinstance(op.get("value"), dict):
            changed.update(quotes)
            quotes.clear()
            quotes.update(op["value"])
            changed.update(quotes)
            continue
        if path.startswith("/quotes/") and kind in ("add", "replace", "remove"):
            symbol, sep, field = path[8:].partition("/")
            symbol = _unescape(symbol)
            if not sep:
                if kind != "add" and symbol not in quotes:
                    raise PatchError(f"{kind} of an absent member {path}")
                if kind == "remove":
                    del quotes[symbol]
                else:
                    quotes[symbol] = op["value"]
                changed.add(symbol)
                continue
            quote = quotes.get(symbol)
            if field and "/" not in field and isinstance(quote, dict):
                field = _unescape(field)
                if kind != "add" and field not in quote:
                    raise PatchError(f"{kind} of an absent member {path}")
                if kind == "remove":
                    del quote[field]
                else:
                    quote[field] = op["value"]
                changed.add(symbol)
                continue
        changed |= _slow_op(quotes, op)
    return changed


def _slow_op(quotes: dict[str, Any], op: dict[str, Any]) -> set[str]:
    doc = {"quotes": quotes}
    before = set(quotes)
    try:
        jsonpatch.apply_patch(doc, [op], in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError) as e:
        raise PatchError(str(e)) from None
    if "quotes" not in doc or not isinstance(doc["quotes"], dict):
        raise PatchError("the quotes member is gone")
    if doc["quotes"] is not quotes:
        new = doc["quotes"]
        quotes.clear()
        quotes.update(new)
        return before | set(quotes)
    parts = str(op.get("path", "")).split("/")
    return {_unescape(parts[2])} if len(parts) > 2 else before | set(quotes)
