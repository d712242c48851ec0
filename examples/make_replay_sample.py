"""Writes quoted's synthetic replay sample, a CSV tick file, to standard output.

    python examples/make_replay_sample.py > quoted/server/feeds/sample-ticks.csv

The prices are made up (synthetic: a random walk near each built-in instrument's base price, not
market data); the seed is fixed so the file only changes when this script does. About 60 s of
ticks: one of each of the 20 built-in symbols at the start (so a replay sets every quote at
once), then a moment every 100-500 ms moving one to three symbols. Volumes are whole numbers,
each symbol's daily volume growing by a few lots a tick.
"""

from __future__ import annotations

import csv
import random
import sys
from datetime import UTC, datetime, timedelta

from quoted.server.instruments import builtin_instruments

SEED = 17
START = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)  # the New York open
DURATION_MS = 60_000
STEP = 0.0008  # the random walk's step, a fraction of the price
PULL = 0.05  # how strongly a price is pulled back towards its base each tick


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def main() -> None:
    rng = random.Random(SEED)
    instruments = builtin_instruments()
    price = {i.symbol: i.base_price for i in instruments}
    volume = {i.symbol: i.volume for i in instruments}
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["time", "symbol", "price", "volume"])

    def tick(ms: int, symbol: str, base: float) -> None:
        p = price[symbol]
        p *= 1 + rng.gauss(0, STEP)
        p += (base - p) * PULL * rng.random()
        price[symbol] = p
        volume[symbol] += rng.randint(1, 50) * 100
        when = rfc3339(START + timedelta(milliseconds=ms))
        out.writerow([when, symbol, f"{p:.2f}", volume[symbol]])

    for i in instruments:
        tick(0, i.symbol, i.base_price)
    ms = 0
    while True:
        ms += rng.randint(100, 500)
        if ms > DURATION_MS:
            break
        for i in rng.sample(instruments, rng.randint(1, 3)):
            tick(ms, i.symbol, i.base_price)


if __name__ == "__main__":
    main()
