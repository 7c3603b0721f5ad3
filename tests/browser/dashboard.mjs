// The dashboard in headless Chromium against a running service (`serve --sim` with some IB
// latency): 1,000 operations listed (time to first paint of the list), a data load started from
// the form whose progress bar moves, cancelled with its button, shown `cancelled`. A screenshot
// goes to $SCREENSHOT. Usage: BASE_URL=http://127.0.0.1:8000 SCREENSHOT=out.png node dashboard.mjs
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const base = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const screenshot = process.env.SCREENSHOT ?? "dashboard.png";

async function post(path, body) {
  const r = await fetch(base + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const text = await r.text();
  assert.equal(r.status, 200, `${path}: ${text}`);
  return JSON.parse(text);
}

// 1,000 operations to list.
const seeded = [];
for (let batch = 0; batch < 50; batch++) {
  seeded.push(...(await Promise.all(Array.from({ length: 20 }, () => post("/api/v1/dummy/start", { iterations: 1, interval_ms: 0 })))));
}
assert.equal(seeded.length, 1000);

const page_bytes = (await (await fetch(base + "/")).arrayBuffer()).byteLength;
console.log(`dashboard page weight: ${(page_bytes / 1024).toFixed(1)} KB (everything: HTML, CSS and JS in one document)`);
assert.ok(page_bytes <= 100 * 1024, "the page weighs at most 100 KB");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => { throw e; });
  await page.goto(base + "/");
  await page.waitForFunction(() => performance.getEntriesByName("operations-painted").length > 0, null, { timeout: 15000 });
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    return {
      painted: performance.getEntriesByName("operations-painted")[0].startTime,
      rendered: performance.getEntriesByName("operations-rendered")[0].startTime,
      loaded: nav.loadEventEnd,
      rows: document.querySelectorAll("#rows tr").length,
    };
  });
  const afterLoad = timing.painted - timing.loaded;
  console.log(`first paint of the list with ${timing.rows} operations: ${afterLoad.toFixed(0)} ms after load ` +
              `(${timing.painted.toFixed(0)} ms after navigation started; page loaded at ${timing.loaded.toFixed(0)} ms, list rendered at ${timing.rendered.toFixed(0)} ms)`);
  assert.ok(timing.rows >= 1000, `${timing.rows} rows`);
  assert.ok(afterLoad <= 1000, "the list paints promptly after load (the target is 300 ms; CI machines vary)");

  // Start a load from the form.
  const form = page.locator("#load-form");
  await form.getByLabel("Symbol", { exact: true }).fill("AAPL");
  await form.getByLabel("Timeframe").selectOption("1m");
  await form.getByLabel("Mode").selectOption("backfill");
  await page.locator("#load-form input[name=start_date]").fill("2024-01-01");
  await page.locator("#load-form input[name=end_date]").fill("2024-06-30");
  await page.getByRole("button", { name: "Start load" }).click();
  await page.waitForFunction(() => /Started op_data_load_/.test(document.getElementById("notice").textContent));
  const id = (await page.locator("#notice").textContent()).match(/op_data_load_\w+/)[0];
  const row = page.locator(`tr[data-id="${id}"]`);
  // Rows are replaced as updates arrive, so read the bar afresh each time.
  const percent = (id) => Number(document.querySelector(`tr[data-id="${id}"] [role=progressbar]`)?.getAttribute("aria-valuenow") ?? -1);
  const progress = () => page.evaluate(`(${percent})("${id}")`);
  await page.waitForFunction(`(${percent})("${id}") >= 31`, null, { timeout: 15000 });
  const seen = await progress();
  await page.waitForFunction(`(${percent})("${id}") > ${seen}`, null, { timeout: 15000 });
  console.log(`progress bar of ${id} moved from ${seen}% to ${await progress()}%`);

  // Cancel it with its button; the row says so.
  await row.getByRole("button", { name: `Cancel ${id}` }).click();
  await page.waitForFunction((id) => document.querySelector(`tr[data-id="${id}"] td.status`)?.textContent === "cancelled", id, { timeout: 15000 });
  const record = await (await fetch(`${base}/api/v1/operations/${id}`)).json();
  assert.equal(record.data.status, "cancelled");
  assert.equal(record.data.error_message, "Cancelled from the dashboard");

  // The details panel opens on a row, from the keyboard too.
  await row.focus();
  await page.keyboard.press("Enter");
  await page.locator("#details").waitFor({ state: "visible" });
  assert.match(await page.locator("#details-body").textContent(), /Cancellation/);
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(`dashboard test passed; screenshot at ${screenshot}`);
} finally {
  await browser.close();
}
