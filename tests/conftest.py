"""Shared fixtures: a real quoted on the real reactor, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import LogEvent, globalLogPublisher

from quoted.server.config import Config
from tests.harness import QuotedServer, make_config


@pytest_twisted.async_yield_fixture
async def start_config() -> AsyncIterator[Callable[..., Any]]:
    """``await start_config(config)``: a started quoted on ``config``, stopped after the test."""
    servers: list[QuotedServer] = []

    async def start(config: Config) -> QuotedServer:
        s = QuotedServer(config)
        await s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.service.running:
            await s.stop()


@pytest.fixture
def start_server(start_config: Callable[..., Any]) -> Callable[..., Any]:
    """``await start_server(websocket={...})``: a started quoted, stopped after the test."""

    async def start(**sections: dict[str, Any]) -> QuotedServer:
        s: QuotedServer = await start_config(make_config(**sections))
        return s

    return start


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[QuotedServer]:
    """quoted on defaults, ticking every 50 ms with every symbol moving."""
    s = QuotedServer(make_config(feed={"update_interval": 0.05, "mode": "all"}))
    await s.start()
    yield s
    if s.service.running:
        await s.stop()


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
