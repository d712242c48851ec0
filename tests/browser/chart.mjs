// The board's history against a quoted whose prices come from the publish API ([feed] source =
// publish), so the test decides them: posts AAPL prices a second apart (one request each), opens
// the board, checks that AAPL's sparkline was loaded from GET /v1/history (the same ticks) and
// drawn, opens the chart with a click, then posts new prices and waits for the chart's last point
// (and its text alternative) to follow each one.
// Usage: node chart.mjs '{"base": "http://127.0.0.1:PORT", "token": "...", "publisher": "...",
//                         "record": "/abs/record.json"}'
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { inked, inkedAt } from "./canvas.mjs";

const args = JSON.parse(process.argv[2]);
const result = { followed: [] };
const errors = [];

async function publish(price, time) {
  const r = await fetch(`${args.base}/v1/quotes`, {
    method: "POST",
    headers: { Authorization: `Bearer ${args.publisher}`, "Content-Type": "application/json" },
    body: JSON.stringify({ quotes: [{ symbol: "AAPL", price, time: time.toISOString() }] }),
  });
  const body = await r.json();
  if (r.status !== 200 || body.accepted !== 1) throw new Error(`publish: ${JSON.stringify(body)}`);
}

async function history(interval) {
  const r = await fetch(`${args.base}/v1/history?symbol=AAPL&interval=${interval}&limit=120`, {
    headers: { Authorization: `Bearer ${args.token}` },
  });
  return { status: r.status, body: await r.json() };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
let page = null;
try {
  const start = Date.now() - 15000;
  for (let i = 0; i < 12; i += 1) await publish(180 + (i % 4) - i / 10, new Date(start + i * 1000));
  result.ticks = await history("tick");

  page = await browser.newPage({ viewport: { width: 1040, height: 520 } });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${args.base}/`);
  await page.fill("#token", args.token);
  await page.fill("#symbols", "AAPL,MSFT");
  await page.click("#go");
  await page.waitForFunction(() => window.quotedBoard.rows.AAPL?.loaded, null, { timeout: 5000 });
  result.spark = await page.evaluate(() => {
    const s = window.quotedBoard.rows.AAPL;
    return { source: s.source, ticks: s.ticks.map((k) => [k.t, k.price]), values: s.values() };
  });
  await page.waitForFunction(
    () => document.querySelector("tr[data-symbol=AAPL] canvas.spark").getAttribute("aria-label")
      ?.includes("last"),
    null,
    { timeout: 5000 },
  );
  result.spark.inked = await inked(page, "tr[data-symbol=AAPL] canvas.spark");

  await page.click("tr[data-symbol=AAPL]");
  await page.click("#chart [data-interval='1s']");
  await page.waitForFunction(
    () => window.quotedBoard.chart?.interval === "1s" && window.quotedBoard.chart.series.loaded &&
      window.quotedBoard.chart.last,
    null,
    { timeout: 5000 },
  );
  result.chartSource = await page.evaluate(() => window.quotedBoard.chart.series.source);
  for (const price of [201.23, 176.5, 188.88]) {
    await publish(price, new Date());
    const shown = price.toFixed(2);
    await page.waitForFunction(
      (p) => window.quotedBoard.chart.last?.price === p &&
        document.querySelector("#chart-caption").textContent.includes(p.toFixed(2)),
      price,
      { timeout: 3000 },
    );
    const state = await page.evaluate(() => ({
      last: window.quotedBoard.chart.last,
      caption: document.querySelector("#chart-caption").textContent,
      label: document.querySelector("#chart-canvas").getAttribute("aria-label"),
      cell: document.querySelector("tr[data-symbol=AAPL] td.price").textContent,
      sparkLast: window.quotedBoard.rows.AAPL.values().at(-1),
    }));
    state.inkedAtLast = await inkedAt(page, "#chart-canvas", state.last.x, state.last.y);
    result.followed.push({ price, shown, ...state });
  }
  result.bars = await history("1s");
} catch (e) {
  result.failure = String(e);
  if (page) result.stateAtFailure = await page.textContent("#state").catch(() => null);
  process.exitCode = 1;
} finally {
  result.errors = errors;
  writeFileSync(args.record, JSON.stringify(result));
  await browser.close();
}
