"""Shared fixtures: a real quoted on the real reactor, per test.

A module marked ``pytest.mark.transports("ws", "wss")`` runs each test that starts a server
through these fixtures (or asks for ``transport``) once per transport: ``wss`` serves the same
configuration on ``ssl:`` with the test certificate, and the harness's clients speak TLS to
it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import LogEvent, globalLogPublisher

from quoted.server.config import Config
from tests.harness import QuotedServer, make_config, with_tls


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is None or "transport" not in metafunc.fixturenames:
        return
    metafunc.parametrize("transport", marker.args, indirect=True, scope="module")


@pytest.fixture(scope="module")
def transport(request: pytest.FixtureRequest) -> str:
    """``ws`` or ``wss``: what the servers of this test listen on (``ws`` unless the module is
    marked ``transports``)."""
    name: str = getattr(request, "param", "ws")
    assert name in ("ws", "wss"), name
    return name


@pytest_twisted.async_yield_fixture
async def start_config(transport: str) -> AsyncIterator[Callable[..., Any]]:
    """``await start_config(config)``: a started quoted on ``config`` (over TLS when the
    transport is ``wss``), stopped after the test."""
    servers: list[QuotedServer] = []

    async def start(config: Config) -> QuotedServer:
        s = QuotedServer(with_tls(config) if transport == "wss" else config)
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
async def server(transport: str) -> AsyncIterator[QuotedServer]:
    """quoted on defaults, ticking every 50 ms with every symbol moving."""
    s = QuotedServer(
        make_config(tls=transport == "wss", feed={"update_interval": 0.05, "mode": "all"})
    )
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
