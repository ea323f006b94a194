"""Stateless moves back and forth on the lab under a 1,000 req/s probe.

Usage: .venv/bin/python -m bench.move [--moves 20] [--rate 1000]

Brings the default lab stack up if needed, deploys an echo service and a probe client, moves
the service core -> edge -> core ... through the HTTP API, and prints one JSON object:
``moves``, ``total_ms_p50``, ``total_ms_p95``, ``phase_ms_p50``, ``probes_sent``,
``probes_lost``, ``probes_duplicated``. The same-run baseline is the round trip of a no-op task
through the same broker to the orchestrator (``celery_roundtrip_ms_p50``): the floor under
each of the move's Celery hops on this machine, whatever the machine's noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from cli.demo import follow_events, wait_probe
from cli.stack import Stack, default_stack
from workers.app import client

ECHO, CLIENT = "bench-echo", "bench-client"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


def celery_roundtrip_ms(stack: Stack, n: int = 30) -> float:
    app = client(stack.redis_url())
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = app.send_task("orchestrator.ping", queue="orchestration")
        res.get(timeout=10)
        samples.append((time.perf_counter() - t0) * 1000)
        res.forget()
    return round(statistics.median(samples), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()

    stack = default_stack()
    plan = stack.plan
    stack.up()
    roundtrip = celery_roundtrip_ms(stack)
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    statuses: list[str] = []
    with httpx.Client(base_url=stack.api_url, timeout=120) as api:
        for name in (CLIENT, ECHO):
            if api.get(f"/v1/services/{name}").status_code == 200:
                api.delete(f"/v1/services/{name}").raise_for_status()
        api.post("/v1/services", json={"name": ECHO, "workload": "echo",
                                       "cluster": "core"}).raise_for_status()
        r = api.post("/v1/services", json={"name": CLIENT, "workload": "probe",
                                           "cluster": "core", "peers": [ECHO],
                                           "params": {"rate": args.rate}})
        r.raise_for_status()
        pod_dir = plan.run_dir / "pods" / r.json()["instance"]["pod"]
        wait_probe(pod_dir / "progress.json", received=int(args.rate // 4), timeout=10)
        for i in range(args.moves):
            to = "edge" if i % 2 == 0 else "core"
            r = api.post("/v1/moves", json={"service": ECHO, "to_cluster": to})
            r.raise_for_status()
            move_id = r.json()["id"]
            follow_events(api, move_id, lambda _e: None)
            move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
            statuses.append(move["status"])
            totals.append(float(move["total_ms"]))
            for phase, ms in move["phase_ms"].items():
                phases.setdefault(phase, []).append(float(ms))
            time.sleep(0.3)
        time.sleep(0.5)
        api.delete(f"/v1/services/{CLIENT}").raise_for_status()
        probe = json.loads((pod_dir / "probe.json").read_text())
        api.delete(f"/v1/services/{ECHO}").raise_for_status()

    print(json.dumps({
        "moves": args.moves,
        "succeeded": statuses.count("succeeded"),
        "total_ms_p50": pct(totals, 0.5),
        "total_ms_p95": pct(totals, 0.95),
        "phase_ms_p50": {p: pct(v, 0.5) for p, v in phases.items()},
        "probe_rate": args.rate,
        "probes_sent": probe["sent"],
        "probes_lost": probe["lost"],
        "probes_duplicated": probe["duplicated"],
        "probe_max_gap_ms": probe["max_gap_ms"],
        "celery_roundtrip_ms_p50": roundtrip,
        "total_over_roundtrip": round(pct(totals, 0.5) / roundtrip, 1) if roundtrip else None,
    }))
    return 0 if statuses.count("succeeded") == args.moves and probe["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
