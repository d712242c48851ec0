"""The duration grammar (quoted.wire.durations), shared by the settings and quoted-load."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quoted.wire.durations import parse_duration

UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("4s", 4.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5s", 1.5),
        ("1.5h", 5400.0),
        (".5m", 30.0),
        ("1.s", 1.0),
        (" 4s ", 4.0),
        ("100ms", 0.1),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # quoted-load's help and defaults
        ("60s", 60.0),
        ("2m", 120.0),
        ("30s", 30.0),
        ("1s", 1.0),
        ("10s", 10.0),
        # what bench/run, bench/cluster, bench/memprobe.py, README.rst and the tests pass it
        ("5s", 5.0),
        ("8s", 8.0),
        ("20s", 20.0),
        ("200ms", 0.2),
        ("300ms", 0.3),
        # forms the old quoted-load grammar took too (it read one number and one unit)
        ("1.5m", 90.0),
        ("0.25h", 900.0),
        ("\t2s\n", 2.0),
        # new to quoted-load: compound durations
        ("1m30s", 90.0),
    ],
)
def test_parse_duration_load_generator_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("4", "missing unit"),
        ("1.5", "missing unit"),
        ("1m30", "missing unit"),
        ("-1s", "negative"),
        ("-0", "negative"),
        ("", "empty"),
        ("abc", "not a duration"),
        ("1d", "not a duration"),
        ("s", "not a duration"),
        ("1 s", "not a duration"),
        ("1e3s", "not a duration"),
        # the old quoted-load grammar took these; the one grammar does not
        ("60", "missing unit"),  # a bare number was seconds there
        ("10 s", "not a duration"),  # it allowed a space before the unit
        ("soon", "not a duration"),
    ],
)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize("text", ["٣s", "1٣ms"])
def test_parse_duration_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(list(UNIT_MS))), min_size=1))
def test_parse_duration_sums_compound_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == sum(n * UNIT_MS[unit] for n, unit in parts) / 1000


@given(st.integers(0, 10**12), st.sampled_from(list(UNIT_MS)))
def test_whole_milliseconds_round_trip_in_every_unit(ms: int, unit: str) -> None:
    """A length written in any unit, as a decimal number, reads back as the same seconds."""
    number = Decimal(ms) / UNIT_MS[unit]
    text = f"{number:f}{unit}"
    assert parse_duration(text) == float(Decimal(ms) / 1000)


@given(st.integers(0, 10**9))
def test_go_style_split_round_trips(ms: int) -> None:
    """h, m, s and ms written as Go prints them (largest unit first) read back exactly."""
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, rest = divmod(rest, 1000)
    text = "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s"), (rest, "ms")) if n)
    assert parse_duration(text or "0") == ms / 1000


@given(st.text(max_size=20))
def test_parse_duration_raises_only_value_error(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass
