"""Tests of quoted.server.store: number and time formats, quote JSON, patches, the store."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import jsonpatch
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from quoted.server.instruments import Instrument, InstrumentError, builtin_instruments
from quoted.server.store import (
    Entry,
    Quote,
    QuoteStore,
    apply_prices,
    format_number,
    format_time_ms,
    round2,
)

# 2026-11-28T15:04:05.6789Z, truncated to the millisecond
T0 = int(datetime(2026, 11, 28, 15, 4, 5, 678_900, tzinfo=UTC).timestamp() * 1000)

FIELDS = [
    "symbol",
    "name",
    "type",
    "current_price",
    "base_price",
    "change",
    "change_percent",
    "last_updated",
    "volume",
    "market_cap",
]


def entry(inst: Instrument, start_ms: int = T0) -> Entry:
    return QuoteStore([inst], start_ms).entries[0]


def ops(raw: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(b"[" + raw + b"]")
    return out


# -- numbers and times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "want"),
    [
        (0.125, 0.13),  # round(0.125, 2) == 0.12: halves to even
        (-0.125, -0.13),
        (1.125, 1.13),
        (2.675, 2.68),  # 2.675 * 100 == 267.5 exactly in binary
        (0.615, 0.62),
        (-0.025, -0.03),  # -2.5 cents: away from zero
        (0.005, 0.01),
        (-0.005, -0.01),
        (1.005, 1.0),  # 1.005 * 100 == 100.49999999999999
        (1.015, 1.01),
        (0.285, 0.28),
        (101.23456, 101.23),
        (-3.355, -3.36),
        (0.0, 0.0),
        (1e15, 1e15),
    ],
)
def test_round2(v: float, want: float) -> None:
    assert round2(v) == want


def test_round2_has_no_negative_zero() -> None:
    for v in (-0.0, -0.001, -0.004999):
        r = round2(v)
        assert r == 0
        assert math.copysign(1, r) == 1, v


def test_round2_not_finite() -> None:
    assert math.isnan(round2(math.nan))
    assert round2(math.inf) == math.inf


@given(st.floats(min_value=-1e13, max_value=1e13, allow_nan=False))
@example(0.125)
@example(-2.675)
def test_round2_is_gos_math_round(v: float) -> None:
    # Go: math.Round(v*100)/100, math.Round rounding halves away from zero (ROUND_HALF_UP on
    # the exact value of the float product).
    want = float(Decimal(v * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)) / 100
    assert round2(v) == want


@pytest.mark.parametrize(
    ("v", "want"),
    [
        (65000.0, "65000"),
        (175.5, "175.5"),
        (-3.36, "-3.36"),
        (0.0, "0"),
        (1.0, "1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (round2(0.1 + 0.2), "0.3"),
        (123456789012.34, "123456789012.34"),
        (1e16, "10000000000000000"),
        (1.2e21, "1200000000000000000000"),
        (1.5e-5, "0.000015"),
        (-1e-7, "-0.0000001"),
        (2_750_000_000_000.0, "2750000000000"),
    ],
)
def test_format_number(v: float, want: str) -> None:
    assert format_number(v) == want


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf])
def test_format_number_refuses_non_json(v: float) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        format_number(v)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips(v: float) -> None:
    s = format_number(v)
    assert float(s) == v
    assert "e" not in s and "E" not in s
    assert not s.endswith(".0")
    assert float(json.loads(s)) == v


@pytest.mark.parametrize(
    ("ms", "want"),
    [
        (T0, "2026-11-28T15:04:05.678Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (5, "1970-01-01T00:00:00.005Z"),
        (1_795_885_571_780, "2026-11-28T17:06:11.780Z"),
        (951_782_400_999, "2000-02-29T00:00:00.999Z"),
    ],
)
def test_format_time_ms(ms: int, want: str) -> None:
    assert format_time_ms(ms) == want


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_format_time_ms_parses_back(ms: int) -> None:
    s = format_time_ms(ms)
    assert len(s) == 24 and s.endswith("Z")
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert round(t.timestamp() * 1000) == ms


# -- quotes -----------------------------------------------------------------------------------


def test_initial_quote_json() -> None:
    s = QuoteStore(builtin_instruments(), T0)
    aapl = s.lookup("AAPL")
    spy = s.lookup("SPY")
    assert aapl is not None and spy is not None
    assert aapl.latest.json == (
        b'{"symbol":"AAPL","name":"Apple Inc.","type":"STOCK","current_price":175.5,'
        b'"base_price":175.5,"change":0,"change_percent":0,'
        b'"last_updated":"2026-11-28T15:04:05.678Z","volume":52000000,'
        b'"market_cap":2750000000000}'
    )
    assert spy.latest.json == (
        b'{"symbol":"SPY","name":"SPDR S\\u0026P 500 ETF Trust","type":"ETF",'
        b'"current_price":485.2,"base_price":485.2,"change":0,"change_percent":0,'
        b'"last_updated":"2026-11-28T15:04:05.678Z","volume":75000000}'
    )


def test_initial_quotes_match_instruments() -> None:
    instruments = builtin_instruments()
    s = QuoteStore(instruments, T0)
    assert len(s) == 20
    for i, (inst, e) in enumerate(zip(instruments, s.entries, strict=True)):
        q = e.latest
        assert e.index == i
        assert e.instrument is inst
        assert e.symbol == inst.symbol
        assert q.entry is e
        assert q.version == 1
        assert q.patch == q.replace
        assert q.last_updated_ms == T0
        assert (q.current_price, q.change, q.change_percent) == (inst.base_price, 0, 0)
        d = q.as_dict()
        want: dict[str, object] = {
            "symbol": inst.symbol,
            "name": inst.name,
            "type": inst.type,
            "current_price": inst.base_price,
            "base_price": inst.base_price,
            "change": 0,
            "change_percent": 0,
            "last_updated": "2026-11-28T15:04:05.678Z",
            "volume": inst.volume,
        }
        if inst.market_cap:
            want["market_cap"] = inst.market_cap
        assert d == want
        assert list(d) == [f for f in FIELDS if f in want]
        assert ops(q.replace) == [{"op": "replace", "path": f"/quotes/{inst.symbol}", "value": d}]
        assert ops(e.add_op) == [{"op": "add", "path": f"/quotes/{inst.symbol}", "value": d}]
        assert ops(e.remove_op) == [{"op": "remove", "path": f"/quotes/{inst.symbol}"}]
        assert json.loads(e.key_json) == inst.symbol


def test_market_cap_left_out_when_zero() -> None:
    e = entry(Instrument("X", "X", "ETF", 10, 5, 0))
    assert "market_cap" not in e.latest.as_dict()
    assert e.latest.json.endswith(b',"volume":5}')
    e = entry(Instrument("X", "X", "STOCK", 10, 0, 7))
    assert e.latest.json.endswith(b',"volume":0,"market_cap":7}')


def test_paths_are_escaped() -> None:
    e = entry(Instrument("BTC/USD", "Bitcoin", "ETF", 65000, 1))
    assert e.key_json == b'"BTC/USD"'
    assert b'"path":"/quotes/BTC~1USD"' in e.latest.replace
    assert b'"path":"/quotes/BTC~1USD"' in e.add_op
    assert e.remove_op == b'{"op":"remove","path":"/quotes/BTC~1USD"}'
    q = e.set(65000, T0 + 1)
    assert q is not None
    assert ops(q.patch) == [
        {
            "op": "replace",
            "path": "/quotes/BTC~1USD/last_updated",
            "value": "2026-11-28T15:04:05.679Z",
        }
    ]
    tilde = entry(Instrument("A~B", "A", "ETF", 10, 1))
    assert tilde.remove_op == b'{"op":"remove","path":"/quotes/A~0B"}'


def test_strings_escaped_like_go() -> None:
    name = 'Q "quoted" <b> & \\ caf\u00e9 \u2028 \x01'
    e = entry(Instrument("Q", name, "STOCK", 10, 1))
    raw = e.latest.json
    assert b"\\u0026" in raw and b"\\u003cb\\u003e" in raw and b"\\u2028" in raw
    assert "café".encode() in raw
    assert e.latest.as_dict()["name"] == name


def test_set_rounds_and_versions() -> None:
    e = entry(Instrument("X", "X Corp", "STOCK", 100, 1))
    first = e.latest
    q = e.set(101.23456, T0 + 1000)
    assert q is not None
    assert (q.version, q.current_price, q.change, q.change_percent) == (2, 101.23, 1.23, 1.23)
    assert q.last_updated_ms == T0 + 1000
    assert q.last_updated == "2026-11-28T15:04:06.678Z"
    assert e.latest is q
    # the same cents in the same millisecond: no new version
    assert e.set(101.231, T0 + 1000) is None
    assert e.latest is q
    # the old quote is untouched
    assert (first.version, first.current_price) == (1, 100)
    # the same price a millisecond later is a new version; so is a new price in the same ms
    q3 = e.set(101.23, T0 + 1001)
    assert q3 is not None and q3.version == 3
    q4 = e.set(99, T0 + 1001)
    assert q4 is not None and q4.version == 4
    assert (q4.change, q4.change_percent) == (-1, -1)
    assert repr(q4) == "<Quote X v4 99>"
    assert repr(e) == "<Entry X #0 v4>"


def test_change_is_never_negative_zero() -> None:
    # base 10.004: the price rounds to 10.0 and change to round2(-0.004) == 0, written "0".
    e = entry(Instrument("X", "X", "STOCK", 10.004, 1))
    assert e.latest.current_price == 10.0
    assert b'"change":0,"change_percent":0,' in e.latest.json


def test_patch_only_last_updated_is_one_field() -> None:
    e = entry(Instrument("X", "X", "STOCK", 100, 1))
    q = e.set(100, T0 + 1000)
    assert q is not None
    assert [op["path"] for op in ops(q.patch)] == ["/quotes/X/last_updated"]


def test_patch_long_name_uses_field_replaces() -> None:
    e = entry(Instrument("BRK.B", "Berkshire Hathaway Inc. Class B " * 4, "STOCK", 410.5, 1))
    q = e.set(407.44, T0 + 1000)
    assert q is not None
    assert ops(q.patch) == [
        {"op": "replace", "path": "/quotes/BRK.B/current_price", "value": 407.44},
        {"op": "replace", "path": "/quotes/BRK.B/change", "value": -3.06},
        {"op": "replace", "path": "/quotes/BRK.B/change_percent", "value": -0.75},
        {
            "op": "replace",
            "path": "/quotes/BRK.B/last_updated",
            "value": "2026-11-28T15:04:06.678Z",
        },
    ]
    assert len(q.patch) < len(q.replace)


def test_patch_short_quote_uses_whole_replace() -> None:
    e = entry(Instrument("MSFT", "Microsoft Corporation", "STOCK", 420.25, 21_000_000))
    q = e.set(420.9, T0 + 1000)
    assert q is not None
    assert q.patch == q.replace
    assert ops(q.patch) == [{"op": "replace", "path": "/quotes/MSFT", "value": q.as_dict()}]


def field_ops(prev: Quote, q: Quote) -> bytes:
    """The field replaces, built independently of the store."""
    path = "/quotes/" + q.entry.symbol.replace("~", "~0").replace("/", "~1")
    old, new = prev.as_dict(), q.as_dict()
    out = [
        json.dumps({"op": "replace", "path": f"{path}/{f}", "value": new[f]}, separators=(",", ":"))
        for f in ("current_price", "change", "change_percent", "last_updated")
        if old[f] != new[f]
    ]
    return ",".join(out).encode()


NAMES = st.sampled_from(["X", "Bitcoin, in US dollars", "A much longer instrument name " * 3])
PRICES = st.floats(min_value=0.5, max_value=200_000, allow_nan=False)
STEPS = st.lists(st.tuples(PRICES, st.integers(min_value=0, max_value=5_000)), max_size=20)


@given(
    st.sampled_from(["BTC/USD", "A~B", "MSFT", "BRK.B"]),
    NAMES,
    st.floats(min_value=1, max_value=100_000),
    STEPS,
)
def test_patch_applies_to_previous(symbol: str, name: str, base: float, steps: list[Any]) -> None:
    e = entry(Instrument(symbol, name, "STOCK", base, 5, 0))
    doc: Any = jsonpatch.apply_patch({"quotes": {}}, ops(e.add_op))
    assert doc == {"quotes": {symbol: e.latest.as_dict()}}
    at = T0
    for price, dt in steps:
        at += dt
        prev = e.latest
        q = e.set(price, at)
        if q is None:
            assert round2(price) == prev.current_price and dt == 0
            continue
        assert q.version == prev.version + 1
        assert q.current_price == round2(price)
        assert q.change == round2(q.current_price - base)
        assert q.change_percent == round2(q.change / base * 100)
        # the shorter encoding, the whole replace unless the fields are strictly shorter
        fields = field_ops(prev, q)
        assert q.patch == (fields if len(fields) < len(q.replace) else q.replace)
        doc = jsonpatch.apply_patch(doc, ops(q.patch))
        assert doc == {"quotes": {symbol: json.loads(q.json)}}
        assert json.dumps(doc["quotes"][symbol]) == json.dumps(q.as_dict())  # field order kept
    doc = jsonpatch.apply_patch(doc, ops(e.remove_op))
    assert doc == {"quotes": {}}


def test_add_op_is_cached_per_quote() -> None:
    e = entry(Instrument("X", "X", "STOCK", 100, 1))
    a = e.add_op
    assert e.add_op is a
    e.set(101, T0 + 1)
    assert e.add_op is not a
    assert ops(e.add_op)[0]["value"]["current_price"] == 101


def test_quotes_and_entries_have_slots() -> None:
    e = entry(Instrument("X", "X", "STOCK", 100, 1))
    assert not hasattr(e, "__dict__")
    assert not hasattr(e.latest, "__dict__")


# -- the store --------------------------------------------------------------------------------


def test_lookup_and_resolve() -> None:
    s = QuoteStore(builtin_instruments(), T0)
    msft = s.lookup("MSFT")
    assert msft is not None and msft.index == 1 and s.entries[1] is msft
    assert s.lookup("msft") is None
    assert s.lookup("NOPE") is None
    found, unknown = s.resolve(["TSLA", "NOPE", "AAPL", "TSLA", "ZZZ", "NOPE"])
    assert [e.symbol for e in found] == ["TSLA", "AAPL"]
    assert unknown == ["NOPE", "ZZZ"]
    assert s.resolve([]) == ([], [])
    assert [e.symbol for e in s] == [i.symbol for i in builtin_instruments()]


def test_empty_store() -> None:
    s = QuoteStore([], T0)
    assert len(s) == 0 and s.entries == ()
    assert s.resolve(["A"]) == ([], ["A"])


@pytest.mark.parametrize(
    ("instruments", "want"),
    [
        ([Instrument("A", "A", "STOCK", 10, 0)] * 2, "symbol A listed twice"),
        ([Instrument("../ETC", "x", "STOCK", 10, 0)], "symbol '../ETC'"),
        ([Instrument("B", "x", "BOND", 10, 0)], "type 'BOND'"),
        ([Instrument("B", "x", "ETF", 0.5, 0)], "base_price"),
        ([Instrument("B", "", "ETF", 5, 0)], "empty name"),
    ],
)
def test_store_rejects(instruments: list[Instrument], want: str) -> None:
    with pytest.raises(InstrumentError, match=want.replace(".", r"\.")):
        QuoteStore(instruments, T0)


def test_apply_prices_sets_then_publishes_the_moved_quotes_once() -> None:
    store = QuoteStore(builtin_instruments(), 0)
    aapl, msft, googl = (store.lookup(s) for s in ("AAPL", "MSFT", "GOOGL"))
    assert aapl is not None and msft is not None and googl is not None
    unchanged = (googl, googl.latest.current_price, googl.latest.last_updated_ms)
    batches: list[list[Quote]] = []
    quotes = apply_prices([(aapl, 101.234, 1000), unchanged, (msft, 300.0, 1000)], batches.append)
    assert batches == [quotes]
    assert [(q.entry, q.current_price, q.version) for q in quotes] == [
        (aapl, 101.23, 2),
        (msft, 300.0, 2),
    ]
    assert aapl.latest is quotes[0] and googl.latest.version == 1
    # nothing moved: nothing published
    assert apply_prices([(aapl, 101.23, 1000), unchanged], batches.append) == []
    assert apply_prices([], batches.append) == []
    assert len(batches) == 1
