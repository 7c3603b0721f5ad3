"""What the dashboard costs while loads run: the bytes the list-wide event stream sends — whole
records (the default) vs list rows (`?view=row`), and list rows gzipped as a browser gets them
(what the dashboard reads), all read at once for the same seconds — and, with Playwright installed, how busy the dashboard's main thread is in
headless Chromium over those seconds (Chrome's own task time, from the DevTools protocol).

Against a running service with simulated IB latency, e.g.
  cargo run --release -- serve --sim --sim-latency-ms 50 --listen 127.0.0.1:8000
  python3 benches/stream_weight.py            # BASE_URL, LOADS=3, SECONDS=20, CHROMIUM=/usr/bin/chromium
  LOADS=100 python3 benches/stream_weight.py
Each load is its own series (one writer per series: two loads of one series would queue): the
simulator's symbols at 1m, 5m, 15m, 30m, 1h and 2h, from 2005 to 2024 so that they run for the
whole measure; it says how many still ran at its end.
"""

import json
import os
import threading
import time
import urllib.request

BASE = os.environ.get("BASE_URL", "http://127.0.0.1:8000")
LOADS = int(os.environ.get("LOADS", "3"))
SECONDS = float(os.environ.get("SECONDS", "20"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# RECORDS=0 leaves the whole-record stream unread: on a small machine its reader competes with the
# browser for the CPU.
RECORDS = os.environ.get("RECORDS", "1") != "0"


SYMBOLS = ["AAPL", "MSFT", "SPY", "QQQ", "TSLA", "NVDA", "GOOGL", "AMZN", "IBM", "EURUSD", "GBPUSD", "USDJPY",
           "AUDUSD", "USDCHF", "EURGBP"]
TIMEFRAMES = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]


def start_load(i):
    symbol, timeframe = SYMBOLS[i % len(SYMBOLS)], TIMEFRAMES[i // len(SYMBOLS)]
    body = {"symbol": symbol, "timeframe": timeframe, "mode": "backfill", "start_date": "2005-06-01",
            "end_date": "2024-12-31"}
    request = urllib.request.Request(BASE + "/api/v1/data/load", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["operation_id"]


def read_stream(path, totals, key, ready, gzip=False):
    headers = {"accept": "text/event-stream"}
    if gzip:
        headers["accept-encoding"] = "gzip"
    request = urllib.request.Request(BASE + path, headers=headers)
    with urllib.request.urlopen(request, timeout=SECONDS + 30) as response:
        ready.wait()
        began = time.monotonic()
        while time.monotonic() - began < SECONDS:
            chunk = response.read1(65536)
            if not chunk:
                break
            totals[key] += len(chunk)
            totals[key + "_events"] += chunk.count(b"event: operation")


def main_thread_busy(ready, result):
    """The dashboard open in Chromium over the measured seconds: the share of them its main
    thread spent on tasks (script, style, layout, paint)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        result["skipped"] = "playwright is not installed"
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(BASE + "/")
        page.wait_for_function("() => performance.getEntriesByName('operations-complete').length > 0")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        ready.wait()

        def task_seconds():
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["TaskDuration"]

        before, began = task_seconds(), time.monotonic()
        page.wait_for_timeout(SECONDS * 1000)
        result["busy"] = (task_seconds() - before) / (time.monotonic() - began)
        result["rows"] = page.evaluate("() => document.querySelectorAll('#rows tr[data-id]').length")
        browser.close()


def main():
    totals = {"record": 0, "record_events": 0, "row": 0, "row_events": 0, "gzipped row": 0, "gzipped row_events": 0}
    ready, browser_result = threading.Event(), {}
    readers = [threading.Thread(target=read_stream, args=("/api/v1/operations/events?view=row", totals, "row", ready)),
               threading.Thread(target=read_stream,
                                args=("/api/v1/operations/events?view=row", totals, "gzipped row", ready, True)),
               threading.Thread(target=main_thread_busy, args=(ready, browser_result))]
    if RECORDS:
        readers.append(threading.Thread(target=read_stream,
                                        args=("/api/v1/operations/events", totals, "record", ready)))
    for reader in readers:
        reader.start()
    time.sleep(3)
    ids = [start_load(i) for i in range(LOADS)]
    time.sleep(1)
    ready.set()
    for reader in readers:
        reader.join()
    running = 0
    for id_ in ids:
        with urllib.request.urlopen(BASE + f"/api/v1/operations/{id_}", timeout=10) as response:
            record = json.load(response)["data"]
        if record["status"] == "running":
            running += 1
            urllib.request.urlopen(urllib.request.Request(BASE + f"/api/v1/operations/{id_}", method="DELETE"),
                                   timeout=10)
        elif record["status"] != "completed":
            raise SystemExit(f"{id_} is {record['status']}: {record.get('error_message')}")
    print(f"{running} of {LOADS} loads still ran at the end")
    for key in ("record", "row") if RECORDS else ("row",):
        print(f"{key:>12}s: {totals[key] / SECONDS / 1024:.1f} KB/s ({totals[key + '_events']} events in {SECONDS:.0f} s, "
              f"{totals[key] / max(1, totals[key + '_events']):.0f} bytes each) with {LOADS} loads running")
    print(f"gzipped rows: {totals['gzipped row'] / SECONDS / 1024:.1f} KB/s on the wire, what the dashboard receives "
          f"(the same events, {totals['gzipped row'] / max(1, totals['row_events']):.0f} bytes each)")
    if "busy" in browser_result:
        print(f"dashboard main thread: busy {browser_result['busy'] * 100:.1f} % of the time "
              f"({browser_result['rows']} rows listed) with {LOADS} loads running")
    else:
        print(f"dashboard main thread: not measured ({browser_result.get('skipped', 'the browser failed')})")


if __name__ == "__main__":
    main()
