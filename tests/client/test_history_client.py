"""QuoteClient.history against a real quoted: the parsed bars and ticks, and a refusal as a
ServerError with its code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from quoted.client.history import history_url
from quoted.client.quoteclient import QuoteClient, ServerError
from tests.harness import eventually

ensure = pytest_twisted.ensureDeferred


def test_the_history_url_is_beside_the_websocket() -> None:
    assert history_url("ws://h:8080/ws/quotes", "BTC/USD", "1m", 5) == (
        "http://h:8080/v1/history?symbol=BTC%2FUSD&interval=1m&limit=5"
    )
    assert history_url("wss://h/quoted/ws/quotes", "A", "tick", 1).startswith(
        "https://h/quoted/v1/history?"
    )


@ensure
async def test_history_is_the_server_s_bars_and_ticks(start_server: Callable[..., Any]) -> None:
    server = await start_server(feed={"update_interval": 0.02, "mode": "all"})
    seen: list[frozenset[str]] = []
    client = QuoteClient(server.url(), server.token, ["AAPL"], seen.append, reactor=reactor)
    client.startService()
    try:
        await eventually(lambda: len(server.parts.history.rows("AAPL", "tick", 10, None)) >= 3)
        await defer.maybeDeferred(server.parts.oscillator.stopService)
        bars = await client.history("AAPL")
        assert bars and set(bars[-1]) == {"time", "open", "high", "low", "close", "volume"}
        last = server.parts.store.lookup("AAPL").latest
        assert bars[-1]["close"] == last.current_price
        ticks = await client.history("AAPL", interval="tick", limit=2)
        assert [t["time"] for t in ticks][-1] == last.last_updated and len(ticks) == 2
        with pytest.raises(ServerError) as refused:
            await client.history("AAPL", interval="2m")
        assert refused.value.code == "bad_request"
        with pytest.raises(ServerError) as unknown:
            await client.history("NOPE")
        assert unknown.value.code == "unknown_symbol"
    finally:
        await client.stopService()
