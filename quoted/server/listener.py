"""The server's listening port, as a service.

Twisted's ``strports.service`` builds a ``StreamServerEndpointService`` that keeps the port only
in a private attribute; this one is the same service (listen on start, a bind error raised from
``startService`` so twistd stops at once instead of running without a port, stop listening on
stop) with the port as public state, for the tests and for what reports the address.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Listener"]


class Listener(Service):
    """Listens on ``description`` (a Twisted server endpoint string) while running."""

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory) -> None:
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listen: Deferred[IListeningPort | None] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once it listens (at once if it does)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiters.append(d)
        return d

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        endpoint = serverFromString(self._reactor, self.description)
        d: Deferred[Any] = endpoint.listen(self.factory)
        failed_now: list[Failure] = []
        starting = True

        def listened(port: IListeningPort) -> IListeningPort:
            self.port = port
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(port)
            return port

        def failed(failure: Failure) -> None:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.errback(failure)
            if starting:
                failed_now.append(failure)
            elif not failure.check(CancelledError):
                self.log.failure(
                    "cannot listen on {description}",
                    failure,
                    description=self.description,
                    log_id="quoted.listener.failed",
                )

        d.addCallbacks(listened, failed)
        self._listen = d
        starting = False
        if failed_now:
            failed_now[0].raiseException()

    def startService(self) -> None:
        if self._listen is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d, self._listen = self._listen, None
        if d is None:
            return succeed(None)
        d.cancel()  # still binding (a slow endpoint): give up

        def stop(port: IListeningPort | None) -> Deferred[None] | None:
            self.port = None
            return port.stopListening() if port is not None else None

        return d.addCallback(stop)
