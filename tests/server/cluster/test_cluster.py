"""Several real twistd processes on one real Redis (and nginx): one market, failures survived.

Each test starts its own redis-server on a free port (without persistence) and its quoted
children with ``[redis] enabled``, ``lease_ttl = 1s`` and a 200 ms tick. Clients are the
blocking RawWS of tests.test_process, each read by a thread that applies every quotes_patch
to its document (jsonpatch) and checks that seq never skips. Measured failover times are
printed (``pytest -s``) and written to the test's properties.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from quoted.wire.tokens import mint_token
from tests.harness import SECRET, free_port
from tests.server.cluster.test_redis import Redis
from tests.server.test_process import RawWS, Spawn, WSClosed, get, quoted_env, spawn

__all__ = ["spawn"]  # the fixture, used by name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server"),
]

TTL = 1.0
TICK = 0.2
SYMBOLS = ["AAPL", "GOOGL", "MSFT", "TSLA"]
ROOT = Path(__file__).resolve().parents[3]


def token() -> str:
    return mint_token(SECRET, "cluster-test", now=time.time(), ttl=3600)


def cluster_env(redis: Redis, prefix: str = "quoted:", **extra: str) -> dict[str, str]:
    return quoted_env(
        JWT_SECRET=SECRET.decode(),
        QUOTED_REDIS_ENABLED="yes",
        QUOTED_REDIS_URL=redis.url,
        QUOTED_REDIS_PREFIX=prefix,
        QUOTED_REDIS_LEASE_TTL=f"{TTL:g}s",
        QUOTED_FEED_UPDATE_INTERVAL=f"{int(TICK * 1000)}ms",
        QUOTED_FEED_MODE="all",
        QUOTED_SERVER_SHUTDOWN_TIMEOUT="2s",
        **extra,
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``check()``; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


METRIC = re.compile(r"^(quoted_\w+) (\S+)$", re.M)


def metrics(port: int) -> dict[str, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {m[1]: float(m[2]) for m in METRIC.finditer(text)}


def leaders(ports: list[int]) -> list[int]:
    return [p for p in ports if metrics(p).get("quoted_feed_leader") == 1.0]


class Recorder:
    """A client whose thread applies every message to its document and checks seq."""

    def __init__(self, port: int, symbols: list[str] = SYMBOLS) -> None:
        self.ws = RawWS(port, "symbols=" + ",".join(symbols), token(), timeout=30)
        self.doc: dict[str, Any] = {}
        self.seqs: list[int] = []
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}  # (symbol, last_updated) -> quote
        self.arrivals: list[tuple[float, str, int]] = []  # (monotonic, symbol, last_updated ms)
        self.snapshot: dict[str, Any] = {}
        self.closed = False
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._apply(self.ws.message())
        self.snapshot = {k: dict(v) for k, v in self.doc["quotes"].items()}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._apply(self.ws.message())
        except (WSClosed, OSError):
            self.closed = True
        except BaseException as e:  # reported by check()
            self.error = e

    def _apply(self, msg: dict[str, Any]) -> None:
        assert msg["type"] == "quotes_patch", msg
        with self.lock:
            if self.seqs:
                assert msg["seq"] == self.seqs[-1] + 1, (self.seqs[-1], msg["seq"])
            self.seqs.append(msg["seq"])
            self.doc = jsonpatch.apply_patch(self.doc, msg["operations"])
            now = time.monotonic()
            for sym, q in self.doc["quotes"].items():
                key = (sym, q["last_updated"])
                if key not in self.seen:
                    self.seen[key] = dict(q)
                    self.arrivals.append((now, sym, _ms(q["last_updated"])))

    def quotes(self) -> dict[str, Any]:
        with self.lock:
            return {k: dict(v) for k, v in self.doc["quotes"].items()}

    def got_after(self, ms: int) -> bool:
        with self.lock:
            return any(t_ms > ms for _, _, t_ms in self.arrivals)

    def check(self) -> None:
        assert self.error is None, repr(self.error)

    def close(self) -> None:
        self.ws.close()


def _ms(rfc3339: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def agree(recs: list[Recorder]) -> int:
    """Quotes with the same (symbol, last_updated) are equal on every client; returns how
    many such pairs several clients hold."""
    common = 0
    keys: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in recs:
        with r.lock:
            for k, q in r.seen.items():
                keys.setdefault(k, []).append(q)
    for k, qs in keys.items():
        for q in qs[1:]:
            assert q == qs[0], (k, qs)
        common += len(qs) > 1
    return common


def rest_quotes(port: int, symbols: list[str] = SYMBOLS) -> dict[str, Any]:
    status, body = get(
        port, "/v1/quotes?symbols=" + ",".join(symbols), {"Authorization": f"Bearer {token()}"}
    )
    assert status == 200, body
    return body["quotes"]  # type: ignore[no-any-return]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path)
    yield r
    r.kill()


def start(spawn: Spawn, env: dict[str, str], n: int) -> list[Any]:
    ds = [spawn(env=env) for _ in range(n)]
    for d in ds:
        d.wait_ready()
    for d in ds:
        wait_for(lambda d=d: get(d.port, "/readyz")[0] == 200, 10, "ready")
    return ds


# -- tests ---------------------------------------------------------------------------------------


def test_three_processes_serve_one_market_with_one_leader_and_a_late_one_joins(
    spawn: Spawn, own_redis: Redis
) -> None:
    ds = start(spawn, cluster_env(own_redis), 3)
    ports = [d.port for d in ds]
    recs = [Recorder(p) for p in ports]
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader")
    time.sleep(2.0)
    assert len(leaders(ports)) == 1
    leader = leaders(ports)[0]
    for p in ports:  # ticks move on the leader only
        moved = metrics(p).get("quoted_symbol_updates_total", 0.0)
        assert (moved > 0) == (p == leader), (p, leader, moved)
    for r in recs:
        r.check()
        assert len(r.seqs) >= 5, r.seqs
    assert agree(recs) >= 5 * len(SYMBOLS)

    # a late process serves the shared market in its first snapshot, not base prices
    late = start(spawn, cluster_env(own_redis), 1)[0]
    r = Recorder(late.port)
    seen = {k for rec in recs for k in rec.seen}
    for sym, q in r.snapshot.items():
        assert (sym, q["last_updated"]) in seen, (sym, q)
    time.sleep(1.0)
    assert agree([*recs, r]) > 0
    for rec in [*recs, r]:
        rec.check()
        assert not rec.closed


def test_leader_killed_prices_flow_again_within_two_lease_times(
    spawn: Spawn, own_redis: Redis, record_property: Callable[[str, object], None]
) -> None:
    ds = start(spawn, cluster_env(own_redis), 3)
    ports = [d.port for d in ds]
    recs = {d.port: Recorder(d.port) for d in ds}
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader")
    time.sleep(1.0)
    leader = leaders(ports)[0]
    survivors = [p for p in ports if p != leader]

    victim = next(d for d in ds if d.port == leader)
    killed_ms = int(time.time() * 1000)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(5)
    # every survivor's client gets prices computed after the kill; never two leaders
    flowing = wait_for(
        lambda: (
            len(leaders(survivors)) <= 1
            and all(recs[p].got_after(killed_ms + 50) for p in survivors)
        ),
        2 * TTL + 2,
        "prices again on every survivor",
    )
    record_property("failover_seconds", round(flowing, 3))
    print(f"\nleader killed: prices flowed again on every survivor after {flowing:.2f}s")
    assert flowing <= 2 * TTL, flowing
    assert len(leaders(survivors)) == 1
    time.sleep(1.0)
    agree([recs[p] for p in survivors])
    for p in survivors:
        recs[p].check()
        assert not recs[p].closed


def test_redis_restarted_under_load_no_client_dropped_and_all_converge(
    spawn: Spawn, own_redis: Redis, record_property: Callable[[str, object], None]
) -> None:
    ds = start(spawn, cluster_env(own_redis), 3)
    ports = [d.port for d in ds]
    recs = {p: [Recorder(p), Recorder(p, SYMBOLS[:2]), Recorder(p, SYMBOLS[2:])] for p in ports}
    everyone = [r for rs in recs.values() for r in rs]
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader")
    time.sleep(1.0)

    own_redis.kill()
    down = wait_for(
        lambda: all(metrics(p)["quoted_broker_up"] == 0 for p in ports), 5, "broker_up 0"
    )
    for p in ports:
        status, body = get(p, "/readyz")
        assert (status, body["status"]) == (200, "degraded"), body
    assert leaders(ports) == []
    time.sleep(1.0)

    own_redis.start()  # empty: no persistence
    back = wait_for(
        lambda: all(metrics(p)["quoted_broker_up"] == 1 for p in ports), 10, "broker_up 1"
    )
    wait_for(lambda: len(leaders(ports)) == 1, 5, "one leader again")
    restarted_ms = int(time.time() * 1000)
    converged = wait_for(
        lambda: all(r.got_after(restarted_ms) for r in everyone), 5, "prices after the restart"
    )
    print(
        f"\nredis down noticed in {down:.2f}s; back up {back:.2f}s after restart; "
        f"prices again {converged:.2f}s after a leader"
    )
    record_property("redis_back_seconds", round(back, 3))

    def consistent() -> bool:
        for p, rs in recs.items():
            rest = rest_quotes(p)
            for r in rs:
                for sym, q in r.quotes().items():
                    if q["last_updated"] == rest[sym]["last_updated"] and q != rest[sym]:
                        raise AssertionError((p, sym, q, rest[sym]))
        return True

    time.sleep(1.0)
    assert consistent()
    # one market again: every client agrees with every other
    assert agree(everyone) > 0
    for r in everyone:
        r.check()
        assert not r.closed


def test_behind_nginx_a_client_survives_other_deaths_and_reconnects_after_its_own(
    tmp_path: Path, own_redis: Redis
) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("no nginx")
    lb = free_port()
    instance_ports = [free_port() for _ in range(3)]
    env = {
        **cluster_env(own_redis),
        "DIR": str(tmp_path / "cluster"),
        "PORT": str(lb),
        "INSTANCE_PORTS": " ".join(map(str, instance_ports)),
        "REDIS_URL": own_redis.url,
        "TWISTD": str(ROOT / ".venv" / "bin" / "twistd"),
    }
    script = str(ROOT / "scripts" / "cluster")
    out = subprocess.run(
        [script, "start"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        pids = {
            p: int((tmp_path / "cluster" / f"instance-{i}.pid").read_text())
            for i, p in enumerate(instance_ports, 1)
        }
        client = Recorder(lb)
        wait_for(
            lambda: sum(metrics(p).get("quoted_connections", 0) for p in instance_ports) == 1,
            5,
            "the client counted once",
        )
        own = next(p for p in instance_ports if metrics(p).get("quoted_connections") == 1)
        other = next(p for p in instance_ports if p != own)
        os.kill(pids[other], signal.SIGKILL)
        killed_ms = int(time.time() * 1000)
        wait_for(lambda: client.got_after(killed_ms + 2000), 2 * TTL + 3, "updates go on")
        client.check()
        assert not client.closed

        os.kill(pids[own], signal.SIGKILL)
        wait_for(lambda: client.closed, 5, "its own process died")
        again = Recorder(lb)  # nginx sends it to the live one
        assert set(again.snapshot) == set(SYMBOLS)
        live = next(p for p in instance_ports if p not in (own, other))
        assert metrics(live).get("quoted_connections") == 1
        now_ms = int(time.time() * 1000)
        wait_for(lambda: again.got_after(now_ms), 2 * TTL + 2, "updates on the live one")
        again.check()
        again.close()
        status = subprocess.run(
            [script, "status"],
            check=False,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "dead" in status.stdout, status.stdout
    finally:
        subprocess.run(
            [script, "stop"], check=False, env=env, cwd=ROOT, capture_output=True, timeout=30
        )
