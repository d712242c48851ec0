"""The browser board: served by quoted at ``/``, driven in Debian's headless chromium against a
real twistd child; its RFC 6902 applier (patch.js) checked against the jsonpatch library."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jsonpatch
import pytest

from quoted.wire.tokens import mint_token
from tests.harness import SECRET
from tests.server.test_process import Daemon, running_daemon

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
    for name, kind in (("board.js", "text/javascript"), ("patch.js", "text/javascript")):
        status, headers, body = get(daemon.port, f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)
    status, _, _ = get(daemon.port, "/static/style.css")
    assert status == 200
    status, _, body = get(daemon.port, "/static/../app.py")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"


@pytest.mark.slow
def test_board_in_headless_chromium(daemon: Daemon, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (.ci/run installs it: apt-get install chromium)")
    node = node_tools()
    token = mint_token(SECRET, "browser", now=time.time(), ttl=3600)
    shot = tmp_path / "board.png"
    record = tmp_path / "record.json"
    args = {
        "base": f"http://127.0.0.1:{daemon.port}",
        "token": token,
        "symbols": SYMBOLS,
        "screenshot": str(shot),
        "record": str(record),
    }
    run = subprocess.run(
        [node, str(BROWSER_DIR / "board.mjs"), json.dumps(args)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(record.read_text()) if record.exists() else {}
    assert run.returncode == 0, f"{result}\n{run.stdout}\n{run.stderr}\n{daemon.output()}"

    # rows for the served symbols (BTC/USD is not in the built-in list), with names and prices
    symbols = [row[0] for row in result["rows"]]
    assert symbols == ["AAPL", "GOOGL", "MSFT", "SPY"]
    assert result["rows"][0][1] == "Apple Inc."
    assert result["moveAfterMs"] <= 3000
    assert all(arrow in ("▲", "▼") for _, _, arrow in result["moved"])
    assert result["state"] == "live"
    assert result["errors"] == []
    assert shot.stat().st_size > 10_000

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
