"""quoted.server.listener.Listener over real sockets: the port it listens on, a bind error raised
at start, and the port closed on stop."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.error import CannotListenError

from quoted.server.listener import Listener, ListenError


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
