"""Many moves at once: batches of services moved at the same time, each under its own client.

Usage: .venv/bin/python -m bench.concurrent [--moves 20,50] [--state-mb 16] [--rate 100] [--down]

For each batch size N (batches run one after the other) it deploys N services in ``core``,
half stateless (``echo``, each with a ``probe`` client) and half stateful (``sessions`` with
``--state-mb`` of state, each with a ``session-probe`` client), spread over the nodes by the
deploy's own placement. Then, measured in the same run:

- ``alone``: the baseline. One stateless and one stateful service moved alone (core -> edge
  and back: two moves each, nothing else moving), their ``total_ms``, ``cutover_ms`` (when
  the move record has it), ``freeze_ms``, phase times and queue waits;
- ``batch``: all N services moved core -> edge at once (each POST /v1/moves from its own
  thread, released together), followed to their end.

Per batch it prints ``succeeded``/``failed`` (with ``errors``), ``wall_s`` (first POST to
the last move's end) and ``moves_per_s`` (N over it), ``total_ms`` and ``cutover_ms`` p50/p99
per kind, ``freeze_ms`` p50/p99 of the stateful moves, what the clients saw (``lost`` and
``duplicated`` summed over every client, which must be 0; ``counters_ok`` of the session
clients), and head-of-line figures:

- ``hol.stateless_total_over_alone`` (and stateful): a kind's p50 move time in the batch over
  the same kind's p50 alone. Every stateless move of the batch runs while stateful moves
  stream their state: if a long SYNC held up other moves' phases, this ratio would grow with
  the stateful moves' transfer time, not with the batch size;
- ``hol.queue_wait_ms``: per hop of a move's task chain (``start>admit``: from the API's
  record to the first phase's start, ``admit>place`` ... ``release>end``: from one phase's
  end to the next one's start, from the move's events), p50/p99 over the batch, beside the
  same hops alone (``alone.queue_wait_ms``). A phase waiting for a free worker thread (or a
  task queued behind another move's on a node) shows here, not inside a phase's own time;
- ``hol.phase_ms``: each phase's own time p50/p99, batch and alone;
- ``post_ms``: how long the API took to answer each POST /v1/moves of the batch, and
  ``reaped``: moves the reaper took over (a phase's task that waited past the lease handoff);
  ``targets_per_node``: how many of the batch's new instances each node took (a node's agent
  runs its operations one at a time: moves piled on one node wait for each other there).

p99 is the nearest rank: with fewer than 100 samples it is the slowest move or close to it
(``samples`` says how many). Exits non-zero if any move did not succeed, a client lost a
request, a request was applied twice or a session counter broke. Removes every service it
deployed, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import labs
from bench.percentiles import nearest_rank
from cli.demo import follow_events
from cli.stack import Stack, default_stack

log = logging.getLogger("bench.concurrent")

PREFIX = "cc"  # every service this bench deploys is named cc-<kind><i>[-c]
PHASES = ("admit", "place", "wire", "sync", "cutover", "release")
TERMINAL = ("succeeded", "failed", "rolled_back")
WARM = 50  # replies each client gets before the moves, and again after them
DEPLOY_THREADS = 4
MOVE_TIMEOUT_S = 900.0


@dataclass
class Unit:
    """One service and its client."""

    service: str
    client: str
    stateful: bool
    io: Path | None = None  # the client's /run/mobility directory

    @property
    def progress(self) -> Path:
        assert self.io is not None
        return self.io / "progress.json"

    @property
    def counter(self) -> str:
        return "answered" if self.stateful else "received"


def pct(values: Sequence[float]) -> dict[str, Any]:
    """``samples``, ``p50``, ``p99`` and ``max`` (nearest rank; None without samples)."""
    if not values:
        return {"samples": 0, "p50": None, "p99": None, "max": None}
    return {"samples": len(values), "p50": round(nearest_rank(values, 50), 1),
            "p99": round(nearest_rank(values, 99), 1), "max": round(max(values), 1)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", default="20,50", help="batch sizes, run one after the other")
    parser.add_argument("--state-mb", type=float, default=16.0)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="requests per second of each client")
    labs.add_arguments(parser)
    args = parser.parse_args()
    labs.start_logging()
    batches = [int(n) for n in args.moves.split(",") if n.strip()]
    if any(n < 2 for n in batches):
        parser.error("each batch moves at least 2 services (one of each kind)")

    stack = default_stack()
    stack.up()
    try:
        return run(stack, batches=batches, state_mb=args.state_mb, rate=args.rate)
    finally:
        if args.down and labs.tear_down(stack):
            log.error("namespaces of lab %s are left after the teardown", stack.plan.name)


def run(stack: Stack, *, batches: list[int], state_mb: float, rate: float) -> int:
    """Every batch; prints the JSON object, returns the exit status."""
    results = []
    with stack.api_client(timeout=120) as api:
        _remove_leftovers(api)
        for n in batches:
            results.append(one_batch(api, stack, n=n, state_mb=state_mb, rate=rate))
    ok = all(r["failed"] == 0 and r["clients"]["lost"] == 0 and r["clients"]["duplicated"] == 0
             and r["clients"]["counters_ok"] and r["deployed"] for r in results)
    print(json.dumps({
        "state_mb": state_mb, "client_rate": rate,
        "nodes": {c.name: sum(1 for n in stack.plan.nodes if n.cluster == c.name)
                  for c in stack.plan.clusters},
        "orchestrator": _orchestrator_argv(stack),
        "batches": results,
    }))
    return 0 if ok else 1


def _orchestrator_argv(stack: Stack) -> str:
    """The orchestration worker's pool options, as it runs (what the figures depend on)."""
    from dataplane.lab import topology

    pid = topology.recorded_pid(stack.run_dir, "orchestrator")
    if pid is None:
        return "?"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    keep = [a for i, a in enumerate(argv) if a in ("-P", "-c", "-O") or (
        i > 0 and argv[i - 1] in ("-P", "-c", "-O"))]
    return " ".join(keep)


def _remove_leftovers(api: httpx.Client) -> None:
    """Services of an earlier run of this bench that died before its teardown."""
    r = api.get("/v1/services")
    r.raise_for_status()
    names = [s["name"] for s in r.json() if str(s["name"]).startswith(f"{PREFIX}-")]
    for name in sorted(names, key=lambda s: not s.endswith("-c")):  # clients first
        api.delete(f"/v1/services/{name}")


def one_batch(api: httpx.Client, stack: Stack, *, n: int, state_mb: float,
              rate: float) -> dict[str, Any]:
    units = [Unit(service=f"{PREFIX}-{'f' if i % 2 else 's'}{i}",
                  client=f"{PREFIX}-{'f' if i % 2 else 's'}{i}-c", stateful=bool(i % 2))
             for i in range(n)]
    deployed: list[Unit] = []
    try:
        t0 = time.monotonic()
        deploy_all(api, stack, units, state_mb=state_mb, rate=rate, deployed=deployed)
        deploy_s = time.monotonic() - t0
        log.info("batch %d: deployed %d services and clients in %.1f s", n, n, deploy_s)
        for u in units:
            if not labs.wait_counter(u.progress, key=u.counter, at_least=WARM, timeout=60):
                raise RuntimeError(f"client {u.client} got fewer than {WARM} replies in 60 s")
        # the baseline: one move of each kind alone, there and back
        alone_moves: list[dict[str, Any]] = []
        for u in (units[0], units[1]):
            for to in ("edge", "core"):
                alone_moves.append(move_alone(api, u.service, to))
        log.info("batch %d: alone: %s", n, [(m["service"], m["status"], m["total_ms"])
                                             for m in alone_moves])
        started, moves = move_all(stack, [u.service for u in units], to="edge")
        ends = [float(m["finished_at"]) for m in moves if m.get("finished_at")]
        wall_s = (max(ends) - started) if ends else None
        log.info("batch %d: %d moves in %s s", n, n, wall_s and round(wall_s, 2))
        events = {m["id"]: move_events(api, m["id"]) for m in moves + alone_moves}
        for u in units:  # every client is answered from where its service is now
            got = int(labs.read_counters(u.progress).get(u.counter, 0))
            if not labs.wait_counter(u.progress, key=u.counter, at_least=got + WARM,
                                     timeout=30):
                log.error("client %s got no replies for 30 s after the moves", u.client)
        clients = remove_all(api, deployed)
        deployed.clear()
    finally:
        if deployed:
            remove_all(api, deployed)
    return figures(n=n, moves=moves, alone=alone_moves, events=events, wall_s=wall_s,
                   clients=clients, deploy_s=deploy_s)


def deploy_all(api: httpx.Client, stack: Stack, units: list[Unit], *, state_mb: float,
               rate: float, deployed: list[Unit]) -> None:
    """Each service, then its client, a few units at a time; ``deployed`` grows as they
    are (so the teardown removes what is there even when a deploy fails)."""
    lock = threading.Lock()

    def deploy(u: Unit) -> None:
        with stack.api_client(timeout=120) as own:
            if u.stateful:
                svc = {"name": u.service, "workload": "sessions", "cluster": "core",
                       "params": {"state_mb": state_mb, "dirty_rate": 1.0}}
                cli = {"name": u.client, "workload": "session-probe", "cluster": "core",
                       "peers": [u.service], "params": {"rate": rate}}
            else:
                svc = {"name": u.service, "workload": "echo", "cluster": "core"}
                cli = {"name": u.client, "workload": "probe", "cluster": "core",
                       "peers": [u.service], "params": {"rate": rate}}
            r = own.post("/v1/services", json=svc)
            if r.status_code != 201:
                raise RuntimeError(f"deploy {u.service}: {r.status_code} {r.text}")
            with lock:
                deployed.append(Unit(u.service, "", u.stateful))
            r = own.post("/v1/services", json=cli)
            if r.status_code != 201:
                raise RuntimeError(f"deploy {u.client}: {r.status_code} {r.text}")
            u.io = stack.run_dir / "pods" / r.json()["instance"]["pod"] / "io"
            with lock:
                deployed[[d.service for d in deployed].index(u.service)] = u

    with ThreadPoolExecutor(DEPLOY_THREADS) as pool:
        for f in [pool.submit(deploy, u) for u in units]:
            f.result()


def remove_all(api: httpx.Client, units: list[Unit]) -> dict[str, Any]:
    """Remove every client (reading what it saw), then every service; the clients' sums."""
    seen: dict[str, Any] = {"clients": 0, "sent": 0, "lost": 0, "duplicated": 0,
                            "counters_ok": True, "max_gap_ms": 0.0, "losses": []}

    def remove_client(u: Unit) -> dict[str, Any] | None:
        if not u.client or u.io is None:
            return None
        with _api_like(api) as own:
            _delete(own, u.client)
        try:
            out: dict[str, Any] = json.loads((u.io / "probe.json").read_text())
            return out
        except (FileNotFoundError, ValueError):
            log.error("client %s left no probe.json", u.client)
            return {"sent": 0, "lost": 1, "duplicated": 0}  # counted as a loss

    def remove_service(u: Unit) -> None:
        with _api_like(api) as own:
            _delete(own, u.service)

    with ThreadPoolExecutor(DEPLOY_THREADS) as pool:
        for u, probe in zip(units, pool.map(remove_client, units), strict=True):
            if probe is None:
                continue
            if int(probe.get("lost", 0)):  # which clients lost what, to tell why
                seen["losses"].append({"client": u.client, "stateful": u.stateful,
                                       "lost": int(probe.get("lost", 0)),
                                       "sent": int(probe.get("sent", 0)),
                                       "max_gap_ms": float(probe.get("max_gap_ms", 0))})
            seen["clients"] += 1
            seen["sent"] += int(probe.get("sent", 0))
            seen["lost"] += int(probe.get("lost", 0))
            # a probe request answered twice, or a session request applied twice
            seen["duplicated"] += int(probe.get("duplicated", 0)) + int(
                probe.get("double_increments", 0))
            seen["counters_ok"] = bool(seen["counters_ok"]) and bool(
                probe.get("counters_ok", True))
            seen["max_gap_ms"] = max(float(seen["max_gap_ms"]), float(probe.get("max_gap_ms", 0)))
        list(pool.map(remove_service, units))
    return seen


def _api_like(api: httpx.Client) -> httpx.Client:
    """A client of the same API with the same token (one per thread)."""
    from cli.client import ApiClient

    token = str(api.headers.get("Authorization", "")).removeprefix("Bearer ")
    return ApiClient(str(api.base_url), token=token, timeout=120)


def _delete(api: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    while True:
        r = api.delete(f"/v1/services/{name}")
        if r.status_code in (204, 404):
            return
        if r.status_code != 409 or time.monotonic() > deadline:  # 409: still moving
            log.error("could not remove %s: %s %s", name, r.status_code, r.text)
            return
        time.sleep(0.5)


def move_alone(api: httpx.Client, service: str, to: str) -> dict[str, Any]:
    r = api.post("/v1/moves", json={"service": service, "to_cluster": to})
    r.raise_for_status()
    move_id = r.json()["id"]
    follow_events(api, move_id, lambda _e: None)
    move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
    return move


def move_all(stack: Stack, services: list[str], *, to: str) -> tuple[float, list[dict[str, Any]]]:
    """POST every move from its own thread, released together; poll them all to their end.
    Returns the wall-clock time just before the release and the ended moves."""
    barrier = threading.Barrier(len(services) + 1)
    ids: list[str | None] = [None] * len(services)
    post_ms: list[float] = [0.0] * len(services)
    errors: list[str] = []
    clients = [stack.api_client(timeout=120) for _ in services]

    def post(i: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        r = clients[i].post("/v1/moves", json={"service": services[i], "to_cluster": to})
        post_ms[i] = (time.perf_counter() - t0) * 1000
        if r.status_code != 202:
            errors.append(f"{services[i]}: {r.status_code} {r.text}")
            return
        ids[i] = str(r.json()["id"])

    threads = [threading.Thread(target=post, args=(i,), daemon=True)
               for i in range(len(services))]
    for t in threads:
        t.start()
    started = time.time()
    barrier.wait()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"moves refused: {errors}")
    with stack.api_client(timeout=120) as api:
        moves = [wait_terminal(api, str(i)) for i in ids]
    for move, ms in zip(moves, post_ms, strict=True):
        move["post_ms"] = ms  # the API's answer to this move's POST, under the batch
    return started, moves


def wait_terminal(api: httpx.Client, move_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    while True:
        move: dict[str, Any] = api.get(f"/v1/moves/{move_id}").json()
        if move["status"] in TERMINAL:
            return move
        if time.monotonic() > deadline:
            return move  # counted as failed
        time.sleep(0.2)


def move_events(api: httpx.Client, move_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    follow_events(api, move_id, out.append)
    return out


def queue_waits(move: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, float]:
    """ms between one step of the chain and the next: ``start>admit`` (the API's record to the
    first phase's start), ``<phase>><next>`` (a phase's end to the next phase's start) and
    ``release>end`` (the last phase's end to the move's end)."""
    started = {e["phase"]: float(e["ts"]) for e in events if e["kind"] == "phase_started"}
    ended = {e["phase"]: float(e["ts"]) for e in events if e["kind"] == "phase_ended"}
    out: dict[str, float] = {}
    prev_name, prev_ts = "start", float(move["created_at"])
    for phase in PHASES:
        if phase not in started or phase not in ended:
            return out
        out[f"{prev_name}>{phase}"] = (started[phase] - prev_ts) * 1000
        prev_name, prev_ts = phase, ended[phase]
    if move.get("finished_at"):
        out[f"{prev_name}>end"] = (float(move["finished_at"]) - prev_ts) * 1000
    return out


def _by_hop(moves: list[dict[str, Any]], events: dict[str, list[dict[str, Any]]]
            ) -> dict[str, dict[str, Any]]:
    hops: dict[str, list[float]] = {}
    for m in moves:
        for hop, ms in queue_waits(m, events[m["id"]]).items():
            hops.setdefault(hop, []).append(ms)
    return {hop: pct(v) for hop, v in hops.items()}


def _by_phase(moves: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    phases: dict[str, list[float]] = {}
    for m in moves:
        for phase, ms in m["phase_ms"].items():
            phases.setdefault(phase, []).append(float(ms))
    return {p: pct(phases[p]) for p in PHASES if p in phases}


def _field(moves: list[dict[str, Any]], name: str) -> list[float]:
    return [float(m[name]) for m in moves if m.get(name) is not None]


def figures(*, n: int, moves: list[dict[str, Any]], alone: list[dict[str, Any]],
            events: dict[str, list[dict[str, Any]]], wall_s: float | None,
            clients: dict[str, Any], deploy_s: float) -> dict[str, Any]:
    ok = [m for m in moves if m["status"] == "succeeded"]
    ok_alone = [m for m in alone if m["status"] == "succeeded"]

    def kind(ms: list[dict[str, Any]], stateful: bool) -> list[dict[str, Any]]:
        return [m for m in ms if bool(m["stateful"]) == stateful]

    def p50(ms: list[dict[str, Any]], name: str) -> float | None:
        values = _field(ms, name)
        return nearest_rank(values, 50) if values else None

    def per_kind(ms: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            label: {"moves": len(kind(ms, st)),
                    "total_ms": pct(_field(kind(ms, st), "total_ms")),
                    "cutover_ms": pct(_field(kind(ms, st), "cutover_ms")),
                    **({"freeze_ms": pct(_field(kind(ms, st), "freeze_ms"))} if st else {})}
            for label, st in (("stateless", False), ("stateful", True))}

    return {
        "moves": len(moves),
        "deployed": len(moves) == n,
        "deploy_s": round(deploy_s, 1),
        "succeeded": len(ok),
        "failed": len(moves) - len(ok),
        "errors": [{"move": m["id"], "service": m["service"], "status": m["status"],
                    "error": m["error"]} for m in moves + alone if m["status"] != "succeeded"],
        "wall_s": round(wall_s, 2) if wall_s else None,
        "post_ms": pct(_field(moves, "post_ms")),
        # moves the reaper took over (a phase's task not picked up within the lease handoff)
        "reaped": sum(1 for m in moves if int(m.get("epoch", 0)) > 0),
        # where the batch's new instances went: moves piled on one node queue on its agent
        "targets_per_node": dict(sorted(Counter(
            f"{m['target']['cluster']}/{m['target']['node']}" for m in moves
            if m.get("target")).items())),
        "moves_per_s": round(len(ok) / wall_s, 2) if wall_s else None,
        "batch": {"total_ms": pct(_field(ok, "total_ms")),
                  "cutover_ms": pct(_field(ok, "cutover_ms")), **per_kind(ok)},
        "alone": {"moves": len(alone), **per_kind(ok_alone),
                  "queue_wait_ms": _by_hop(ok_alone, events), "phase_ms": _by_phase(ok_alone)},
        # one move alone after another: what N moves take one at a time, over the batch's wall
        "speedup_over_serial": ratio(
            (sum(x for x in (p50(kind(ok_alone, False), "total_ms"),
                             p50(kind(ok_alone, True), "total_ms")) if x) / 2 * n / 1000),
            wall_s),
        "hol": {
            "stateless_total_over_alone": ratio(p50(kind(ok, False), "total_ms"),
                                                p50(kind(ok_alone, False), "total_ms")),
            "stateful_total_over_alone": ratio(p50(kind(ok, True), "total_ms"),
                                               p50(kind(ok_alone, True), "total_ms")),
            "queue_wait_ms": _by_hop(ok, events),
            "phase_ms": _by_phase(ok),
        },
        "clients": clients,
    }


if __name__ == "__main__":
    raise SystemExit(main())
