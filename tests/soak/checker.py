"""The soak's independent checker: it watches both replicas all along (every status each operation
is seen in), then, once the faults stopped and the work settled, verifies what users rely on —
against the simulators' own logs and bars, never the service's word alone."""

import threading
import time
from datetime import datetime, timedelta, timezone

import stack

# How long after an operation ended a call for it may still reach a host: a load's request in
# flight when the cancel arrived; a training's worker is told at once, or by the health check
# that finds it busy with a finished operation (every 10 s) when it was frozen or cut off.
LOAD_GRACE = 3.0
TRAINING_GRACE = 15.0
# The replicas' operations.lease_timeout (docker-compose.yml leaves the default).
LEASE = 15.0
# Timeframe → the longest window the IB simulator answers (hosts.md §1.5).
MAX_SPAN = {"1m": 1, "5m": 7, "15m": 14, "1h": 30, "1d": 365}


class Watcher:
    """Polls both replicas' operation lists; keeps, per operation, the statuses seen in order."""

    def __init__(self, stop):
        self.stop = stop
        self.lock = threading.Lock()
        self.seen = {}  # id -> [(time, replica, status)]
        self.violations = []
        self.takeovers = {base: [] for base in stack.REPLICAS.values()}  # [(time, count)] on change

    def run(self):
        while not self.stop.wait(1.0):
            self.poll()

    def poll(self):
        for base in stack.REPLICAS.values():
            count = takeovers(base)
            if count is not None and (not self.takeovers[base] or self.takeovers[base][-1][1] != count):
                self.takeovers[base].append((time.time(), count))
            offset = 0
            while True:
                status, answer = stack.call("GET", f"{base}/api/v1/operations?limit=1000&offset={offset}",
                                            timeout=5)
                if status != 200:
                    break
                now = time.time()
                for row in answer["data"]:
                    self.note(row["operation_id"], now, base, row["status"])
                offset += len(answer["data"])
                if not answer["data"] or offset >= answer["total_count"]:
                    break

    def note(self, op_id, at, base, status):
        with self.lock:
            history = self.seen.setdefault(op_id, [])
            ended = next((s for _, _, s in history if s in stack.TERMINAL), None)
            if ended and status != ended:
                self.violations.append(f"{op_id} read {status!r} on {base} after it was seen {ended!r}")
            if not history or history[-1][1:] != (base, status):
                history.append((at, base, status))

    def active(self):
        with self.lock:
            return sorted(op_id for op_id, history in self.seen.items()
                          if history[-1][2] not in stack.TERMINAL)


def takeovers(base):
    """The replica's count of operations it took over (its /metrics), None when it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ktrdr_ops_takeovers_total"))


def takeovers_after_faults(watcher, faults_log):
    """Per replica fault, seconds from it to the other replica's first takeover within the lease
    and 20 s (none when the replica came back and went on with its own work first; a later one
    belongs to something else)."""
    found = []
    for fault in faults_log:
        other = [base for name, base in stack.REPLICAS.items() if name != fault["target"]]
        if fault["target"] not in stack.REPLICAS or not other:
            continue
        changes = watcher.takeovers[other[0]]
        after = [at for i, (at, _) in enumerate(changes) if i > 0 and fault["began"] <= at <= fault["began"] + LEASE + 20]
        if after:
            found.append((fault["kind"], after[0] - fault["began"]))
    return found


def records(ids):
    """Every operation's record, read from both replicas: they must agree."""
    found, violations = {}, []
    bases = list(stack.REPLICAS.values())
    for op_id in ids:
        answers = [stack.call("GET", f"{base}/api/v1/operations/{op_id}")[1] for base in bases]
        read = [a["data"] for a in answers if a and a.get("success")]
        if len(read) != len(bases):
            violations.append(f"{op_id}: not readable on every replica")
        if read:
            found[op_id] = read[0]
            if len({r["status"] for r in read}) > 1:
                violations.append(f"{op_id}: the replicas disagree: {[r['status'] for r in read]}")
    return found, violations


def day(text, end=False):
    """A request's date as an instant; a date-only end includes its whole day."""
    if len(text) == 10:
        moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        return (moment + timedelta(days=1) - timedelta(seconds=1)) if end else moment
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def simulator_bars(symbol, timeframe, start, end):
    """The IB simulator's bars in [start, end], window by window: {epoch seconds: (o, h, l, c, v)}."""
    bars, step = {}, timedelta(days=MAX_SPAN[timeframe])
    cursor = start
    while cursor <= end:
        until = min(cursor + step - timedelta(seconds=1), end)
        body = {"symbol": symbol, "timeframe": timeframe, "start": cursor.isoformat(), "end": until.isoformat(),
                "instrument_type": None}
        status, answer = stack.call("POST", f"{stack.IB}/data/historical", body, timeout=30)
        if status != 200:
            raise RuntimeError(f"the IB simulator did not answer {body}: {status}")
        if answer["success"]:
            import json

            for stamp, bar in json.loads(answer["data"]).items():
                bars[int(stack.instant(stamp))] = tuple(bar[k] for k in ("open", "high", "low", "close", "volume"))
        cursor = until + timedelta(seconds=1)
    return bars


def csv_bars(symbol, timeframe):
    """The series file as the replicas left it: {epoch seconds: (o, h, l, c, v)}, and duplicates."""
    text = stack.read_file("sim", f"/app/data/{symbol}_{timeframe}.csv")
    bars, duplicates = {}, []
    for line in text.splitlines()[1:]:
        stamp, *values = line.split(",")
        key = int(stack.instant(stamp))
        if key in bars:
            duplicates.append(stamp)
        bars[key] = tuple(float(v) for v in values[:5])
    return bars, duplicates


def same(a, b):
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def check_loads(loads):
    """Every completed load's range is in its file exactly as the simulator has it: no bar missing
    (but those the load itself declared missing), none duplicated, every value the simulator's."""
    violations, by_series = [], {}
    for r in loads:
        meta = r["metadata"]
        by_series.setdefault((meta["symbol"].upper(), meta["timeframe"]), []).append(r)
    for (symbol, timeframe), done in sorted(by_series.items()):
        file, duplicates = csv_bars(symbol, timeframe)
        if duplicates:
            violations.append(f"{symbol} {timeframe}: {len(duplicates)} duplicate bars, e.g. {duplicates[:3]}")
        starts = [day(r["metadata"]["start_date"]) for r in done]
        ends = [day(r["metadata"]["end_date"], end=True) for r in done]
        truth = simulator_bars(symbol, timeframe, min(starts), max(ends))
        wrong = [k for k, v in file.items() if min(starts).timestamp() <= k <= max(ends).timestamp()
                 and (k not in truth or not same(v, truth[k]))]
        if wrong:
            violations.append(f"{symbol} {timeframe}: {len(wrong)} bars not the simulator's, e.g. {wrong[:3]}")
        for r, start, end in zip(done, starts, ends):
            declared = [(stack.instant(w["start"]), stack.instant(w["end"]))
                        for w in (r.get("result_summary") or {}).get("missing", [])]
            expected = sorted(k for k in truth if start.timestamp() <= k <= end.timestamp())
            if r["metadata"].get("mode") == "backfill":
                # Backfill fills from start_date up to what the file held (no hole scan inside
                # it): the file reaches back to the range's first bar.
                expected = expected[:1] if expected and min(file, default=expected[0] + 1) > expected[0] else []
            missing = [k for k in expected if k not in file and not any(a <= k <= b for a, b in declared)]
            if missing:
                violations.append(f"{r['operation_id']} ({symbol} {timeframe} {r['metadata'].get('mode')} "
                                  f"{r['metadata']['start_date']}..{r['metadata']['end_date']}) completed with "
                                  f"{len(missing)} of {len(expected)} bars missing, first at "
                                  f"{datetime.fromtimestamp(missing[0], timezone.utc).isoformat()}")
    return violations


def check_trainings(trainings):
    """Every completed training reports each epoch once, up to its last."""
    violations = []
    for r in trainings:
        epochs = [e["epoch"] for e in (r.get("metrics") or {}).get("epochs", [])]
        total = (r["progress"].get("context") or {}).get("total_epochs")
        contiguous = epochs == list(range(epochs[0], epochs[0] + len(epochs))) if epochs else False
        if not contiguous or (total and epochs[-1] != total - 1):
            violations.append(f"{r['operation_id']}: epochs reported {epochs} (of {total})")
    return violations


def check_lineage(all_records, ledger):
    """Every resume answered 200 made exactly one continuation; no operation has two."""
    violations = []
    children = {}
    for r in all_records.values():
        if r.get("parent_operation_id"):
            children.setdefault(r["parent_operation_id"], []).append(r["operation_id"])
    retried = {}
    for entry in ledger.retries:
        if entry["child"]:
            retried.setdefault(entry["parent"], set()).add(entry["child"])
    for parent, kids in children.items():
        continuations = [k for k in kids if k not in retried.get(parent, set())]
        if len(continuations) > 1:
            violations.append(f"{parent} has {len(continuations)} continuations: {continuations}")
    for entry in ledger.resumes:
        if entry["child"] and entry["child"] not in children.get(entry["parent"], []):
            violations.append(f"the resume of {entry['parent']} answered {entry['child']}, which does not "
                              f"continue it")
    return violations


def check_no_work_after_end(all_records, faults_log):
    """No host call for an operation after it ended (+ grace): the IB log names each load's calls;
    a worker's session ends with the last operation that follows it."""
    violations = []
    _, stats = stack.call("GET", f"{stack.IB}/sim/stats", timeout=60)
    for entry in (stats or {}).get("historical", []):
        r = all_records.get(entry.get("operation_id") or "")
        if r and r["status"] in stack.TERMINAL and r["completed_at"]:
            late = stack.instant(entry["received_at"]) - stack.instant(r["completed_at"])
            if late > LOAD_GRACE:
                violations.append(f"{r['operation_id']} ({r['status']}): IB request {entry['start']}.."
                                  f"{entry['end']} {late:.1f} s after it ended")
    following = {}
    for r in all_records.values():
        session = (r["progress"].get("context") or {}).get("host_session_id")
        if session:
            following.setdefault(session, []).append(r)
    for name, base in stack.WORKERS.items():
        _, worker_stats = stack.call("GET", f"{base}/sim/stats")
        frozen = max((f["ended"] for f in faults_log if f["target"] == name), default=0.0)
        for session in (worker_stats or {}).get("sessions", []):
            ops = following.get(session["id"], [])
            if not ops or any(o["status"] not in stack.TERMINAL for o in ops):
                continue
            ended = max(stack.instant(o["completed_at"]) for o in ops if o["completed_at"])
            late = stack.instant(session["last_updated"]) - max(ended, frozen)
            if not session["finished"] or late > TRAINING_GRACE:
                violations.append(f"{name} session {session['id']}: still {session['status']} "
                                  f"(finished {session['finished']}) {late:.1f} s after its operations ended")
    return violations


# A worker whose release was lost is freed by the health checks (every 10 s) once its operation
# has been over for 30 s (workers::LOST_RELEASE_AFTER): that long, and a check more, at most.
WORKERS_FREE_WITHIN = 30 + 10 + 10


def check_workers_free():
    deadline = time.monotonic() + WORKERS_FREE_WITHIN
    while True:
        _, fleet = stack.call("GET", f"{stack.REPLICAS['ktrdr-ops']}/api/v1/workers")
        held = [w for w in fleet or [] if w.get("current_operation_id") or w.get("status") == "busy"]
        if not held or time.monotonic() > deadline:
            break
        time.sleep(2)
    return [f"worker {w['worker_id']} not free {WORKERS_FREE_WITHIN} s after the work ended: {w.get('status')} "
            f"with {w.get('current_operation_id')}" for w in held]
