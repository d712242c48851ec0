"""bench/memprobe.py N: what N idle connections cost quoted, object by object.

Runs quoted in this process (tests/harness.py), opens N connections with quoted-load
(5 of 20 symbols each, nothing ticking), then prints the RSS growth per connection, the
objects per connection by type, and the attributes left on one connection.

    .venv/bin/python bench/memprobe.py 3000
"""

import collections
import gc
import os
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import SECRET, QuotedServer, make_config

N = int(sys.argv[1])
cfg = make_config(
    feed={"update_interval": 3600.0},
    websocket={"handshake_rate_per_ip": 0.0, "user_max_connections": 100000},
)
s = QuotedServer(cfg)


def rss():
    for l in open(f"/proc/{os.getpid()}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])


def count():
    c = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return c


async def main():
    await s.start()
    gc.collect()
    base = count()
    r0 = rss()
    p = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "quoted-load"),
            "--url",
            f"ws://127.0.0.1:{s.port}",
            "--secret",
            SECRET.decode(),
            "--conns",
            str(N),
            "--symbols-per-conn",
            "5",
            "--symbols-pool",
            "20",
            "--duration",
            "8s",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from tests.harness import eventually, sleep

    await eventually(lambda: len(s.parts.pool.connections) >= N, timeout=60)
    await sleep(1)
    gc.collect()
    after = count()
    r1 = rss()
    print("rss KB", r0, r1, "per conn", (r1 - r0) * 1024 / N)
    diff = after - base
    for k, v in diff.most_common(25):
        print(f"{k:40s} {v / N:6.2f}")
    conn = next(iter(s.parts.pool.connections))
    print(len(conn.__dict__), "attrs")
    sizes = sorted(
        ((sys.getsizeof(v), k, type(v).__name__) for k, v in conn.__dict__.items()), reverse=True
    )
    for x in sizes:
        print(x)
    print("dict size", sys.getsizeof(conn.__dict__))
    p.wait()
    reactor.stop()


from twisted.internet import defer

reactor.callWhenRunning(
    lambda: defer.ensureDeferred(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
)
reactor.run()
