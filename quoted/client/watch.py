"""quoted-watch: a live full-screen quote board in the terminal.

``quoted-watch --url wss://host/ws/quotes --symbols AAPL,MSFT,SPY [--token T | --token-file F]
[--cafile F]`` shows one row per symbol (symbol, name, price, change, change %, last update, and
a sparkline of the recent minutes when the terminal is wide enough), marks each move with ▲ or ▼
in green or red, shows the connection's state (connecting, live, reconnecting in N s, or the
server's error), follows the terminal's size, and quits on ``q``.

The sparklines (quoted.client.trend) start from ``GET /v1/history`` (1-minute bars, or the ticks
while there are few bars), fetched once per symbol with twisted.web's Agent on the same reactor,
and then follow the stream.

The screen is drawn with :mod:`curses` from the standard library, driven by the Twisted reactor
that runs the :class:`quoted.client.QuoteClient`:

* curses is always there (no dependency for a tool that draws one table), and its ``getch`` in
  no-delay mode fits an event loop: the reactor watches fd 0 (``reactor.addReader``) and the
  board drains the keys when it is readable, so there is no thread and no blocking read.
  rich or textual would bring their own event loop (asyncio) or a thread to bridge to Twisted,
  for a screen that needs only colours and positioned text.
* Resizing: the SIGWINCH handler only schedules a redraw (``callLater(0)``) that asks the
  terminal for its size and calls ``curses.resizeterm``; the reactor's wakeup fd makes the loop
  notice the signal at once.
* Redraws happen on every update and once a second (ages and the reconnect countdown), through
  a LoopingCall on the same reactor.

A token file is read again whenever the client needs a token, so a token rotated on disk is
picked up by the next refresh. The token is never drawn.
"""

from __future__ import annotations

import argparse
import curses
import locale
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quoted.client import QuoteClient
from quoted.client.reconnect import FAILED, LIVE, RECONNECTING, ClientState
from quoted.client.trend import ENOUGH_BARS, HistoryFetcher, Trend, blocks, sparkline
from quoted.wire.symbols import normalize_symbols

FLASH_SECONDS = 1.0  # a moved price is highlighted this long
MIN_NAME = 8
NAME_FIRST = 24  # the name column grows to this before the sparkline takes any room
SPARK_MIN, SPARK_MAX = 10, 30
HEADER = ("SYMBOL", "NAME", "PRICE", "", "CHANGE", "CHG %", "LAST UPDATE", "TREND")


@dataclass(frozen=True, slots=True)
class Mark:
    """The last move of a symbol's price: +1 up, -1 down, at reactor time ``at``."""

    direction: int
    at: float


Segment = tuple[str, str]  # (text, style): style is plain, head, up, down, dim, flash_up...


def arrows(encoding: str) -> tuple[str, str]:
    return ("▲", "▼") if "utf" in encoding.lower() else ("^", "v")


def column_widths(width: int) -> tuple[int, int, int]:
    """(symbol, name, sparkline) widths for a terminal ``width`` columns wide: the fixed
    columns first, then the name up to NAME_FIRST, then the sparkline (0: no column) when
    SPARK_MIN fit, then the name again up to 40."""
    fixed = 12 + 2 + 11 + 2 + 10 + 9 + 14  # price, arrow, change, change %, last update
    symbol = 10
    room = width - fixed - symbol - 2
    spark = min(SPARK_MAX, room - NAME_FIRST - 2)
    if spark < SPARK_MIN:
        spark = 0
    name = max(MIN_NAME, min(40, room - (spark + 2 if spark else 0)))
    return symbol, name, spark


def quote_row(
    symbol: str,
    quote: Mapping[str, Any] | None,
    mark: Mark | None,
    now: float,
    width: int,
    up_down: tuple[str, str],
    note: str = "waiting for the snapshot",
    trend: Sequence[float] = (),
    chars: str = "▁▂▃▄▅▆▇█",
) -> list[Segment]:
    """One table row as styled segments, cut to ``width``; ``note`` when there is no quote;
    ``trend`` the prices its sparkline draws (in ``chars``), oldest first."""
    sym_w, name_w, spark_w = column_widths(width)
    if quote is None:
        return _cut([(f"{symbol:<{sym_w}}", "head"), (note, "dim")], width)
    name = str(quote.get("name", ""))
    if len(name) > name_w:
        name = name[: name_w - 1] + "…"
    price = float(quote.get("current_price", 0.0))
    change = float(quote.get("change", 0.0))
    percent = float(quote.get("change_percent", 0.0))
    stamp = str(quote.get("last_updated", ""))
    stamp = stamp[11:23] if len(stamp) >= 23 else stamp
    arrow, arrow_style, price_style = " ", "plain", "plain"
    if mark is not None:
        arrow = up_down[0] if mark.direction > 0 else up_down[1]
        arrow_style = "up" if mark.direction > 0 else "down"
        if now - mark.at < FLASH_SECONDS:
            price_style = "flash_up" if mark.direction > 0 else "flash_down"
    sign_style = "up" if change > 0 else "down" if change < 0 else "plain"
    segments = [
        (f"{symbol:<{sym_w}}", "head"),
        (f"{name:<{name_w}}  ", "plain"),
        (f"{price:>12,.2f}", price_style),
        (f" {arrow} ", arrow_style),
        (f"{change:>+11,.2f}", sign_style),
        (f"{percent:>+9.2f}%", sign_style),
        (f"  {stamp:<12}", "dim"),
    ]
    if spark_w:
        shown = list(trend)[-spark_w:]
        style = (
            "up"
            if shown and shown[-1] > shown[0]
            else "down"
            if shown and shown[-1] < shown[0]
            else "plain"
        )
        segments.append(("  " + sparkline(shown, spark_w, chars), style))
    return _cut(segments, width)


def header_row(width: int) -> list[Segment]:
    sym_w, name_w, spark_w = column_widths(width)
    text = (
        f"{HEADER[0]:<{sym_w}}{HEADER[1]:<{name_w}}  {HEADER[2]:>12}   "
        f"{HEADER[4]:>11}{HEADER[5]:>10}  {HEADER[6]:<12}"
    )
    if spark_w:
        text += f"  {HEADER[7]:>{spark_w}}"
    return _cut([(text, "head")], width)


def state_line(state: ClientState, now: float, width: int) -> list[Segment]:
    style = {LIVE: "up", FAILED: "down", RECONNECTING: "warn"}.get(state.name, "plain")
    return _cut([("state: ", "plain"), (state.describe(now), style)], width)


def _cut(segments: Sequence[Segment], width: int) -> list[Segment]:
    out: list[Segment] = []
    left = max(0, width - 1)  # curses cannot write the bottom-right cell
    for text, style in segments:
        if left <= 0:
            break
        out.append((text[:left], style))
        left -= len(text[:left])
    return out


class Board:
    """The screen: keeps the marks of moves and draws the table."""

    def __init__(self, screen: Any, clock: Any, url: str, symbols: list[str]) -> None:
        self.screen = screen
        self.clock = clock
        self.url = url
        self.order = symbols
        self.quotes: Mapping[str, Any] = {}
        self.served: list[str] | None = None  # the client's symbols once a snapshot came
        self.state = ClientState("connecting")
        self.marks: dict[str, Mark] = {}
        self.prices: dict[str, float] = {}
        self.up_down = arrows(locale.getpreferredencoding(False))
        self.blocks = blocks(locale.getpreferredencoding(False))
        self.trends: dict[str, Trend] = {s: Trend() for s in symbols}
        self.styles: dict[str, int] = {}
        self.quit: Callable[[], None] = lambda: None

    def setup_colours(self) -> None:
        styles = {"plain": 0, "head": curses.A_BOLD, "dim": curses.A_DIM}
        if curses.has_colors():
            curses.start_color()
            curses.use_default_colors()
            for n, colour in ((1, curses.COLOR_GREEN), (2, curses.COLOR_RED)):
                curses.init_pair(n, colour, -1)
            curses.init_pair(3, curses.COLOR_YELLOW, -1)
            curses.init_pair(4, curses.COLOR_BLACK, curses.COLOR_GREEN)
            curses.init_pair(5, curses.COLOR_BLACK, curses.COLOR_RED)
            styles |= {
                "up": curses.color_pair(1),
                "down": curses.color_pair(2),
                "warn": curses.color_pair(3),
                "flash_up": curses.color_pair(4) | curses.A_BOLD,
                "flash_down": curses.color_pair(5) | curses.A_BOLD,
            }
        else:
            styles |= {"up": 0, "down": 0, "warn": 0}
            styles |= {"flash_up": curses.A_REVERSE, "flash_down": curses.A_REVERSE}
        self.styles = styles

    # -- events -----------------------------------------------------------------

    def on_update(
        self, quotes: Mapping[str, Any], changed: frozenset[str], served: list[str]
    ) -> None:
        self.quotes = quotes
        self.served = served
        now = self.clock.seconds()
        for symbol in changed:
            quote = quotes.get(symbol)
            if quote is None:
                self.prices.pop(symbol, None)
                self.marks.pop(symbol, None)
                continue
            self.trends.setdefault(symbol, Trend()).add(quote)
            price = float(quote.get("current_price", 0.0))
            before = self.prices.get(symbol)
            if before is not None and price != before:
                self.marks[symbol] = Mark(1 if price > before else -1, now)
            self.prices[symbol] = price
        self.draw()

    def load_history(self, fetcher: HistoryFetcher) -> None:
        """Each symbol's 1-minute bars (and its ticks when there are few), once, for the
        sparklines; the stream extends them from then on."""
        for symbol, trend in self.trends.items():
            self._load(fetcher, symbol, trend).addErrback(log_failure)

    async def _load_answers(
        self, fetcher: HistoryFetcher, symbol: str, limit: int
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        bars = await fetcher.fetch(symbol, "1m", limit)
        if len((bars or {}).get("bars", [])) >= ENOUGH_BARS:
            return bars, None
        return bars, await fetcher.fetch(symbol, "tick", limit)

    def _load(self, fetcher: HistoryFetcher, symbol: str, trend: Trend) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._load_answers(fetcher, symbol, trend.bars.maxlen or 60))

        def loaded(answers: tuple[dict[str, Any] | None, dict[str, Any] | None]) -> None:
            trend.load(*answers)
            self.draw()

        return d.addCallback(loaded)

    def on_state(self, state: ClientState) -> None:
        self.state = state
        self.draw()

    def keys(self) -> None:
        """Drain the keys waiting on stdin."""
        while True:
            key = self.screen.getch()
            if key == -1:
                return
            if key in (ord("q"), ord("Q")):
                self.quit()
                return
            if key == curses.KEY_RESIZE:  # queued by resizeterm: the size is already known
                self.screen.clear()
                self.draw()

    def resize(self) -> None:
        size = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1)
        curses.resizeterm(size.lines, size.columns)
        self.screen.clear()
        self.draw()

    # -- drawing ----------------------------------------------------------------

    def lines(self, height: int, width: int) -> list[list[Segment]]:
        now = self.clock.seconds()
        title = f"quoted-watch  {self.url}"
        out = [_cut([(title, "head")], width), state_line(self.state, now, width), []]
        out.append(header_row(width))
        for symbol in self.order:
            if len(out) >= height - 1:
                break
            q = self.quotes.get(symbol)
            mark = self.marks.get(symbol)
            if q is None and self.served is not None and symbol not in self.served:
                note = "not served here, or not in the token's entitlement"
                out.append(quote_row(symbol, q, mark, now, width, self.up_down, note))
            else:
                trend = self.trends[symbol].values() if symbol in self.trends else []
                row = quote_row(
                    symbol, q, mark, now, width, self.up_down, trend=trend, chars=self.blocks
                )
                out.append(row)
        while len(out) < height - 1:
            out.append([])
        out.append(_cut([("q: quit", "dim")], width))
        return out[:height]

    def draw(self) -> None:
        height, width = self.screen.getmaxyx()
        self.screen.erase()
        for y, segments in enumerate(self.lines(height, width)):
            x = 0
            for text, style in segments:
                try:
                    self.screen.addstr(y, x, text, self.styles.get(style, 0))
                except curses.error:
                    break  # a terminal too small for this row
                x += len(text)
        self.screen.refresh()


class StdinReader:
    """fd 0 as a reactor reader: the board drains the keys when any are waiting."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def fileno(self) -> int:
        return 0

    def doRead(self) -> None:
        self.board.keys()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "quoted-watch stdin"


def log_failure(f: Any) -> None:
    Logger().failure("the board's redraw failed", f)


def token_source(args: argparse.Namespace) -> Callable[[], str]:
    if args.token_file:
        path = Path(args.token_file)
        return lambda: path.read_text().strip()
    token: str = args.token
    return lambda: token


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="quoted-watch", description="A live quote board for a quoted server."
    )
    p.add_argument("--url", required=True, help="ws:// or wss:// URL of /ws/quotes")
    p.add_argument("--symbols", required=True, help="comma-separated symbols, e.g. AAPL,MSFT")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--token", help="the JWT (visible in the process list: prefer a file)")
    group.add_argument("--token-file", help="a file holding the JWT; read at every refresh")
    p.add_argument("--cafile", help="PEM CA certificates to verify a wss:// server with")
    args = p.parse_args(argv)
    args.symbols = normalize_symbols(args.symbols.split(","))
    if not args.symbols:
        p.error("--symbols names no symbol")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        print("quoted-watch: needs a terminal", file=sys.stderr)
        return 2
    locale.setlocale(locale.LC_ALL, "")
    from twisted.internet import reactor  # noqa: PLC0415 (the edge: the one global reactor)

    curses.use_env(False)  # LINES/COLUMNS from the environment go stale on a resize
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        screen.nodelay(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        return _run(screen, reactor, args)
    finally:
        curses.nocbreak()
        screen.keypad(False)
        curses.echo()
        curses.endwin()


def _run(screen: Any, reactor: Any, args: argparse.Namespace) -> int:
    board = Board(screen, reactor, args.url, args.symbols)
    board.setup_colours()
    board.resize()  # the terminal's own size (ioctl), whatever LINES/COLUMNS say
    client = QuoteClient(
        args.url,
        token_source(args),
        args.symbols,
        lambda changed: board.on_update(client.quotes, changed, client.symbols),
        reactor=reactor,
        cafile=args.cafile,
        on_state=board.on_state,
    )
    ticker = LoopingCall(board.draw)
    ticker.clock = reactor

    def quit() -> None:
        reactor.removeReader(reader)
        if ticker.running:
            ticker.stop()
        d = client.stopService()
        d.addTimeout(2, reactor)
        d.addBoth(lambda _: reactor.stop())

    board.quit = quit
    reader = StdinReader(board)
    signal.signal(signal.SIGWINCH, lambda *_: reactor.callLater(0, board.resize))
    reactor.addReader(reader)
    reactor.callWhenRunning(client.startService)
    fetcher = HistoryFetcher(args.url, token_source(args), reactor=reactor, cafile=args.cafile)
    reactor.callWhenRunning(board.load_history, fetcher)
    reactor.callWhenRunning(lambda: ticker.start(1.0, now=True).addErrback(log_failure))
    reactor.run(installSignalHandlers=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
