"""The browser board: served by quoted at ``/``, driven in Debian's headless chromium against a
real twistd child; its RFC 6902 applier (patch.js) checked against the jsonpatch library; its
sparklines and chart drawn from GET /v1/history and kept live from the stream."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import jwt
import pytest

from quoted.wire.tokens import mint_token
from tests.harness import SECRET, free_port
from tests.server.test_process import Daemon, quoted_env, running_daemon

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SYMBOLS = "AAPL,MSFT,SPY,GOOGL,BTC/USD"


def node_tools() -> str:
    """node, with tests/browser's packages installed (npm ci when node_modules is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed (.ci/run installs them: apt-get install nodejs npm)")
    if not (BROWSER_DIR / "node_modules").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=600
        )
    return node


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from running_daemon(tmp_path, "250ms")


@pytest.fixture
def publish_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A twistd quoted whose prices come only from POST /v1/quotes ([feed] source = publish)."""
    port = free_port()
    env = quoted_env(JWT_SECRET=SECRET.decode(), QUOTED_FEED_SOURCE="publish")
    workdir = tmp_path / "twistd"
    workdir.mkdir()
    d = Daemon(["--listen", f"tcp:{port}:interface=127.0.0.1"], env, workdir, port)
    try:
        d.wait_ready()
        yield d
    finally:
        d.kill()


def run_node(script: str, args: dict[str, str], record: Path) -> tuple[int, str, dict[str, Any]]:
    """``node tests/browser/SCRIPT 'ARGS'``: its exit status, output and the record it wrote."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (.ci/run installs it: apt-get install chromium)")
    node = node_tools()
    run = subprocess.run(
        [node, str(BROWSER_DIR / script), json.dumps({**args, "record": str(record)})],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(record.read_text()) if record.exists() else {}
    return run.returncode, f"{run.stdout}\n{run.stderr}", result


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.mark.slow
def test_the_page_and_its_files_are_served(daemon: Daemon) -> None:
    status, headers, body = get(daemon.port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert b'<script type="module" src="/static/board.js">' in body
    for name in ("board.js", "patch.js", "chart.js", "series.js"):
        kind = "text/javascript"
        status, headers, body = get(daemon.port, f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)
    status, _, _ = get(daemon.port, "/static/style.css")
    assert status == 200
    status, _, body = get(daemon.port, "/static/../app.py")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"


@pytest.mark.slow
def test_board_in_headless_chromium(daemon: Daemon, tmp_path: Path) -> None:
    token = mint_token(SECRET, "browser", now=time.time(), ttl=3600)
    shot = tmp_path / "board.png"
    args = {
        "base": f"http://127.0.0.1:{daemon.port}",
        "token": token,
        "symbols": SYMBOLS,
        "screenshot": str(shot),
    }
    rc, output, result = run_node("board.mjs", args, tmp_path / "record.json")
    assert rc == 0, f"{result}\n{output}\n{daemon.output()}"

    # rows for the served symbols (BTC/USD is not in the built-in list), with names and prices
    symbols = [row[0] for row in result["rows"]]
    assert symbols == ["AAPL", "GOOGL", "MSFT", "SPY"]
    assert result["rows"][0][1] == "Apple Inc."
    assert result["moveAfterMs"] <= 3000
    assert all(arrow in ("▲", "▼") for _, _, arrow in result["moved"])
    assert result["state"] == "live"
    assert result["errors"] == []
    assert shot.stat().st_size > 10_000

    # a sparkline drawn in every row, with its text alternative; a click opened the chart
    for symbol in symbols:
        assert result["spark"][symbol]["inked"] > 50, result["spark"]
        assert result["spark"][symbol]["label"].startswith(f"{symbol} trend: ")
    assert result["chartHiddenBefore"] is True
    chart = result["chart"]
    assert (chart["symbol"], chart["interval"], chart["mode"]) == ("AAPL", "1s", "candles")
    assert chart["title"].startswith("AAPL · Apple Inc.")
    assert chart["inked"] > 500
    assert chart["caption"].startswith("AAPL last ") and " UTC (1s candles, " in chart["caption"]
    assert chart["label"] == chart["caption"]

    # patch.js against jsonpatch: the same stream from {} gives the same document
    log = result["log"]
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    assert len(log) > 5
    doc: dict[str, object] = {}
    for message in log:
        doc = jsonpatch.apply_patch(doc, message["operations"])
    assert doc == result["doc"]
    assert sorted(result["doc"]["quotes"]) == symbols

    # ?token= fills the form, connects, and leaves the address bar
    assert "token" not in result["fromLocation"]["url"]
    assert result["fromLocation"]["field"] == "SPY"
    # a refused token: the server's reason, and no retry loop
    assert result["refused"].startswith("failed: 401 ")
    assert "malformed_token" in result["refused"] or "invalid_token" in result["refused"]

    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, ROOT / "docs" / "img" / "board.png")


def publisher_token() -> str:
    now = int(time.time())
    claims = {"sub": "feed", "iat": now, "exp": now + 3600, "scope": "quotes:publish"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.slow
def test_board_history_follows_published_prices(publish_daemon: Daemon, tmp_path: Path) -> None:
    args = {
        "base": f"http://127.0.0.1:{publish_daemon.port}",
        "token": mint_token(SECRET, "browser", now=time.time(), ttl=3600),
        "publisher": publisher_token(),
    }
    rc, output, result = run_node("chart.mjs", args, tmp_path / "record.json")
    assert rc == 0, f"{result}\n{output}\n{publish_daemon.output()}"
    assert result["errors"] == []

    # the sparkline started from GET /v1/history: the twelve published ticks, drawn
    ticks = result["ticks"]
    assert ticks["status"] == 200, ticks
    assert [k["price"] for k in ticks["body"]["ticks"]][-12:] == [
        180 + (i % 4) - i / 10 for i in range(12)
    ]
    spark = result["spark"]
    assert spark["source"] == "history"
    assert [p for _, p in spark["ticks"]] == [k["price"] for k in ticks["body"]["ticks"]]
    assert spark["values"] == [p for _, p in spark["ticks"]]  # ticks: fewer than 10 1m bars
    assert spark["inked"] > 50

    # the chart (opened by a click, 1s bars from history) follows each published price
    assert result["chartSource"] == "history"
    assert [f["price"] for f in result["followed"]] == [201.23, 176.5, 188.88]
    ys = []
    for f in result["followed"]:
        assert f["last"]["price"] == f["price"]
        assert f["caption"].startswith(f"AAPL last {f['shown']} at ")
        assert f["label"] == f["caption"]
        assert f["cell"] == f["shown"]
        assert f["sparkLast"] == f["price"]
        assert f["inkedAtLast"] is True
        ys.append(f["last"]["y"])
    # a lower price is drawn lower (a larger y) than the higher ones
    assert ys[1] > ys[0] and ys[1] > ys[2]
    # and what the chart drew is what the server answers for 1s bars
    bars = result["bars"]["body"]["bars"]
    assert bars[-1]["close"] == 188.88
