// The history of one symbol for the board: OHLC bars of one interval and the raw ticks, loaded
// once from GET /v1/history (docs/protocol.md, "History") and then kept live from the stream:
// each quote's current_price at its last_updated extends the current bar or opens the next, so
// the board never polls. Prices that arrive while the history is loading wait in `pending`.

export const INTERVALS = { "1s": 1000, "1m": 60000, "5m": 300000, "1h": 3600000 };

export class Series {
  constructor(interval, limit, tickLimit = 0) {
    this.interval = interval;
    this.step = INTERVALS[interval];
    this.limit = limit;
    this.tickLimit = tickLimit;
    this.bars = []; // {t, open, high, low, close}, t the bar's start in ms (UTC), oldest first
    this.ticks = []; // {t, price}
    this.loaded = false;
    this.pending = [];
    this.source = "stream"; // "history" once an answer of the endpoint was loaded
  }

  // answers of /v1/history for this interval (bars) and for interval=tick (ticks), either may be
  // null (not asked, or refused: the series then starts from the stream alone)
  load(bars, ticks) {
    if (bars?.bars) {
      this.bars = bars.bars.map((b) => ({
        t: Date.parse(b.time), open: b.open, high: b.high, low: b.low, close: b.close,
      })).filter((b) => Number.isFinite(b.t)).slice(-this.limit);
      this.source = "history";
    }
    if (ticks?.ticks && this.tickLimit) {
      this.ticks = ticks.ticks.map((k) => ({ t: Date.parse(k.time), price: k.price }))
        .filter((k) => Number.isFinite(k.t)).slice(-this.tickLimit);
      this.source = "history";
    }
    this.loaded = true;
    for (const [t, price] of this.pending.splice(0)) this.put(t, price);
  }

  // a price the stream delivered; true when the series changed
  add(time, price) {
    const t = Date.parse(time);
    if (!Number.isFinite(t) || !Number.isFinite(price)) return false;
    if (!this.loaded) {
      this.pending.push([t, price]);
      return false;
    }
    return this.put(t, price);
  }

  put(t, price) {
    let changed = false;
    const tick = this.ticks.at(-1);
    if (this.tickLimit && (!tick || t > tick.t || (t === tick.t && price !== tick.price))) {
      this.ticks.push({ t, price });
      if (this.ticks.length > this.tickLimit) this.ticks.shift();
      changed = true;
    }
    const start = t - (t % this.step);
    const bar = this.bars.at(-1);
    if (bar && start < bar.t) return changed; // older than the open bar: already in history
    if (bar && start === bar.t) {
      if (bar.close === price && bar.high >= price && bar.low <= price) return changed;
      bar.close = price;
      bar.high = Math.max(bar.high, price);
      bar.low = Math.min(bar.low, price);
    } else {
      this.bars.push({ t: start, open: price, high: price, low: price, close: price });
      if (this.bars.length > this.limit) this.bars.shift();
    }
    return true;
  }

  // what a sparkline draws: the bars' closes, or the ticks while there are fewer than `enough` bars
  values(enough = 10) {
    if (this.bars.length >= enough || this.ticks.length <= this.bars.length) {
      return this.bars.map((b) => b.close);
    }
    return this.ticks.map((k) => k.price);
  }
}

// GET /v1/history with the board's token (the same Bearer header as its GET /v1/quotes);
// the JSON answer, or null when the server refuses or has no history (older server, disabled)
export async function fetchHistory(token, symbol, interval, limit) {
  const q = new URLSearchParams({ symbol, interval, limit: String(limit) });
  try {
    const r = await fetch(`/v1/history?${q}`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}
