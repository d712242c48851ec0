"""Close codes (docs/protocol.md section 7): every code quoted sends, which a peer may send,
and what a client does after each.

The server imports the codes it closes with; the client library and the load generator import
the same names and :func:`close_verdict`, so the table is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_BAD_DATA",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_MANY_MESSAGES",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED",
    "FATAL_CLOSE_CODES",
    "RETRY_1008_REASONS",
    "RETRY_CLOSE_CODES",
    "Verdict",
    "close_payload_error",
    "close_verdict",
]

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003  # a binary message
CLOSE_NO_STATUS: Final = 1005  # a close frame without a code (never sent)
CLOSE_ABNORMAL: Final = 1006  # the connection dropped without a close frame (never sent)
CLOSE_BAD_DATA: Final = 1007  # text that is not UTF-8, or does not inflate
CLOSE_POLICY: Final = 1008  # idle, or no pong to the last ping
CLOSE_TOO_BIG: Final = 1009  # a message over 4 KiB
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_TOKEN_EXPIRED: Final = 4001
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_TOO_MANY_MESSAGES: Final = 4029

# close codes after which a reconnect (with backoff) is documented
RETRY_CLOSE_CODES: Final = frozenset(
    {
        CLOSE_GOING_AWAY,
        CLOSE_ABNORMAL,
        CLOSE_INTERNAL_ERROR,
        CLOSE_TRY_AGAIN_LATER,
        CLOSE_SLOW_CONSUMER,
        CLOSE_TOO_MANY_MESSAGES,
    }
)
# 1008 is retried only for the two documented liveness closes
RETRY_1008_REASONS: Final = ("no pong", "idle timeout")
FATAL_CLOSE_CODES: Final = frozenset(
    {CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED, CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_TOO_BIG}
)

# the codes of RFC 6455 section 7.4.1 an endpoint may send (3000-4999 are also allowed)
_CLOSE_CODES_ALLOWED: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after a connection ended: ``retry`` (after at least ``min_delay``),
    ``new_token`` (retry only with a token that differs), ``resync`` or ``fatal``."""

    action: str
    reason: str
    min_delay: float = 0.0


def close_verdict(code: int | None, reason: str) -> Verdict:
    """The documented answer to a close code (docs/protocol.md section 7)."""
    text = f"closed {code}" + (f": {reason}" if reason else "")
    if code == CLOSE_TOKEN_EXPIRED:
        return Verdict("new_token", text)
    if code == CLOSE_POLICY and any(r in reason for r in RETRY_1008_REASONS):
        return Verdict("retry", text)
    if code in FATAL_CLOSE_CODES:
        return Verdict("fatal", text)
    return Verdict("retry", text)


def close_payload_error(payload: bytes) -> tuple[int, str] | None:
    """What is wrong with a peer's close frame payload, as (close code, reason), or None.

    One byte, a code that may not be sent (reserved, 1005, 1006, below 1000, 5000 and up)
    is 1002; a reason that is not UTF-8 is 1007."""
    if not payload:
        return None
    if len(payload) == 1:
        return CLOSE_PROTOCOL_ERROR, "close payload of one byte"
    code = int.from_bytes(payload[:2], "big")
    if code not in _CLOSE_CODES_ALLOWED and not 3000 <= code <= 4999:
        return CLOSE_PROTOCOL_ERROR, "invalid close code"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_BAD_DATA, "close reason is not UTF-8"
    return None
