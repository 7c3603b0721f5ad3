"""The soak's workload: what users do, at random, through both replicas — loads over several
symbols, timeframes and modes (the same series on both replicas at once among them), trainings,
dummies, cancels at random moments, resumes (some sent the instant after a cancel) and retries of
what ended. Everything it asked and every answer goes into the ledger for the checker."""

import threading
import time
from datetime import date, timedelta

import stack

SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "EURUSD", "GBPUSD"]
# Timeframe → (shortest, longest) range in days: each load is a few dozen IB requests.
SPANS = {"1m": (3, 25), "5m": (20, 150), "15m": (40, 300), "1h": (60, 700), "1d": (400, 1500)}
MODES = ["full", "tail", "backfill"]


class Ledger:
    """What the workload did: operations it started, cancels, resumes and retries with answers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = {}  # id -> {"kind", "request", "replica"}
        self.cancels = []  # {"id", "sent", "status", "seen_cancelled"}
        self.resumes = []  # {"parent", "status", "child", "code"}
        self.retries = []  # {"parent", "status", "child"}
        self.refused = {}  # (kind, status) -> count
        self.errors = []  # the workload's own failures (a bug of the soak, never ignored)

    def add(self, collection, entry):
        with self.lock:
            getattr(self, collection).append(entry)

    def refuse(self, kind, status):
        with self.lock:
            self.refused[(kind, status)] = self.refused.get((kind, status), 0) + 1


class Workload:
    def __init__(self, rng, stop, ledger):
        self.rng = rng
        self.stop = stop
        self.ledger = ledger
        self.threads = []

    def replicas(self):
        """Both replicas, the one to ask first at random (the other when it does not answer)."""
        bases = list(stack.REPLICAS.values())
        self.rng.shuffle(bases)
        return bases

    def ask(self, method, path, body=None, timeout=15):
        for base in self.replicas():
            status, answer = stack.call(method, f"{base}{path}", body, timeout=timeout)
            if status is not None and status < 500:
                return base, status, answer
        return None, None, None

    def run(self):
        # Trainings read EURUSD 1h: load it first.
        self.load({"symbol": "EURUSD", "timeframe": "1h", "mode": "full", "start_date": "2023-01-01",
                   "end_date": "2024-06-30"})
        actions = [(self.random_load, 5), (self.same_series_pair, 1), (self.training, 3), (self.dummy, 1),
                   (self.cancel, 3), (self.resume, 2), (self.retry, 1)]
        choices = [a for a, weight in actions for _ in range(weight)]
        while not self.stop.wait(self.rng.uniform(0.3, 2.0)):
            action = self.rng.choice(choices)
            # Cancels and resumes wait for what they asked; they run beside the rest.
            if action in (self.cancel, self.resume):
                thread = threading.Thread(target=self.guarded, args=(action, self.rng.random()), daemon=True)
                thread.start()
                self.threads.append(thread)
            else:
                self.guarded(action)
        for thread in self.threads:
            thread.join()

    def guarded(self, action, *args):
        try:
            action(*args)
        except Exception as e:  # noqa: BLE001 - reported as a failure of the soak
            self.ledger.add("errors", f"{action.__name__}: {e!r}")

    def random_range(self, timeframe):
        shortest, longest = SPANS[timeframe]
        days = self.rng.randint(shortest, longest)
        start = date(2018, 1, 1) + timedelta(days=self.rng.randint(0, 6 * 365 - days))
        return start.isoformat(), (start + timedelta(days=days)).isoformat()

    def random_load(self):
        timeframe = self.rng.choice(list(SPANS))
        start, end = self.random_range(timeframe)
        self.load({"symbol": self.rng.choice(SYMBOLS), "timeframe": timeframe, "mode": self.rng.choice(MODES),
                   "start_date": start, "end_date": end})

    def same_series_pair(self):
        """Two full loads of one series, one on each replica, at once."""
        symbol, timeframe = self.rng.choice(SYMBOLS), self.rng.choice(["1m", "5m", "1h"])
        requests = []
        for _ in range(2):
            start, end = self.random_range(timeframe)
            requests.append({"symbol": symbol, "timeframe": timeframe, "mode": "full", "start_date": start,
                             "end_date": end})
        threads = [threading.Thread(target=self.load, args=(r, base), daemon=True)
                   for r, base in zip(requests, stack.REPLICAS.values())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def load(self, request, base=None):
        if base:
            status, answer = stack.call("POST", f"{base}/api/v1/data/load", request)
        else:
            base, status, answer = self.ask("POST", "/api/v1/data/load", request)
        if status == 200:
            op_id = answer["data"]["operation_id"]
            self.ledger.started[op_id] = {"kind": "load", "request": request, "replica": base}
        else:
            self.ledger.refuse("load", status)

    def training(self):
        base, status, answer = self.ask("POST", "/api/v1/trainings/start", {"strategy_name": "example_mlp"})
        if status == 200:
            self.ledger.started[answer["task_id"]] = {"kind": "training", "request": {}, "replica": base}
        else:
            self.ledger.refuse("training", status)

    def dummy(self):
        request = {"iterations": self.rng.randint(20, 200), "interval_ms": 100}
        base, status, answer = self.ask("POST", "/api/v1/dummy/start", request)
        if status == 200:
            self.ledger.started[answer["data"]["operation_id"]] = {"kind": "dummy", "request": request,
                                                                  "replica": base}
        else:
            self.ledger.refuse("dummy", status)

    def active_ids(self):
        with self.ledger.lock:
            ids = list(self.ledger.started)
        return ids[-40:]

    def cancel(self, seed):
        import random

        rng = random.Random(seed)
        # An operation still at work, when one is (a cancel of an ended one is tried too: 400).
        ids = self.active_ids()
        rng.shuffle(ids)
        op_id = None
        for candidate in ids[:8]:
            _, code, answer = self.ask("GET", f"/api/v1/operations/{candidate}", timeout=5)
            op_id = candidate
            if code == 200 and answer["data"]["status"] not in stack.TERMINAL:
                break
        if not op_id:
            return
        # At a random moment of its run.
        time.sleep(rng.uniform(0, 2))
        sent = time.time()
        _, status, _ = self.ask("DELETE", f"/api/v1/operations/{op_id}")
        entry = {"id": op_id, "sent": sent, "status": status, "seen_cancelled": None}
        if status == 200:
            # How long until a replica reads it cancelled: the cancel latency users see.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _, code, answer = self.ask("GET", f"/api/v1/operations/{op_id}", timeout=5)
                if code == 200 and answer["data"]["status"] in stack.TERMINAL:
                    entry["seen_cancelled"] = time.time()
                    break
                time.sleep(0.05)
            # Now and then a resume the instant after: it must wait for the host's last word.
            if self.ledger.started.get(op_id, {}).get("kind") == "training" and rng.random() < 0.5:
                self.resume_of(op_id)
        self.ledger.add("cancels", entry)

    def ended(self):
        """Operations of the workload's that a replica reads ended, with their status."""
        ids = self.active_ids()
        found = []
        for op_id in ids:
            _, code, answer = self.ask("GET", f"/api/v1/operations/{op_id}", timeout=5)
            if code == 200 and answer["data"]["status"] in ("cancelled", "failed"):
                found.append((op_id, answer["data"]["status"]))
        return found

    def resume(self, seed):
        import random

        candidates = [op_id for op_id, status in self.ended()]
        if candidates:
            self.resume_of(random.Random(seed).choice(candidates))

    def resume_of(self, op_id):
        base, status, answer = self.ask("POST", f"/api/v1/operations/{op_id}/resume", timeout=30)
        child = answer["data"]["operation_id"] if status == 200 else None
        code = (answer or {}).get("error", {}).get("code") if status != 200 and isinstance(answer, dict) else None
        self.ledger.add("resumes", {"parent": op_id, "status": status, "child": child, "code": code})
        if child:
            kind = self.ledger.started.get(op_id, {}).get("kind", "?")
            self.ledger.started[child] = {"kind": kind, "request": {}, "replica": base}

    def retry(self):
        failed = [op_id for op_id, status in self.ended() if status == "failed"]
        if not failed:
            return
        op_id = self.rng.choice(failed)
        base, status, answer = self.ask("POST", f"/api/v1/operations/{op_id}/retry")
        child = answer["data"]["operation_id"] if status == 200 else None
        self.ledger.add("retries", {"parent": op_id, "status": status, "child": child})
        if child:
            kind = self.ledger.started.get(op_id, {}).get("kind", "?")
            self.ledger.started[child] = {"kind": kind, "request": {}, "replica": base}
