"""JSON Web Key Sets: ``[auth] jwks_url``, fetched without ever blocking the reactor.

:class:`KeySetService` fetches the set with :class:`twisted.web.client.Agent` on the injected
reactor (https with hostname verification: Agent's default ``BrowserLikePolicyForHTTPS`` checks
the name through service-identity), bounds each fetch by a timeout that cancels it, parses the
set with :class:`jwt.PyJWKSet` and keeps it:

* once at start (the daemon starts even when that fails; ``/readyz`` answers 503 until a set
  is loaded, and every token is refused meanwhile);
* every hour;
* when a token names a ``kid`` the set does not hold (key rotation), at most once per 10 s:
  the handshake waits for that fetch, then verifies again.

A failed fetch (an outage, a timeout, a bad body) keeps the set already loaded. The URL may
hold credentials: it is never logged, never put in an exception, never in a repr.

Each key's algorithms follow from its type, as for a PEM key (quoted.server.keys.algorithms_for),
narrowed to the JWK's ``alg`` when it names one. Symmetric (``oct``) keys and keys marked
``"use":"enc"`` are ignored: a published set holds public keys only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jwt
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from quoted.server.keys import algorithms_for
from quoted.server.timers import Periodic

FETCH_TIMEOUT: Final = 10.0
REFRESH_INTERVAL: Final = 3600.0
UNKNOWN_KID_INTERVAL: Final = 10.0
"""At most one fetch per this many seconds because of unknown key ids."""
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_KEYS: Final = 100


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of the set and the algorithms it may verify."""

    key: Any
    """A cryptography public key (RSA, ECDSA or Ed25519)."""
    algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeySet:
    """A parsed set: the keys with a ``kid``, and those without one."""

    by_kid: dict[str, VerificationKey]
    anonymous: tuple[VerificationKey, ...]

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.anonymous)

    def candidates(self, kid: str | None) -> tuple[VerificationKey, ...] | None:
        """The keys that may have signed a token with this ``kid``; None when the kid is
        unknown (a reason to fetch the set again). A token without a kid may be verified by
        any key of the set."""
        if kid is None:
            return tuple(self.by_kid.values()) + self.anonymous
        key = self.by_kid.get(kid)
        return None if key is None else (key,)


def parse_key_set(data: bytes) -> KeySet:
    """A JWK Set document; ValueError (never quoting the document) when it holds no usable key."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("the JWK Set is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('the JWK Set is not an object with a "keys" list')
    usable = [
        k
        for k in document["keys"][:MAX_KEYS]
        if isinstance(k, dict) and k.get("kty") != "oct" and k.get("use", "sig") == "sig"
    ]
    try:
        pyjwk_set = jwt.PyJWKSet(usable)
    except Exception:  # PyJWKSetError, and whatever a hostile document provokes
        raise ValueError("the JWK Set holds no usable public key") from None
    by_kid: dict[str, VerificationKey] = {}
    anonymous: list[VerificationKey] = []
    for jwk in pyjwk_set.keys:
        try:
            algorithms = algorithms_for(jwk.key)
        except ValueError:
            continue  # a small RSA key, an unsupported curve
        named = jwk._jwk_data.get("alg")
        if isinstance(named, str):
            if named not in algorithms:
                continue  # the JWK names an algorithm its key cannot have
            algorithms = (named,)
        vk = VerificationKey(jwk.key, algorithms)
        if isinstance(jwk.key_id, str) and jwk.key_id:
            by_kid[jwk.key_id] = vk
        else:
            anonymous.append(vk)
    if not by_kid and not anonymous:
        raise ValueError("the JWK Set holds no usable public key")
    return KeySet(by_kid, tuple(anonymous))


class FetchError(Exception):
    """A failed fetch; the message never holds the URL."""


class _BoundedBody(Protocol):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            transport: Any = self.transport
            transport.stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if self.size > self.limit:
            self.done.errback(FetchError(f"the body is larger than {self.limit} bytes"))
        elif reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(FetchError("the connection ended before the body was whole"))


class KeySetService(MultiService):
    """Fetches and caches the JWK Set of ``url``; see the module docstring.

    The fetches at start and every ``refresh_interval`` are a child timer (first call at once);
    a refresh waits for the fetch it started, which never fails.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        *,
        timeout: float = FETCH_TIMEOUT,
        refresh_interval: float = REFRESH_INTERVAL,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._url = url.encode("ascii")
        self._timeout = timeout
        self._unknown_kid_interval = unknown_kid_interval
        policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        self._agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout)
        self.keys: KeySet | None = None
        self.fetches = 0
        self.failures = 0
        self._last_unknown_kid_fetch = float("-inf")
        self._inflight: Deferred[None] | None = None
        Periodic(
            reactor,
            refresh_interval,
            self.fetch,
            failed="JWKS refresh stopped",
            log_id="quoted.jwks.refresh_stopped",
            log=self.log,
            now=True,
        ).setServiceParent(self)
        self.on_loaded: Callable[[KeySet], None] | None = None

    def __repr__(self) -> str:
        return f"<KeySetService keys={len(self.keys) if self.keys else 0}>"  # never the URL

    @property
    def loaded(self) -> bool:
        return self.keys is not None

    def stopService(self) -> Deferred[object]:
        """Stop refreshing and cancel the fetch in flight; fires once the timer has ended."""
        d: Deferred[object] = super().stopService()
        if self._inflight is not None:
            self._inflight.cancel()
        return d

    def refresh_for_unknown_kid(self) -> Deferred[None] | None:
        """A fetch for a token whose kid is unknown: the one in flight, a new one, or None
        when one started less than ``unknown_kid_interval`` seconds ago (then the token is
        refused at once)."""
        if self._inflight is not None:
            return self._inflight
        now = self._reactor.seconds()
        if now - self._last_unknown_kid_fetch < self._unknown_kid_interval:
            return None
        self._last_unknown_kid_fetch = now
        return self.fetch()

    def set_url(self, url: str) -> None:
        """Fetch from ``url`` from now on (a reload): at once when running; the keys loaded
        so far stay in use until the new set is loaded."""
        self._url = url.encode("ascii")
        if self.running:
            if self._inflight is None:
                self.fetch()
            else:  # that fetch asked the old URL
                self._inflight.addBoth(lambda _: None if not self.running else self.fetch())

    def fetch(self) -> Deferred[None]:
        """Fetch the set now (or join the fetch in flight). The Deferred fires with None when
        the attempt ends, whatever its outcome: it never fails."""
        if self._inflight is not None:
            return self._inflight
        self.fetches += 1
        request: Deferred[Any] = self._agent.request(
            b"GET", self._url, Headers({b"Accept": [b"application/json"]})
        )
        request.addCallback(self._read)
        request.addCallback(parse_key_set)
        request.addTimeout(self._timeout, self._reactor)
        d: Deferred[None] = request.addCallbacks(self._loaded, self._failed)
        self._inflight = d
        d.addBoth(self._done)
        return d

    def _read(self, response: Any) -> Deferred[bytes]:
        if response.code != 200:
            response.deliverBody(_Discard())
            raise FetchError(f"HTTP status {response.code}")
        body = _BoundedBody(MAX_BODY_BYTES)
        response.deliverBody(body)
        return body.done

    def _loaded(self, keys: KeySet) -> None:
        first = self.keys is None
        self.keys = keys
        self.log.info(
            "JWKS loaded: {count} keys",
            count=len(keys),
            first=first,
            log_id="quoted.jwks.loaded",
        )
        if self.on_loaded is not None:
            self.on_loaded(keys)

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        # Only fixed texts: exceptions of the HTTP client may quote the URL.
        if failure.check(FetchError, ValueError):
            why = str(failure.value)
        elif failure.check(TwistedTimeoutError, CancelledError):
            why = f"no answer within {self._timeout:g} s"
        else:
            why = failure.type.__name__ if failure.type else "unknown error"
        self.log.warn(
            "JWKS fetch failed ({why}); keeping {count} cached keys",
            why=why,
            count=len(self.keys) if self.keys else 0,
            log_id="quoted.jwks.fetch_failed",
        )

    def _done(self, _: object) -> None:
        self._inflight = None


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass
