"""bench/memprobe.py N: what N idle connections cost quoted, object by object.

Runs quoted in this process (tests/harness.py), opens N connections with quoted-load
(5 of 20 symbols each, nothing ticking), then prints the RSS growth per connection, the
objects per connection by type, and the attributes left on one connection.

    .venv/bin/python bench/memprobe.py 3000
"""

from __future__ import annotations

import collections
import gc
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import SECRET, QuotedServer, eventually, make_config, sleep  # noqa: E402


def rss_kb() -> int:
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1])


def objects() -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


async def probe(n: int) -> None:
    server = QuotedServer(
        make_config(
            feed={"update_interval": 3600.0},
            websocket={"handshake_rate_per_ip": 0.0, "user_max_connections": 100000},
        )
    )
    await server.start()
    gc.collect()
    base, r0 = objects(), rss_kb()
    load = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "quoted-load"),
            "--url",
            f"ws://127.0.0.1:{server.port}",
            "--secret",
            SECRET.decode(),
            "--conns",
            str(n),
            "--symbols-per-conn",
            "5",
            "--symbols-pool",
            "20",
            "--duration",
            "8s",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await eventually(lambda: len(server.parts.pool.connections) >= n, timeout=60)
    await sleep(1)
    gc.collect()
    grown, r1 = objects() - base, rss_kb()
    print(f"RSS {r0} -> {r1} KB: {(r1 - r0) * 1024 / n:.0f} bytes a connection")
    for name, count in grown.most_common(25):
        print(f"{name:40s} {count / n:6.2f}")
    conn = next(iter(server.parts.pool.connections))
    print(f"{len(conn.__dict__)} attributes, instance dict {sys.getsizeof(conn.__dict__)} bytes:")
    for size, key, kind in sorted(
        ((sys.getsizeof(v), k, type(v).__name__) for k, v in conn.__dict__.items()), reverse=True
    ):
        print(f"  {size:6d} {key} ({kind})")
    load.wait()
    await server.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000

    def failed(f: Failure) -> None:
        f.printTraceback()

    def run() -> None:
        d = defer.ensureDeferred(probe(n))
        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":
    main()
