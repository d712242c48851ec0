"""quoted-watch: its rows and sparklines as pure functions, its history fetch on a fake agent and
Clock, and the real console script under tmux against a real twistd child (table, a price moving
with its arrow and colour, the sparkline column, state, resize, q)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from quoted.client.reconnect import ClientState
from quoted.client.trend import (
    FETCH_TIMEOUT,
    HistoryFetcher,
    Trend,
    history_url,
    sparkline,
)
from quoted.client.watch import Mark, column_widths, header_row, quote_row, state_line
from quoted.wire.tokens import mint_token
from tests.harness import SECRET
from tests.server.test_process import Daemon, running_daemon

ROOT = Path(__file__).resolve().parents[2]
WATCH = str(Path(sys.executable).with_name("quoted-watch"))
BROWSER_DIR = ROOT / "tests" / "browser"

AAPL = {
    "symbol": "AAPL",
    "name": "Apple Inc.",
    "current_price": 176.66,
    "change": 1.16,
    "change_percent": 0.66,
    "last_updated": "2026-11-28T17:06:11.780Z",
}


def text(segments: list[tuple[str, str]]) -> str:
    return "".join(t for t, _ in segments)


def test_a_row_shows_every_column_and_the_move() -> None:
    row = quote_row("AAPL", AAPL, Mark(1, 100.0), 100.5, 100, ("▲", "▼"))
    line = text(row)
    for part in ("AAPL", "Apple Inc.", "176.66", "▲", "+1.16", "+0.66%", "17:06:11.780"):
        assert part in line
    styles = dict((t.strip(), s) for t, s in row)
    assert styles["176.66"] == "flash_up"  # within a second of the move
    assert styles["▲"] == "up"
    later = dict(
        (t.strip(), s) for t, s in quote_row("AAPL", AAPL, Mark(-1, 100.0), 102, 100, ("▲", "▼"))
    )
    assert later["176.66"] == "plain"  # the flash is over, the arrow stays
    assert later["▼"] == "down"


def test_rows_fit_the_terminal() -> None:
    for width in (30, 64, 80, 120, 200):
        assert len(text(quote_row("AAPL", AAPL, None, 0, width, ("^", "v")))) < width
        assert len(text(header_row(width))) < width
    assert column_widths(64)[1] < column_widths(120)[1]  # the name column gives way


def test_the_sparkline_column_comes_when_there_is_room() -> None:
    assert column_widths(64)[2] == 0 and column_widths(100)[2] == 0  # dropped: too narrow
    assert column_widths(120)[1:] == (24, 22)  # the name keeps its 24 first
    assert column_widths(200)[2] == 30
    trend = [176.0, 176.5, 177.0, 176.2, 176.66]
    for width in (64, 100, 120, 200):
        row = text(quote_row("AAPL", AAPL, None, 0, width, ("^", "v"), trend=trend))
        assert len(row) < width
        assert ("▁" in row and "█" in row) == (width >= 120), (width, row)
        assert ("TREND" in text(header_row(width))) == (width >= 120)
    row = quote_row("AAPL", AAPL, None, 0, 120, ("^", "v"), trend=trend)
    assert row[-1] == ("  " + "".rjust(17) + "▁▅█▂▆", "up")  # right-aligned, green: it rose


def test_sparkline() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([8, 1], 4) == "  █▁"
    assert sparkline([5, 5, 5], 3) == "▄▄▄"  # flat: the middle
    assert sparkline(range(100), 5) == "▁▃▅▆█"  # the last five
    assert sparkline([], 3) == "   "
    assert sparkline([1, 2], 2, "_#") == "_#"


def bar(minute: int, close: float) -> dict[str, Any]:
    t = f"2026-12-02T14:{minute:02d}:00.000Z"
    return {"time": t, "open": close, "high": close, "low": close, "close": close, "volume": 0}


def quote(stamp: str, price: float) -> dict[str, Any]:
    return {"current_price": price, "last_updated": "2026-12-02T14:" + stamp + "Z"}


def test_a_trend_loads_history_then_follows_the_stream() -> None:
    trend = Trend(limit=60)
    trend.add(quote("11:59.500", 110.0))  # arrives while the history loads
    bars = {"symbol": "AAPL", "interval": "1m", "bars": [bar(m, 100.0 + m) for m in range(12)]}
    trend.load(bars, None)
    assert trend.values() == [100.0 + m for m in range(11)] + [110.0]  # the open bar updated
    trend.add(quote("11:59.900", 109.0))
    assert trend.values()[-1] == 109.0
    trend.add(quote("12:00.000", 120.0))  # on the boundary: the next minute
    assert trend.values()[-2:] == [109.0, 120.0]
    trend.add(quote("10:30.000", 1.0))  # older than the open minute: history has it
    assert trend.values()[-2:] == [109.0, 120.0] and len(trend.values()) == 13
    trend.add({"current_price": "x", "last_updated": "soon"})
    assert len(trend.values()) == 13


def test_a_trend_draws_ticks_while_there_are_few_bars() -> None:
    trend = Trend(limit=60)
    ticks = [{"time": f"2026-12-02T14:00:0{i}.000Z", "price": 50.0 + i} for i in range(5)]
    trend.load({"bars": [bar(0, 54.0)]}, {"interval": "tick", "ticks": ticks})
    assert trend.values() == [50.0, 51.0, 52.0, 53.0, 54.0]
    trend.add(quote("00:04.000", 54.0))  # the last tick again: not a new one
    trend.add(quote("00:05.000", 49.0))
    assert trend.values() == [50.0, 51.0, 52.0, 53.0, 54.0, 49.0]
    empty = Trend()
    empty.load(None, None)  # no history (refused, or an older server): the stream alone
    empty.add(quote("00:00.000", 1.0))
    empty.add(quote("00:01.000", 2.0))
    assert empty.values() == [1.0, 2.0]


def test_the_history_url_follows_the_websocket_url() -> None:
    assert history_url("ws://127.0.0.1:8080/ws/quotes") == "http://127.0.0.1:8080/v1/history"
    assert history_url("wss://q.example.com/md/ws/quotes?x=1") == (
        "https://q.example.com/md/v1/history"
    )


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.phrase = b"OK"
        self.length = len(body)
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    def __init__(self, *answers: Deferred[Any]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes, Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Any, body: Any) -> Deferred[Any]:
        self.requests.append((method, uri, headers))
        return self.answers.pop(0)


def test_the_fetcher_asks_with_the_token_and_gives_none_on_any_refusal() -> None:
    clock = Clock()
    answer = {"symbol": "AAPL", "interval": "1m", "bars": [bar(0, 1.0)]}
    never: Deferred[Any] = Deferred()
    agent = FakeAgent(
        succeed(FakeResponse(200, json.dumps(answer).encode())),
        succeed(FakeResponse(404, b'{"error": {"code": "unknown_symbol", "message": "x"}}')),
        never,
    )
    fetcher = HistoryFetcher(
        "ws://127.0.0.1:9/ws/quotes", lambda: "T0KEN", reactor=clock, agent=agent
    )
    got: list[object] = []
    fetcher.fetch("BTC/USD", "1m", 60).addCallback(got.append)
    assert got == [answer]
    method, uri, headers = agent.requests[0]
    assert method == b"GET"
    assert uri == b"http://127.0.0.1:9/v1/history?symbol=BTC%2FUSD&interval=1m&limit=60"
    assert headers.getRawHeaders(b"Authorization") == [b"Bearer T0KEN"]
    fetcher.fetch("NOPE", "1m", 60).addCallback(got.append)
    assert got[-1] is None
    fetcher.fetch("AAPL", "tick", 60).addCallback(got.append)
    assert len(got) == 2
    clock.advance(FETCH_TIMEOUT)  # no answer in time: cancelled, None
    assert got[-1] is None and len(got) == 3
    assert clock.getDelayedCalls() == []


def test_state_line() -> None:
    s = ClientState("reconnecting", "503 server_full: full", 5.0, 110.0)
    assert text(state_line(s, 107.2, 80)) == "state: reconnecting in 3 s: 503 server_full: full"
    assert state_line(ClientState("failed", "x"), 0, 80)[1][1] == "down"


# -- the real thing under tmux -----------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from running_daemon(tmp_path, "200ms")


class Tmux:
    """A private tmux server (its own socket) with one session running a command."""

    def __init__(self, command: str, width: int, height: int) -> None:
        self.socket = f"quoted-test-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height), command)

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout

    def screen(self, escapes: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "w")

    def wait(self, check: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"not on screen within {timeout}s:\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10, check=False
        )


@pytest.fixture
def tmux() -> Iterator[Callable[[str, int, int], Tmux]]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it: apt-get install tmux)")
    started: list[Tmux] = []

    def start(command: str, width: int = 100, height: int = 16) -> Tmux:
        t = Tmux(command, width, height)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


def watch_command(daemon: Daemon, token_file: Path, rc_file: Path, symbols: str) -> str:
    url = f"ws://127.0.0.1:{daemon.port}/ws/quotes"
    return (
        f"env LANG=C.UTF-8 {WATCH} --url {url} --symbols {symbols} --token-file {token_file}; "
        f"echo $? > {rc_file}; sleep 60"
    )


SPARK = "[▁▂▃▄▅▆▇█]"


def price_of(screen: str, symbol: str) -> str | None:
    m = re.search(rf"^{re.escape(symbol)}\s.*?\s([\d,]+\.\d\d) ", screen, re.M)
    return m.group(1) if m else None


@pytest.mark.slow
def test_watch_under_tmux(daemon: Daemon, tmux: Callable[..., Tmux], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(mint_token(SECRET, "watcher", now=time.time(), ttl=3600) + "\n")
    rc = tmp_path / "rc"
    t = tmux(watch_command(daemon, token_file, rc, "AAPL,MSFT,SPY,NOPE"), 120, 16)

    first = t.wait(lambda s: "state: live" in s and price_of(s, "SPY") is not None)
    for header in ("SYMBOL", "NAME", "PRICE", "CHANGE", "CHG %", "LAST UPDATE"):
        assert header in first
    assert "Apple Inc." in first and "Microsoft Corporation" in first
    assert "SPDR S&P 500 ETF Trust" in first
    assert re.search(r"^NOPE\s+not served", first, re.M)
    before = price_of(first, "AAPL")
    moved = t.wait(lambda s: price_of(s, "AAPL") not in (None, before), timeout=5)
    assert re.search(r"^AAPL\s.*[▲▼]", moved, re.M), moved
    coloured = t.screen(escapes=True)
    assert re.search(r"\x1b\[[0-9;]*3[12]m(\x1b\[[0-9;]*m)*\s*[▲▼]", coloured), (
        "the arrow is coloured"
    )
    # the sparkline column: from the history, then the stream, at least a few characters
    sparked = t.wait(lambda s: re.search(rf"^AAPL\s.*\s{SPARK}{{3,}}$", s, re.M) is not None)
    assert "TREND" in sparked
    assert re.search(rf"^SPY\s.*\s{SPARK}+$", sparked, re.M), sparked
    # the picture once the trend has some length (the simulator moves a few symbols a tick)
    t.wait(lambda s: re.search(rf"^AAPL\s.*\s{SPARK}{{10,}}$", s, re.M) is not None, 20)
    save_screen(t.screen(escapes=True), tmp_path / "watch")

    t.run("resize-window", "-t", "w", "-x", "64", "-y", "12")
    narrow = t.wait(lambda s: "…" in s and "state: live" in s)
    assert all(len(line) <= 64 for line in narrow.splitlines())
    assert "SYMBOL" in narrow
    assert "TREND" not in narrow and not re.search(SPARK, narrow)  # the column is dropped

    t.run("send-keys", "-t", "w", "q")
    deadline = time.monotonic() + 5
    while not rc.exists() or not rc.read_text().strip():
        assert time.monotonic() < deadline, "quoted-watch did not exit on q"
        time.sleep(0.05)
    assert rc.read_text().strip() == "0"


@pytest.mark.slow
def test_watch_shows_the_servers_refusal(
    daemon: Daemon, tmux: Callable[..., Tmux], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(mint_token(b"x" * 32, "eve", now=time.time(), ttl=3600))
    rc = tmp_path / "rc"
    t = tmux(watch_command(daemon, token_file, rc, "AAPL"), 120, 10)
    screen = t.wait(lambda s: "state: failed" in s)
    assert "401 invalid_token" in screen
    assert token_file.read_text() not in screen
    t.run("send-keys", "-t", "w", "q")
    deadline = time.monotonic() + 5
    while not rc.exists() or not rc.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -- a picture of the screen, for the README ------------------------------------------------------

COLOURS = ["#000", "#c33", "#3a3", "#c90", "#36c", "#a3a", "#3aa", "#ccc"]


def ansi_to_html(screen: str) -> str:
    """tmux capture-pane -e output (SGR colours, bold, dim) as a dark terminal in HTML."""
    out: list[str] = []
    fg, bg, bold, dim = None, None, False, False
    for part in re.split(r"(\x1b\[[0-9;]*m)", screen.rstrip("\n")):
        if part.startswith("\x1b["):
            codes = [int(c) if c else 0 for c in part[2:-1].split(";")]
            for c in codes:
                if c == 0:
                    fg, bg, bold, dim = None, None, False, False
                elif c == 1:
                    bold = True
                elif c == 2:
                    dim = True
                elif c == 22:
                    bold = dim = False
                elif 30 <= c <= 37:
                    fg = COLOURS[c - 30]
                elif c == 39:
                    fg = None
                elif 40 <= c <= 47:
                    bg = COLOURS[c - 40]
                elif c == 49:
                    bg = None
            continue
        if not part:
            continue
        style = []
        if fg:
            style.append(f"color:{fg}")
        if bg:
            style.append(f"background:{bg}")
        if bold:
            style.append("font-weight:bold")
        if dim:
            style.append("opacity:.6")
        out.append(f'<span style="{";".join(style)}">{html.escape(part)}</span>')
    return (
        "<!doctype html><meta charset=utf-8><body style='margin:0;background:#111'>"
        '<pre style=\'margin:0;padding:12px;color:#ddd;font:14px/1.3 "DejaVu Sans Mono",'
        f"monospace;display:inline-block'>{''.join(out)}</pre></body>"
    )


def save_screen(screen: str, stem: Path) -> None:
    """The screen as text, HTML and (when the browser tools are installed) PNG; with
    UPDATE_SCREENSHOTS=1 the PNG also goes to docs/img/watch.png."""
    stem.with_suffix(".ansi").write_text(screen)
    page = stem.with_suffix(".html")
    page.write_text(ansi_to_html(screen))
    node = shutil.which("node")
    if node is None or not (BROWSER_DIR / "node_modules").is_dir():
        return
    png = stem.with_suffix(".png")
    subprocess.run(
        [node, str(BROWSER_DIR / "shot.mjs"), json.dumps({"page": str(page), "out": str(png)})],
        check=True,
        timeout=60,
        cwd=BROWSER_DIR,
    )
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(png, ROOT / "docs" / "img" / "watch.png")
