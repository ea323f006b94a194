"""The control plane at scale: reconcile ticks, API latency and planning with a big fleet.

Usage: .venv/bin/python -m bench.scale [--services 2000] [--clusters 10] [--nodes 4]
       [--ticks 200] [--gets 40] [--posts 200] [--plan-services 100000]
       [--plan-clusters 500] [--plan-runs 3]

Starts its own Redis (loopback, a password in a 0600 file, no argv secret; ``bench.servers``') and
registers, straight through the :class:`~mobility.store.Registry` as a deploy writes them,
``--clusters`` clusters of ``--nodes`` nodes and ``--services`` services in linked pairs (each
pair's two ends on nodes of different clusters, one link each, a path-health report each).

What it measures, each against a baseline from the same run:

* **Reconcile tick cost per node**: the read-and-compare a node agent does every second
  (``workers.reconciling.node_desired_ends``: the node's services from its index, their
  links, peers and clusters, and the link ends they should have), timed over ``--ticks``
  ticks of every node; the kernel checks that follow are per link end of the node and the
  same whatever the registry holds, so they are not part of it. Baselines: the full-scan
  read the reconciler made before the index (``legacy_scan``: every service, link and
  cluster read with a round trip each, every tick), the same scan with the registry's
  batched reads of today (``scan_desired_ends``, ``batched_scan_tick_ms``: what an agent
  does on a registry without an index), and one Redis ``PING`` round trip. All three reads
  are checked to give the same ends.
* **API latency**: the real API app (``api.app.create_app``) under uvicorn on a free loopback
  port, a viewer's ``GET /v1/services`` ``--gets`` times and an operator's ``POST /v1/moves``
  for ``--posts`` distinct services (one end of each pair, so no move waits on its peer's).
  Each move is recorded and its first task queued on the orchestration queue of this Redis;
  no worker runs, so the moves stay pending: what is timed is the API's own work (checks,
  the create-move script, the queueing). Baseline: ``GET /healthz`` (one Redis round trip)
  on the same server, alternating with the listing.
* **Planner**: :func:`mobility.rebalancing.plan_rebalance` on ``bench.planner``'s skewed fleet
  of ``--plan-services`` services over ``--plan-clusters`` clusters (the move cap never
  binds: its worst case), ``--plan-runs`` times; target at most 2 s p50. Baseline: sorting
  the fleet's ``(load, name)`` pairs once.

Prints one JSON object. Nothing is left behind: the server and Redis are this process's own
and end with it; the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx

from bench.labs import start_logging
from bench.percentiles import nearest_rank
from bench.planner import NOW, fleet
from bench.servers import redis_server
from bench.ui import serving
from mobility import keys, tokens
from mobility.deploying import link_identity
from mobility.models import Cluster, Instance, Link, LinkEnd, Node, PathHealth, Service
from mobility.rebalancing import plan_rebalance
from mobility.settings import Settings, get_settings
from mobility.store import Registry
from mobility.tokens import Role
from workers.reconciling import Ends, ends_of, node_desired_ends, scan_desired_ends
from workers.routing import ORCHESTRATION

log = logging.getLogger(__name__)

TARGET_PLAN_MS = 2000.0
HEALTH_TTL_S = 3600


def register(reg: Registry, *, services: int, clusters: int, nodes: int) -> list[Cluster]:
    """The fleet: clusters of nodes and ``services`` services in linked pairs, written as a
    deploy writes them (the service, its link, both ends' link lists, its placement)."""
    fleet_ = []
    for c in range(clusters):
        name = f"k{c:02d}"
        fleet_.append(Cluster(name=name, nodes=tuple(
            Node(name=f"n{i}", cluster=name, underlay_ip=f"198.18.{c + 1}.{10 + i}")
            for i in range(nodes))))
        reg.put_cluster(fleet_[-1])
    slots = [(c, n) for c in fleet_ for n in c.nodes]
    now = time.time()
    for p in range(services // 2):
        server, client = f"srv-{p:05d}", f"cli-{p:05d}"
        home = slots[p % len(slots)]
        away = slots[(p + nodes + 1) % len(slots)]  # another cluster (nodes per cluster + 1)
        (mac_c, ip_c), (mac_s, ip_s) = link_identity(p + 1)  # as a deploy allocates them
        link = Link(id=f"{client}.{server}", vni=1001 + p, ends=(
            LinkEnd(service=client, ifname="nsm-1", mac=mac_c, ip=ip_c),
            LinkEnd(service=server, ifname="nsm-1", mac=mac_s, ip=ip_s)))
        reg.put_link(link)
        for name, (cluster, node) in ((server, home), (client, away)):
            reg.put_service(Service(
                name=name, workload="echo" if name == server else "probe", links=[link.id],
                instance=Instance(cluster=cluster.name, node=node.name, pod=f"{name}-pod")),
                create=True)
            reg.put_health(name, PathHealth(ok=True, checked_at=now,
                                            node=f"{cluster.name}.{node.name}",
                                            links={link.id: "ok"}), ttl_s=HEALTH_TTL_S)
    return fleet_


def ms(seconds: float) -> float:
    return seconds * 1000.0


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {"samples": len(values), "p50": round(statistics.median(values), digits),
            "p99": round(nearest_rank(values, 99), digits), "max": round(max(values), digits)}


def legacy_scan(*, cluster: str, node: str, registry: Registry) -> Ends:
    """The reconciler's reads before the index, as it made them: every service with a round
    trip of its own, each link of this node's services with one, every cluster."""
    names = sorted(n.decode() for n in cast(set[bytes], registry.r.smembers(keys.SERVICES)))
    services = {n: s for n in names if (s := registry.get_service(n)) is not None}
    mine = [s for s in services.values() if s.instance is not None
            and (s.instance.cluster, s.instance.node) == (cluster, node) and not s.moving]
    return ends_of(mine, links=registry.get_link, services=services,
                 clusters=registry.clusters())


def ticks(reg: Registry, fleet_: list[Cluster], *, rounds: int) -> dict[str, Any]:
    """Per-node tick cost, from the index and from the full scan, and a PING's round trip."""
    nodes = [(c.name, n.name) for c in fleet_ for n in c.nodes]
    for cluster, node in nodes:  # the same answer both ways, before anything is timed
        ends = node_desired_ends(cluster=cluster, node=node, registry=reg)
        if ends != legacy_scan(cluster=cluster, node=node, registry=reg) or ends != \
                scan_desired_ends(cluster=cluster, node=node, registry=reg):
            raise RuntimeError(f"{cluster}/{node}: the index and the scan disagree")
    indexed: list[float] = []
    for _ in range(rounds):
        for cluster, node in nodes:
            t0 = time.perf_counter()
            node_desired_ends(cluster=cluster, node=node, registry=reg)
            indexed.append(ms(time.perf_counter() - t0))
    scan: list[float] = []
    batched: list[float] = []
    for _ in range(max(1, rounds // 100)):  # each reads the whole registry: fewer of them
        for cluster, node in nodes:
            t0 = time.perf_counter()
            legacy_scan(cluster=cluster, node=node, registry=reg)
            scan.append(ms(time.perf_counter() - t0))
            t0 = time.perf_counter()
            scan_desired_ends(cluster=cluster, node=node, registry=reg)
            batched.append(ms(time.perf_counter() - t0))
    ping: list[float] = []
    for _ in range(rounds * 10):
        t0 = time.perf_counter()
        reg.r.ping()
        ping.append(ms(time.perf_counter() - t0))
    per_node = len(reg.node_index(*nodes[0]) or ())
    p50_i, p50_s, p50_p = (statistics.median(v) for v in (indexed, scan, ping))
    return {
        "nodes": len(nodes), "services_per_node": per_node,
        "tick_ms": summary(indexed), "baseline_scan_tick_ms": summary(scan),
        "batched_scan_tick_ms": summary(batched),
        "baseline_ping_ms": summary(ping, 4),
        "scan_to_tick_ratio": round(p50_s / p50_i, 1),
        "tick_to_ping_ratio": round(p50_i / p50_p, 1),
    }


def api(url: str, reg: Registry, fleet_: list[Cluster], *, gets: int,
        posts: int) -> dict[str, Any]:
    """GET /v1/services and POST /v1/moves on the real app, with /healthz as the baseline."""
    # The app's Celery client queues the moves' tasks on this Redis (no worker consumes them).
    os.environ["MOBILITY_REDIS_URL"] = url
    os.environ["MOBILITY_ENV_FILE"] = os.devnull  # no stack's env file: this Redis only
    get_settings.cache_clear()
    from api.app import create_app  # after the environment: it configures Celery

    viewer, viewer_token = tokens.mint(role=Role.VIEWER, name="bench scale")
    operator, operator_token = tokens.mint(role=Role.OPERATOR, name="bench scale")
    reg.put_token(viewer)
    reg.put_token(operator)
    app = create_app(Settings(redis_url=url))  # type: ignore[arg-type]
    listing: list[float] = []
    health: list[float] = []
    moving: list[float] = []
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        see = {"Authorization": f"Bearer {viewer_token}"}
        act = {"Authorization": f"Bearer {operator_token}"}
        first = client.get("/v1/services", headers=see)  # warm-up, not counted
        first.raise_for_status()
        listed = len(first.json())
        for _ in range(gets):
            t0 = time.perf_counter()
            client.get("/healthz").raise_for_status()
            health.append(ms(time.perf_counter() - t0))
            t0 = time.perf_counter()
            client.get("/v1/services", headers=see).raise_for_status()
            listing.append(ms(time.perf_counter() - t0))
        names = [c.name for c in fleet_]
        for p in range(posts):
            svc = reg.get_service(f"srv-{p:05d}")
            assert svc is not None and svc.instance is not None
            to = names[(names.index(svc.instance.cluster) + 1) % len(names)]
            t0 = time.perf_counter()
            answer = client.post("/v1/moves", headers=act,
                                 json={"service": svc.name, "to_cluster": to})
            moving.append(ms(time.perf_counter() - t0))
            if answer.status_code != 202:
                raise RuntimeError(f"POST /v1/moves {svc.name}: {answer.status_code} "
                                   f"{answer.text}")
    recorded = len(reg.active_moves())
    # a move's start waits in the queue's priority list (workers.app), the rest in the queue
    queued = sum(int(reg.r.llen(q)) for q in (
        ORCHESTRATION, *(f"{ORCHESTRATION}{keys.KOMBU_PRIORITY_SEP}{p}"
                         for p in keys.KOMBU_PRIORITY_STEPS)))
    return {
        "services_listed": listed,
        "get_services_ms": summary(listing, 1), "post_moves_ms": summary(moving, 2),
        "baseline_healthz_ms": summary(health, 2),
        "get_services_p99_to_healthz_p99": round(
            nearest_rank(listing, 99) / nearest_rank(health, 99), 1),
        "post_moves_p99_to_healthz_p99": round(
            nearest_rank(moving, 99) / nearest_rank(health, 99), 1),
        "moves_recorded": recorded, "tasks_queued": queued,
        "moves_note": "recorded and queued, no worker running: pending",
    }


def planner(*, services: int, clusters: int, runs: int) -> dict[str, Any]:
    caps, svcs, cons = fleet(services=services, clusters=clusters, seed=42)
    plan_ms: list[float] = []
    sort_ms: list[float] = []
    moves = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        sorted((s.load, s.name) for s in svcs)
        sort_ms.append(ms(time.perf_counter() - t0))
        t0 = time.perf_counter()
        plan = plan_rebalance(clusters=caps, services=svcs, constraints=cons, now=NOW)
        plan_ms.append(ms(time.perf_counter() - t0))
        moves = len(plan.moves)
    p50, base = statistics.median(plan_ms), statistics.median(sort_ms)
    return {"services": services, "clusters": clusters, "runs": runs, "moves_planned": moves,
            "plan_ms_p50": round(p50, 1), "plan_ms_max": round(max(plan_ms), 1),
            "baseline_sort_ms_p50": round(base, 1),
            "plan_to_sort_ratio": round(p50 / base, 1),
            "target_plan_ms": TARGET_PLAN_MS, "target_met": p50 <= TARGET_PLAN_MS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--gets", type=int, default=40)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--plan-services", type=int, default=100_000)
    parser.add_argument("--plan-clusters", type=int, default=500)
    parser.add_argument("--plan-runs", type=int, default=3)
    args = parser.parse_args(argv)
    start_logging()
    if args.posts > args.services // 2:
        raise SystemExit("--posts: at most one move per linked pair (--services / 2)")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            redis_server(Path(tmp)) as url:
        reg = Registry.from_url(url)
        t0 = time.perf_counter()
        fleet_ = register(reg, services=args.services, clusters=args.clusters,
                          nodes=args.nodes)
        log.info("registered %d services in %.1f s", args.services, time.perf_counter() - t0)
        reconcile = ticks(reg, fleet_, rounds=args.ticks)
        log.info("reconcile: %s", reconcile)
        served = api(url, reg, fleet_, gets=args.gets, posts=args.posts)
        log.info("api: %s", served)
        reg.r.close()
    plans = planner(services=args.plan_services, clusters=args.plan_clusters,
                    runs=args.plan_runs)
    print(json.dumps({"bench": "scale", "services": args.services,
                      "links": args.services // 2, "reconcile": reconcile, "api": served,
                      "planner": plans}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
