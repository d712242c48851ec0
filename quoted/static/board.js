// quoted's browser board: one WebSocket to this page's own host (the same Origin, which quoted
// allows by default), the document kept with patch.js, a row per symbol that flashes on a move,
// with a sparkline of its last hour; a click on a row opens its chart (chart.js draws both,
// series.js keeps their history: loaded once from GET /v1/history, then extended by the stream).
// Reconnects with jittered exponential backoff; stops on the refusals the protocol says not to
// retry (docs/protocol.md sections 2 and 7). A refused handshake is invisible to a page (the
// WebSocket only closes with 1006), so the board asks GET /v1/quotes with the same token and
// symbols for the server's JSON error.

import { applyPatch, PatchError } from "./patch.js";
import { clock, drawChart, drawSparkline } from "./chart.js";
import { fetchHistory, Series } from "./series.js";

const RETRY_CODES = new Set([1001, 1006, 1011, 1013, 4008, 4029]);
const FATAL_CODES = new Set([1002, 1003, 1007, 1009]);
const BACKOFF = { initial: 500, factor: 2, max: 30000 };
const LOG_LIMIT = 5000;
const SPARK = { interval: "1m", bars: 60, ticks: 120 }; // the last hour, or ticks until 10 bars
const CHART_BARS = 120;

const $ = (id) => document.getElementById(id);
const rows = new Map();
let ws = null;
let doc = { quotes: {} };
let seq = 0;
let attempt = 0;
let retryTimer = null;
let countdown = null;
let wanted = { token: "", symbols: "" };
// the open chart: its symbol, interval, mode, series, and where its last point was drawn
let chart = null;
let drawQueued = false;
const dirty = new Set(); // rows whose sparkline waits for the next frame

// for tests and the curious: the messages applied since the last snapshot, the document, the
// sparklines' series and the chart
const log = [];
window.quotedBoard = {
  get doc() { return doc; },
  log,
  get rows() { return Object.fromEntries([...rows].map(([s, r]) => [s, r.series])); },
  get chart() { return chart; },
};

function setState(name, text) {
  const el = $("state");
  el.className = `state ${name}`;
  el.textContent = text || name;
}

function delay() {
  const ceiling = Math.min(BACKOFF.max, BACKOFF.initial * BACKOFF.factor ** attempt);
  attempt += 1;
  return ceiling * (0.5 + Math.random() / 2);
}

function retryIn(ms, reason) {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  const at = Date.now() + ms;
  const show = () => {
    const left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    setState("reconnecting", `reconnecting in ${left} s: ${reason}`);
  };
  show();
  countdown = setInterval(show, 250);
  retryTimer = setTimeout(() => {
    clearInterval(countdown);
    open();
  }, ms);
}

function fail(reason) {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  setState("failed", `failed: ${reason}`);
}

function open() {
  const { token, symbols } = wanted;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ symbols, token });
  setState("connecting");
  let opened = false;
  let openedAt = 0;
  let resync = "";
  const sock = new WebSocket(`${scheme}//${location.host}/ws/quotes?${q}`);
  ws = sock;
  sock.onopen = () => {
    opened = true;
    openedAt = Date.now();
    seq = 0;
    setState("live");
  };
  sock.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type !== "quotes_patch") return;
    if (msg.seq !== seq + 1) {
      resync = `seq ${msg.seq} after ${seq}`;
      sock.close(1000, "resynchronizing");
      return;
    }
    seq = msg.seq;
    if (seq === 1) log.length = 0;
    if (log.length < LOG_LIMIT) log.push(msg);
    try {
      render(applyPatch(doc, msg.operations), msg);
    } catch (e) {
      if (!(e instanceof PatchError)) throw e;
      resync = e.message;
      sock.close(1000, "resynchronizing");
    }
  };
  sock.onclose = (event) => {
    if (ws !== sock) return;
    ws = null;
    if (resync) return retryIn(0, `resynchronizing after ${resync}`);
    if (!opened) return refused();
    const why = `closed ${event.code}${event.reason ? ": " + event.reason : ""}`;
    if (event.code === 4001) return fail(`${why}; enter a new token`);
    const liveness = event.code === 1008 && /no pong|idle timeout/.test(event.reason);
    if (FATAL_CODES.has(event.code) || (event.code === 1008 && !liveness)) return fail(why);
    if (Date.now() - openedAt > 10000) attempt = 0; // it was stable: start the backoff again
    retryIn(delay(), RETRY_CODES.has(event.code) || liveness ? why : `${why} (unexpected)`);
  };
}

async function refused() {
  // ask the REST API with the same token why the handshake may have been refused
  const q = new URLSearchParams({ symbols: wanted.symbols });
  let status = 0;
  let error = null;
  let retryAfter = 0;
  try {
    const r = await fetch(`/v1/quotes?${q}`, {
      headers: { Authorization: `Bearer ${wanted.token}` },
      cache: "no-store",
    });
    status = r.status;
    retryAfter = Number(r.headers.get("Retry-After")) || 0;
    if (!r.ok) error = (await r.json()).error;
  } catch (e) {
    error = { code: "unreachable", message: String(e.message || e) };
  }
  const why = error ? `${status || ""} ${error.code}: ${error.message}`.trim() : "refused";
  if (status === 401 && error?.code !== "token_expired") return fail(why);
  if (status === 401) return fail(`${why}; enter a new token`);
  if (status === 400 || status === 403 || status === 404) return fail(why);
  retryIn(retryAfter * 1000 + delay(), error ? why : "the server refused the connection");
}

function render(changed, msg) {
  const quotes = doc.quotes || {};
  const tbody = $("board").tBodies[0];
  for (const symbol of changed) {
    const q = quotes[symbol];
    let row = rows.get(symbol);
    if (!q) {
      if (row) row.tr.remove();
      rows.delete(symbol);
      continue;
    }
    if (!row) {
      row = makeRow(symbol);
      rows.set(symbol, row);
      const order = [...rows.keys()].sort();
      tbody.insertBefore(row.tr, rows.get(order[order.indexOf(symbol) + 1])?.tr ?? null);
    }
    fill(row, q);
    if (row.series.add(q.last_updated, q.current_price)) queueDraw(row);
    if (chart?.symbol === symbol && chart.series.add(q.last_updated, q.current_price)) {
      queueDraw(null);
    }
  }
  const notes = [];
  if (msg.invalid_symbols?.length) notes.push(`not served: ${msg.invalid_symbols.join(", ")}`);
  if (msg.forbidden_symbols?.length) notes.push(`not entitled: ${msg.forbidden_symbols.join(", ")}`);
  if (msg.seq === 1) $("note").textContent = notes.join("; ");
}

function makeRow(symbol) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  tr.tabIndex = 0;
  tr.title = `${symbol}: open the chart`;
  tr.addEventListener("click", () => openChart(symbol));
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openChart(symbol);
    }
  });
  const cell = (cls) => {
    const td = document.createElement("td");
    td.className = cls;
    tr.append(td);
    return td;
  };
  const row = {
    tr,
    symbol: cell("symbol"),
    name: cell("name"),
    price: cell("price num"),
    arrow: cell("arrow"),
    change: cell("change num"),
    percent: cell("percent num"),
    spark: document.createElement("canvas"),
    updated: null,
    last: null,
    series: new Series(SPARK.interval, SPARK.bars, SPARK.ticks),
  };
  row.spark.className = "spark";
  row.spark.setAttribute("role", "img");
  cell("trend").append(row.spark);
  row.updated = cell("updated");
  loadSpark(row, symbol);
  return row;
}

async function loadSpark(row, symbol) {
  const { token } = wanted;
  const bars = await fetchHistory(token, symbol, SPARK.interval, SPARK.bars);
  const ticks = (bars?.bars?.length ?? 0) < 10
    ? await fetchHistory(token, symbol, "tick", SPARK.ticks) : null;
  row.series.load(bars, ticks);
  queueDraw(row);
}

// redraws wait for the next frame, so a burst of messages draws each canvas once
function queueDraw(row) {
  dirty.add(row);
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    for (const r of dirty) (r ? drawRow(r) : drawOpenChart());
    dirty.clear();
  });
}

function drawRow(row) {
  if (!row.tr.isConnected) return;
  const values = row.series.values();
  const last = drawSparkline(row.spark, values);
  const symbol = row.tr.dataset.symbol;
  const range = `${money.format(Math.min(...values))} to ${money.format(Math.max(...values))}`;
  row.spark.setAttribute("aria-label", last
    ? `${symbol} trend: ${range}, last ${money.format(last.value)}`
    : `${symbol} trend: no history yet`);
}

async function openChart(symbol, interval = chart?.interval ?? "1m", mode = chart?.mode ?? "line") {
  const series = new Series(interval, CHART_BARS);
  chart = { symbol, interval, mode, series, last: null };
  const section = $("chart");
  section.hidden = false;
  $("chart-title").textContent = `${symbol} · ${doc.quotes?.[symbol]?.name ?? ""}`;
  for (const b of section.querySelectorAll("[data-interval]")) {
    b.setAttribute("aria-pressed", String(b.dataset.interval === interval));
  }
  for (const b of section.querySelectorAll("[data-mode]")) {
    b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
  }
  for (const [s, r] of rows) r.tr.classList.toggle("selected", s === symbol);
  drawOpenChart();
  const answer = await fetchHistory(wanted.token, symbol, interval, CHART_BARS);
  if (chart?.series !== series) return; // another chart was opened meanwhile
  series.load(answer, null);
  const q = doc.quotes?.[symbol];
  if (q) series.add(q.last_updated, q.current_price);
  drawOpenChart();
}

function drawOpenChart() {
  if (!chart) return;
  const { symbol, interval, mode, series } = chart;
  chart.last = drawChart($("chart-canvas"), series.bars, series.step, mode);
  // the text alternative: the last price and its time (the quote's own stamp when the stream
  // delivered it, else the end of the last bar)
  let alt = series.loaded ? `${symbol}: no prices yet` : `${symbol}: loading history…`;
  if (chart.last) {
    const q = doc.quotes?.[symbol];
    const at = q?.current_price === chart.last.price && q.last_updated
      ? q.last_updated.slice(11, 23) : clock(chart.last.time);
    const kind = mode === "line" ? "closes" : "candles";
    alt = `${symbol} last ${money.format(chart.last.price)} at ${at} UTC ` +
      `(${interval} ${kind}, ${series.bars.length} bars)`;
  }
  chart.alt = alt;
  $("chart-canvas").setAttribute("aria-label", alt);
  $("chart-caption").textContent = alt;
}

function closeChart() {
  chart = null;
  $("chart").hidden = true;
  for (const r of rows.values()) r.tr.classList.remove("selected");
}

const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

function fill(row, q) {
  row.symbol.textContent = q.symbol;
  row.name.textContent = q.name;
  row.price.textContent = money.format(q.current_price);
  const sign = (x) => (x > 0 ? "up" : x < 0 ? "down" : "");
  row.change.textContent = (q.change > 0 ? "+" : "") + money.format(q.change);
  row.percent.textContent = (q.change_percent > 0 ? "+" : "") + q.change_percent.toFixed(2) + "%";
  row.change.className = `change num ${sign(q.change)}`;
  row.percent.className = `percent num ${sign(q.change)}`;
  row.updated.textContent = (q.last_updated || "").slice(11, 23);
  if (row.last !== null && q.current_price !== row.last) {
    const dir = q.current_price > row.last ? "up" : "down";
    row.arrow.textContent = dir === "up" ? "▲" : "▼";
    row.arrow.className = `arrow ${dir}`;
    row.price.className = "price num";
    void row.price.offsetWidth; // restart the animation
    row.price.className = `price num flash-${dir}`;
    row.tr.dataset.moved = dir;
  }
  row.last = q.current_price;
}

function connect(token, symbols) {
  if (ws) {
    const old = ws;
    ws = null;
    old.close(1000, "reconnecting");
  }
  clearTimeout(retryTimer);
  clearInterval(countdown);
  wanted = { token: token.trim(), symbols: symbols.replace(/\s+/g, "") };
  doc = { quotes: {} };
  rows.clear();
  closeChart();
  $("board").tBodies[0].replaceChildren();
  attempt = 0;
  open();
}

function start() {
  // a token in the address (?token= or #token=, as the development banner prints it) fills
  // the field, then leaves the address bar and the history
  const params = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token") || params.get("token");
  const symbols = hash.get("symbols") || params.get("symbols");
  if (symbols) $("symbols").value = symbols;
  if (token) {
    $("token").value = token;
    history.replaceState(null, "", location.pathname);
  }
  for (const b of $("chart").querySelectorAll("[data-interval]")) {
    b.addEventListener("click", () => chart && openChart(chart.symbol, b.dataset.interval));
  }
  for (const b of $("chart").querySelectorAll("[data-mode]")) {
    b.addEventListener("click", () => {
      if (!chart) return;
      chart.mode = b.dataset.mode;
      for (const m of $("chart").querySelectorAll("[data-mode]")) {
        m.setAttribute("aria-pressed", String(m === b));
      }
      drawOpenChart();
    });
  }
  $("chart-close").addEventListener("click", closeChart);
  addEventListener("resize", () => {
    for (const r of rows.values()) queueDraw(r);
    queueDraw(null);
  });
  $("connect").addEventListener("submit", (e) => {
    e.preventDefault();
    connect($("token").value, $("symbols").value);
  });
  if (token) connect(token, $("symbols").value);
}

start();
