"""quoted.client: a Python client for ``/ws/quotes`` that keeps the quote document.

``QuoteClient`` is an ``IService``: ``startService`` connects, ``stopService`` closes with 1000
and stops reconnecting. It speaks the protocol of docs/protocol.md on Autobahn's Twisted client:

* **The document.** Every ``quotes_patch`` is applied in order to ``quotes`` (a read-only view
  of ``{SYMBOL: quote}``), by a fast path for the shapes quoted sends (checked against the
  ``jsonpatch`` library by the tests) and ``jsonpatch`` for anything else. ``seq`` must grow
  by one; a gap, or a patch that does not apply, means lost state: the client reconnects and
  starts again from the snapshot. ``on_update(symbols_changed)`` follows every patch.
* **Subscriptions.** ``subscribe``/``unsubscribe`` return Deferreds that fire with the server's
  ``subscribed`` ack (matched by ``id``), or fail with :class:`ServerError`. Requests made while
  disconnected are sent once the connection opens; the symbols are kept, so every reconnect
  asks for them again in the handshake.
* **Reconnecting.** Jittered exponential backoff on the injected reactor, ``Retry-After`` on
  429/503 added; the close codes and refusals decide as quoted.wire.closecodes and
  quoted.client.reconnect document (an expired token is retried only with a new one; a refused
  request is not retried: ``failed``).
* **Token refresh.** ``token_source`` returns a token or a Deferred of one; before ``exp`` the
  client asks it again and sends the new token with ``auth``.
* **TLS.** ``wss://`` is verified against the host name (service-identity), with the platform's
  trust store or ``cafile``.
* **History.** :meth:`QuoteClient.history` asks the same server's ``GET /v1/history`` (over
  ``http``/``https`` with the same host, trust and token; twisted.web's Agent on the injected
  reactor) for a symbol's bars or ticks.

``state`` (and ``on_state``) is a :class:`ClientState` for user interfaces: connecting, live,
reconnecting in N s, failed (with the reason), stopped. Tokens never appear in logs, states or
exception messages.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote as urlquote

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.util import parse_url
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from quoted.client.history import fetch_history
from quoted.client.protocol import WireProtocol, make_factory
from quoted.client.reconnect import (
    CONNECTING,
    FAILED,
    LIVE,
    RECONNECTING,
    STOPPED,
    Backoff,
    ClientState,
    refresh_delay,
    rejection_verdict,
)
from quoted.wire.closecodes import CLOSE_NORMAL, Verdict, close_verdict
from quoted.wire.patch import PatchError, apply_operations
from quoted.wire.symbols import normalize_symbols

TokenSource = Callable[[], str | Deferred[str]]
UpdateCallback = Callable[[frozenset[str]], None]

REFRESH_RETRY = 1.0  # after a refused refresh or an unchanged token
STABLE_AFTER = 10.0  # a connection live this long resets the backoff
DEFAULT_BACKOFF = Backoff()


class ClientError(Exception):
    """A request could not be completed (the client stopped or failed)."""


class ServerError(ClientError):
    """The server answered a request with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Request:
    """A subscribe or unsubscribe awaiting its ack, and what it changed locally."""

    message: dict[str, Any]
    done: Deferred[dict[str, Any]]
    added: tuple[str, ...]
    removed: tuple[str, ...]


class QuoteClient(Service):
    """A connection to quoted's ``/ws/quotes`` that keeps ``quotes`` equal to the server's."""

    log = Logger()

    def __init__(
        self,
        url: str,
        token_source: TokenSource,
        symbols: Iterable[str],
        on_update: UpdateCallback,
        *,
        reactor: Any,
        cafile: str | None = None,
        on_state: Callable[[ClientState], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """``reactor`` provides IReactorTime and IReactorTCP; ``endpoint`` (tests) replaces
        the TCP/TLS endpoint built from the URL."""
        is_secure, host, port, _resource, _path, _params = parse_url(url)
        self.url = url.split("?", 1)[0]
        self.clock: IReactorTime = reactor
        self._reactor = reactor
        self._cafile = cafile
        self._token_source = token_source
        self._symbols = normalize_symbols(symbols)
        self._on_update = on_update
        self._on_state = on_state
        self._backoff = backoff
        self._rng = rng or random.Random()
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port)
            if is_secure:
                trust = Certificate.loadPEM(Path(cafile).read_bytes()) if cafile else None
                endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)
        self._endpoint = endpoint
        self._quotes: dict[str, Any] = {}
        self.quotes = MappingProxyType(self._quotes)
        self.state = ClientState(STOPPED)
        self.seq = 0
        self.resyncs = 0
        self._token: str | None = None
        self._token_at = 0.0
        self._proto: WireProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._retry_call: IDelayedCall | None = None
        self._refresh_call: IDelayedCall | None = None
        self._refresh_id: str | None = None
        self._refresh_token: str | None = None
        self._pending: dict[str, _Request] = {}
        self._ids = 0
        self._attempt = 0
        self._live_since: float | None = None
        self._resync_reason = ""
        self._stopped: Deferred[None] | None = None

    # -- public -----------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        """The symbols this client asks for (the server's set after each ack)."""
        return list(self._symbols)

    def subscribe(self, symbols: Iterable[str]) -> Deferred[dict[str, Any]]:
        return self._request("subscribe", symbols)

    def unsubscribe(self, symbols: Iterable[str]) -> Deferred[dict[str, Any]]:
        return self._request("unsubscribe", symbols)

    def history(
        self, symbol: str, interval: str = "1m", limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """A symbol's history from the server's ``GET /v1/history`` (docs/protocol.md): a
        Deferred of its bars (``interval`` ``1s``, ``1m``, ``5m``, ``1h``: dicts with
        ``time``, ``open``, ``high``, ``low``, ``close``, ``volume``) or ticks (``tick``:
        ``time``, ``price``, ``volume``), oldest first, the open bar last. It fails with
        :class:`ServerError` when the server refuses (its code: ``forbidden_symbols``,
        ``unknown_symbol``, ``bad_request``...), with the token source's error when it fails,
        and with the connection's error or a timeout otherwise."""

        def ask(token: Any) -> Deferred[list[dict[str, Any]]]:  # the source's str
            return fetch_history(
                self._reactor,
                self.url,
                token,
                symbol,
                interval,
                limit,
                error=ServerError,
                cafile=self._cafile,
            )

        if self._token:
            return ask(self._token)
        d: Deferred[Any] = defer.maybeDeferred(self._token_source)
        rows: Deferred[list[dict[str, Any]]] = d.addCallback(ask)
        return rows

    def startService(self) -> None:
        super().startService()
        self._attempt = 0
        self._stopped = None
        self._connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cancel_timers()
        self._fail_pending(ClientError("the client stopped"))
        d: Deferred[None] = Deferred()
        proto = self._proto
        if self._connecting is not None:
            self._connecting.cancel()
        if proto is None:
            self._set_state(ClientState(STOPPED))
            d.callback(None)
            return d
        self._stopped = d
        if proto.state == WebSocketProtocol.STATE_OPEN:
            proto.sendClose(CLOSE_NORMAL, "client stopping")
        elif proto.state != WebSocketProtocol.STATE_CLOSING:
            proto.dropConnection(abort=True)
        return d

    # -- connecting -----------------------------------------------------------

    def _connect(self) -> None:
        self._retry_call = None
        self._set_state(ClientState(CONNECTING))
        if self._token is not None:
            self._dial(self._token)
            return
        d = defer.maybeDeferred(self._token_source)
        d.addCallbacks(self._got_token, self._token_failed)

    def _got_token(self, token: str) -> None:
        if not self.running:
            return
        self._token, self._token_at = token, self.clock.seconds()
        self._dial(token)

    def _token_failed(self, f: Failure) -> None:
        if self.running:
            self._after(Verdict("retry", f"token source failed: {f.getErrorMessage()}"))

    def _dial(self, token: str) -> None:
        url = self.url
        if self._symbols:
            url += "?symbols=" + urlquote(",".join(self._symbols), safe="/,:~")
        factory = make_factory(url, token, self.clock, self)
        d = self._connecting = self._endpoint.connect(factory)

        def connected(proto: WireProtocol) -> None:
            self._connecting = None
            self._proto = proto

        def failed(f: Failure) -> None:
            self._connecting = None
            if self.running:
                self._after(Verdict("retry", f.getErrorMessage()))
            else:
                self._set_state(ClientState(STOPPED))

        d.addCallbacks(connected, failed)

    def wire_opened(self, proto: WireProtocol) -> None:
        self.seq = 0
        self._live_since = self.clock.seconds()
        self._set_state(ClientState(LIVE))
        for request in self._pending.values():
            self._send(request.message)
        self._schedule_refresh(self._token_at)

    def wire_closed(self, proto: WireProtocol, code: int | None, reason: str) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self._cancel_timers()
        if self._stopped is not None or not self.running:
            self._set_state(ClientState(STOPPED))
            if self._stopped is not None:
                d, self._stopped = self._stopped, None
                d.callback(None)
            return
        if self._live_since is not None:
            if self.clock.seconds() - self._live_since >= STABLE_AFTER:
                self._attempt = 0
            self._live_since = None
        if proto.rejection is not None:
            verdict = rejection_verdict(proto.rejection)
        elif self._resync_reason:
            verdict = Verdict("resync", self._resync_reason)
            self._resync_reason = ""
        else:
            verdict = close_verdict(code, reason)
        self._after(verdict)

    def _after(self, verdict: Verdict) -> None:
        """Act on how a connection (or an attempt) ended."""
        if verdict.action == "fatal":
            self.log.warn("quoted client failed: {reason}", reason=verdict.reason)
            self._fail_pending(ClientError(verdict.reason))
            self._set_state(ClientState(FAILED, verdict.reason))
            return
        if verdict.action == "new_token":
            old = self._token
            d = defer.maybeDeferred(self._token_source)

            def fresh(token: str) -> None:
                if not self.running:
                    return
                if token == old:
                    self._after(Verdict("fatal", f"{verdict.reason} (no new token)"))
                    return
                self._token, self._token_at = token, self.clock.seconds()
                self._schedule_retry(Verdict("retry", verdict.reason))

            d.addCallbacks(fresh, self._token_failed)
            return
        if verdict.action == "resync":
            self.resyncs += 1
            self._schedule_retry(verdict, 0.0)
            return
        self._schedule_retry(verdict)

    def _schedule_retry(self, verdict: Verdict, delay: float | None = None) -> None:
        if delay is None:
            delay = verdict.min_delay + self._backoff.delay(self._attempt, self._rng)
            self._attempt += 1
        now = self.clock.seconds()
        self._set_state(ClientState(RECONNECTING, verdict.reason, delay, now + delay))
        self._retry_call = self.clock.callLater(delay, self._connect)

    # -- messages ---------------------------------------------------------------

    def wire_message(self, proto: WireProtocol, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            self._resync(proto, "a message that is not a JSON object")
            return
        if kind == "quotes_patch":
            self._patch(proto, msg)
        elif kind == "subscribed":
            symbols = msg.get("symbols")
            if isinstance(symbols, list):
                self._symbols = [s for s in symbols if isinstance(s, str)]
            pending = self._pending.pop(str(msg.get("id")), None)
            if pending is not None:
                pending.done.callback(msg)
        elif kind == "authenticated" and msg.get("id") == self._refresh_id:
            assert self._refresh_token is not None
            self._token, self._token_at = self._refresh_token, self.clock.seconds()
            self._refresh_id = self._refresh_token = None
            self._schedule_refresh(self._token_at)
        elif kind == "error":
            self._error(msg)

    def _patch(self, proto: WireProtocol, msg: dict[str, Any]) -> None:
        seq = msg.get("seq")
        if seq != self.seq + 1:
            self._resync(proto, f"seq {seq} after {self.seq}")
            return
        self.seq = seq
        try:
            changed = apply_operations(self._quotes, msg.get("operations") or [])
        except (PatchError, KeyError, TypeError) as e:
            self._resync(proto, f"a patch that does not apply: {e}")
            return
        if seq == 1:
            dropped = set(msg.get("invalid_symbols") or []) | set(
                msg.get("forbidden_symbols") or []
            )
            self._symbols = [s for s in self._symbols if s not in dropped]
        if changed or seq == 1:
            try:
                self._on_update(frozenset(changed))
            except Exception:
                self.log.failure("on_update raised")

    def _error(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        code, text = str(msg.get("code", "")), str(msg.get("message", ""))
        if rid is not None and rid == self._refresh_id:
            self._refresh_id = self._refresh_token = None
            self.log.warn("token refresh refused: {code}", code=code)
            self._refresh_call = self.clock.callLater(REFRESH_RETRY, self._refresh)
            return
        pending = self._pending.pop(str(rid), None) if rid is not None else None
        if pending is not None:
            # refused: undo its change to the symbols asked for at the next handshake
            self._symbols = [s for s in self._symbols if s not in pending.added]
            self._symbols += [s for s in pending.removed if s not in self._symbols]
            pending.done.errback(ServerError(code, text))
        else:
            self.log.info("server error {code}: {message}", code=code, message=text)

    def _resync(self, proto: WireProtocol, why: str) -> None:
        """Lost state: close and reconnect at once for a fresh snapshot."""
        self.log.warn("resynchronizing: {why}", why=why)
        self._resync_reason = f"resynchronizing after {why}"
        proto.sendClose(CLOSE_NORMAL, "resynchronizing")

    def _request(self, kind: str, symbols: Iterable[str]) -> Deferred[dict[str, Any]]:
        syms = normalize_symbols(symbols)
        if not syms:
            return defer.fail(ValueError(f"{kind}: no symbols"))
        if not self.running or self.state.name == FAILED:
            return defer.fail(ClientError(f"{kind}: the client is {self.state.name}"))
        added = [s for s in syms if s not in self._symbols] if kind == "subscribe" else []
        removed = [s for s in syms if s in self._symbols] if kind == "unsubscribe" else []
        self._symbols = [s for s in self._symbols if s not in removed] + added
        self._ids += 1
        rid = f"{kind[:5]}-{self._ids}"
        message = {"type": kind, "id": rid, "symbols": syms}
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[rid] = _Request(message, d, tuple(added), tuple(removed))
        if self.state.name == LIVE:
            self._send(message)
        return d

    def _send(self, message: dict[str, Any]) -> None:
        proto = self._proto
        if proto is not None and proto.state == WebSocketProtocol.STATE_OPEN:
            proto.sendMessage(json.dumps(message, separators=(",", ":")).encode())

    # -- token refresh ---------------------------------------------------------

    def _schedule_refresh(self, obtained_at: float) -> None:
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        if self._token is None:
            return
        delay = refresh_delay(self._token, self.clock.seconds(), obtained_at)
        if delay is not None:
            self._refresh_call = self.clock.callLater(delay, self._refresh)

    def _refresh(self) -> None:
        self._refresh_call = None
        d = defer.maybeDeferred(self._token_source)

        def send(token: str) -> None:
            if self.state.name != LIVE or self._refresh_call is not None:
                return
            if token == self._token:
                self._refresh_call = self.clock.callLater(REFRESH_RETRY, self._refresh)
                return
            self._ids += 1
            self._refresh_id, self._refresh_token = f"auth-{self._ids}", token
            self._send({"type": "auth", "id": self._refresh_id, "token": token})

        def failed(f: Failure) -> None:
            self.log.warn("token source failed: {why}", why=f.getErrorMessage())
            if self.state.name == LIVE and self._refresh_call is None:
                self._refresh_call = self.clock.callLater(REFRESH_RETRY, self._refresh)

        d.addCallbacks(send, failed)

    # -- helpers ----------------------------------------------------------------

    def _cancel_timers(self) -> None:
        for call in (self._retry_call, self._refresh_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._refresh_call = None
        self._refresh_id = self._refresh_token = None

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.done.errback(error)

    def _set_state(self, state: ClientState) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                self.log.failure("on_state raised")
