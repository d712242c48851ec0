"""Tests of quoted.wire.symbols and quoted.server.instruments: symbol syntax and lists, JSON
Pointer escaping, instrument lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from quoted.server.instruments import (
    Instrument,
    InstrumentError,
    builtin_instruments,
    load_instruments,
    read_instruments,
    synthetic_instruments,
)
from quoted.wire.symbols import (
    MAX_SYMBOL_LEN,
    SYMBOL_RULE,
    escape_pointer,
    normalize_symbols,
    parse_symbol_list,
    valid_symbol,
)

SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./-_=:^~"
HEADER = "symbol,name,type,base_price,volume,market_cap\n"


def go_valid_symbol(s: str) -> bool:
    """A literal port of symbol.go ValidSymbol, the reference for the regex."""

    def alnum(c: str) -> bool:
        return "A" <= c <= "Z" or "0" <= c <= "9"

    b = s.encode()
    if len(b) == 0 or len(b) > MAX_SYMBOL_LEN:
        return False
    if not alnum(s[0]) and s[0] != "^":
        return False
    if not alnum(s[-1]):
        return False
    prev_punct = s[0] == "^"
    for c in s[1:]:
        if alnum(c):
            prev_punct = False
        elif c in "./-_=:^~":
            if prev_punct:
                return False
            prev_punct = True
        else:
            return False
    return True


@pytest.mark.parametrize(
    ("symbol", "want"),
    [
        ("AAPL", True),
        ("BRK.B", True),
        ("BTC/USD", True),
        ("ES=F", True),
        ("^GSPC", True),
        ("EUR/USD:FX", True),
        ("A~B", True),
        ("V", True),
        ("7", True),
        ("A-B_C", True),
        ("A^B", True),
        ("X" * 32, True),
        ("X12345678901234567890123456789012", False),  # 33
        ("", False),
        ("aapl", False),
        ("Aapl", False),
        ("../ETC", False),
        ("A..B", False),
        ("A./B", False),
        ("A/", False),
        ("A.", False),
        ("<SCRIPT>", False),
        ("A B", False),
        (" A", False),
        ("A\x00", False),
        ("A\nB", False),
        ("AAPL\n", False),
        (".A", False),
        ("^.A", False),
        ("^", False),
        ("^^A", False),
        ("-A", False),
        ("ÄB", False),
        ("A,B", False),
        ("A&B", False),
    ],
)
def test_valid_symbol(symbol: str, want: bool) -> None:
    assert valid_symbol(symbol) is want
    assert go_valid_symbol(symbol) is want


@given(st.text(alphabet=SYMBOL_CHARS + "ab \n\x00é", max_size=40))
def test_valid_symbol_matches_go(s: str) -> None:
    assert valid_symbol(s) == go_valid_symbol(s)


def test_symbol_rule_mentions_the_syntax() -> None:
    assert "1-32" in SYMBOL_RULE
    assert "A-Z 0-9 . / - _ = : ^ ~" in SYMBOL_RULE


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("AAPL,GOOGL", ["AAPL", "GOOGL"]),
        (" aapl , Aapl,,msft ", ["AAPL", "MSFT"]),
        ("", []),
        (",,", []),
        (" , ,", []),
        ("btc/usd", ["BTC/USD"]),
        ("b,a,b,c,a", ["B", "A", "C"]),
        ("\tspy\r\n", ["SPY"]),
    ],
)
def test_parse_symbol_list(raw: str, want: list[str]) -> None:
    assert parse_symbol_list(raw) == want


def test_normalize_symbols() -> None:
    assert normalize_symbols(["msft ", "", " MSFT", "brk.b"]) == ["MSFT", "BRK.B"]
    assert normalize_symbols(iter(["a", "b"])) == ["A", "B"]


def test_upper_case_maps_one_character_to_one() -> None:
    # Python's "ß".upper() is "SS": that would make "ßPY" the valid symbol "SSPY".
    assert parse_symbol_list("ßpy,ﬃ") == ["ßPY", "ﬃ"]
    assert not any(valid_symbol(s) for s in parse_symbol_list("ß,ǅ,ﬃ,İ"))


@given(st.text())
@example(" aapl , AAPL,,msft ")
@example("../etc,<script>")
@example("\x00,\r\n")
@example("A," * 50)
@example("ß,ǅ,ﬃ,İ")
def test_parse_symbol_list_properties(raw: str) -> None:
    got = parse_symbol_list(raw)
    assert len(set(got)) == len(got)
    for s in got:
        assert s
        assert s == s.strip()
        assert s == s.upper() or not s.isascii()
        assert "," not in s
        if valid_symbol(s):
            assert len(s) <= MAX_SYMBOL_LEN
            assert s.strip(SYMBOL_CHARS) == ""
    assert parse_symbol_list(",".join(got)) == got


@pytest.mark.parametrize(
    ("token", "want"),
    [
        ("AAPL", "AAPL"),
        ("BTC/USD", "BTC~1USD"),
        ("A~B", "A~0B"),
        ("~/", "~0~1"),
        ("A/~1", "A~1~01"),
        ("", ""),
    ],
)
def test_escape_pointer(token: str, want: str) -> None:
    assert escape_pointer(token) == want


def unescape_pointer(token: str) -> str:
    # RFC 6901 section 4: ~1 first, then ~0.
    return token.replace("~1", "/").replace("~0", "~")


@given(st.text(alphabet=st.sampled_from("A~/01\xff"), max_size=20) | st.text())
@example("~1")
@example("~0/~")
@example("//")
@example("~")
def test_escape_pointer_round_trip(s: str) -> None:
    e = escape_pointer(s)
    assert "/" not in e
    for i, c in enumerate(e):
        if c == "~":
            assert e[i + 1 : i + 2] in ("0", "1"), e
    assert unescape_pointer(e) == s


# -- instrument lists -------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "instruments.csv") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_read_instruments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Symbol, Name ,TYPE,base_price,volume,market_cap\n"
        "brk.b,Berkshire Hathaway Class B,stock,410.5,3000000,880000000000\n"
        "\n"
        'BTC/USD,"Bitcoin, in dollars",ETF,65000,,\n'
        ' es=f, "E-mini S&P 500",etf, 5000.25 , +7 , 0\n',
    )
    assert read_instruments(path) == [
        Instrument("BRK.B", "Berkshire Hathaway Class B", "STOCK", 410.5, 3000000, 880000000000),
        Instrument("BTC/USD", "Bitcoin, in dollars", "ETF", 65000.0, 0, 0),
        Instrument("ES=F", "E-mini S&P 500", "ETF", 5000.25, 7, 0),
    ]


def test_read_instruments_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff" + HEADER + "A,A,STOCK,10,1,1\n")
    assert [i.symbol for i in read_instruments(path)] == ["A"]


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("../X,x,STOCK,10,1,1", "line 3: symbol '../X': " + SYMBOL_RULE),
        ("A B,x,STOCK,10,1,1", "line 3: symbol 'A B'"),
        ("<B>,x,STOCK,10,1,1", "line 3: symbol '<B>'"),
        ("B,,STOCK,10,1,1", "line 3: symbol B: empty name"),
        ("B,x,BOND,10,1,1", "line 3: symbol B: type 'BOND' is not STOCK or ETF"),
        ("B,x,STOCK,abc,1,1", "line 3: base_price: 'abc' is not a number"),
        ("B,x,STOCK,,1,1", "line 3: base_price: '' is not a number"),
        ("B,x,STOCK,1_000,1,1", "line 3: base_price"),
        ("B,x,STOCK,0.5,1,1", "line 3: symbol B: base_price 0.5 must be between 1 and 1e12"),
        ("B,x,STOCK,nan,1,1", "line 3: symbol B: base_price nan"),
        ("B,x,STOCK,inf,1,1", "line 3: symbol B: base_price inf"),
        ("B,x,STOCK,2e12,1,1", "line 3: symbol B: base_price"),
        ("B,x,STOCK,10,-1,1", "line 3: symbol B: volume and market_cap must not be negative"),
        ("B,x,STOCK,10,1,-1", "line 3: symbol B: volume and market_cap"),
        ("B,x,STOCK,10,1.5,1", "line 3: volume: '1.5' is not an integer"),
        ("B,x,STOCK,10,1,1_0", "line 3: market_cap: '1_0' is not an integer"),
        ("B,x,STOCK,10,1,99999999999999999999", "line 3: market_cap"),
        ("B,x,STOCK,10,1", "line 3: 5 fields, want 6"),
        ("B,x,STOCK,10,1,1,1", "line 3: 7 fields, want 6"),
        ("A,again,STOCK,10,1,1", "line 3: symbol A listed twice"),
        ("a,lower case is the same symbol,STOCK,10,1,1", "line 3: symbol A listed twice"),
    ],
)
def test_read_instruments_bad_line(tmp_path: Path, line: str, want: str) -> None:
    path = write(tmp_path, HEADER + "A,A,STOCK,10,1,1\n" + line + "\nC,C,ETF,10,1,0\n", "bad.csv")
    with pytest.raises(InstrumentError) as exc:
        read_instruments(path)
    assert str(exc.value).startswith(f"{path}: {want}")


def test_read_instruments_line_after_multiline_field(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + 'A,"two\nlines",STOCK,10,1,1\n\nB,x,BOND,10,1,1\n')
    with pytest.raises(InstrumentError, match=r": line 5: symbol B: type"):
        read_instruments(path)


def test_read_instruments_bad_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + 'A,"unterminated,STOCK,10,1,1\n')
    with pytest.raises(InstrumentError, match=r"instruments\.csv: line \d+: "):
        read_instruments(path)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("sym,name\nA,B\n", "line 1: header: got 'sym,name', want 'symbol,name,type,"),
        ("name,symbol,type,base_price,volume,market_cap\n", "line 1: header: got 'name,symbol"),
        (HEADER.replace("\n", ",extra\n"), "line 1: header:"),
        ("", "empty file"),
        ("\n\n", "empty file"),
        (HEADER, "no instruments"),
        (HEADER + "\n\n", "no instruments"),
    ],
)
def test_read_instruments_bad_file(tmp_path: Path, text: str, want: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InstrumentError) as exc:
        read_instruments(path)
    assert str(exc.value).startswith(f"{path}: {want}")


def test_read_instruments_unreadable(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.csv")
    with pytest.raises(InstrumentError, match=r"missing\.csv: No such file"):
        read_instruments(missing)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(HEADER.encode() + "A,Café,STOCK,10,1,1\n".encode("latin-1"))
    with pytest.raises(InstrumentError, match=r"latin1\.csv: not UTF-8"):
        read_instruments(str(latin1))


def test_builtin_instruments() -> None:
    got = builtin_instruments()
    assert len(got) == 20
    assert len({i.symbol for i in got}) == 20
    assert got[0] == Instrument(
        "AAPL", "Apple Inc.", "STOCK", 175.50, 52_000_000, 2_750_000_000_000
    )
    assert got[1] == Instrument(
        "MSFT", "Microsoft Corporation", "STOCK", 420.25, 21_000_000, 3_120_000_000_000
    )
    assert got[10] == Instrument("SPY", "SPDR S&P 500 ETF Trust", "ETF", 485.20, 75_000_000, 0)
    assert got[-1] == Instrument(
        "XLK", "Technology Select Sector SPDR Fund", "ETF", 195.60, 7_000_000, 0
    )
    assert [i.symbol for i in got] == [
        "AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX", "JPM", "V",
        "SPY", "QQQ", "VTI", "IWM", "EFA", "GLD", "TLT", "VNQ", "XLF", "XLK",
    ]  # fmt: skip
    assert [i.type for i in got] == ["STOCK"] * 10 + ["ETF"] * 10
    assert all(i.market_cap > 0 for i in got[:10])
    assert all(i.market_cap == 0 for i in got[10:])
    for i in got:
        i.validate()
    assert builtin_instruments() is not got  # a fresh list each call


def test_synthetic_instruments() -> None:
    assert synthetic_instruments(0) == []
    got = synthetic_instruments(3)
    assert got[0] == Instrument("SYN00001", "Synthetic Instrument 1", "STOCK", 999.0, 204_729, 0)
    assert got[1] == Instrument(
        "SYN00002", "Synthetic Instrument 2", "STOCK", float(10 + 15838 % 990), 309_458, 0
    )
    assert synthetic_instruments(3) == got
    many = synthetic_instruments(1000)
    assert many[999].symbol == "SYN01000"
    assert len({i.symbol for i in many}) == 1000
    for i in many:
        i.validate()
        assert 10 <= i.base_price < 1000


def test_load_instruments(tmp_path: Path) -> None:
    assert load_instruments("", 0) == builtin_instruments()
    got = load_instruments("", 2)
    assert [i.symbol for i in got[-3:]] == ["XLK", "SYN00001", "SYN00002"]
    path = write(tmp_path, HEADER + "X,X,ETF,10,1,0\n")
    assert [i.symbol for i in load_instruments(path, 1)] == ["X", "SYN00001"]
    clash = write(tmp_path, HEADER + "SYN00002,X,ETF,10,1,0\n", "clash.csv")
    with pytest.raises(InstrumentError, match="symbol SYN00002 listed twice"):
        load_instruments(clash, 3)
    with pytest.raises(InstrumentError, match=r"nope\.csv: No such file"):
        load_instruments(str(tmp_path / "nope.csv"), 0)


def test_instrument_is_frozen() -> None:
    i = builtin_instruments()[0]
    with pytest.raises(AttributeError):
        i.symbol = "X"  # type: ignore[misc]
