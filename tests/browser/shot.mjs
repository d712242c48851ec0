// Renders a local HTML file in headless chromium and saves a PNG of its first element.
// Usage: node shot.mjs '{"page": "/abs/file.html", "out": "/abs/out.png"}'
import { chromium } from "playwright-core";

const { page: file, out } = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ deviceScaleFactor: 1 });
  await page.goto("file://" + file);
  await page.locator("pre").screenshot({ path: out });
} finally {
  await browser.close();
}
