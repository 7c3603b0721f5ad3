"""How much the list-wide event stream sends while loads run: the whole records (the default) vs
list rows (`?view=row`, what the dashboard reads), both read at once for the same seconds.

Against a running service with simulated IB latency, e.g.
  cargo run --release -- serve --sim --sim-latency-ms 50 --listen 127.0.0.1:8000
  python3 benches/stream_weight.py            # BASE_URL, LOADS=3, SECONDS=20
"""

import json
import os
import threading
import time
import urllib.request

BASE = os.environ.get("BASE_URL", "http://127.0.0.1:8000")
LOADS = int(os.environ.get("LOADS", "3"))
SECONDS = float(os.environ.get("SECONDS", "20"))


def start_load(i):
    body = {"symbol": ["AAPL", "MSFT", "EURUSD", "IBM", "AMZN"][i % 5], "timeframe": "1m", "mode": "backfill", "start_date": "2023-01-01",
            "end_date": "2024-12-31"}
    request = urllib.request.Request(BASE + "/api/v1/data/load", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["operation_id"]


def read_stream(path, totals, key):
    request = urllib.request.Request(BASE + path, headers={"accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=SECONDS + 10) as response:
        began = time.monotonic()
        while time.monotonic() - began < SECONDS:
            chunk = response.read1(65536)
            if not chunk:
                break
            totals[key] += len(chunk)
            totals[key + "_events"] += chunk.count(b"event: operation")


def main():
    totals = {"record": 0, "record_events": 0, "row": 0, "row_events": 0}
    readers = [threading.Thread(target=read_stream, args=("/api/v1/operations/events", totals, "record")),
               threading.Thread(target=read_stream, args=("/api/v1/operations/events?view=row", totals, "row"))]
    for reader in readers:
        reader.start()
    time.sleep(0.5)
    ids = [start_load(i) for i in range(LOADS)]
    for reader in readers:
        reader.join()
    for id_ in ids:
        with urllib.request.urlopen(BASE + f"/api/v1/operations/{id_}", timeout=10) as response:
            record = json.load(response)["data"]
        if record["status"] != "running":
            raise SystemExit(f"{id_} is {record['status']} (not running all along): {record.get('error_message')}")
        urllib.request.urlopen(urllib.request.Request(BASE + f"/api/v1/operations/{id_}", method="DELETE"), timeout=10)
    for key in ("record", "row"):
        print(f"{key:>6}s: {totals[key] / SECONDS / 1024:.1f} KB/s ({totals[key + '_events']} events in {SECONDS:.0f} s, "
              f"{totals[key] / max(1, totals[key + '_events']):.0f} bytes each) with {LOADS} loads running")


if __name__ == "__main__":
    main()
