"""The memory and CPU cost of [history]: bytes per symbol and for N symbols at the defaults
(every ring full), and microseconds per tick of keeping it.

    .venv/bin/python bench/history_memory.py [--symbols 5000]

Memory is what tracemalloc sees allocated by the history store (its arrays, objects and
dict) and the process's RSS growth, for N symbols with every tick and bar ring filled. The
cost per tick is timeit of the path a batch of quotes takes in app.build's ``deliver``:
``apply_prices`` of a batch of 100 symbols into the quote store, with and without
``HistoryStore.record`` in front of a publish that does nothing (the difference is what
keeping history costs per quote); and ``HistoryStore.add`` alone (one tick, five rings).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import timeit
import tracemalloc

from quoted.server.config import load_config
from quoted.server.history import Bounds, HistoryStore
from quoted.server.instruments import load_instruments
from quoted.server.store import PriceAt, Quote, QuoteStore, apply_prices

T0 = 1_796_198_400_000  # 2026-12-02T08:00:00.000Z


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fill(history: HistoryStore, symbols: list[str]) -> None:
    """Enough ticks that every ring is full: one per second for as long as the 1h ring spans."""
    bounds = history.bounds
    for s in symbols:
        history.add(s, T0, 100.0, 1000)
    # one tick per bar of the widest ring fills every bar ring (each is at most that many)
    spans = [(3_600_000, bounds.bars["1h"]), (300_000, bounds.bars["5m"])]
    spans += [(60_000, bounds.bars["1m"]), (1000, bounds.bars["1s"])]
    t = T0
    for span, n in spans:
        for _ in range(n):
            t += span
            for s in symbols:
                history.add(s, t, 100.0, 1000)
    for _ in range(bounds.ticks):
        t += 1
        for s in symbols:
            history.add(s, t, 100.0, 1000)


def measure_memory(bounds: Bounds, n: int) -> dict[str, float]:
    symbols = [f"S{i:05d}" for i in range(n)]
    gc.collect()
    rss0 = rss_kib()
    tracemalloc.start()
    history = HistoryStore(bounds)
    fill(history, symbols)
    gc.collect()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_kib()
    return {
        "symbols": n,
        "bytes_per_symbol": traced / n,
        "buffers_per_symbol": history.nbytes / n,
        "declared_per_symbol": bounds.bytes_per_symbol(),
        "total_mb": traced / 1e6,
        "rss_growth_mb": (rss1 - rss0) * 1024 / 1e6,
    }


def measure_cpu(bounds: Bounds, batch: int = 100, rounds: int = 2000) -> dict[str, float]:
    store = QuoteStore(load_instruments("", batch), T0)
    entries = list(store.entries)[:batch]
    history = HistoryStore(bounds)
    clock = [T0]

    def prices() -> list[PriceAt]:
        clock[0] += 250
        price = 100.0 + (clock[0] // 250) % 7
        return [(e, price + i * 0.01, clock[0]) for i, e in enumerate(entries)]

    def nothing(quotes: list[Quote]) -> None:
        pass

    def keep(quotes: list[Quote]) -> None:
        history.record(quotes)

    def bare() -> None:
        apply_prices(prices(), nothing)

    def kept() -> None:
        apply_prices(prices(), keep)

    symbols = [e.symbol for e in entries]

    def add_only() -> None:
        clock[0] += 250
        for s in symbols:
            history.add(s, clock[0], 101.5, 1000)

    bare()
    kept()
    per = batch * rounds
    t_bare = min(timeit.repeat(bare, number=rounds, repeat=5)) / per * 1e6
    t_kept = min(timeit.repeat(kept, number=rounds, repeat=5)) / per * 1e6
    t_add = min(timeit.repeat(add_only, number=rounds, repeat=5)) / per * 1e6
    return {
        "apply_us_per_quote": t_bare,
        "apply_and_history_us_per_quote": t_kept,
        "history_us_per_tick": t_kept - t_bare,
        "add_alone_us_per_tick": t_add,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5000)
    args = parser.parse_args()
    bounds = Bounds.of(load_config(None, {}, dev=True).history)
    one = measure_memory(bounds, 1)
    many = measure_memory(bounds, args.symbols)
    cpu = measure_cpu(bounds)
    print(json.dumps({"bounds": {"ticks": bounds.ticks, **bounds.bars}, "one": one,
                      "many": many, "cpu": cpu}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
