"""The dashboard in headless Chromium against a running service (`serve --sim` with some IB latency).

At 1,400 px: 1,000 operations are listed (time to first paint), dummies are hidden by default,
the overview strip counts and shows the fleet and the gateway, the tabs reach the strategies and
the workers, the forms open behind "New", the backtest form shows the service's refusal, a load
started from the form says what it works on, its bar moves, it is cancelled from its row (which
then says why and offers Resume), its details put status, subject, error and actions on the first
screen and fit two screens, and Resume continues it as a new operation linked both ways. At
390 px: the first screen is the list (subject, status, progress), a tapped row opens its details
as a full-screen sheet with Cancel on it. Screenshots go to $SCREENSHOTS (a directory).
Playwright drives Debian's /usr/bin/chromium (no browser download).

Usage: BASE_URL=http://127.0.0.1:8000 SCREENSHOTS=out/ python dashboard.py
"""

import json
import os
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import sync_playwright

BASE = os.environ.get("BASE_URL", "http://127.0.0.1:8000")
SCREENSHOTS = os.environ.get("SCREENSHOTS", ".")
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


def shot(page, name):
    path = os.path.join(SCREENSHOTS, f"dashboard-{name}.png")
    page.screenshot(path=path, full_page=False)
    print(f"screenshot: {path}")


def text_of(page, selector):
    return page.locator(selector).first.text_content() or ""


def wait_text(page, selector, pattern, timeout=15000):
    """Waits until the first element matching `selector` has text matching the regex `pattern`."""
    page.wait_for_function(
        "([sel, re]) => new RegExp(re).test(document.querySelector(sel)?.textContent ?? '')",
        arg=[selector, pattern], timeout=timeout)


def main():
    os.makedirs(SCREENSHOTS, exist_ok=True)
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
            # The seeded dummies are hidden by default: this address shows them (filters live in it).
            page.goto(BASE + "/?dummies=1")
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
                    rows: document.querySelectorAll("#rows tr[data-id]").length,
                };
            }""")
            after_load = timing["painted"] - timing["loaded"]
            print(f"first paint of the list with {timing['rows']} operations: {after_load:.0f} ms after load "
                  f"({timing['painted']:.0f} ms after navigation started; page loaded at {timing['loaded']:.0f} ms, "
                  f"first rows rendered at {timing['rendered']:.0f} ms, all rows at {timing['complete']:.0f} ms)")
            check(timing["rows"] >= 1000, f"{timing['rows']} rows")
            # The target is 300 ms; CI machines vary, so the test allows 1 s and prints the figure.
            check(after_load <= 1000, f"the list painted {after_load:.0f} ms after load")
            wait_text(page, "#count", r"^1–1,000 of \d,\d\d\d$")
            print(f"paging: {text_of(page, '#count')}")

            # By default the dummies are hidden: none of the thousand is listed, and the list says so.
            page.goto(BASE + "/")
            wait_text(page, "#rows", "No operations")
            check(page.locator("#rows tr[data-id]").count() == 0, "dummies are hidden by default")

            # The overview: counts of the last 24 h, the workers, the hosts with the IB gateway.
            wait_text(page, "#ov-status", r"completed\s*1,0\d\d")
            wait_text(page, "#hosts", "gateway connected")
            wait_text(page, "#ov-workers", r"training \d+ free")
            print(f"overview: {' | '.join(text_of(page, '#' + g).strip() for g in ['ov-status', 'ov-workers', 'hosts'])}")

            # The strategies tab: the shipped example validates from its button.
            page.get_by_role("link", name="Strategies & models").click()
            page.locator('tr[data-strategy="example_mlp"]').get_by_role("button", name="Validate").click()
            wait_text(page, "#validation", "is valid")
            check(page.locator("#tab-operations").is_hidden(), "one tab at a time")
            print(f"strategies tab: {text_of(page, '#validation').strip()}")

            # The workers tab: a worker registered through the API shows up with its GPU.
            post("/api/v1/workers/register", {"worker_id": "browser-test-worker", "worker_type": "training",
                                              "endpoint_url": "http://127.0.0.1:9",
                                              "capabilities": {"gpu": True, "gpu_type": "CUDA"}})
            page.get_by_role("link", name="Workers").click()
            page.locator('tr[data-worker="browser-test-worker"]').wait_for(timeout=15000)
            check("CUDA" in page.locator('tr[data-worker="browser-test-worker"]').text_content(),
                  "the worker's GPU is shown")
            print("workers tab: the registered worker is listed")
            page.get_by_role("link", name="Operations").click()

            # The forms are behind "New". The backtest form sends numbers and shows the refusal.
            check(page.locator("#backtest-form").is_hidden(), "the forms start folded away")
            page.get_by_role("button", name="New").click()
            form = page.locator("#backtest-form")
            form.locator("input[name=start_date]").fill("2024-01-01")
            form.locator("input[name=end_date]").fill("2024-03-31")
            form.locator("input[name=model_path]").fill("models/example_mlp/1h_v99")
            page.get_by_role("button", name="Start backtest").click()
            wait_text(page, "#notice", r"Could not start the backtest: .*example_mlp.1h_v99")
            print("backtest form: the refusal names the missing model")

            # A load from the form: its row says what it works on.
            form = page.locator("#load-form")
            form.get_by_label("Symbol", exact=True).fill("AAPL")
            form.get_by_label("Timeframe").select_option("1m")
            form.get_by_label("Mode").select_option("backfill")
            form.locator("input[name=start_date]").fill("2024-01-01")
            form.locator("input[name=end_date]").fill("2024-06-30")
            page.get_by_role("button", name="Start load").click()
            wait_text(page, "#notice", "Started op_data_load_")
            op_id = re.search(r"op_data_load_\w+", text_of(page, "#notice")).group(0)
            row = page.locator(f'tr[data-id="{op_id}"]')
            row.wait_for(timeout=15000)
            check("AAPL 1m · backfill" in row.locator("td.subject").text_content(), "the row says what it loads")
            check(op_id[-8:] in row.locator("td.op").text_content(), "the row's short id is the id's distinct end")

            def progress():
                return page.evaluate(f"({PERCENT_JS})('{op_id}')")

            # Downloading: the bar moves segment by segment from there.
            wait_text(page, f'tr[data-id="{op_id}"] .step', "Downloading")
            seen = progress()
            page.wait_for_function(f"({PERCENT_JS})('{op_id}') > {seen}", timeout=15000)
            print(f"progress bar of {op_id} moved from {seen}% to {progress()}%")
            shot(page, "1400-list")

            # Cancel it from its row: the row says cancelled, why, and offers Resume.
            row.get_by_role("button", name=f"Cancel {op_id}").click()
            page.wait_for_function(
                "(id) => document.querySelector(`tr[data-id=\"${id}\"] td.status`)?.textContent === 'cancelled'",
                arg=op_id, timeout=15000)
            wait_text(page, f'tr[data-id="{op_id}"] .why', "Cancelled from the dashboard")
            row.get_by_role("button", name=f"Resume {op_id}").wait_for(timeout=15000)
            _, text = request("GET", f"/api/v1/operations/{op_id}")
            record = json.loads(text)["data"]
            check(record["status"] == "cancelled", f"the record says {record['status']}")
            check(record["error_message"] == "Cancelled from the dashboard",
                  f"the record's error_message is {record['error_message']!r}")

            # Its details, from the keyboard: the first screen holds status, subject, the reason
            # and the actions; the whole panel fits two screens.
            row.focus()
            page.keyboard.press("Enter")
            details = page.locator("#details")
            details.wait_for(state="visible")
            wait_text(page, "#details-title", "Load · AAPL 1m · backfill")
            resume = details.get_by_role("button", name="Resume", exact=True)
            resume.wait_for(timeout=15000)
            check(details.get_by_role("button", name="Retry", exact=True).count() == 1, "Retry is offered too")
            check("Cancelled: Cancelled from the dashboard" in text_of(page, "#details .error"), "the reason is shown")
            for what in [resume, page.locator("#details .error"), page.locator("#details .status")]:
                box = what.bounding_box()
                check(box is not None and box["y"] + box["height"] <= 900, f"{what} is below the first screen: {box}")
            check("Cancellation" in details.text_content(), "the cancellation is told")
            height = page.evaluate("() => document.getElementById('details').scrollHeight")
            check(height <= 2 * 900, f"the details are {height} px tall (more than two screens)")
            print(f"details at 1400 px: {height} px tall, actions and reason on the first screen")
            shot(page, "1400-details")

            # Resume continues it under a new operation; both rows and the details show the link.
            resume.click()
            wait_text(page, "#notice", "resumed as op_data_load_")
            new_id = re.search(r"resumed as (op_data_load_\w+)", text_of(page, "#notice")).group(1)
            page.wait_for_function(
                "(id) => (document.getElementById('lineage')?.textContent ?? '').includes('Continues ' + id)",
                arg=op_id, timeout=15000)
            wait_text(page, f'tr[data-id="{new_id}"] td.subject', "continues …" + op_id[-8:])
            wait_text(page, f'tr[data-id="{op_id}"] td.subject', "continued by …" + new_id[-8:])
            check(row.get_by_role("button", name=f"Resume {op_id}").count() == 0, "a resumed row offers no second resume")
            _, text = request("GET", f"/api/v1/operations/{new_id}")
            check(json.loads(text)["data"]["parent_operation_id"] == op_id, "the continuation names its parent")
            print(f"resumed {op_id} from the dashboard as {new_id}; the rows link both ways")
            request("DELETE", f"/api/v1/operations/{new_id}")

            # With the details open at 1,400 px, the table fits its card and Cancel is on screen.
            # Two years of minutes: it runs all through what follows.
            running = post("/api/v1/data/load", {"symbol": "MSFT", "timeframe": "1m", "mode": "backfill",
                                                 "start_date": "2022-01-01", "end_date": "2023-12-31"})
            running_id = running["data"]["operation_id"]
            button = page.get_by_role("button", name=f"Cancel {running_id}")
            button.wait_for(state="visible", timeout=15000)
            fits(page, button, 1400)

            # A phone: the first screen is the list, with subject, status and progress.
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            phone.on("pageerror", lambda error: page_errors.append(str(error)))
            phone.goto(BASE + "/")
            phone_row = phone.locator(f'tr[data-id="{running_id}"]')
            phone_row.wait_for(timeout=15000)
            for cell in ["td.subject", "td.status", "[role=progressbar]"]:
                check(phone_row.locator(cell).is_visible(), f"at 390 px the row shows {cell}")
            box = phone_row.bounding_box()
            check(box["y"] + box["height"] <= 844, f"at 390 px the first screen is the list (row at {box})")
            check("MSFT 1m · backfill" in phone_row.locator("td.subject").text_content(), "the phone row's subject")
            fits(phone, phone.get_by_role("button", name=f"Cancel {running_id}"), 390)
            shot(phone, "390-list")
            # A tap opens the details as a sheet over the whole screen, Cancel on its first screen.
            phone_row.locator("td.subject").tap()
            sheet = phone.locator("#details")
            sheet.wait_for(state="visible")
            wait_text(phone, "#details-title", "MSFT 1m · backfill")
            box = sheet.bounding_box()
            check(box["x"] <= 0 and box["y"] <= 0 and box["width"] >= 389 and box["height"] >= 843,
                  f"at 390 px the details cover the screen: {box}")
            cancel = sheet.get_by_role("button", name="Cancel", exact=True)
            box = cancel.bounding_box()
            check(box is not None and box["y"] + box["height"] <= 844, f"Cancel is on the sheet's first screen: {box}")
            shot(phone, "390-details")
            cancel.click()
            wait_text(phone, "#details .status", "^cancelled$")
            sheet.get_by_role("button", name="Close").click()
            sheet.wait_for(state="hidden")
            print("at 390 px: the list first, the details a full-screen sheet, cancelled from it")
            page.wait_for_function(
                "(id) => document.querySelector(`tr[data-id=\"${id}\"] td.status`)?.textContent === 'cancelled'",
                arg=running_id, timeout=15000)
        finally:
            browser.close()

    check(not page_errors, f"the page threw: {page_errors}")
    print("dashboard test passed")


def fits(page, button, width):
    """The button is on screen and the table no wider than its card."""
    box = button.bounding_box()
    check(box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1,
          f"at {width} px the Cancel button is at {box} (off screen)")
    overflow = page.evaluate("() => { const w = document.querySelector('#tab-operations .table-wrap'); "
                             "return w.scrollWidth - w.clientWidth; }")
    check(overflow <= 1, f"at {width} px the table is {overflow} px wider than its card")
    print(f"at {width} px: Cancel at x={box['x']:.0f}..{box['x'] + box['width']:.0f}, table fits its card")


if __name__ == "__main__":
    main()
