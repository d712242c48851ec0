"""quoted-load's options (what quoted.loadgen.cli parses the command line into), and the
run's small shared pieces."""

from __future__ import annotations

import dataclasses
import ipaddress
import resource

__all__ = ["Options", "Unreachable", "cpu_seconds"]


class Unreachable(Exception):
    """The server did not answer at the start of the run."""


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    url: str
    host: str
    port: int
    secret: str = dataclasses.field(default="", repr=False)
    token: str = dataclasses.field(default="", repr=False)
    conns: int = 100
    symbols_per_conn: int = 5
    symbols_pool: int = 50
    duration: float = 30.0
    rate: float = 0.0
    source_ips: tuple[str, ...] = ()
    # clients behind a proxy: connection i says X-Forwarded-For: the network's i-th host
    forwarded_for: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    slow: int = 0
    churn: int = 0
    compress: bool = False
    json: bool = False
    settle: float = 1.0
    seed: int | None = None
    timeout: float = 10.0
    publish_rate: float = 0.0  # posts a second to POST /v1/quotes (0: no publisher)
    publish_symbols: int = 50  # symbols per post
    publish_token: str = dataclasses.field(default="", repr=False)
    catch_up: bool = False  # wait until the subscribers caught up before the check
    tls: bool = False  # wss:// and https://
    ca: str = ""  # PEM certificates to trust ("": the system's trust store)
    server_name: str = ""  # the name to verify and send as SNI ("": host)
    resume: bool = False  # reconnect with the previous connection's TLS session
    storm_at: float | None = None  # seconds into the window: every connection reconnects
    storm_drop: bool = False  # the storm resets the TCP connections instead of closing

    @property
    def http_base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
