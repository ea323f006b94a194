"""Stateful moves on the lab: state-transfer throughput and the freeze window.

Usage: .venv/bin/python -m bench.state [--state-mb 256] [--runs 3] [--rates 0,1,10]

Brings the default lab stack up if needed and, for each dirty rate (percent of the extra
state's keys rewritten per second), deploys the session service with ``--state-mb`` of state
and a session client at 1,000 req/s, moves the service back and forth ``--runs`` times, and
prints one JSON object:

- ``state_mb``; ``transfer_mb_s``: bytes shipped in SYNC over SYNC's time (median, all moves);
- ``redis_benchmark_set_mb_s``: ``redis-benchmark -t set -d 65536`` against the same Redis in
  the same run (the baseline); ``ratio``: transfer over baseline;
- ``freeze_ms``: median freeze window per dirty rate (keys ``"0"``, ``"1"``, ``"10"``);
- ``total_ms``: median move time (API call to succeeded) at 1 %/s;
- ``worker_rss_growth_mb``: growth of the orchestration worker's resident memory over all moves;
- ``probes_lost``, ``counters_ok``: what the clients saw, over all moves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from typing import Any

import httpx

from cli.demo import follow_events, remove_demo_services, wait_probe
from cli.stack import Stack, default_stack
from dataplane.lab import topology

SVC, CLIENT = "demo-echo", "demo-client"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def redis_benchmark_mb_s(stack: Stack, n: int = 20000) -> float:
    """SET of 64 KiB values with redis-benchmark's defaults (50 clients)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is missing: run scripts/setup.sh")
    out = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(stack.redis_port), "-a", stack._password(),
         "-t", "set", "-d", "65536", "-n", str(n), "-q"],
        capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, "REDISCLI_AUTH": stack._password()}).stdout
    rps = float(re.findall(r"SET: ([0-9.]+) requests per second", out)[-1])
    # leave the keys redis-benchmark wrote out of the way of the moves
    subprocess.run(["redis-cli", "-p", str(stack.redis_port), "--no-auth-warning", "-a",
                    stack._password(), "DEL", "key:__rand_int__"], capture_output=True,
                   check=False)
    return rps * 65536 / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-mb", type=float, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", default="0,1,10")
    args = parser.parse_args()

    stack = default_stack()
    plan = stack.plan
    stack.up()
    worker = topology.recorded_pid(stack.run_dir, "orchestrator")
    assert worker is not None
    rss_before = rss_mb(worker)
    baseline = redis_benchmark_mb_s(stack)

    freeze: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {}
    throughput: list[float] = []
    lost, counters_ok, statuses = 0, True, []
    with httpx.Client(base_url=stack.api_url, timeout=300) as api:
        for rate in [r.strip() for r in args.rates.split(",")]:
            remove_demo_services(api)
            api.post("/v1/services", json={
                "name": SVC, "workload": "sessions", "cluster": "core",
                "params": {"state_mb": args.state_mb, "dirty_rate": float(rate)}},
            ).raise_for_status()
            r = api.post("/v1/services", json={"name": CLIENT, "workload": "session-probe",
                                               "cluster": "core", "peers": [SVC]})
            r.raise_for_status()
            pod_dir = plan.run_dir / "pods" / r.json()["instance"]["pod"]
            wait_probe(pod_dir / "progress.json", received=250, timeout=20, key="answered")
            for i in range(args.runs):
                to = "edge" if i % 2 == 0 else "core"
                r = api.post("/v1/moves", json={"service": SVC, "to_cluster": to})
                r.raise_for_status()
                follow_events(api, r.json()["id"], lambda _e: None)
                move: dict[str, Any] = api.get(f"/v1/moves/{r.json()['id']}").json()
                statuses.append(move["status"])
                if move["status"] != "succeeded":
                    continue
                freeze.setdefault(rate, []).append(float(move["freeze_ms"]))
                totals.setdefault(rate, []).append(float(move["total_ms"]))
                sync_ms = float(move["phase_ms"].get("sync", 0))
                if sync_ms > 0:
                    throughput.append(move["state_bytes"] / 1e6 / (sync_ms / 1000))
                time.sleep(0.5)
            api.delete(f"/v1/services/{CLIENT}").raise_for_status()
            probe = json.loads((pod_dir / "probe.json").read_text())
            lost += int(probe["lost"])
            counters_ok = counters_ok and bool(probe["counters_ok"])
            api.delete(f"/v1/services/{SVC}").raise_for_status()
    rss_after = rss_mb(worker)
    transfer = statistics.median(throughput) if throughput else 0.0
    print(json.dumps({
        "state_mb": args.state_mb,
        "moves": len(statuses),
        "succeeded": statuses.count("succeeded"),
        "transfer_mb_s": round(transfer, 1),
        "redis_benchmark_set_mb_s": round(baseline, 1),
        "ratio": round(transfer / baseline, 3) if baseline else None,
        "freeze_ms": {k: round(statistics.median(v), 1) for k, v in freeze.items()},
        "total_ms": round(statistics.median(
            totals.get("1") or [t for v in totals.values() for t in v]), 1),
        "total_ms_by_rate": {k: round(statistics.median(v), 1) for k, v in totals.items()},
        "worker_rss_growth_mb": round(rss_after - rss_before, 1),
        "probes_lost": lost,
        "counters_ok": counters_ok,
    }))
    return 0 if statuses.count("succeeded") == len(statuses) and lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
