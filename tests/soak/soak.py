#!/usr/bin/env python3
"""The soak: the compose deployment (two replicas on PostgreSQL, the IB simulator, three training
workers) under a seeded random schedule of faults and work, then an independent check that nothing
was lost, doubled or left running.

  python3 tests/soak/soak.py --minutes 10 --seed 20261205     # what .ci/run runs
  python3 tests/soak/soak.py --minutes 60                      # the benchmark (a fresh seed)

Prints operations by type and outcome, faults by kind, the longest takeover, p99 cancel latency
and every violation; exits 1 when there is one. The seed is printed first: a failure found with
one is reproduced (as far as timing allows) by running that seed again.
"""

import argparse
import random
import subprocess
import sys
import threading
import time

import checker
import stack
from faults import Faults
from workload import Ledger, Workload

LEASE = 15.0
# After the last fault: the lease, a takeover scan, and the longest piece of work the workload
# starts (a 1m load of 25 days, a training of 15 s) finishing on the replica that took it over.
SETTLE = LEASE + 30 + 90
# How long before the faults end the workload stops starting work.
WORK_DRAIN = 120.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"soak: seed {seed}, {args.minutes:g} minutes of faults", flush=True)

    subprocess.run(["bash", f"{stack.ROOT}/tests/compose/base-images.sh"], check=True)
    stack.down()
    began = time.monotonic()
    stack.up()
    print(f"soak: stack up in {time.monotonic() - began:.0f} s", flush=True)
    try:
        violations, report = soak(seed, args.minutes)
    except Exception as e:  # noqa: BLE001 - a soak that could not run says why
        violations, report = [f"the soak itself failed: {e!r}"], ""
        for service in stack.REPLICAS:
            print(f"--- last log lines of {service}")
            subprocess.run(stack.COMPOSE + ["logs", "--tail", "40", service], cwd=stack.ROOT)
    finally:
        if not args.keep:
            stack.down()
    print(report)
    print(f"violations: {len(violations)}")
    for v in violations:
        print(f"  VIOLATION {v}")
    return 1 if violations else 0


def soak(seed, minutes):
    rng = random.Random(seed)
    stop_faults, stop_work, stop_watch = threading.Event(), threading.Event(), threading.Event()
    ledger = Ledger()
    faults = Faults(random.Random(rng.random()), stop_faults)
    workload = Workload(random.Random(rng.random()), stop_work, ledger)
    watcher = checker.Watcher(stop_watch)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (watcher, workload)]
    for thread in threads:
        thread.start()
    # The work gets going before the first fault.
    time.sleep(10)
    fault_thread = threading.Thread(target=faults.run, daemon=True)
    fault_thread.start()
    # The work stops starting new operations two minutes before the faults end: what is queued
    # drains under faults, and everything can have ended soon after the last one.
    drain = min(WORK_DRAIN, minutes * 60 / 3)
    time.sleep(minutes * 60 - drain)
    stop_work.set()
    threads[1].join()
    time.sleep(drain)
    stop_faults.set()
    fault_thread.join()
    last_fault = max(faults.last_ended(), time.time())
    print(f"soak: faults and work stopped; {len(faults.log)} faults, waiting for the work to settle", flush=True)

    for base in stack.REPLICAS.values():
        stack.wait_for(f"{base} healthy", lambda: stack.healthy(base), 120)
    violations = []
    deadline = last_fault + SETTLE
    while watcher.active() and time.time() < deadline:
        time.sleep(2)
    settled = time.time() - last_fault
    watcher.poll()
    stop_watch.set()
    threads[0].join()
    still = watcher.active()
    if still:
        violations.append(f"{len(still)} operations still active {SETTLE:.0f} s after the last fault: {still[:10]}")
    violations += watcher.violations
    violations += [f"the workload failed: {e}" for e in ledger.errors]

    # The checks read the simulator's bars at full speed.
    stack.call("PUT", f"{stack.IB}/sim/knobs", {**stack.call("GET", f"{stack.IB}/sim/knobs")[1], "latency_ms": 0,
                                                 "latency_jitter_ms": 0})
    all_records, unreadable = checker.records(list(watcher.seen))
    violations += unreadable
    completed = [r for r in all_records.values() if r["status"] == "completed"]
    violations += checker.check_loads([r for r in completed if r["operation_type"] == "data_load"])
    violations += checker.check_trainings([r for r in completed if r["operation_type"] == "training"])
    violations += checker.check_lineage(all_records, ledger)
    violations += checker.check_no_work_after_end(all_records, faults.log)
    violations += checker.check_workers_free()
    return violations, report(all_records, ledger, faults, watcher, settled)


def report(all_records, ledger, faults, watcher, settled):
    outcomes = {}
    for r in all_records.values():
        key = (r["operation_type"], r["status"])
        outcomes[key] = outcomes.get(key, 0) + 1
    lines = [f"operations: {len(all_records)}"]
    lines += [f"  {ty:<10} {status:<10} {n}" for (ty, status), n in sorted(outcomes.items())]
    lines.append(f"faults: {len(faults.log)}")
    lines += [f"  {kind:<34} {n}" for kind, n in sorted(faults.counts().items())]
    taken = checker.takeovers_after_faults(watcher, faults.log)
    if taken:
        kind, longest = max(taken, key=lambda t: t[1])
        lines.append(f"takeovers: {len(taken)} after replica faults, longest {longest:.1f} s (after a {kind})")
    reasons = {}
    for r in all_records.values():
        if r["status"] == "failed":
            reason = (r.get("error_message") or "")[:90]
            reasons[reason] = reasons.get(reason, 0) + 1
    lines.append("failed, by reason:")
    lines += [f"  {n:>4}  {reason}" for reason, n in sorted(reasons.items(), key=lambda x: -x[1])[:10]]
    latencies = sorted(c["seen_cancelled"] - c["sent"] for c in ledger.cancels if c["seen_cancelled"])
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        lines.append(f"cancels: {len(latencies)} seen ended, p50 {1000 * latencies[len(latencies) // 2]:.0f} ms, "
                     f"p99 {1000 * p99:.0f} ms")
    resumed = sum(1 for r in ledger.resumes if r["status"] == 200)
    lines.append(f"resumes: {len(ledger.resumes)} asked, {resumed} continued; retries: {len(ledger.retries)}")
    partial = sum(1 for r in all_records.values() if (r.get("result_summary") or {}).get("partial"))
    lines.append(f"loads completed partial (declared missing ranges): {partial}")
    lines.append(f"settled {settled:.0f} s after the last fault")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
