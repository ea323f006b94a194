"""Stateful moves on the lab: state-transfer throughput and the freeze window.

Usage: .venv/bin/python -m bench.state [--state-mb 256] [--runs 3] [--rates 0,1,10] [--down]

Brings the lab stack up if needed and, for each dirty rate (percent of the extra state's
keys rewritten per second), deploys the session service with ``--state-mb`` of state, and for
each of ``--runs`` moves (back and forth) a session client at 1,000 req/s that lives through
that one move, so what it saw belongs to that move. Prints one JSON object:

- ``moves``, ``succeeded``, ``failed``, ``errors``; ``probes_lost``, ``counters_ok``: what the
  clients saw over all moves;
- ``transfer``: the pre-copy rate, SYNC's bytes (its rounds, from the move's events) over
  SYNC's own time (``sync_mb_s``), and the first round alone, which carries the whole state
  (``first_round_mb_s``); the final delta is shipped in CUTOVER, inside the freeze window, and
  is reported there, not in this rate;
- ``baseline``: measured in this run before and after the moves, from two of the lab's nodes
  (a core node writing, an edge node reading) through the same Redis over the same host link
  as the agents (see :mod:`bench.baselines`): one client SETting and one GETting values of the
  state's size (64 KiB), pipelined as the channel pipelines, and a plain unencrypted stream of
  the same bytes with a concurrent reader and the channel's in-flight cap;
- ``ratio``: ``sync_mb_s`` (p50) over each baseline (the mean of before and after);
- ``freeze``: per dirty rate, the freeze window as the orchestrator times it
  (``orchestrator_freeze_ms``) beside the longest stall the move's client saw between two
  replies (``client_max_stall_ms``);
- ``total_ms_by_rate``: move time (API call to succeeded); ``per_move``: each move's figures;
- ``worker_rss_growth_mb``: growth of the orchestration worker's resident memory.

Exits non-zero if a move did not succeed, a request was lost or a session counter broke.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from typing import Any

import httpx

from bench import baselines, labs
from bench.percentiles import distribution, nearest_rank
from cli.demo import follow_events, remove_demo_services
from cli.stack import Stack, default_stack
from dataplane.lab import topology
from dataplane.lab.workloads.sessions import BLOB
from state_transfer.channel import BATCH, MAX_INFLIGHT

log = logging.getLogger("bench.state")

SVC, CLIENT = "demo-echo", "demo-client"
ROUND = re.compile(r"round (\d+): (\d+) keys, (\d+) bytes")
WARM_ANSWERS = 250  # replies a client gets before its move, and again after it


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def round_bytes(event: dict[str, Any]) -> int:
    m = ROUND.search(str(event.get("detail", "")))
    return int(m.group(3)) if m else 0


def transfer_figures(move: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """SYNC's bytes and time, the first round's, and the final delta's bytes, from the move's
    record and its events (``precopy_round`` and ``final_delta`` carry each round's bytes)."""
    sync_started = next((float(e["ts"]) for e in events
                         if e["kind"] == "phase_started" and e.get("phase") == "sync"), None)
    rounds = [e for e in events if e["kind"] == "precopy_round"]
    final = [e for e in events if e["kind"] == "final_delta"]
    sync_bytes = sum(round_bytes(e) for e in rounds)
    sync_ms = float(move["phase_ms"].get("sync", 0.0))
    first_s = (float(rounds[0]["ts"]) - sync_started) if rounds and sync_started else 0.0
    return {
        "sync_bytes": sync_bytes,
        "sync_ms": sync_ms,
        "sync_mb_s": round(sync_bytes / 1e6 / (sync_ms / 1000), 1) if sync_ms > 0 else None,
        "precopy_rounds": len(rounds),
        "first_round_bytes": round_bytes(rounds[0]) if rounds else 0,
        "first_round_mb_s": (round(round_bytes(rounds[0]) / 1e6 / first_s, 1)
                             if first_s > 0 else None),
        "final_delta_bytes": sum(round_bytes(e) for e in final),
        "state_bytes": int(move["state_bytes"]),
    }


def other_cluster(api: httpx.Client, service: str) -> str:
    r = api.get(f"/v1/services/{service}")
    r.raise_for_status()
    return "edge" if r.json()["instance"]["cluster"] == "core" else "core"


def one_move(api: httpx.Client, stack: Stack, *, rate: str) -> dict[str, Any]:
    """Deploy a client, move the service under it, remove the client; the move's figures."""
    r = api.post("/v1/services", json={"name": CLIENT, "workload": "session-probe",
                                       "cluster": "core", "peers": [SVC]})
    r.raise_for_status()
    progress = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io" / "progress.json"
    probe_out = progress.with_name("probe.json")
    if not labs.wait_counter(progress, key="answered", at_least=WARM_ANSWERS, timeout=20):
        raise RuntimeError(f"the session client got fewer than {WARM_ANSWERS} replies in 20 s")
    to = other_cluster(api, SVC)
    r = api.post("/v1/moves", json={"service": SVC, "to_cluster": to})
    r.raise_for_status()
    move_id = r.json()["id"]
    events: list[dict[str, Any]] = []
    follow_events(api, move_id, events.append)
    move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
    # the client goes on until the service has answered it from where it is now
    answered = int(labs.read_counters(progress).get("answered", 0))
    if not labs.wait_counter(progress, key="answered", at_least=answered + WARM_ANSWERS,
                             timeout=20):
        log.error("the session client got no replies for 20 s after move %s", move_id)
    api.delete(f"/v1/services/{CLIENT}").raise_for_status()
    probe = json.loads(probe_out.read_text())
    row: dict[str, Any] = {
        "move": move_id, "dirty_rate": rate, "status": move["status"],
        "from": _where(move.get("source")), "to": _where(move.get("target")),
        "error": move["error"], "total_ms": move["total_ms"],
        "orchestrator_freeze_ms": move["freeze_ms"],
        "client_max_stall_ms": float(probe["max_gap_ms"]),
        "client_lost": int(probe["lost"]), "client_retransmits": int(probe["retransmits"]),
        "counters_ok": bool(probe["counters_ok"]),
    }
    row.update(transfer_figures(move, events))
    return row


def _where(instance: dict[str, Any] | None) -> str | None:
    return f"{instance['cluster']}/{instance['node']}" if instance else None


def measure_baselines(stack: Stack, *, values: int) -> dict[str, float]:
    plan = stack.plan
    writer = next(n for n in plan.nodes if n.cluster == "core")
    reader = next(n for n in plan.nodes if n.cluster == "edge")
    return baselines.measure(url=stack.redis_url(from_lab=True), local_url=stack.redis_url(),
                             writer_ns=writer.namespace, reader_ns=reader.namespace,
                             count=values, size=BLOB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-mb", type=float, default=256)
    parser.add_argument("--runs", type=int, default=3, help="moves per dirty rate")
    parser.add_argument("--rates", default="0,1,10", help="dirty rates, percent per second")
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()

    stack = default_stack()
    stack.up()
    try:
        return run(stack, state_mb=args.state_mb, runs=args.runs,
                   rates=[r.strip() for r in args.rates.split(",")])
    finally:
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", stack.plan.name)


def run(stack: Stack, *, state_mb: float, runs: int, rates: list[str]) -> int:
    """The moves and the baselines around them; prints the JSON object, returns the exit
    status."""
    worker = topology.recorded_pid(stack.run_dir, "orchestrator")
    if worker is None:
        raise RuntimeError("the orchestration worker is not running")
    values = max(1, int(state_mb * 1024 * 1024 // BLOB))
    with stack.api_client(timeout=300) as api:
        remove_demo_services(api)
        rss_before = rss_mb(worker)
        before = measure_baselines(stack, values=values)
        log.info("baselines before the moves: %s", before)
        rows: list[dict[str, Any]] = []
        for rate in rates:
            api.post("/v1/services", json={
                "name": SVC, "workload": "sessions", "cluster": "core",
                "params": {"state_mb": state_mb, "dirty_rate": float(rate)}},
            ).raise_for_status()
            for _ in range(runs):
                rows.append(one_move(api, stack, rate=rate))
                log.info("move: %s", rows[-1])
            api.delete(f"/v1/services/{SVC}").raise_for_status()
        rss_after = rss_mb(worker)
        after = measure_baselines(stack, values=values)
        log.info("baselines after the moves: %s", after)

    ok_rows = [r for r in rows if r["status"] == "succeeded"]
    sync_rates = [float(r["sync_mb_s"]) for r in ok_rows if r["sync_mb_s"] is not None]
    first_rates = [float(r["first_round_mb_s"]) for r in ok_rows
                   if r["first_round_mb_s"] is not None]
    sync_p50 = nearest_rank(sync_rates, 50) if sync_rates else None
    mean = {k: (before[k] + after[k]) / 2 for k in before}
    lost = sum(int(r["client_lost"]) for r in rows)
    counters_ok = all(r["counters_ok"] for r in rows)
    succeeded = len(ok_rows)
    print(json.dumps({
        "state_mb": state_mb,
        "moves": len(rows),
        "succeeded": succeeded,
        "failed": len(rows) - succeeded,
        "errors": [{"move": r["move"], "status": r["status"], "error": r["error"]}
                   for r in rows if r["status"] != "succeeded"],
        "probes_lost": lost,
        "counters_ok": counters_ok,
        "transfer": {
            "phase": "sync (pre-copy rounds; the final delta is in the freeze window)",
            "sync_mb_s": distribution(sync_rates),
            "first_round_mb_s": distribution(first_rates),
            "sync_bytes_p50": (nearest_rank([float(r["sync_bytes"]) for r in ok_rows], 50)
                               if ok_rows else None),
        },
        "baseline": {
            "how": f"one client each, {BLOB}-byte values pipelined {BATCH} a batch (the "
                   "channel's), writer on a core node, reader on an edge node, both through "
                   "the host link; the stream's writer at most "
                   f"{MAX_INFLIGHT} bytes ahead of its reader (the channel's cap)",
            "writer": next(n.namespace for n in stack.plan.nodes if n.cluster == "core"),
            "reader": next(n.namespace for n in stack.plan.nodes if n.cluster == "edge"),
            "values": values, "value_bytes": BLOB,
            "before": before, "after": after,
        },
        "ratio": {f"sync_over_{k.removesuffix('_mb_s')}": (round(sync_p50 / v, 3)
                                                           if sync_p50 and v else None)
                  for k, v in mean.items()},
        "freeze": {
            rate: {
                "moves": len(rs),
                "orchestrator_freeze_ms": distribution(
                    [float(r["orchestrator_freeze_ms"]) for r in rs
                     if r["orchestrator_freeze_ms"] is not None]),
                "client_max_stall_ms": distribution([float(r["client_max_stall_ms"])
                                                     for r in rs]),
            }
            for rate in rates if (rs := [r for r in ok_rows if r["dirty_rate"] == rate])
        },
        "total_ms_by_rate": {
            rate: distribution([float(r["total_ms"]) for r in ok_rows
                                if r["dirty_rate"] == rate])
            for rate in rates
        },
        "per_move": rows,
        "worker_rss_growth_mb": round(rss_after - rss_before, 1),
    }))
    ok = succeeded == len(rows) and lost == 0 and counters_ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
