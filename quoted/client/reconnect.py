"""quoted.client's policies: when to reconnect, after how long, when to refresh the token.

Pure functions and values, so they are tested without a network: the documented answer to each
close code (docs/protocol.md section 7) and handshake refusal (section 2), the jittered
exponential backoff, and the moment to refresh a JWT (a minute before ``exp``, or at 80% of its
lifetime when that is sooner; ``exp`` is read without checking the signature: the server does).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import jwt

from quoted.wire.closecodes import Verdict

CONNECTING = "connecting"
LIVE = "live"
RECONNECTING = "reconnecting"
FAILED = "failed"
STOPPED = "stopped"

REFRESH_LEAD = 60.0  # refresh this long before exp...
REFRESH_AT = 0.8  # ...or at this fraction of the lifetime, whichever comes first
REFRESH_RETRY = 1.0  # after a refused refresh or an unchanged token
STABLE_AFTER = 10.0  # a connection live this long resets the backoff


@dataclass(frozen=True, slots=True)
class ClientState:
    """Where the client is, for a user interface: ``name`` is one of connecting, live,
    reconnecting, failed, stopped; ``retry_at`` is the reactor time of the next attempt."""

    name: str
    reason: str = ""
    delay: float = 0.0
    retry_at: float = 0.0

    def describe(self, now: float | None = None) -> str:
        """ "live", "reconnecting in 4 s: server_full: ...", "failed: invalid_token: ..."."""
        text = self.name
        if self.name == RECONNECTING:
            left = self.delay if now is None else max(0.0, self.retry_at - now)
            text = f"reconnecting in {math.ceil(left)} s"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True, slots=True)
class Rejection:
    """A handshake the server refused with an HTTP status and its JSON error body."""

    status: int
    code: str
    message: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with equal jitter: attempt n waits in [c/2, c), c = initial *
    factor**n capped at ``maximum``, so clients that dropped together spread out."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * (0.5 + rng.random() / 2)


def rejection_verdict(r: Rejection) -> Verdict:
    """The documented answer to a refused handshake (docs/protocol.md section 2)."""
    text = f"{r.status} {r.code}" + (f": {r.message}" if r.message else "")
    if r.status in (429, 503):
        return Verdict("retry", text, r.retry_after)
    if r.status == 401 and r.code == "token_expired":
        return Verdict("new_token", text)
    if r.status >= 500:
        return Verdict("retry", text)
    return Verdict("fatal", text)


def token_times(token: str) -> tuple[float | None, float | None]:
    """(exp, iat) of a JWT, read without checking it (the server does)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, None
    exp, iat = claims.get("exp"), claims.get("iat")
    return (
        float(exp) if isinstance(exp, int | float) else None,
        float(iat) if isinstance(iat, int | float) else None,
    )


def refresh_delay(token: str, now: float, obtained_at: float) -> float | None:
    """Seconds from ``now`` until the token should be refreshed; None without ``exp``."""
    exp, iat = token_times(token)
    if exp is None:
        return None
    lifetime = max(0.0, exp - (iat if iat is not None else obtained_at))
    lead = min(REFRESH_LEAD, lifetime * (1 - REFRESH_AT))
    return max(0.0, exp - lead - now)


def parse_rejection(status: int, headers: dict[str, str], body: bytes) -> Rejection:
    """A refused handshake from its status, headers (lower-case names) and JSON body."""
    code, message = "", ""
    try:
        error = json.loads(body)["error"]
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    retry = headers.get("retry-after", "")
    return Rejection(status, code, message, float(retry) if retry.isdigit() else 0.0)
