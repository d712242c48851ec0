"""A connection's budgets: what a client may make the server buffer for it, and what it may send.

Two bounds, one per direction, so that no client, whatever it sends or fails to read, costs the
server more than a fixed amount of memory and CPU:

- **Out:** every frame the server writes to a connection (``quotes_patch``, the control replies
  ``subscribed``, ``authenticated``, ``error``, ``pong``, pong and ping frames) goes through one
  check: when more than :data:`MAX_QUEUED_BYTES` are already queued in the connection's
  transport (bytes the kernel has not taken), the frame is not written and the connection is
  closed with 4008, as a slow consumer. Price updates pause first (the push producer pauses at
  Twisted's 64 KiB and the hub conflates); the budget catches what conflation does not hold
  back: replies a client provokes and never reads.
- **In:** every frame a client sends (each fragment of a message, continuation frames of zero
  length included, ping and pong frames) takes one token of ``[websocket] message_rate``
  (:class:`FrameBudget`); a message may have at most :data:`MAX_FRAGMENTS` frames besides
  Autobahn's 4 KiB on its bytes. A fragmented message that never ends therefore meets a limit
  within a few frames, rather than growing Autobahn's per-frame list without bound.
"""

from __future__ import annotations

from typing import Final

from quoted.server.ratelimit import TokenBucket

__all__ = [
    "MAX_FRAGMENTS",
    "MAX_QUEUED_BYTES",
    "MAX_REFUSED_IN_ROW",
    "FrameBudget",
]

# bytes queued in a connection's transport beyond which it is closed 4008 instead of being
# written to (a setting would be [websocket] max_queued; a module constant until config has it)
MAX_QUEUED_BYTES: Final = 256 * 1024
# frames in one client message (a 4 KiB message needs one; browsers never fragment so small)
MAX_FRAGMENTS: Final = 64
# this many frames refused in a row by the rate limit: close 4029
MAX_REFUSED_IN_ROW: Final = 20


class FrameBudget:
    """One connection's inbound accounting, made at its first frame (idle connections hold none).

    ``rate`` frames a second, burst twice that; 0 is off (every frame admitted, the fragment
    limit still counted). ``refused`` tells whether a frame of the current message was refused:
    such a message is not processed.
    """

    __slots__ = ("_bucket", "fragments", "refused", "refused_in_row")

    def __init__(self, rate: float, now: float) -> None:
        self._bucket = TokenBucket(rate, 2 * rate, now) if rate > 0 else None
        self.refused_in_row = 0
        self.fragments = 0
        self.refused = False

    def admit(self, now: float) -> bool:
        """Take one frame's token: True when there was one (the refusals in a row restart)."""
        bucket = self._bucket
        if bucket is None or bucket.take(now) == 0.0:
            self.refused_in_row = 0
            return True
        self.refused_in_row += 1
        return False

    @property
    def flooding(self) -> bool:
        """Refused :data:`MAX_REFUSED_IN_ROW` frames in a row: the connection is to close 4029."""
        return self.refused_in_row >= MAX_REFUSED_IN_ROW

    def begin_message(self) -> None:
        self.fragments = 0
        self.refused = False

    def fragment(self) -> bool:
        """Count a data frame of the current message: False once there are too many."""
        self.fragments += 1
        return self.fragments <= MAX_FRAGMENTS
