"""[feed] source over real sockets: the replay source in a running quoted; wiring errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from quoted.server.app import build
from tests.harness import eventually, make_config

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_the_shipped_sample_replays_to_subscribers(start_server: Any) -> None:
    s = await start_server(feed={"source": "replay", "replay_speed": 50.0, "replay_loop": True})
    assert s.parts.oscillator is None and s.parts.feed is not None
    c = await s.connect("symbols=AAPL,MSFT,NVDA")
    await c.wait_type("quotes_patch")
    start = {sym: q["current_price"] for sym, q in c.quotes().items()}
    await eventually(lambda: all(c.quotes()[k]["current_price"] != v for k, v in start.items()))
    s.parts.feed.stopService()
    rest = await s.rest_quotes(["AAPL", "MSFT", "NVDA"])
    await eventually(lambda: c.quotes() == rest)
    metrics = (await s.get("/metrics")).body.decode()
    assert 'quoted_publish_items_total{result="accepted"}' in metrics
    assert 'quoted_publish_items_total{result="unknown_symbol"}' not in metrics


@ensure
async def test_a_replay_file_of_mine(start_server: Any, tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.ndjson"
    ticks.write_text(
        '{"symbol":"AAPL","price":190.5,"time":"2026-12-02T14:30:00Z","volume":10}\n'
        '{"symbol":"NOPE","price":1,"time":"2026-12-02T14:30:00.001Z"}\n'
        '{"symbol":"AAPL","price":191.25,"time":"2026-12-02T14:30:00.002Z"}\n'
    )
    s = await start_server(feed={"source": "replay", "replay_file": str(ticks)})
    await eventually(lambda: s.parts.store.lookup("AAPL").latest.current_price == 191.25)
    q = (await s.rest_quotes(["AAPL"]))["AAPL"]
    assert q["volume"] == 10
    metrics = (await s.get("/metrics")).body.decode()
    assert 'quoted_publish_items_total{result="unknown_symbol"} 1.0' in metrics


def test_a_bad_replay_file_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "time,symbol,price\n2026-12-02T14:30:01Z,AAPL,190\n2026-12-02T14:30:00Z,AAPL,191\n"
    )
    config = make_config(feed={"source": "replay", "replay_file": str(bad)})
    with pytest.raises(ValueError, match=r"^\[feed\] replay_file: .*bad.csv: line 3: "):
        build(config, reactor, manage_gc=False)


def test_no_simulator_with_another_source() -> None:
    service = build(make_config(feed={"source": "publish"}), reactor, manage_gc=False)
    assert service.parts.oscillator is None and service.parts.feed is None
