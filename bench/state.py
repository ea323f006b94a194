"""Stateful moves on the lab: state-transfer throughput and the freeze window.

Usage: .venv/bin/python -m bench.state [--state-mb 256] [--runs 3] [--rates 0,1,10]
       [--max-freeze-ms MS] [--down]

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
- ``redis_benchmark``: ``redis-benchmark``'s SET and GET of 64 KiB values from the same nodes
  before and after the moves (see :mod:`bench.redis_benchmark`), their harmonic mean and the
  write-then-read ceiling (each byte SET once and GET once on Redis's one core:
  ``1 / (1/set + 1/get)``);
- ``ratio``: ``sync_mb_s`` (p50) over each baseline (the mean of before and after), among them
  ``sync_over_redis_benchmark_set`` and ``sync_over_write_then_read_ceiling``;
- ``state_fill_s``: how long deploying the session service with its state took (the
  application creates it before it is ready), per dirty rate;
- ``memory``: per move and at worst over them, the growth of the resident memory of the
  orchestration worker, of both state relays and of the node agents from the move's start to
  its peak during the move (sampled every 50 ms), and Redis's ``used_memory`` at its peak
  during the move over its value before it (bounded by the channel's in-flight cap);
- ``freeze_prediction``: the orchestrator's measured freeze over the move's
  ``predicted_freeze_ms`` (when the orchestrator predicts one), median and worst;
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
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import baselines, labs, redis_benchmark
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


def _rss_peak_mb(pid: int) -> float:
    try:
        return rss_mb(pid)
    except OSError:  # gone meanwhile
        return 0.0


def relay_pids(run_dir: Path) -> list[int]:
    """The state relays of this stack's pods (``python -m state_transfer.relay --app
    <run_dir>/pods/...``)."""
    pods = f"{run_dir}/pods/".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"state_transfer.relay" in argv and any(a.startswith(pods) for a in argv):
            found.append(int(entry.name))
    return found


class MemorySampler:
    """Samples, every :attr:`PERIOD` s while a move runs, the resident memory of the
    orchestration worker, the node agents and the state relays, and Redis's ``used_memory``:
    each process's growth is its peak over its first sample in the window (a relay started
    during the move, the target's, counts from its first sample)."""

    PERIOD = 0.05

    def __init__(self, stack: Stack, *, worker: int) -> None:
        self.stack = stack
        self.worker = worker
        self.agents = [pid for p in sorted((stack.run_dir / "pids").glob("agent-*.json"))
                       if (pid := topology.recorded_pid(stack.run_dir, p.stem)) is not None]
        self.admin = stack.redis_client()

    def _redis_used(self) -> int:
        return int(self.admin.info("memory")["used_memory"])

    @contextmanager
    def window(self) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        first: dict[int, float] = {}
        peak: dict[int, float] = {}
        relays_before = set(relay_pids(self.stack.run_dir))
        relays: set[int] = set(relays_before)
        redis_before = self._redis_used()
        redis_peak = [redis_before]
        stop = threading.Event()

        def sample() -> None:
            ticks = 0
            while True:
                if ticks % 5 == 0:  # the target's relay appears during the move
                    relays.update(relay_pids(self.stack.run_dir))
                for pid in (self.worker, *self.agents, *relays):
                    rss = _rss_peak_mb(pid)
                    if rss:
                        first.setdefault(pid, rss)
                        peak[pid] = max(peak.get(pid, 0.0), rss)
                redis_peak[0] = max(redis_peak[0], self._redis_used())
                ticks += 1
                if stop.wait(self.PERIOD):
                    return

        t = threading.Thread(target=sample, name="memory-sampler", daemon=True)
        t.start()
        try:
            yield out
        finally:
            stop.set()
            t.join(5)

            def growth(pids: set[int] | list[int]) -> float | None:
                seen = [peak[p] - first[p] for p in pids if p in first]
                return round(max(seen), 1) if seen else None

            out.update({
                "orchestrator_rss_growth_mb": growth([self.worker]),
                "source_relay_rss_growth_mb": growth(relays_before),
                "target_relay_rss_growth_mb": growth(relays - relays_before),
                "node_agent_rss_growth_mb": growth(self.agents),
                "relay_rss_peak_mb": (round(max(peak[p] for p in relays if p in peak), 1)
                                      if any(p in peak for p in relays) else None),
                "redis_used_memory_before_mb": round(redis_before / 2**20, 1),
                "redis_used_memory_peak_mb": round(redis_peak[0] / 2**20, 1),
                "redis_used_memory_growth_mb": round((redis_peak[0] - redis_before) / 2**20, 1),
            })


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


def one_move(api: httpx.Client, stack: Stack, *, rate: str, sampler: MemorySampler,
             max_freeze_ms: float | None = None) -> dict[str, Any]:
    """Deploy a client, move the service under it, remove the client; the move's figures."""
    r = api.post("/v1/services", json={"name": CLIENT, "workload": "session-probe",
                                       "cluster": "core", "peers": [SVC]})
    r.raise_for_status()
    progress = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io" / "progress.json"
    probe_out = progress.with_name("probe.json")
    if not labs.wait_counter(progress, key="answered", at_least=WARM_ANSWERS, timeout=20):
        raise RuntimeError(f"the session client got fewer than {WARM_ANSWERS} replies in 20 s")
    to = other_cluster(api, SVC)
    body: dict[str, Any] = {"service": SVC, "to_cluster": to}
    if max_freeze_ms is not None:
        body["max_freeze_ms"] = max_freeze_ms
    events: list[dict[str, Any]] = []
    with sampler.window() as memory:
        r = api.post("/v1/moves", json=body)
        r.raise_for_status()
        move_id = r.json()["id"]
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
        "predicted_freeze_ms": move.get("predicted_freeze_ms"),
        "client_max_stall_ms": float(probe["max_gap_ms"]),
        "client_lost": int(probe["lost"]), "client_retransmits": int(probe["retransmits"]),
        "counters_ok": bool(probe["counters_ok"]),
    }
    row.update(transfer_figures(move, events))
    row.update(memory)
    return row


def _where(instance: dict[str, Any] | None) -> str | None:
    return f"{instance['cluster']}/{instance['node']}" if instance else None


def measure_baselines(stack: Stack, *, values: int) -> tuple[dict[str, float],
                                                              dict[str, float]]:
    """The Python clients' baselines and redis-benchmark's, from the same two nodes."""
    plan = stack.plan
    writer = next(n for n in plan.nodes if n.cluster == "core")
    reader = next(n for n in plan.nodes if n.cluster == "edge")
    python = baselines.measure(url=stack.redis_url(from_lab=True), local_url=stack.redis_url(),
                               writer_ns=writer.namespace, reader_ns=reader.namespace,
                               count=values, size=BLOB)
    reference = redis_benchmark.measure(stack.redis_client(), url=stack.redis_url(from_lab=True),
                                        writer_ns=writer.namespace, reader_ns=reader.namespace,
                                        requests=values, size=BLOB)
    return python, reference


def freeze_prediction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Measured freeze over predicted: the median ratio and the one farthest from 1."""
    ratios = [float(r["orchestrator_freeze_ms"]) / float(r["predicted_freeze_ms"])
              for r in rows if r.get("predicted_freeze_ms") and r["orchestrator_freeze_ms"]]
    if not ratios:
        return {"n": 0, "ratio_p50": None, "ratio_worst": None}
    worst = max(ratios, key=lambda x: max(x, 1 / x) if x > 0 else float("inf"))
    return {"n": len(ratios), "ratio_p50": round(nearest_rank(ratios, 50), 3),
            "ratio_worst": round(worst, 3)}


def _worst(rows: list[dict[str, Any]], key: str) -> float | None:
    seen = [float(r[key]) for r in rows if r.get(key) is not None]
    return max(seen) if seen else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-mb", type=float, default=256)
    parser.add_argument("--runs", type=int, default=3, help="moves per dirty rate")
    parser.add_argument("--rates", default="0,1,10", help="dirty rates, percent per second")
    parser.add_argument("--max-freeze-ms", type=float, default=None,
                        help="the freeze budget asked of each move (POST /v1/moves)")
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()

    stack = default_stack()
    stack.up()
    try:
        return run(stack, state_mb=args.state_mb, runs=args.runs,
                   rates=[r.strip() for r in args.rates.split(",")],
                   max_freeze_ms=args.max_freeze_ms)
    finally:
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", stack.plan.name)


def run(stack: Stack, *, state_mb: float, runs: int, rates: list[str],
        max_freeze_ms: float | None = None) -> int:
    """The moves and the baselines around them; prints the JSON object, returns the exit
    status."""
    worker = topology.recorded_pid(stack.run_dir, "orchestrator")
    if worker is None:
        raise RuntimeError("the orchestration worker is not running")
    values = max(1, int(state_mb * 1024 * 1024 // BLOB))
    with stack.api_client(timeout=300) as api:
        remove_demo_services(api)
        rss_before = rss_mb(worker)
        sampler = MemorySampler(stack, worker=worker)
        before, bench_before = measure_baselines(stack, values=values)
        log.info("baselines before the moves: %s %s", before, bench_before)
        rows: list[dict[str, Any]] = []
        fill_s: dict[str, float] = {}
        for rate in rates:
            t0 = time.monotonic()
            api.post("/v1/services", json={
                "name": SVC, "workload": "sessions", "cluster": "core",
                "params": {"state_mb": state_mb, "dirty_rate": float(rate)}},
            ).raise_for_status()
            fill_s[rate] = round(time.monotonic() - t0, 2)
            for _ in range(runs):
                rows.append(one_move(api, stack, rate=rate, sampler=sampler,
                                     max_freeze_ms=max_freeze_ms))
                log.info("move: %s", rows[-1])
            api.delete(f"/v1/services/{SVC}").raise_for_status()
        rss_after = rss_mb(worker)
        after, bench_after = measure_baselines(stack, values=values)
        log.info("baselines after the moves: %s %s", after, bench_after)

    ok_rows = [r for r in rows if r["status"] == "succeeded"]
    sync_rates = [float(r["sync_mb_s"]) for r in ok_rows if r["sync_mb_s"] is not None]
    first_rates = [float(r["first_round_mb_s"]) for r in ok_rows
                   if r["first_round_mb_s"] is not None]
    sync_p50 = nearest_rank(sync_rates, 50) if sync_rates else None
    mean = {k: (before[k] + after[k]) / 2 for k in before}
    bench_mean = {k: round((bench_before[k] + bench_after[k]) / 2, 1) for k in bench_before}
    reference = {"redis_benchmark_set": bench_mean["set_mb_s"],
                 "redis_benchmark_get": bench_mean["get_mb_s"],
                 "harmonic_mean": bench_mean["harmonic_mean_mb_s"],
                 "write_then_read_ceiling": bench_mean["write_then_read_ceiling_mb_s"]}
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
        "redis_benchmark": {
            "how": f"redis-benchmark -c {redis_benchmark.CLIENTS} -n {values}: SET then GET "
                   f"of one {BLOB}-byte value (as -t set,get -d {BLOB}), SET from the "
                   "writer's node, GET from the reader's",
            "before": bench_before, "after": bench_after, "mean": bench_mean,
        },
        "ratio": {
            **{f"sync_over_{k.removesuffix('_mb_s')}": (round(sync_p50 / v, 3)
                                                      if sync_p50 and v else None)
               for k, v in mean.items()},
            **{f"sync_over_{k}": (round(sync_p50 / v, 3) if sync_p50 and v else None)
               for k, v in reference.items()},
        },
        "state_fill_s": fill_s,
        "memory": {
            "worst_orchestrator_rss_growth_mb": _worst(rows, "orchestrator_rss_growth_mb"),
            "worst_relay_rss_growth_mb": max(
                (v for k in ("source_relay_rss_growth_mb", "target_relay_rss_growth_mb")
                 if (v := _worst(rows, k)) is not None), default=None),
            "worst_node_agent_rss_growth_mb": _worst(rows, "node_agent_rss_growth_mb"),
            "worst_redis_used_memory_growth_mb": _worst(rows, "redis_used_memory_growth_mb"),
            "max_inflight_mb": MAX_INFLIGHT / 2**20,
        },
        "freeze_prediction": freeze_prediction(ok_rows),
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
