"""The dashboard in headless Chromium against a running service (`serve --sim` with some IB latency).

1,000 operations are listed (time to first paint of the list), the backtest form's refusal is
shown, a data load is started from the form, its progress bar moves, it is cancelled with its button and shown `cancelled`, then resumed
from its details as a new, linked operation. A screenshot goes to $SCREENSHOT. Playwright drives Debian's /usr/bin/chromium (no browser download).

Usage: BASE_URL=http://127.0.0.1:8000 SCREENSHOT=out.png python dashboard.py
"""

import json
import os
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import sync_playwright

BASE = os.environ.get("BASE_URL", "http://127.0.0.1:8000")
SCREENSHOT = os.environ.get("SCREENSHOT", "dashboard.png")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def fail(message):
    print(f"dashboard test FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def request(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(path, body):
    status, text = request("POST", path, body)
    check(status == 200, f"{path}: {status} {text!r}")
    return json.loads(text)


def seed_operations(count):
    """Starts `count` quick dummy operations, twenty at a time, so the list has something to show."""
    with ThreadPoolExecutor(max_workers=20) as pool:
        started = list(pool.map(lambda _: post("/api/v1/dummy/start", {"iterations": 1, "interval_ms": 0}),
                                range(count)))
    check(len(started) == count, f"{len(started)} operations seeded")


# Reads a row's progress bar afresh: rows are replaced as updates arrive.
PERCENT_JS = """(id) => Number(document.querySelector(`tr[data-id="${id}"] [role=progressbar]`)
    ?.getAttribute("aria-valuenow") ?? -1)"""


def main():
    seed_operations(1000)

    status, page_body = request("GET", "/")
    check(status == 200, f"GET / answered {status}")
    gzipped = urllib.request.Request(BASE + "/", headers={"accept-encoding": "gzip"})
    with urllib.request.urlopen(gzipped, timeout=30) as response:
        check(response.headers.get("content-encoding") == "gzip", "the page is sent gzipped to a browser")
        sent = len(response.read())
    print(f"dashboard page weight: {len(page_body) / 1024:.1f} KB, {sent / 1024:.1f} KB gzipped as browsers get it "
          f"(everything: HTML, CSS and JS in one document)")
    check(len(page_body) <= 100 * 1024, "the page weighs at most 100 KB")
    check(sent <= 40 * 1024, "the page weighs at most 40 KB compressed")

    page_errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(BASE + "/")
            page.wait_for_function("() => performance.getEntriesByName('operations-painted').length > 0",
                                   timeout=15000)
            # The first screenful paints first; the rows below it follow in the next task.
            page.wait_for_function("() => performance.getEntriesByName('operations-complete').length > 0",
                                   timeout=15000)
            timing = page.evaluate("""() => {
                const nav = performance.getEntriesByType("navigation")[0];
                return {
                    painted: performance.getEntriesByName("operations-painted")[0].startTime,
                    rendered: performance.getEntriesByName("operations-rendered")[0].startTime,
                    complete: performance.getEntriesByName("operations-complete")[0].startTime,
                    loaded: nav.loadEventEnd,
                    rows: document.querySelectorAll("#rows tr").length,
                };
            }""")
            after_load = timing["painted"] - timing["loaded"]
            print(f"first paint of the list with {timing['rows']} operations: {after_load:.0f} ms after load "
                  f"({timing['painted']:.0f} ms after navigation started; page loaded at {timing['loaded']:.0f} ms, "
                  f"first rows rendered at {timing['rendered']:.0f} ms, all rows at {timing['complete']:.0f} ms)")
            check(timing["rows"] >= 1000, f"{timing['rows']} rows")
            # The target is 300 ms; CI machines vary, so the test allows 1 s and prints the figure.
            check(after_load <= 1000, f"the list painted {after_load:.0f} ms after load")

            # The header says how the hosts are, the IB gateway included.
            page.wait_for_function("() => /gateway connected/.test(document.getElementById('hosts').textContent)",
                                   timeout=15000)

            # The strategies: the shipped example validates from its button.
            page.get_by_role("button", name="Validate").first.wait_for(timeout=15000)
            page.locator('tr[data-strategy="example_mlp"]').get_by_role("button", name="Validate").click()
            page.wait_for_function("() => /is valid/.test(document.getElementById('validation').textContent)",
                                   timeout=15000)
            print(f"strategies view: {page.locator('#validation').text_content().strip()}")

            # The fleet: a worker registered through the API shows up in its card.
            post("/api/v1/workers/register", {"worker_id": "browser-test-worker", "worker_type": "training",
                                              "endpoint_url": "http://127.0.0.1:9",
                                              "capabilities": {"gpu": True, "gpu_type": "CUDA"}})
            page.locator('tr[data-worker="browser-test-worker"]').wait_for(timeout=15000)
            check("CUDA" in page.locator('tr[data-worker="browser-test-worker"]').text_content(),
                  "the worker's GPU is shown")
            print("workers view: the registered worker is listed")

            # The backtest form sends numbers and shows the service's refusal, which names the model.
            form = page.locator("#backtest-form")
            form.locator("input[name=start_date]").fill("2024-01-01")
            form.locator("input[name=end_date]").fill("2024-03-31")
            form.locator("input[name=model_path]").fill("models/example_mlp/1h_v99")
            page.get_by_role("button", name="Start backtest").click()
            page.wait_for_function(
                "() => /Could not start the backtest: .*example_mlp.1h_v99/.test(document.getElementById('notice').textContent)",
                timeout=15000)
            print("backtest form: the refusal names the missing model")

            # Start a load from the form.
            form = page.locator("#load-form")
            form.get_by_label("Symbol", exact=True).fill("AAPL")
            form.get_by_label("Timeframe").select_option("1m")
            form.get_by_label("Mode").select_option("backfill")
            page.locator("#load-form input[name=start_date]").fill("2024-01-01")
            page.locator("#load-form input[name=end_date]").fill("2024-06-30")
            page.get_by_role("button", name="Start load").click()
            page.wait_for_function("() => /Started op_data_load_/.test(document.getElementById('notice').textContent)")
            op_id = re.search(r"op_data_load_\w+", page.locator("#notice").text_content()).group(0)
            row = page.locator(f'tr[data-id="{op_id}"]')

            def progress():
                return page.evaluate(f"({PERCENT_JS})('{op_id}')")

            # Downloading: the bar moves segment by segment from there.
            page.wait_for_function(
                "(id) => /Downloading/.test(document.querySelector(`tr[data-id=\"${id}\"] td.step`)?.textContent ?? '')",
                arg=op_id, timeout=15000)
            seen = progress()
            page.wait_for_function(f"({PERCENT_JS})('{op_id}') > {seen}", timeout=15000)
            print(f"progress bar of {op_id} moved from {seen}% to {progress()}%")

            # Cancel it with its button; the row says so.
            row.get_by_role("button", name=f"Cancel {op_id}").click()
            page.wait_for_function(
                "(id) => document.querySelector(`tr[data-id=\"${id}\"] td.status`)?.textContent === 'cancelled'",
                arg=op_id, timeout=15000)
            status, text = request("GET", f"/api/v1/operations/{op_id}")
            record = json.loads(text)["data"]
            check(record["status"] == "cancelled", f"the record says {record['status']}")
            check(record["error_message"] == "Cancelled from the dashboard",
                  f"the record's error_message is {record['error_message']!r}")

            # The details panel opens on a row, from the keyboard too.
            row.focus()
            page.keyboard.press("Enter")
            page.locator("#details").wait_for(state="visible")
            check("Cancellation" in page.locator("#details-body").text_content(),
                  "the details panel shows the cancellation")
            page.screenshot(path=SCREENSHOT, full_page=False)

            # Ended with a checkpoint: Resume (and Retry) are offered; Resume continues it under a
            # new operation whose lineage names the old one.
            details = page.locator("#details")
            details.get_by_role("button", name="Resume", exact=True).wait_for(timeout=15000)
            check(details.get_by_role("button", name="Retry", exact=True).count() == 1, "Retry is offered too")
            details.get_by_role("button", name="Resume", exact=True).click()
            page.wait_for_function(
                "() => /resumed as op_data_load_/.test(document.getElementById('notice').textContent)", timeout=15000)
            new_id = re.search(r"resumed as (op_data_load_\w+)", page.locator("#notice").text_content()).group(1)
            page.wait_for_function(
                "(id) => (document.getElementById('lineage')?.textContent ?? '').includes('Continues ' + id)",
                arg=op_id, timeout=15000)
            status, text = request("GET", f"/api/v1/operations/{new_id}")
            check(json.loads(text)["data"]["parent_operation_id"] == op_id, "the continuation names its parent")
            print(f"resumed {op_id} from the dashboard as {new_id}")

            # With the details open at 1,400 px and on a 390 px phone, the table fits its card and a
            # running operation's Cancel button is on screen.
            running = post("/api/v1/data/load", {"symbol": "MSFT", "timeframe": "1m", "mode": "backfill",
                                                 "start_date": "2024-01-01", "end_date": "2024-06-30"})
            running_id = running["data"]["operation_id"]
            for width, height in [(1400, 900), (390, 844)]:
                page.set_viewport_size({"width": width, "height": height})
                button = page.get_by_role("button", name=f"Cancel {running_id}")
                button.wait_for(state="visible", timeout=15000)
                box = button.bounding_box()
                check(box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1,
                      f"at {width} px the Cancel button is at {box} (off screen)")
                overflow = page.evaluate("() => { const w = document.querySelector('.table-wrap'); "
                                         "return w.scrollWidth - w.clientWidth; }")
                page.screenshot(path=SCREENSHOT.replace(".png", f"-{width}.png"), full_page=False)
                check(overflow <= 1, f"at {width} px the table is {overflow} px wider than its card")
                print(f"at {width} px: Cancel at x={box['x']:.0f}..{box['x'] + box['width']:.0f}, table fits its card")
                page.screenshot(path=SCREENSHOT.replace(".png", f"-{width}.png"), full_page=False)
            button.click()
            page.wait_for_function(
                "(id) => document.querySelector(`tr[data-id=\"${id}\"] td.status`)?.textContent === 'cancelled'",
                arg=running_id, timeout=15000)
        finally:
            browser.close()

    check(not page_errors, f"the page threw: {page_errors}")
    print(f"dashboard test passed; screenshot at {SCREENSHOT}")


if __name__ == "__main__":
    main()
