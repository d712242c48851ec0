"""quoted.server.listener.Listener over real sockets: the port it listens on, a bind error raised
at start, and the port closed on stop."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.error import CannotListenError

from quoted.server import app
from quoted.server.listener import Listener, ListenError
from tests.harness import QuotedServer, make_config


def factory() -> protocol.Factory:
    return protocol.Factory.forProtocol(protocol.Protocol)


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_listens_while_running_and_tells_its_port() -> None:
    listener = Listener(reactor, "tcp:0:interface=127.0.0.1", factory())
    waiting = listener.listening()  # asked before the start: fires once it listens
    listener.startService()
    port = await waiting
    assert listener.port is port
    assert (await listener.listening()) is port
    number = port.getHost().port
    assert connects(number)
    await listener.stopService()
    assert listener.port is None
    assert not connects(number)


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_raises_from_start_service() -> None:
    first = Listener(reactor, "tcp:0:interface=127.0.0.1", factory())
    first.startService()
    number = (await first.listening()).getHost().port
    second = Listener(reactor, f"tcp:{number}:interface=127.0.0.1", factory())
    waiting = second.listening()
    with pytest.raises(ListenError, match=rf"^\[server\] listen: 127.0.0.1:{number} is in use$"):
        second.startService()
    with pytest.raises(CannotListenError):
        await waiting
    assert second.port is None
    await second.stopService()
    await first.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_before_start_is_nothing() -> None:
    listener = Listener(reactor, "tcp:0:interface=127.0.0.1", factory())
    await listener.stopService()
    assert listener.port is None


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "ssl"])
@pytest_twisted.ensureDeferred
async def test_quoted_listens_with_a_backlog_for_a_reconnect_storm(tls: bool) -> None:
    """quoted's port queues LISTEN_BACKLOG connections (the kernel's view: ss's Send-Q of a
    listening socket is its backlog), on tcp: and ssl: alike, unless the listen string names
    one; net.core.somaxconn caps it."""
    assert app.with_backlog("tcp:8080") == f"tcp:8080:backlog={app.LISTEN_BACKLOG}"
    assert app.with_backlog("ssl:443:backlog=64:privateKey=k") == "ssl:443:backlog=64:privateKey=k"
    assert app.with_backlog("unix:/run/q.sock") == "unix:/run/q.sock"
    server = QuotedServer(make_config(tls=tls))
    await server.start()
    try:
        line = subprocess.run(
            ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert line[0] == "LISTEN" and int(line[2]) == min(app.LISTEN_BACKLOG, cap), line
    finally:
        await server.stop()
