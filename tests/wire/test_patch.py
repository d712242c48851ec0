"""quoted.wire.patch: the one RFC 6902 fast path against the ``jsonpatch`` library, through
both of its faces: ``apply_ops`` (quoted-load: the whole document, the new and stale
``last_updated`` stamps) and ``apply_operations`` (quoted.client: its quotes dict kept in place,
the symbols that changed)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quoted.wire.patch import MISSING, PatchError, apply_operations, apply_ops
from quoted.wire.symbols import escape_pointer, unescape_pointer


def quote(sym: str, price: float, stamp: str) -> dict[str, Any]:
    return {"symbol": sym, "name": "N & co", "current_price": price, "last_updated": stamp}


SYMS = ["AAPL", "BTC/USD", "A~B", "BRK.B"]
FIELDS = ["current_price", "change", "last_updated", "name", "a~b", "x/y"]
STAMPS = [f"2026-11-28T17:06:1{i}.780Z" for i in range(10)]

ptr = st.sampled_from(SYMS).map(escape_pointer)
field_ptr = st.sampled_from(FIELDS).map(escape_pointer)
price = st.floats(1, 1e5, allow_nan=False)
scalar = st.one_of(price, st.sampled_from(STAMPS))
a_quote = st.builds(quote, st.sampled_from(SYMS), price, st.sampled_from(STAMPS))
whole = st.builds(
    lambda op, p, q: {"op": op, "path": "/quotes/" + p, "value": q},
    st.sampled_from(["add", "replace"]),
    ptr,
    st.one_of(a_quote, a_quote.map(lambda q: {**q, "extra": {"a": 1}})),
)
field = st.builds(
    lambda op, p, f, v: {"op": op, "path": f"/quotes/{p}/{f}", "value": v},
    st.sampled_from(["replace", "replace", "add"]),
    ptr,
    field_ptr,
    scalar,
)
remove = st.one_of(
    st.builds(lambda p: {"op": "remove", "path": "/quotes/" + p}, ptr),
    st.builds(lambda p, f: {"op": "remove", "path": f"/quotes/{p}/{f}"}, ptr, field_ptr),
)
document = st.one_of(  # whole documents: snapshots, and what the fast path must refuse
    st.builds(
        lambda op, s: {"op": op, "path": "/quotes", "value": {s: quote(s, 1.0, STAMPS[0])}},
        st.sampled_from(["add", "replace"]),
        st.sampled_from(SYMS),
    ),
    st.just({"op": "replace", "path": "", "value": {"quotes": {}}}),
    st.just({"op": "remove", "path": "/quotes"}),
    st.just({"op": "replace", "path": "/quotes", "value": 5}),
)
slow = st.one_of(  # shapes quoted never sends: jsonpatch's
    st.builds(lambda p, v: {"op": "add", "path": f"/quotes/{p}/extra/b", "value": v}, ptr, price),
    st.builds(
        lambda op, a, b: {"op": op, "from": "/quotes/" + a, "path": "/quotes/" + b},
        st.sampled_from(["move", "copy"]),
        ptr,
        ptr,
    ),
    st.builds(
        lambda p: {"op": "test", "path": f"/quotes/{p}/symbol", "value": "AAPL"},
        ptr,
    ),
)
ops_st = st.lists(st.one_of(whole, whole, field, field, field, remove, document, slow), max_size=16)


def expected_update(before: dict[str, Any], op: dict[str, Any]) -> tuple[Any, bool] | None:
    """The stamp a symbol update brings, and whether it is newer than the one it replaces."""
    if op["op"] != "replace" or not op["path"].startswith("/quotes/"):
        return None
    symbol, _, field = op["path"][8:].partition("/")
    old = before.get(unescape_pointer(symbol))
    if not field and isinstance(op["value"], dict) and "last_updated" in op["value"]:
        new = op["value"]["last_updated"]
    elif field == "last_updated":
        new = op["value"]
    else:
        return None
    old_stamp = old.get("last_updated") if isinstance(old, dict) else None
    return new, not isinstance(old_stamp, str) or not isinstance(new, str) or new > old_stamp


def expected_changed(
    before: dict[str, Any], after: dict[str, Any], op: dict[str, Any]
) -> set[str] | None:
    """What ``apply_operations`` reports for ``op``, where the shape says it exactly."""
    if op["path"] in ("", "/quotes"):
        return set(before) | set(after)
    symbols = {
        unescape_pointer(p.split("/")[2])
        for p in (op["path"], op.get("from"))
        if isinstance(p, str) and p.startswith("/quotes/")
    }
    return symbols or None


@settings(max_examples=400, deadline=None)
@given(ops=ops_st, start=st.sampled_from(SYMS[:2]))
def test_fast_path_agrees_with_jsonpatch(ops: list[dict[str, Any]], start: str) -> None:
    """Op by op from a snapshot, quoted-load's and the client's face of the fast path and
    jsonpatch agree on the document, or both refuse and leave it as it was; the stamps and
    the changed symbols each face reports are the ones the operation implies. Refused on
    purpose where jsonpatch takes it: an operation that leaves no quotes object."""
    snapshot = [
        {"op": "add", "path": "/quotes", "value": {}},
        {"op": "add", "path": "/quotes/" + escape_pointer(start), "value": quote(start, 1, "")},
    ]
    doc: dict[str, Any] = {}  # quoted-load's document
    assert apply_ops(doc, copy.deepcopy(snapshot), []) == 0
    quotes: dict[str, Any] = {}  # the client's
    assert apply_operations(quotes, copy.deepcopy(snapshot)) == {start}
    view = quotes
    for op in ops:  # one at a time: a failing op leaves both documents as before it
        try:
            expected = jsonpatch.apply_patch(doc, [copy.deepcopy(op)])
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            expected = None
        if expected is not None and not isinstance(expected.get("quotes"), dict):
            expected = None
        before = copy.deepcopy(doc)
        updates: list[str] = []
        try:
            stale = apply_ops(doc, [copy.deepcopy(op)], updates)
        except PatchError:
            assert expected is None, op
            assert doc == before
            with pytest.raises(PatchError):
                apply_operations(quotes, [copy.deepcopy(op)])
            assert {"quotes": quotes} == before and quotes is view
            continue
        assert doc == expected, op
        update = expected_update(before["quotes"], op)
        if update is None:
            assert (updates, stale) == ([], 0), op
        else:
            assert (updates, stale) == (([update[0]], 0) if update[1] else ([], 1)), op

        changed = apply_operations(quotes, [copy.deepcopy(op)])
        assert {"quotes": quotes} == expected, op
        assert quotes is view  # the same object all along: a MappingProxyType stays valid
        old, new = before["quotes"], expected["quotes"]
        differ = {s for s in set(old) | set(new) if old.get(s, MISSING) != new.get(s, MISSING)}
        assert differ <= changed, op
        exact = expected_changed(old, new, op)
        assert exact is None or changed == exact, op


def test_fast_patch_reports_new_and_stale_last_updated() -> None:
    doc: dict[str, Any] = {}
    updates: list[str] = []
    ops = [
        {"op": "add", "path": "/quotes", "value": {}},
        {"op": "add", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 1, STAMPS[1])},
    ]
    assert apply_ops(doc, ops, updates) == 0 and updates == []  # the snapshot is no update
    ops = [
        {"op": "replace", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 2, STAMPS[1])},
        {"op": "replace", "path": "/quotes/BTC~1USD/last_updated", "value": STAMPS[2]},
        {"op": "replace", "path": "/quotes/BTC~1USD", "value": quote("BTC/USD", 3, STAMPS[3])},
    ]
    assert apply_ops(doc, ops, updates) == 1  # the first repeats STAMPS[1]
    assert updates == [STAMPS[2], STAMPS[3]]
    assert doc == {"quotes": {"BTC/USD": quote("BTC/USD", 3, STAMPS[3])}}
    with pytest.raises(PatchError):
        apply_ops(doc, [{"op": "replace", "path": "/quotes/NOPE", "value": {}}], [])


def test_unusual_operations_go_to_jsonpatch() -> None:
    quotes: dict[str, Any] = {"AAPL": {"symbol": "AAPL", "extra": {"a": 1}}}
    changed = apply_operations(quotes, [{"op": "add", "path": "/quotes/AAPL/extra/b", "value": 2}])
    assert quotes["AAPL"]["extra"] == {"a": 1, "b": 2}
    assert changed == {"AAPL"}
    with pytest.raises(PatchError):
        apply_operations(quotes, [{"op": "test", "path": "/quotes/AAPL/symbol", "value": "X"}])


def test_changed_symbols_of_moves_and_whole_documents() -> None:
    quotes: dict[str, Any] = {"A": {"x": 1}, "B": {"x": 2}}
    view = quotes
    assert apply_operations(quotes, [{"op": "move", "from": "/quotes/A", "path": "/quotes/C"}]) == {
        "A",
        "C",
    }
    replace_root = {"op": "replace", "path": "", "value": {"quotes": {"D": {}}}}
    assert apply_operations(quotes, [replace_root]) == {"B", "C", "D"}
    assert quotes == {"D": {}} and quotes is view
    snapshot = {"op": "add", "path": "/quotes", "value": {"E": {}}}
    assert apply_operations(
        quotes, [snapshot, {"op": "add", "path": "/quotes/F", "value": {}}]
    ) == {
        "D",
        "E",
        "F",
    }
    assert quotes == {"E": {}, "F": {}} and quotes is view


@pytest.mark.parametrize(
    "op",
    [
        {"op": "remove", "path": "/quotes"},
        {"op": "replace", "path": "/quotes", "value": [1]},
        {"op": "move", "from": "/quotes", "path": "/other"},
        {"op": "replace", "path": "", "value": {"other": {}}},
        {"op": "replace", "path": "", "value": 3},
    ],
)
def test_the_document_keeps_a_quotes_object(op: dict[str, Any]) -> None:
    doc: dict[str, Any] = {"quotes": {"A": {"x": 1}}}
    with pytest.raises(PatchError):
        apply_ops(doc, [op], [])
    assert doc == {"quotes": {"A": {"x": 1}}}
    quotes: dict[str, Any] = {"A": {"x": 1}}
    with pytest.raises(PatchError):
        apply_operations(quotes, [op])
    assert quotes == {"A": {"x": 1}}


def test_before_the_snapshot_the_document_is_jsonpatchs() -> None:
    doc: dict[str, Any] = {}
    assert apply_ops(doc, [{"op": "add", "path": "/note", "value": 1}], []) == 0
    assert doc == {"note": 1}
    with pytest.raises(PatchError):
        apply_ops(doc, [{"op": "replace", "path": "/quotes", "value": {}}], [])


@pytest.mark.parametrize("path", [7, None, ["quotes"]])
def test_a_path_that_is_not_a_string(path: Any) -> None:
    with pytest.raises(PatchError):
        apply_ops({"quotes": {}}, [{"op": "add", "path": path, "value": {}}], [])
    with pytest.raises(PatchError):
        apply_operations({}, [{"op": "add", "path": path, "value": {}}])


def test_a_null_quote_can_be_removed() -> None:
    doc: dict[str, Any] = {"quotes": {"A": None}}
    apply_ops(doc, [{"op": "remove", "path": "/quotes/A"}], [])
    assert doc == {"quotes": {}}


@given(st.text())
def test_pointer_escape_round_trip(token: str) -> None:
    escaped = escape_pointer(token)
    assert "/" not in escaped
    assert unescape_pointer(escaped) == token
    assert jsonpatch.JsonPointer("/" + escaped).parts == [token]


def test_pointer_unescape_order() -> None:
    assert unescape_pointer("~01") == "~1"  # RFC 6901 section 4: ~1 first, then ~0
    assert unescape_pointer("BTC~1USD") == "BTC/USD"
    assert unescape_pointer("AAPL") == "AAPL"
