"""The names of txredisapi that quoted.server.cluster.lease relies on below its documented face,
checked against the installed version (the behaviour itself is proven against a real
redis-server in test_redis.py and test_cluster.py)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import txredisapi
from twisted.internet.testing import StringTransport

from quoted.server.cluster.lease import CommandFactory, RedisTarget, SubscriberFactory
from quoted.server.cluster.stream import _ReaderFactory


def test_the_factory_constructor_takes_the_keywords_we_pass() -> None:
    parameters = inspect.signature(txredisapi.RedisFactory.__init__).parameters
    for name in (
        "uuid",
        "dbid",
        "poolsize",
        "isLazy",
        "handler",
        "charset",
        "password",
        "replyTimeout",
        "convertNumbers",
        "username",
    ):
        assert name in parameters, name


def test_the_hooks_and_attributes_we_use_exist() -> None:
    target = RedisTarget(host="127.0.0.1", port=6379, tls=False, db=2, username=None, password="pw")
    factory = CommandFactory(object(), target)
    assert factory.pool == []
    for hook in ("addConnection", "delConnection"):
        assert hook in vars(txredisapi.RedisFactory), hook
    # a connection takes the database, password and reply timeout from its factory
    conn = factory.buildProtocol(None)
    assert (conn.dbid, conn.password, conn.replyTimeout) == (2, "pw", factory.replyTimeout)
    assert factory.replyTimeout > 0
    subscriber = SubscriberFactory(object(), target)
    conn = subscriber.buildProtocol(None)
    assert (conn.dbid, conn.replyTimeout) == (None, None)


class _Owner:
    def __init__(self) -> None:
        self.connected: list[Any] = []

    def _connected(self, factory: Any, conn: Any) -> None:
        self.connected.append(conn)

    def _disconnected(self, factory: Any, conn: Any) -> None:
        pass


@pytest.mark.parametrize("factory_class", [CommandFactory, _ReaderFactory])
@pytest.mark.parametrize(
    ("password", "db", "reply"),
    [(None, 3, b"-ERR DB index is out of range\r\n"), ("pw", None, b"-WRONGPASS no\r\n")],
)
def test_a_failed_select_or_auth_calls_the_hooks_we_override_and_we_keep_trying(
    factory_class: Any, password: str | None, db: int | None, reply: bytes
) -> None:
    """txredisapi's connectionMade calls ``factory.stopTrying()`` and
    ``factory.connectionError(why)`` when SELECT or AUTH fails (an error reply here; a reply
    timeout against a hung Redis takes the same path): ours do not stop the reconnecting, and
    the connection is closed, to be made again by the pool slot after its backoff."""
    target = RedisTarget(
        host="127.0.0.1", port=6379, tls=False, db=db, username=None, password=password
    )
    calls: list[str] = []

    class Spy(factory_class):  # type: ignore[misc, valid-type]
        def stopTrying(self) -> Any:
            calls.append("stopTrying")
            return super().stopTrying()

        def connectionError(self, why: str) -> None:
            calls.append("connectionError")
            super().connectionError(why)

    factory = Spy(_Owner(), target)
    conn = factory.buildProtocol(None)
    transport = StringTransport()
    conn.makeConnection(transport)
    assert transport.value().startswith(b"*2\r\n$6\r\nSELECT" if db else b"*2\r\n$4\r\nAUTH")
    conn.dataReceived(reply)
    assert calls == ["stopTrying", "connectionError"]
    assert transport.disconnecting
    assert factory.stopped is False  # still reconnecting: nothing of ours set it
    assert factory.deferred is None  # errbacked once, and consumed (logged by connectionError)


def test_disconnect_does_not_go_through_stop_trying() -> None:
    """Our stopTrying does nothing, so stopping the bridge must not rely on it."""
    target = RedisTarget(
        host="127.0.0.1", port=6379, tls=False, db=None, username=None, password=None
    )
    factory = CommandFactory(_Owner(), target)
    factory.stopTrying = None  # any call would raise
    factory.disconnect()
    assert factory.stopped and factory.disconnectCalled
