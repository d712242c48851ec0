"""Token buckets on the injected clock: handshakes per client IP, messages per connection."""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime

# beyond this many tracked addresses, unknown ones are refused for a second
# rather than letting a spoofing flood grow the table without bound
MAX_TRACKED_IPS = 100_000


class TokenBucket:
    """``rate`` tokens a second, up to ``burst``; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float) -> float:
        """Take a token: 0 when there was one, else the seconds until there is."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class IPRateLimiter:
    """Handshakes per second per client address, burst twice that; rate 0 is off."""

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = float(math.ceil(2 * rate))
        self._buckets: dict[str, TokenBucket] = {}
        self._swept = clock.seconds()

    def set_rate(self, rate: float) -> None:
        """A new rate (a reload): the buckets start again, full."""
        self._rate = rate
        self._burst = float(math.ceil(2 * rate))
        self._buckets.clear()

    def wait(self, ip: str) -> float:
        """0 when the handshake may go on, else the seconds to wait."""
        if self._rate <= 0:
            return 0.0
        now = self._clock.seconds()
        self._sweep(now)
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_IPS:
                return 1.0
            bucket = self._buckets[ip] = TokenBucket(self._rate, self._burst, now)
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        """Forget full buckets, at most once per refill period."""
        if now - self._swept < max(1.0, self._burst / self._rate):
            return
        self._swept = now
        full = [ip for ip, b in self._buckets.items() if b.refill(now) >= self._burst]
        for ip in full:
            del self._buckets[ip]

    def __len__(self) -> int:
        return len(self._buckets)
