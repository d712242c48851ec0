"""The names of txredisapi that quoted.server.cluster.lease relies on below its documented face,
checked against the installed version (the behaviour itself is proven against a real
redis-server in test_redis.py and test_cluster.py)."""

from __future__ import annotations

import inspect

import txredisapi

from quoted.server.cluster.lease import CommandFactory, RedisTarget, SubscriberFactory


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
