"""Stateless moves back and forth on the lab under a 1,000 req/s probe.

Usage: .venv/bin/python -m bench.move [--moves 20] [--rate 1000] [--down]

Brings the lab stack up if needed, deploys an echo service and a probe client, moves the
service core -> edge -> core ... through the HTTP API, and prints one JSON object:

- ``moves``, ``succeeded``, ``failed`` (with ``errors``: each failed move's status and error);
- ``total_ms`` and ``phase_ms``: distributions over the succeeded moves (``samples``, ``p50``,
  ``p95``, ``max``; ``p95_is_max`` is true below 20 samples, where the nearest-rank p95 *is*
  the slowest move: take ``--moves 20`` or more for a p95 that is not the maximum);
- ``cutover_ms``: from the API call to the moment CUTOVER switched the client's traffic to
  the target (the move's own ``cutover_ms``): what the client waits for, apart from the
  clean-up after it, which ``total_ms`` includes (``after_cutover_ms``: that clean-up,
  ``total_ms - cutover_ms``: the switched move's RELEASE and completion);
- ``timeline_ms``: when, from the API call, each phase started and ended (from the move's
  events), and ``between_phases_ms``: the time before the switch spent in no phase (the first
  task's wait in the queue, and each phase's bookkeeping between two: the phases up to
  CUTOVER run in one task, no queue hop between them);
- ``probes_sent``, ``probes_lost``, ``probes_duplicated``, ``probe_max_gap_ms``: what the
  client saw over the whole run;
- the same-run floor under the switch, ``container_start_ms``: the echo reference container
  started alone in a scratch namespace, until containerd returns (``run``) and until it
  serves (``ready``), and ``cutover_over_container_ready``: the p50 ``cutover_ms`` over the
  p50 ``ready`` (the target's container starts in PLACE while WIRE makes its links; WIRE
  ends once it serves, so PLACE alone no longer holds the start);
- the same-run baseline ``celery_roundtrip_ms``: the round trip of a no-op task through the
  same broker to the orchestrator, measured before and after the moves (the floor under each
  of the move's Celery hops on this machine at that moment), and ``total_over_roundtrip``,
  the p50 move over the p50 round trip.

Exits non-zero if any move did not succeed or the probe lost a request.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from typing import Any

from bench import labs
from bench.percentiles import distribution, nearest_rank
from cli.demo import follow_events, wait_probe
from cli.stack import Stack, default_stack

log = logging.getLogger("bench.move")

ECHO, CLIENT = "bench-echo", "bench-client"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()

    stack = default_stack()
    plan = stack.plan
    stack.up()
    try:
        return run(stack, moves=args.moves, rate=args.rate)
    finally:
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", plan.name)


def run(stack: Stack, *, moves: int, rate: float) -> int:
    """The moves under the probe; prints the JSON object, returns the exit status."""
    roundtrip_before = labs.celery_roundtrip_ms(stack.redis_url())
    starts = labs.container_start_ms(stack)
    totals: list[float] = []
    cutovers: list[float] = []
    cleanups: list[float] = []
    phases: dict[str, list[float]] = {}
    timeline: dict[str, list[float]] = {}
    between: list[float] = []
    statuses: list[str] = []
    errors: list[dict[str, Any]] = []
    # replies the probe must get between two moves: the service answers from where it landed
    settle = max(1, int(rate * 0.3))
    with stack.api_client(timeout=120) as api:
        for name in (CLIENT, ECHO):
            if api.get(f"/v1/services/{name}").status_code == 200:
                api.delete(f"/v1/services/{name}").raise_for_status()
        api.post("/v1/services", json={"name": ECHO, "workload": "echo",
                                       "cluster": "core"}).raise_for_status()
        r = api.post("/v1/services", json={"name": CLIENT, "workload": "probe",
                                           "cluster": "core", "peers": [ECHO],
                                           "params": {"rate": rate}})
        r.raise_for_status()
        pod_dir = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
        progress = pod_dir / "progress.json"
        wait_probe(progress, received=int(rate // 4), timeout=10)
        for i in range(moves):
            # from where the service is (a failed move leaves it where it was)
            at = api.get(f"/v1/services/{ECHO}").json()["instance"]["cluster"]
            to = "edge" if at == "core" else "core"
            r = api.post("/v1/moves", json={"service": ECHO, "to_cluster": to})
            r.raise_for_status()
            move_id = r.json()["id"]
            events: list[dict[str, Any]] = []
            follow_events(api, move_id, events.append)
            move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
            statuses.append(move["status"])
            if move["status"] != "succeeded":
                log.error("move %s (%d) %s: %s", move_id, i, move["status"], move["error"])
                errors.append({"move": move_id, "status": move["status"],
                               "error": move["error"]})
                continue
            totals.append(float(move["total_ms"]))
            if move.get("cutover_ms") is not None:
                cutovers.append(float(move["cutover_ms"]))
                cleanups.append(float(move["total_ms"]) - float(move["cutover_ms"]))
            marks, idle = _timeline(move, events)
            for mark, ms in marks.items():
                timeline.setdefault(mark, []).append(ms)
            between.append(idle)
            for phase, ms in move["phase_ms"].items():
                phases.setdefault(phase, []).append(float(ms))
            # let the probe run on the settled path before the next move (and before the end)
            got = int(labs.read_counters(progress).get("received", 0))
            if not labs.wait_counter(progress, key="received", at_least=got + settle,
                                     timeout=10):
                log.error("the probe got no replies for 10 s after move %s", move_id)
        api.delete(f"/v1/services/{CLIENT}").raise_for_status()
        probe = json.loads((pod_dir / "probe.json").read_text())
        api.delete(f"/v1/services/{ECHO}").raise_for_status()
    roundtrip_after = labs.celery_roundtrip_ms(stack.redis_url())
    roundtrip = statistics.median(roundtrip_before + roundtrip_after)
    succeeded = statuses.count("succeeded")
    print(json.dumps({
        "moves": len(statuses),
        "succeeded": succeeded,
        "failed": len(statuses) - succeeded,
        "errors": errors,
        "total_ms": distribution(totals),
        "cutover_ms": distribution(cutovers),
        "after_cutover_ms": distribution(cleanups),
        "phase_ms": {p: distribution(v) for p, v in phases.items()},
        "timeline_ms": {m: nearest_rank(v, 50) for m, v in timeline.items()},
        "between_phases_ms": distribution(between),
        "probe_rate": rate,
        "probes_sent": probe["sent"],
        "probes_lost": probe["lost"],
        "probes_duplicated": probe["duplicated"],
        "probe_max_gap_ms": probe["max_gap_ms"],
        "celery_roundtrip_ms": {
            "p50": round(roundtrip, 2),
            "before_p50": round(statistics.median(roundtrip_before), 2),
            "after_p50": round(statistics.median(roundtrip_after), 2),
            "samples": len(roundtrip_before) + len(roundtrip_after),
        },
        "total_over_roundtrip": (round(nearest_rank(totals, 50) / roundtrip, 1)
                                 if totals and roundtrip else None),
        # the switch's floor: a pod's container started (run) and serving (ready), alone
        "container_start_ms": {k: distribution(v) for k, v in starts.items()},
        "cutover_over_container_ready": (
            round(nearest_rank(cutovers, 50) / nearest_rank(starts["ready"], 50), 2)
            if cutovers else None),
    }))
    ok = succeeded == len(statuses) and int(probe["lost"]) == 0
    return 0 if ok else 1


def _timeline(move: dict[str, Any], events: list[dict[str, Any]]) -> tuple[dict[str, float],
                                                                          float]:
    """``<phase>_started``/``<phase>_ended`` -> ms after the API call, and the ms before the
    switch spent outside every phase (from the API call to the first phase, and between one
    phase's end and the next one's start)."""
    t0 = float(move["created_at"])
    marks: dict[str, float] = {}
    for e in events:
        if e["kind"] in ("phase_started", "phase_ended") and e.get("phase"):
            key = f"{e['phase']}_{e['kind'].removeprefix('phase_')}"
            marks.setdefault(key, round((float(e["ts"]) - t0) * 1000, 1))
    idle, last_end = 0.0, 0.0
    for e in events:
        ms = (float(e["ts"]) - t0) * 1000
        if e["kind"] == "phase_started":
            idle += max(0.0, ms - last_end)
            if e.get("phase") == "cutover":
                break
        elif e["kind"] == "phase_ended":
            last_end = ms
    return marks, round(idle, 1)


if __name__ == "__main__":
    raise SystemExit(main())
