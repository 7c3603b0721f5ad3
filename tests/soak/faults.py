"""The soak's faults: a seeded random schedule of everything that breaks a deployment — replicas
killed, stopped gracefully or cut off the network, workers frozen or killed, PostgreSQL restarted,
the IB gateway down, IB answers slowed — several at once, each undone when its time is up."""

import threading
import time

import stack

NETWORK = f"{stack.PROJECT}_default"


class Faults:
    """Runs faults from `rng` until `stop` is set; every fault ends (its target restored) before
    `run` returns. `log` gets one entry per fault: kind, target, began, ended (epoch seconds)."""

    def __init__(self, rng, stop):
        self.rng = rng
        self.stop = stop
        self.log = []
        self.lock = threading.Lock()
        self.busy = set()  # targets under a fault now
        self.threads = []

    def run(self):
        kinds = [(self.kill_replica, 3), (self.sigterm_replica, 3), (self.partition_replica, 2),
                 (self.freeze_worker, 2), (self.kill_worker, 2), (self.restart_postgres, 1),
                 (self.gateway_down, 2), (self.latency_spike, 2)]
        choices = [k for k, weight in kinds for _ in range(weight)]
        while not self.stop.wait(self.rng.uniform(6, 20)):
            fault = self.rng.choice(choices)
            # The fault's own random draws come from a generator seeded here, so that threads
            # running at once do not make the schedule depend on timing.
            own = self.rng.random()
            thread = threading.Thread(target=self.guarded, args=(fault, own), daemon=True)
            thread.start()
            self.threads.append(thread)
        for thread in self.threads:
            thread.join()

    def guarded(self, fault, seed):
        import random

        try:
            fault(random.Random(seed))
        except Exception as e:  # noqa: BLE001 - a fault that could not be applied is reported, not fatal
            print(f"soak: fault {fault.__name__} could not be applied: {e}", flush=True)

    def claim(self, targets):
        """Claims the first free target of `targets`; None when all are under a fault."""
        with self.lock:
            for target in targets:
                if target not in self.busy:
                    self.busy.add(target)
                    return target
            return None

    def release(self, target, kind, began):
        with self.lock:
            self.busy.discard(target)
            self.log.append({"kind": kind, "target": target, "began": began, "ended": time.time()})

    def replica(self, rng):
        """One replica, and never both at once: the other keeps serving."""
        names = list(stack.REPLICAS)
        rng.shuffle(names)
        with self.lock:
            if any(name in self.busy for name in names):
                return None
        return self.claim(names[:1])

    def worker(self, rng):
        names = list(stack.WORKERS)
        rng.shuffle(names)
        return self.claim(names)

    def kill_replica(self, rng):
        self.stop_and_start(self.replica(rng), ["kill", "-s", "KILL"], rng.uniform(1, 8), "kill -9 replica")

    def sigterm_replica(self, rng):
        # SIGTERM, and SIGKILL only if it has not exited 30 s later (as `docker stop` does).
        self.stop_and_start(self.replica(rng), ["stop", "-t", "30"], rng.uniform(1, 5), "SIGTERM replica")

    def stop_and_start(self, target, how, down_for, kind):
        """Stops `target`'s container with `docker {how}`, and starts it `down_for` s later."""
        if target:
            began = time.time()
            stack.docker(*how, stack.container(target))
            time.sleep(down_for)
            stack.compose("start", target)
            self.release(target, kind, began)

    def partition_replica(self, rng):
        target = self.replica(rng)
        if target:
            began = time.time()
            cid = stack.container(target)
            stack.docker("network", "disconnect", NETWORK, cid)
            try:
                time.sleep(rng.uniform(5, 40))
            finally:
                stack.docker("network", "connect", "--alias", target, NETWORK, cid)
            self.release(target, "network partition of a replica", began)

    def freeze_worker(self, rng):
        target = self.worker(rng)
        if target:
            began = time.time()
            cid = stack.container(target)
            stack.docker("kill", "-s", "STOP", cid)
            try:
                time.sleep(rng.uniform(5, 30))
            finally:
                stack.docker("kill", "-s", "CONT", cid)
            self.release(target, "SIGSTOP/SIGCONT worker", began)

    def kill_worker(self, rng):
        self.stop_and_start(self.worker(rng), ["kill", "-s", "KILL"], rng.uniform(2, 10), "kill -9 worker")

    def restart_postgres(self, rng):
        if self.claim(["postgres"]):
            began = time.time()
            stack.compose("restart", "postgres")
            self.release("postgres", "PostgreSQL restarted", began)

    def gateway_down(self, rng):
        if self.claim(["gateway"]):
            began = time.time()
            stack.call("POST", f"{stack.IB}/sim/gateway", {"connected": False})
            try:
                time.sleep(rng.uniform(5, 30))
            finally:
                restore(lambda: stack.call("POST", f"{stack.IB}/sim/gateway", {"connected": True})[0] == 200)
            self.release("gateway", "IB gateway down", began)

    def latency_spike(self, rng):
        if self.claim(["latency"]):
            began = time.time()
            status, knobs = stack.call("GET", f"{stack.IB}/sim/knobs")
            if status != 200:
                self.release("latency", "IB latency spike (not applied)", began)
                return
            spiked = {**knobs, "latency_ms": rng.randint(1500, 5000)}
            stack.call("PUT", f"{stack.IB}/sim/knobs", spiked)
            try:
                time.sleep(rng.uniform(5, 20))
            finally:
                restore(lambda: stack.call("PUT", f"{stack.IB}/sim/knobs", knobs)[0] == 200)
            self.release("latency", "IB latency spike", began)

    def counts(self):
        by_kind = {}
        for entry in self.log:
            by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + 1
        return by_kind

    def last_ended(self):
        return max((entry["ended"] for entry in self.log), default=0.0)


def restore(attempt, within=30):
    """Undoes a fault, trying again while its target does not answer."""
    deadline = time.monotonic() + within
    while not attempt() and time.monotonic() < deadline:
        time.sleep(0.5)
