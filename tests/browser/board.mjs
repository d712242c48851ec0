// Drives quoted's browser board in Debian's headless chromium (playwright-core).
// Usage: node board.mjs '{"base": "http://127.0.0.1:PORT", "token": "...", "symbols": "AAPL,MSFT",
//                         "screenshot": "/abs/board.png", "record": "/abs/record.json"}'
// Fills the form, waits for a row per symbol and for a price move within 3 s, for a drawn
// sparkline in every row, opens AAPL's chart with a click (1s candles), saves a screenshot,
// then writes the quotes_patch stream the page applied and its final document.
// A second page opens /?token=...&symbols=... and must connect on its own and drop the token
// from the address bar. Exits non-zero on any failure.
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { inked } from "./canvas.mjs";

const args = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const result = {};
const errors = [];
let page = null;
try {
  page = await browser.newPage({ viewport: { width: 1040, height: 420 } });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(args.base + "/");
  await page.fill("#token", args.token);
  await page.fill("#symbols", args.symbols);
  await page.click("#go");
  await page.waitForFunction(
    () => document.querySelectorAll("#board tbody tr").length > 0 &&
      document.querySelector("#state").textContent === "live",
    null,
    { timeout: 5000 },
  );
  result.rows = await page.$$eval("#board tbody tr", (trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const t0 = Date.now();
  await page.waitForSelector("#board tbody tr[data-moved] td.price[class*=flash-]", {
    timeout: 3000,
  });
  result.moveAfterMs = Date.now() - t0;
  result.moved = await page.$$eval("#board tbody tr[data-moved]", (trs) =>
    trs.map((tr) => [tr.dataset.symbol, tr.dataset.moved, tr.querySelector(".arrow").textContent]));
  // every row's sparkline has drawn pixels
  await page.waitForFunction(
    () => [...document.querySelectorAll("#board tbody canvas.spark")].every((c) => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      return d.some((v, i) => i % 4 === 3 && v > 0);
    }),
    null,
    { timeout: 5000 },
  );
  result.spark = {};
  for (const symbol of result.rows.map((r) => r[0])) {
    const sel = `#board tbody tr[data-symbol="${symbol}"] canvas.spark`;
    result.spark[symbol] = {
      inked: await inked(page, sel),
      label: await page.getAttribute(sel, "aria-label"),
    };
  }
  // a click on a row opens its chart; 1s candles, drawn while the stream goes on
  result.chartHiddenBefore = await page.isHidden("#chart");
  await page.click("#board tbody tr[data-symbol=AAPL] td.name");
  await page.waitForSelector("#chart", { state: "visible", timeout: 2000 });
  await page.click("#chart [data-interval='1s']");
  await page.click("#chart [data-mode=candles]");
  await page.waitForFunction(
    () => window.quotedBoard.chart?.interval === "1s" && window.quotedBoard.chart.series.bars.length >= 8,
    null,
    { timeout: 15000 },
  );
  result.chart = await page.evaluate(() => {
    const c = window.quotedBoard.chart;
    return { symbol: c.symbol, interval: c.interval, mode: c.mode, bars: c.series.bars.length,
      title: document.querySelector("#chart-title").textContent,
      caption: document.querySelector("#chart-caption").textContent,
      label: document.querySelector("#chart-canvas").getAttribute("aria-label") };
  });
  result.chart.inked = await inked(page, "#chart-canvas");
  await page.waitForTimeout(300);
  await page.screenshot({ path: args.screenshot, fullPage: true });
  // let a few more ticks arrive, then take the stream and the document at one instant
  await page.waitForTimeout(1000);
  Object.assign(result, await page.evaluate(() => ({
    log: window.quotedBoard.log,
    doc: window.quotedBoard.doc,
    state: document.querySelector("#state").textContent,
  })));
  result.errors = errors;

  const second = await browser.newPage();
  await second.goto(`${args.base}/?token=${encodeURIComponent(args.token)}&symbols=SPY`);
  await second.waitForSelector("#board tbody tr[data-symbol=SPY]", { timeout: 5000 });
  result.fromLocation = { url: second.url(), field: await second.inputValue("#symbols") };

  const bad = await browser.newPage();
  await bad.goto(args.base + "/");
  await bad.fill("#token", "not-a-token");
  await bad.click("#go");
  await bad.waitForFunction(
    () => document.querySelector("#state").textContent.startsWith("failed"), null,
    { timeout: 5000 },
  );
  result.refused = await bad.textContent("#state");
} catch (e) {
  result.failure = String(e);
  result.errors = errors;
  if (page) result.stateAtFailure = await page.textContent("#state").catch(() => null);
  process.exitCode = 1;
} finally {
  writeFileSync(args.record, JSON.stringify(result));
  await browser.close();
}
