// quoted's browser board: one WebSocket to this page's own host (the same Origin, which quoted
// allows by default), the document kept with patch.js, a row per symbol that flashes on a move.
// Reconnects with jittered exponential backoff; stops on the refusals the protocol says not to
// retry (docs/protocol.md sections 2 and 7). A refused handshake is invisible to a page (the
// WebSocket only closes with 1006), so the board asks GET /v1/quotes with the same token and
// symbols for the server's JSON error.

import { applyPatch, PatchError } from "./patch.js";

const RETRY_CODES = new Set([1001, 1006, 1011, 1013, 4008, 4029]);
const FATAL_CODES = new Set([1002, 1003, 1007, 1009]);
const BACKOFF = { initial: 500, factor: 2, max: 30000 };
const LOG_LIMIT = 5000;

const $ = (id) => document.getElementById(id);
const rows = new Map();
let ws = null;
let doc = { quotes: {} };
let seq = 0;
let attempt = 0;
let retryTimer = null;
let countdown = null;
let wanted = { token: "", symbols: "" };

// for tests and the curious: the messages applied since the last snapshot, and the document
const log = [];
window.quotedBoard = { get doc() { return doc; }, log };

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
  }
  const notes = [];
  if (msg.invalid_symbols?.length) notes.push(`not served: ${msg.invalid_symbols.join(", ")}`);
  if (msg.forbidden_symbols?.length) notes.push(`not entitled: ${msg.forbidden_symbols.join(", ")}`);
  if (msg.seq === 1) $("note").textContent = notes.join("; ");
}

function makeRow(symbol) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  const cell = (cls) => {
    const td = document.createElement("td");
    td.className = cls;
    tr.append(td);
    return td;
  };
  return {
    tr,
    symbol: cell("symbol"),
    name: cell("name"),
    price: cell("price num"),
    arrow: cell("arrow"),
    change: cell("change num"),
    percent: cell("percent num"),
    updated: cell("updated"),
    last: null,
  };
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
  $("connect").addEventListener("submit", (e) => {
    e.preventDefault();
    connect($("token").value, $("symbols").value);
  });
  if (token) connect(token, $("symbols").value);
}

start();
