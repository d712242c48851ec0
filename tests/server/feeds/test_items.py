"""Published items: every check and its code (quoted.server.feeds.items)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quoted.server.feeds.items import (
    BAD_ITEM,
    BAD_PRICE,
    BAD_TIME,
    FORBIDDEN_SYMBOL,
    UNKNOWN_SYMBOL,
    ItemError,
    Tick,
    from_text,
    parse_item,
    parse_time,
)
from quoted.server.store import format_time_ms

NOW = 1_795_000_000_000  # 2026-11-18, a receipt time in ms
KNOWN = {"AAPL", "MSFT", "BRK.B"}


def check(item: object, *, allowed: set[str] | None = None, future_ms: int = 30_000) -> Tick:
    return parse_item(
        item,
        receipt_ms=NOW,
        future_ms=future_ms,
        known=KNOWN.__contains__,
        entitled=lambda s: allowed is None or s in allowed,
    )


def code_of(item: object, **kw: Any) -> str:
    with pytest.raises(ItemError) as e:
        check(item, **kw)
    assert e.value.message
    return e.value.code


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-12-02T14:30:00.125Z", 1796221800125),
        ("2026-12-02t14:30:00.125z", 1796221800125),
        ("2026-12-02T15:30:00.125+01:00", 1796221800125),
        ("2026-12-02T09:00:00.125-05:30", 1796221800125),
        ("2026-12-02T14:30:00.1259999Z", 1796221800125),  # cut, not rounded
        ("2026-12-02T14:30:00.1Z", 1796221800100),
        ("2016-12-31T23:59:60Z", 1483228800000),  # a leap second: the next second's start
    ],
)
def test_rfc3339_times(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02",
        "2026-12-02T14:30:00",  # no offset
        "2026-12-02 14:30:00Z",
        "2026-13-02T14:30:00Z",
        "2026-02-30T14:30:00Z",
        "2026-12-02T24:00:00Z",
        "2026-12-02T14:30:00+24:00",
        "2026-12-02T14:30:00.Z",
        "1969-12-31T23:59:59Z",
        "2026-12-02T14:30:00Z ",
        "1796221800125",
        "x" * 100,
    ],
)
def test_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_every_time_quoted_writes_reads_back(ms: int) -> None:
    assert parse_time(format_time_ms(ms)) == ms


@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_offsets_read_as_python_reads_them(t: datetime, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    local = t.replace(tzinfo=UTC).astimezone(zone)
    ms = (t.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_time(local.isoformat()) == ms


def test_a_full_item() -> None:
    item = {
        "symbol": " aapl ",
        "price": 151.25,
        "time": "2026-11-18T00:00:00.000Z",
        "volume": 1200,
        "reference_price": 149.1,
    }
    assert check(item) == Tick("AAPL", 151.25, parse_time(item["time"]), 1200, 149.1)


def test_time_defaults_to_receipt_and_int_prices_are_numbers() -> None:
    assert check({"symbol": "MSFT", "price": 420}) == Tick("MSFT", 420.0, NOW)


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ([], BAD_ITEM),
        ("AAPL", BAD_ITEM),
        ({"price": 1}, BAD_ITEM),
        ({"symbol": 7, "price": 1}, BAD_ITEM),
        ({"symbol": "AAPL", "price": 1, "bid": 2}, BAD_ITEM),
        ({"symbol": "NOPE", "price": 1}, UNKNOWN_SYMBOL),
        ({"symbol": "../etc", "price": 1}, UNKNOWN_SYMBOL),
        ({"symbol": "A" * 200, "price": 1}, UNKNOWN_SYMBOL),
        ({"symbol": "AAPL"}, BAD_PRICE),
        ({"symbol": "AAPL", "price": 0}, BAD_PRICE),
        ({"symbol": "AAPL", "price": -1}, BAD_PRICE),
        ({"symbol": "AAPL", "price": float("nan")}, BAD_PRICE),
        ({"symbol": "AAPL", "price": float("inf")}, BAD_PRICE),
        ({"symbol": "AAPL", "price": 1e13}, BAD_PRICE),
        ({"symbol": "AAPL", "price": 10**400}, BAD_PRICE),
        ({"symbol": "AAPL", "price": True}, BAD_PRICE),
        ({"symbol": "AAPL", "price": "151.25"}, BAD_PRICE),
        ({"symbol": "AAPL", "price": 1, "reference_price": 0}, BAD_PRICE),
        ({"symbol": "AAPL", "price": 1, "time": "yesterday"}, BAD_TIME),
        ({"symbol": "AAPL", "price": 1, "time": 1796221800}, BAD_TIME),
        ({"symbol": "AAPL", "price": 1, "time": format_time_ms(NOW + 30_001)}, BAD_TIME),
        ({"symbol": "AAPL", "price": 1, "volume": -1}, BAD_ITEM),
        ({"symbol": "AAPL", "price": 1, "volume": 1.5}, BAD_ITEM),
        ({"symbol": "AAPL", "price": 1, "volume": False}, BAD_ITEM),
        ({"symbol": "AAPL", "price": 1, "volume": 2**63}, BAD_ITEM),
    ],
)
def test_refused_items(item: object, code: str) -> None:
    assert code_of(item) == code


def test_a_time_just_within_the_leeway_is_accepted() -> None:
    assert check({"symbol": "AAPL", "price": 1, "time": format_time_ms(NOW + 30_000)}).at_ms == (
        NOW + 30_000
    )


def test_forbidden_before_the_values() -> None:
    assert code_of({"symbol": "AAPL", "price": -1}, allowed={"MSFT"}) == FORBIDDEN_SYMBOL
    assert check({"symbol": "msft", "price": 1}, allowed={"MSFT"}).symbol == "MSFT"


def test_messages_quote_little_of_what_was_sent() -> None:
    with pytest.raises(ItemError) as e:
        check({"symbol": "AAPL", "price": 1, "x" * 1000: 1})
    assert len(e.value.message) < 200


def test_from_text_reads_numbers_and_leaves_the_rest() -> None:
    assert from_text(
        {"symbol": "AAPL", "price": "151.25", "volume": "1200", "reference_price": "", "time": "t"}
    ) == {"symbol": "AAPL", "price": 151.25, "volume": 1200, "time": "t"}
    item = from_text({"symbol": "AAPL", "price": "abc", "volume": "-3"})
    assert item == {"symbol": "AAPL", "price": "abc", "volume": "-3"}
    assert code_of(item) == BAD_PRICE
    assert code_of(from_text({"symbol": "AAPL", "price": "1", "volume": "1.5"})) == BAD_ITEM
    assert code_of(from_text({"symbol": "AAPL", "price": "nan"})) == BAD_PRICE
