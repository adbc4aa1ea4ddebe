// Drives eddy's console page in headless Chromium: enter the API key, see a completed
// request, open its timeline, retry a dead letter and see it leave the list.
// Input (env): EDDY_BASE, EDDY_KEY, EDDY_CHANNEL (a completed request), EDDY_DLQ_ID (an
// entry to retry), EDDY_SCREENSHOT (where to save the page). Output: one JSON line.
import { chromium } from "playwright-core";

const { EDDY_BASE, EDDY_KEY, EDDY_CHANNEL, EDDY_DLQ_ID, EDDY_SCREENSHOT } = process.env;
const timeout = 15000;
const result = {};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(timeout);
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  await page.goto(EDDY_BASE + "/");
  result.title = await page.title();

  await page.fill("#key", EDDY_KEY);
  await page.click("#login button[type=submit]");
  const row = page.locator(`tr.row[data-channel="${EDDY_CHANNEL}"]`);
  await row.waitFor();
  result.row_status = (await row.locator("td").nth(2).textContent()).trim();

  await page.selectOption("#status", "completed");
  await page.click("#filters button[type=submit]");
  // The list is emptied while the filtered page loads, and `every` holds for no rows.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#request-rows tr")];
    return rows.length > 0 && rows.every((tr) => tr.children[2].textContent === "completed");
  });
  result.filtered_rows = await page.locator("#request-rows tr").count();

  await row.click();
  await page.locator("#detail").waitFor();
  result.timeline = await page.locator("#timeline-rows tr td:nth-child(2)").allTextContents();

  await page.click("#tab-dlq");
  const entry = page.locator(`#dlq-rows tr[data-id="${EDDY_DLQ_ID}"]`);
  await entry.waitFor();
  result.dlq_before = await page.locator("#dlq-rows tr").count();
  await entry.locator("button.retry").click();
  await entry.waitFor({ state: "detached" });
  result.dlq_after = await page.locator("#dlq-rows tr").count();
  result.error_shown = await page.locator("#error").isVisible();
  result.console_errors = consoleErrors;
  if (EDDY_SCREENSHOT) {
    await page.click("#tab-requests");
    await page.locator(`tr.row[data-channel="${EDDY_CHANNEL}"]`).click();
    await page.locator("#detail").waitFor();
    await page.screenshot({ path: EDDY_SCREENSHOT, fullPage: true });
    result.screenshot = EDDY_SCREENSHOT;
  }
  console.log(JSON.stringify(result));
} catch (e) {
  console.log(JSON.stringify({ ...result, failure: String(e && e.message || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
