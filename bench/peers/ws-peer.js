// bench/peers/ws-peer.js: quoted's protocol (docs/protocol.md) as far as quoted-load uses it,
// on Node's `ws`, written as a competent Node developer would: the peer that bench/peers.py
// measures quoted against, under the same load, in the same run.
//
//   node ws-peer.js --port P --instruments FILE [--interval 1] [--oscillation 1]
//                   [--cert CERT --key KEY]        (wss and https)
//
// Serves GET /ws/quotes?symbols=A,B (Authorization: Bearer <HS256 JWT>, secret JWT_SECRET):
// a quotes_patch snapshot (seq 1), then one quotes_patch a tick with the changed fields of its
// symbols; GET /v1/instruments, /v1/quotes?symbols=, /healthz and /metrics (the counters
// bench/run reads). Every symbol moves every --interval seconds, as quoted's simulator in
// mode = all. Each tick's operations are encoded once per symbol and joined per connection.
"use strict";
const fs = require("fs");
const http = require("http");
const https = require("https");
const crypto = require("crypto");
const { WebSocketServer } = require("ws");

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
const secret = Buffer.from(process.env.JWT_SECRET || "", "utf8");
const interval = Number(args.interval || 1) * 1000;
const oscillation = Number(args.oscillation || 1) / 100;
const instruments = JSON.parse(fs.readFileSync(args.instruments, "utf8"));

const quotes = new Map();
const now = () => new Date().toISOString();
for (const i of instruments) {
  const q = {
    symbol: i.symbol, name: i.name, type: i.type, current_price: i.base_price,
    base_price: i.base_price, change: 0, change_percent: 0, last_updated: now(), volume: i.volume,
  };
  if (i.market_cap) q.market_cap = i.market_cap;
  quotes.set(i.symbol, q);
}
const pointer = (s) => "/quotes/" + s.replace(/~/g, "~0").replace(/\//g, "~1");
const round2 = (x) => Math.round(x * 100) / 100;

const counters = { messages: 0, updates: 0, bytes: 0 };
const clients = new Set();

function verify(token) {
  const parts = (token || "").split(".");
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== mac.length || !crypto.timingSafeEqual(given, mac)) return null;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url"));
    claims = JSON.parse(Buffer.from(parts[1], "base64url"));
  } catch (e) { return null; }
  if (header.alg !== "HS256" || typeof claims.exp !== "number") return null;
  if (claims.exp * 1000 < Date.now() || !claims.sub) return null;
  return claims;
}

function reject(socket, status, code, message) {
  const body = JSON.stringify({ error: code, message });
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

function symbolsOf(url) {
  const s = url.searchParams.get("symbols") || "";
  return [...new Set(s.split(",").map((x) => x.trim().toUpperCase()).filter(Boolean))];
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function onRequest(req, res) {
  const url = new URL(req.url, "http://peer");
  if (url.pathname === "/healthz") return json(res, 200, { status: "ok" });
  if (url.pathname === "/metrics") {
    const text = `quoted_messages_sent_total ${counters.messages}\n` +
      `quoted_symbol_updates_delivered_total ${counters.updates}\n` +
      `quoted_bytes_sent_total ${counters.bytes}\nquoted_connections ${clients.size}\n`;
    res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" });
    return res.end(text);
  }
  const auth = req.headers.authorization || "";
  if (!verify(auth.startsWith("Bearer ") ? auth.slice(7) : "")) {
    return json(res, 401, { error: "unauthorized", message: "missing or invalid token" });
  }
  if (url.pathname === "/v1/instruments") {
    return json(res, 200, { instruments: instruments.map((i) => ({ ...i })) });
  }
  if (url.pathname === "/v1/quotes") {
    const out = {};
    for (const s of symbolsOf(url)) if (quotes.has(s)) out[s] = quotes.get(s);
    return json(res, 200, { quotes: out });
  }
  json(res, 404, { error: "not_found", message: "no such path" });
}

const server = args.cert
  ? https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, onRequest)
  : http.createServer(onRequest);
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://peer");
  if (url.pathname !== "/ws/quotes") return reject(socket, 404, "not_found", "no such path");
  const auth = req.headers.authorization || "";
  const claims = verify(auth.startsWith("Bearer ") ? auth.slice(7) : url.searchParams.get("token"));
  if (!claims) return reject(socket, 401, "unauthorized", "missing or invalid token");
  const symbols = symbolsOf(url);
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.symbols = symbols.filter((s) => quotes.has(s));
    ws.seq = 1;
    clients.add(ws);
    const ops = [{ op: "add", path: "/quotes", value: {} }];
    for (const s of ws.symbols) ops.push({ op: "add", path: pointer(s), value: quotes.get(s) });
    const invalid = symbols.filter((s) => !quotes.has(s));
    send(ws, JSON.stringify({ type: "quotes_patch", seq: 1, operations: ops,
      invalid_symbols: invalid, forbidden_symbols: [] }), ws.symbols.length);
    ws.on("message", (data) => {
      let msg;
      try { msg = JSON.parse(data); } catch (e) { return ws.close(1007, "not JSON"); }
      if (msg && msg.type === "ping") send(ws, JSON.stringify({ type: "pong", id: msg.id }), 0);
    });
    ws.on("close", () => clients.delete(ws));
    ws.on("error", () => clients.delete(ws));
  });
});

function send(ws, text, updates) {
  if (ws.bufferedAmount > 256 * 1024) return ws.terminate(); // the same budget as quoted's
  ws.send(text);
  counters.messages += 1;
  counters.updates += updates;
  counters.bytes += text.length;
}

setInterval(() => {
  const stamp = now();
  const fragments = new Map();
  for (const q of quotes.values()) {
    const price = Math.max(0.01, round2(q.base_price * (1 + (Math.random() * 2 - 1) * oscillation)));
    q.current_price = price;
    q.change = round2(price - q.base_price);
    q.change_percent = round2((100 * (price - q.base_price)) / q.base_price);
    q.last_updated = stamp;
    const p = pointer(q.symbol);
    fragments.set(q.symbol,
      `{"op":"replace","path":"${p}/current_price","value":${price}},` +
      `{"op":"replace","path":"${p}/change","value":${q.change}},` +
      `{"op":"replace","path":"${p}/change_percent","value":${q.change_percent}},` +
      `{"op":"replace","path":"${p}/last_updated","value":"${stamp}"}`);
  }
  for (const ws of clients) {
    if (ws.readyState !== 1 || ws.symbols.length === 0) continue;
    ws.seq += 1;
    const ops = ws.symbols.map((s) => fragments.get(s)).join(",");
    send(ws, `{"type":"quotes_patch","seq":${ws.seq},"operations":[${ops}]}`, ws.symbols.length);
  }
}, interval);

server.listen(Number(args.port), args.host || "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
