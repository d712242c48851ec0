"""quoted-load's HTTP pieces: a response body reader and the one-shot GET of the REST calls
(the publisher's posts go through quoted.loadgen.publish's kept-alive pool)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

__all__ = ["Body", "http_get"]


class Body(Protocol):
    """Reads a response body to its end (so a kept-alive connection goes back to its pool);
    ``done`` fires with it, or with its first ``keep`` bytes or so, or fails on a broken
    body."""

    def __init__(self, keep: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.keep = keep
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.keep is None or self.size < self.keep:
            self.parts.append(data)
        self.size += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


async def http_get(
    reactor: Any, url: str, token: str, timeout: float, tls: IPolicyForHTTPS | None = None
) -> tuple[int, bytes]:
    """One GET with the token; (status, body); an https URL is checked by ``tls`` (the run's
    policy, see quoted.loadgen.tls). Connection errors and timeouts propagate."""
    agent = (
        Agent(reactor, connectTimeout=timeout)
        if tls is None
        else Agent(reactor, contextFactory=tls, connectTimeout=timeout)
    )
    headers = Headers({b"Authorization": [f"Bearer {token}".encode()]})
    d = agent.request(b"GET", url.encode("ascii"), headers)
    d.addTimeout(timeout, reactor)
    response = await d
    body = Body()
    response.deliverBody(body)
    body.done.addTimeout(timeout, reactor)
    return response.code, await body.done
