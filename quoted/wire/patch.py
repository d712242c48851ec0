"""The one RFC 6902 fast path: quotes_patch operations applied in place to ``{"quotes": {...}}``.

The shapes quoted sends (``add /quotes``; add, replace or remove of ``/quotes/SYM``; add,
replace or remove of one field of a quote) take a fast path; anything else goes to the
``jsonpatch`` library. The tests check the fast path against ``jsonpatch`` on random operation
sequences.

:func:`apply_ops` is the fast path itself, on the whole document. It reports, per applied
operation, what its caller asks for: the ``last_updated`` of each symbol update that is newer
than the one it replaces (quoted-load measures latency from them, so the path stays free of
per-operation allocations when ``changed`` is not asked for), and optionally the symbols it
touched. :func:`apply_operations` is quoted.client's face over it: the quotes dict itself,
kept the same object, and the symbols that changed.
"""

from __future__ import annotations

from typing import Any, Final

import jsonpatch

from quoted.wire.symbols import unescape_pointer

__all__ = ["MISSING", "PatchError", "apply_operations", "apply_ops"]


class PatchError(Exception):
    """An operation the document cannot take (absent member, bad path): its state is lost."""


MISSING: Final = object()
"""A sentinel no document value is (``dict.pop``'s default, "jsonpatch refused" for callers)."""

_FAST_OPS: Final = frozenset(("add", "replace", "remove"))


def apply_ops(
    doc: dict[str, Any],
    ops: list[dict[str, Any]],
    updates: list[str],
    changed: set[str] | None = None,
) -> int:
    """Apply RFC 6902 ``ops`` to ``doc`` (``{}`` or ``{"quotes": {...}}``) in place.

    Appends to ``updates`` the last_updated of each symbol update (a whole-quote replace or a
    replace of last_updated) that is newer than the one it replaces; returns how many such
    operations repeated or went back in time (stale). With ``changed``, adds to it every
    symbol an operation touched (all of the old and the new ones for a whole ``/quotes``).
    ``add /quotes`` rebinds ``doc["quotes"]`` to the operation's value (no copy).
    Raises :class:`PatchError` at the first operation that does not apply; the ones before
    it stay applied."""
    stale = 0
    try:
        for op in ops:
            kind, path = op["op"], op["path"]
            if path == "/quotes" and kind in ("add", "replace") and isinstance(op["value"], dict):
                if kind == "replace" and "quotes" not in doc:
                    raise PatchError("replace of absent /quotes")
                if changed is not None:
                    changed.update(doc.get("quotes", ()))
                    changed.update(op["value"])
                doc["quotes"] = op["value"]
                continue
            quotes = doc.get("quotes")
            if not path.startswith("/quotes/") or quotes is None or kind not in _FAST_OPS:
                _slow_op(doc, op, changed)
                continue
            rest = path[8:]
            slash = rest.find("/")
            if slash < 0:
                # "~" tested here, not only in the call: a call per token costs more
                symbol = unescape_pointer(rest) if "~" in rest else rest
                if kind == "remove":
                    if quotes.pop(symbol, MISSING) is MISSING:
                        raise PatchError(f"remove of absent {path}")
                else:
                    value = op["value"]
                    if kind == "replace":
                        if symbol not in quotes:
                            raise PatchError(f"replace of absent {path}")
                        if isinstance(value, dict) and "last_updated" in value:
                            if _newer(value["last_updated"], quotes[symbol]):
                                updates.append(value["last_updated"])
                            else:
                                stale += 1
                    quotes[symbol] = value
                if changed is not None:
                    changed.add(symbol)
                continue
            field = rest[slash + 1 :]
            symbol = rest[:slash]
            if "~" in symbol:
                symbol = unescape_pointer(symbol)
            quote = quotes.get(symbol)
            if "/" in field or not isinstance(quote, dict):
                _slow_op(doc, op, changed)
                continue
            if "~" in field:
                field = unescape_pointer(field)
            if kind == "remove":
                if quote.pop(field, MISSING) is MISSING:
                    raise PatchError(f"remove of absent {path}")
            else:
                if kind == "replace":
                    if field not in quote:
                        raise PatchError(f"replace of absent {path}")
                    if field == "last_updated":
                        if _newer(op["value"], quote):
                            updates.append(op["value"])
                        else:
                            stale += 1
                quote[field] = op["value"]
            if changed is not None:
                changed.add(symbol)
    except AttributeError:  # a path that is not a string (a try costs nothing until it raises)
        raise PatchError("a malformed operation: its path is not a string") from None
    return stale


def _newer(last_updated: Any, quote: Any) -> bool:
    """RFC 3339 UTC stamps with fixed millisecond digits compare as text."""
    old = quote.get("last_updated") if isinstance(quote, dict) else None
    return not isinstance(old, str) or not isinstance(last_updated, str) or last_updated > old


def _slow_op(doc: dict[str, Any], op: dict[str, Any], changed: set[str] | None) -> None:
    """One operation through ``jsonpatch``. The document keeps a ``quotes`` object once it has
    one: an operation that removes it or makes it something else is refused, the document as
    before it (one operation changes one place, so its top level is all there is to restore)."""
    old = doc.get("quotes", MISSING)
    top = dict(doc)
    before = set(old) if changed is not None and isinstance(old, dict) else set()
    try:
        result = jsonpatch.apply_patch(doc, [op], in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError) as e:
        raise PatchError(f"{op.get('op')} {op.get('path')}: {e}") from None
    if not isinstance(result, dict) or (
        old is not MISSING and not isinstance(result.get("quotes"), dict)
    ):
        doc.clear()
        doc.update(top)
        raise PatchError(f"{op.get('op')} {op.get('path')} leaves no quotes object")
    if result is not doc:  # the root replaced: jsonpatch returns the new document
        doc.clear()
        doc.update(result)
    if changed is not None:
        for path in (op["path"], op.get("from")):  # a move changes its source too
            if not isinstance(path, str):
                continue
            parts = path.split("/", 3)
            if len(parts) > 2 and parts[1] == "quotes":
                changed.add(unescape_pointer(parts[2]))
            elif len(parts) == 1 or parts[1] == "quotes":  # the root or /quotes itself
                changed |= before
                changed.update(doc.get("quotes", ()))


def apply_operations(quotes: dict[str, Any], ops: list[dict[str, Any]]) -> set[str]:
    """Apply RFC 6902 ``ops`` to the document ``{"quotes": quotes}``, changing ``quotes`` in
    place (the same dict object stays the ``quotes`` member, so a MappingProxyType of it stays
    valid); returns the symbols touched. Raises :class:`PatchError` at the first operation
    that does not apply, the ones before it applied."""
    doc = {"quotes": quotes}
    changed: set[str] = set()
    try:
        apply_ops(doc, ops, [], changed)
    finally:
        new = doc["quotes"]
        if new is not quotes:  # a whole /quotes was added or replaced
            quotes.clear()
            quotes.update(new)
    return changed
