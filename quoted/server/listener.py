"""The server's listening port, as a service.

Twisted's ``strports.service`` builds a ``StreamServerEndpointService`` that keeps the port only
in a private attribute; this one is the same service (listen on start, a bind error raised from
``startService`` so twistd stops at once instead of running without a port, stop listening on
stop) with the port as public state, for the tests and for what reports the address.

A port that cannot be opened raises :class:`ListenError`, one line naming the setting and the
address (``[server] listen: 127.0.0.1:8080 is in use``): twistd's start ends with it (quoted's
root service, quoted.server.tap.LoggedRoot), no traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ListenError", "Listener", "listen_problem"]


class ListenError(Exception):
    """The port could not be opened; ``str()`` is the one line a refused start prints."""


def listen_problem(setting: str, description: str, failure: Failure) -> str:
    """The line saying why ``description`` could not listen: in use, not allowed, or the
    error's own words."""
    error = failure.value
    if isinstance(error, CannotListenError):
        host, port = error.interface, error.port
        if host is None:  # a unix socket: the port is its path
            where = str(port)
        else:
            host = host or "0.0.0.0"
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        code = getattr(error.socketError, "errno", None)
        if code == errno.EADDRINUSE:
            return f"{setting}: {where} is in use"
        if code == errno.EACCES:
            return (
                f"{setting}: {where}: permission denied (a port below 1024 needs root or "
                "CAP_NET_BIND_SERVICE)"
            )
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"{setting}: cannot listen on {where}: {reason}"
    return f"{setting}: cannot listen on {description}: {failure.getErrorMessage()}"


class Listener(Service):
    """Listens on ``description`` (a Twisted server endpoint string, built by
    ``make_endpoint(reactor, description)``) while running."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        setting: str = "[server] listen",
        make_endpoint: Callable[[Any, str], Any] = serverFromString,
    ) -> None:
        self._reactor = reactor
        self.setting = setting
        self.description = description
        self.factory = factory
        self._make_endpoint = make_endpoint
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
        try:
            endpoint = self._make_endpoint(self._reactor, self.description)
        except ValueError as e:  # a TLS file or setting: the line names its setting
            raise ListenError(str(e)) from None
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
            raise ListenError(listen_problem(self.setting, self.description, failed_now[0]))

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
