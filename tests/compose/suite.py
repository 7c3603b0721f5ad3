#!/usr/bin/env python3
"""The compose suite: the deployment users run (docker-compose.yml: two replicas on PostgreSQL,
the host simulators, two training workers, a backtest worker), started for real and broken on
purpose.

  up --build       both replicas healthy, and how long after their containers started
  cross-replica    a data load started on replica 1 is seen completed on replica 2
  training         a training through the compose workers completes
  backtest         a backtest of that model on the backtest worker completes, its metrics whole
  cancel anywhere  a DELETE on replica 2 stops replica 1's work
  observability    (profile `observability`, on throughout) Prometheus scrapes both replicas and
                   has ktrdr's and our series; a load started with a `traceparent` is one trace at
                   the OTLP receiver, from the replica's request through its host calls into the
                   simulator's spans
  kill             replica 1 killed mid-load: replica 2 takes the load over and completes it
  partition        replica 1 cut off the network past its lease while it owns a running load:
                   replica 2 takes over; reconnected, replica 1 writes nothing over it, and no
                   operation ends twice or changes after it ended
  postgres restart mid-load: the load completes or fails honestly, nothing stays running
  down -v          always, also when a step fails

Run by .ci/run whenever a Docker engine answers; alone: `python3 tests/compose/suite.py`.
Prints one line per step with its figures; exits 1 on the first failure.
"""

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = "ktrdrops"
FILES = ["-f", os.path.join(ROOT, "docker-compose.yml"), "-f", os.path.join(ROOT, "tests/compose/suite.yml")]
R1, R2 = "http://127.0.0.1:8000", "http://127.0.0.1:8001"
LEASE = 15.0


def compose_command():
    """`docker compose` (v2) where it exists, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


COMPOSE = compose_command() + ["-p", PROJECT, "--profile", "observability"] + FILES
PROMETHEUS, RECEIVER = "http://127.0.0.1:9090", "http://127.0.0.1:4318"
# The replicas, simulators and workers export their traces to the profile's receiver.
os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otlp-receiver:4318"
os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/json"


def compose(*args, capture=False):
    result = subprocess.run(COMPOSE + list(args), cwd=ROOT, capture_output=capture, text=True)
    if result.returncode != 0:
        raise SystemExit(f"compose {' '.join(args)} failed:\n{result.stdout or ''}{result.stderr or ''}")
    return result.stdout


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def container(service):
    return compose("ps", "-q", service, capture=True).strip()


def call(method, url, body=None, timeout=5, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, None


def wait(what, check, within, every=0.1):
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(every)


def record(base, op_id):
    status, body = call("GET", f"{base}/api/v1/operations/{op_id}")
    return body["data"] if status == 200 else None


def status_of(base, op_id):
    r = record(base, op_id)
    return r and r["status"]


def ended(base, op_id):
    s = status_of(base, op_id)
    return s if s in ("completed", "failed", "cancelled") else None


def start_load(base, symbol, timeframe, start, end, mode="backfill", headers=None):
    status, body = call("POST", f"{base}/api/v1/data/load",
                        {"symbol": symbol, "timeframe": timeframe, "mode": mode, "start_date": start, "end_date": end},
                        headers=headers)
    assert status == 200, (status, body)
    return body["data"]["operation_id"]


def started_at(container_id):
    text = docker("inspect", "-f", "{{.State.StartedAt}}", container_id)
    # 2026-11-28T14:03:24.123456789Z: Python takes microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").replace(tzinfo=timezone.utc).timestamp()


def healthy(base):
    status, body = call("GET", f"{base}/api/v1/health", timeout=2)
    return status == 200 and body.get("database") == "ok"


def takeovers(base):
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ktrdr_ops_takeovers_total"))


def watch_statuses(op_id, bases, seconds):
    """Reads the operation on every replica for a while; the statuses each saw, in order."""
    seen = {base: [] for base in bases}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for base in bases:
            s = status_of(base, op_id)
            if s and (not seen[base] or seen[base][-1] != s):
                seen[base].append(s)
        time.sleep(0.1)
    return seen


def step(name, run):
    began = time.monotonic()
    figures = run()
    print(f"ok   {name} ({time.monotonic() - began:.1f} s){': ' + figures if figures else ''}", flush=True)


def up():
    began = time.monotonic()
    compose("up", "-d", "--build")
    built = time.monotonic() - began
    times = []
    for service, base in (("ktrdr-ops", R1), ("ktrdr-ops-2", R2)):
        wait(f"{service} healthy", lambda: healthy(base), 60)
        times.append(time.time() - started_at(container(service)))
    wait("all three workers registered", lambda: len(call("GET", f"{R1}/api/v1/workers")[1] or []) >= 3, 30)
    return f"up --build {built:.0f} s; healthy {times[0]:.1f} s / {times[1]:.1f} s after their containers started"


def cross_replica():
    op_id = start_load(R1, "EURUSD", "1h", "2024-01-01", "2024-03-31", mode="tail")
    wait("the load completed, seen on replica 2", lambda: status_of(R2, op_id) == "completed", 60)
    return None


def training():
    status, body = call("POST", f"{R2}/api/v1/trainings/start", {"strategy_name": "example_mlp"})
    assert status == 200, (status, body)
    op_id = body["task_id"]
    final = wait("the training ended", lambda: ended(R1, op_id), 120)
    r = record(R1, op_id)
    assert final == "completed", r
    return f"on worker {r['progress']['context'].get('worker_id')}"


def backtest():
    body = {"strategy_name": "example_mlp", "start_date": "2024-01-01", "end_date": "2024-03-31"}
    status, answer = call("POST", f"{R1}/api/v1/backtests/start", body)
    assert status == 200 and answer["mode"] == "distributed", (status, answer)
    op_id = answer["operation_id"]
    final = wait("the backtest ended", lambda: ended(R2, op_id), 120)
    r = record(R2, op_id)
    assert final == "completed", r
    metrics = r["result_summary"]["metrics"]
    assert len(metrics) == 22 and metrics["winning_trades"] + metrics["losing_trades"] <= metrics["total_trades"], r
    return (f"on worker {r['progress']['context'].get('worker_id')}: {metrics['total_trades']} trades, "
            f"{r['result_summary']['equity_curve_length']} bars")


def cancel_anywhere():
    status, body = call("POST", f"{R1}/api/v1/dummy/start", {"iterations": 1000, "interval_ms": 50})
    assert status == 200, (status, body)
    op_id = body["data"]["operation_id"]
    wait("running on replica 1", lambda: status_of(R1, op_id) == "running", 10)
    asked = time.monotonic()
    status, body = call("DELETE", f"{R2}/api/v1/operations/{op_id}")
    assert status == 200, (status, body)
    wait("cancelled on replica 1", lambda: status_of(R1, op_id) == "cancelled", 10)
    return f"replica 1 stopped it {1000 * (time.monotonic() - asked):.0f} ms after the DELETE on replica 2"


def long_load(symbol):
    """A backfill on replica 1 that runs for tens of seconds (the simulator answers after 30 ms)."""
    op_id = start_load(R1, symbol, "1m", "2016-01-01", "2024-12-31")

    def moving():
        r = record(R1, op_id) or {}
        if r.get("status") in ("completed", "failed", "cancelled"):
            raise AssertionError(f"the load ended {r['status']} before it got going: {r.get('error_message')}")
        return r.get("progress", {}).get("percentage", 0) > 1

    wait("the load running with progress", moving, 30)
    return op_id


def kill():
    op_id = long_load("MSFT")
    before = takeovers(R2)
    compose("kill", "ktrdr-ops")
    lost = time.monotonic()
    wait("replica 2 took the load over", lambda: takeovers(R2) > before, LEASE + 30)
    took = time.monotonic() - lost
    final = wait("the load ended on replica 2", lambda: ended(R2, op_id), 300, every=0.5)
    assert final == "completed", record(R2, op_id)
    compose("start", "ktrdr-ops")
    wait("replica 1 back", lambda: healthy(R1), 60)
    return f"taken over {took:.1f} s after the kill (lease {LEASE:.0f} s), completed"


def partition():
    op_id = long_load("AMZN")
    network = f"{PROJECT}_default"
    r1 = container("ktrdr-ops")
    before = takeovers(R2)
    docker("network", "disconnect", network, r1)
    cut = time.monotonic()
    try:
        wait("replica 2 took the load over", lambda: takeovers(R2) > before, LEASE + 30)
        took = time.monotonic() - cut
        # Cut off a little longer, then back.
        time.sleep(2)
    finally:
        docker("network", "connect", network, r1)
    assert took <= LEASE + 2, f"takeover after {took:.1f} s, more than lease + 2 s"
    final = wait("the load ended", lambda: ended(R2, op_id), 300, every=0.5)
    # Once ended, it stays as it ended, whichever replica is asked (replica 1 is back on the network).
    wait("replica 1 answers again", lambda: healthy(R1), 30)
    seen = watch_statuses(op_id, [R1, R2], 5)
    for base, statuses in seen.items():
        assert statuses == [final], f"{base} saw {statuses} after the load ended {final}"
    return f"taken over {took:.1f} s after the cut (lease {LEASE:.0f} s), ended {final} once, unchanged on both replicas"


def postgres_restart():
    op_id = long_load("NVDA")
    compose("restart", "postgres")
    final = wait("the load ended (completed or failed), nothing left running", lambda: ended(R1, op_id) or ended(R2, op_id), 300, every=0.5)
    r = record(R1, op_id) or record(R2, op_id)
    stuck = [o for o in (call("GET", f"{R2}/api/v1/operations?status=running")[1] or {}).get("data", [])
             if o["operation_id"] == op_id]
    assert not stuck, stuck
    return f"the load ended {final}" + (f" ({r.get('error_message')})" if final == "failed" else "")


# The names ktrdr's Grafana dashboards query, and some of our own.
EXPECTED_SERIES = [
    "ktrdr_operations_total", "ktrdr_workers_registered_total", "ktrdr_workers_available",
    "http_server_duration_milliseconds_bucket", "process_cpu_seconds_total", "process_resident_memory_bytes",
    "ktrdr_ops_operations_started_total", "ktrdr_ops_host_request_duration_seconds_bucket", "ktrdr_ops_workers",
]


def prometheus(query):
    status, body = call("GET", f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    return body["data"]["result"] if status == 200 and body.get("status") == "success" else []


def scraped():
    """Prometheus has both replicas up and every expected series from both."""
    up = {r["metric"]["instance"] for r in prometheus('up{job="ktrdr-ops"} == 1')}
    if len(up) < 2:
        return None
    names = "|".join(EXPECTED_SERIES)
    found = {}
    for r in prometheus(f'count by (__name__, instance) ({{job="ktrdr-ops", __name__=~"{names}"}})'):
        found.setdefault(r["metric"]["__name__"], set()).add(r["metric"]["instance"])
    missing = [name for name in EXPECTED_SERIES if found.get(name) != up]
    return None if missing else up


def trace_spans(trace_id):
    status, body = call("GET", f"{RECEIVER}/api/traces/{trace_id}")
    return body["spans"] if status == 200 else []


def whole(trace_id, spans):
    """The replica's server span (continuing our caller span), its operation span, its client spans
    to the IB host, and the simulator's server spans under them; every parent in the trace."""
    ids = {s["span_id"] for s in spans}
    server = [s for s in spans if s["service"] == "ktrdr-ops" and s["name"] == "POST /api/v1/data/load"]
    operation = [s for s in spans if s["service"] == "ktrdr-ops" and s["name"].startswith("operation")]
    clients = [s for s in spans if s["service"] == "ktrdr-ops" and s["kind"] in (3, "SPAN_KIND_CLIENT")]
    simulated = [s for s in spans if s["service"] == "ktrdr-ops-sim" and s["parent_span_id"] in {c["span_id"] for c in clients}]
    orphans = [s for s in spans if s["parent_span_id"] and s["parent_span_id"] not in ids | {CALLER_SPAN}]
    if server and operation and clients and simulated and not orphans:
        return server, operation, clients, simulated
    return None


CALLER_SPAN = "00f067aa0ba902b7"


def observability():
    up = wait("Prometheus scraping both replicas, with every expected series", scraped, 60, every=1)
    trace_id = "%032x" % random.getrandbits(128)
    traceparent = f"00-{trace_id}-{CALLER_SPAN}-01"
    op_id = start_load(R2, "GBPUSD", "1h", "2024-01-01", "2024-02-29", mode="tail", headers={"traceparent": traceparent})
    wait("the load completed", lambda: status_of(R2, op_id) == "completed", 60)
    ended_at = time.monotonic()
    r = record(R2, op_id)
    assert r.get("trace_id") == trace_id, f"the record's trace id is {r.get('trace_id')}, not the caller's {trace_id}"
    server, operation, clients, simulated = wait(
        "the whole trace at the OTLP receiver", lambda: whole(trace_id, trace_spans(trace_id)), 30, every=0.2)
    complete = time.monotonic() - ended_at
    assert server[0]["parent_span_id"] == CALLER_SPAN, server
    return (f"{len(up)} replicas scraped, {len(EXPECTED_SERIES)} series from each; trace {trace_id[:8]}…: "
            f"{len(clients)} host calls, {len(simulated)} simulator spans, whole {complete:.1f} s after the load ended")


def main():
    subprocess.run(["bash", os.path.join(ROOT, "tests/compose/base-images.sh")], check=True)
    failed = False
    try:
        step("docker compose up --build", up)
        step("a load on replica 1, completed on replica 2", cross_replica)
        step("a training through the compose workers", training)
        step("a backtest of that model on the backtest worker", backtest)
        step("a DELETE on replica 2 stops replica 1's work", cancel_anywhere)
        # After the steps above each replica has run operations (ktrdr_operations_total exists).
        step("Prometheus scrapes both replicas; a load's whole trace at the OTLP receiver", observability)
        step("replica 1 killed mid-load: replica 2 takes over", kill)
        step("network partition of replica 1", partition)
        step("PostgreSQL restarted mid-load", postgres_restart)
    except (AssertionError, SystemExit, Exception) as e:  # noqa: BLE001 - report whatever broke
        failed = True
        print(f"FAIL {e!r}", flush=True)
        for service in ("ktrdr-ops", "ktrdr-ops-2"):
            print(f"--- last log lines of {service}")
            subprocess.run(COMPOSE + ["logs", "--tail", "30", service], cwd=ROOT)
    finally:
        compose("down", "-v", "--remove-orphans")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
