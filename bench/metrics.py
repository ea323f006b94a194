"""``GET /metrics`` scrape time with 1,000 services registered and moves already ended.

Usage: .venv/bin/python -m bench.metrics [--services 1000] [--moves 200] [--scrapes 100]

Starts its own Redis (loopback, its password only in a 0600 env file, never argv) and the
real API under uvicorn as a separate process (as the stack runs it), registers two clusters
of two nodes and ``--services`` services straight in the registry, then runs ``--moves``
moves to their end through the registry's own path (created, run, finished: each end is
counted by ``finish_move``, as a worker's is), with phase durations, freeze windows, state
bytes and rounds, and some reconciler repairs. Mints a viewer token and times, alternating,
``--scrapes`` requests of each: ``GET /metrics`` (checked to hold every move), and the
same-run baselines, ``GET /v1/services/{name}`` (one authorised record read, the cheapest
route behind the same token check) and ``GET /healthz`` (no token, one Redis PING).

Prints one JSON object: ``scrape_ms_p50``/``p99``, ``service_read_ms_p50``/``p99``,
``healthz_ms_p50``/``p99``, ``scrape_to_service_read_ratio`` (p50 over p50), the exposition's
size, and whether the 50 ms p50 target is met. Everything it started ends with it; the
temporary directory is removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.percentiles import nearest_rank
from bench.servers import api_server, redis_server
from mobility import tokens
from mobility.models import Cluster, Instance, Move, MoveStatus, Node, Service
from mobility.store import Registry
from mobility.store.metrics import MetricStore
from mobility.tokens import Role

TARGET_P50_MS = 50.0
PHASE_MS = {"admit": 4.0, "place": 180.0, "wire": 45.0, "sync": 600.0, "cutover": 35.0,
            "release": 12.0}


def register(reg: Registry, *, services: int) -> list[str]:
    """Two clusters of two nodes and ``services`` services spread over their nodes."""
    clusters = []
    for c, name in enumerate(("core", "edge")):
        nodes = tuple(Node(name=f"n{i}", cluster=name, underlay_ip=f"198.18.{c + 1}.{10 + i}")
                      for i in (1, 2))
        clusters.append(Cluster(name=name, nodes=nodes))
        reg.put_cluster(clusters[-1])
    names = []
    for i in range(services):
        cluster = clusters[i % 2]
        node = cluster.nodes[(i // 2) % 2]
        name = f"svc-{i:04d}"
        reg.put_service(Service(name=name, workload="echo",
                                instance=Instance(cluster=cluster.name, node=node.name,
                                                  pod=f"{name}-pod")), create=True)
        names.append(name)
    return names


def end_moves(reg: Registry, services: Sequence[str], *, moves: int) -> None:
    """``moves`` moves run to their end through the registry (counted as a worker's are)."""
    origins = ("api", "policy", "rebalance")
    for i in range(moves):
        move = reg.create_move(Move(id=f"mv-20260101000000-{i:06x}",
                                    service=services[i % len(services)], from_cluster="core",
                                    to_cluster="edge", origin=origins[i % 3],
                                    created_at=time.time()))

        def ran(m: Move, i: int = i) -> None:
            m.status = MoveStatus.RUNNING
            m.phase_ms = {p: ms * (1 + (i % 7) / 3) for p, ms in PHASE_MS.items()}
            m.freeze_ms = 5.0 + i % 40
            m.state_bytes = 1 << (10 + i % 12)
            m.sync_rounds = 1 + i % 4

        reg.update_move(move.id, ran)
        end = MoveStatus.SUCCEEDED if i % 10 else MoveStatus.FAILED
        reg.finish_move(move.id, end)
    store = MetricStore(reg.r)
    for node in ("core.n1", "core.n2", "edge.n1", "edge.n2"):
        store.count_repairs(node, repaired=3, broken=1)


def timed(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    resp = client.get(path)
    ms = (time.perf_counter() - start) * 1000
    resp.raise_for_status()
    return ms, resp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    if args.scrapes < 50:
        parser.error("--scrapes: at least 50, or the p99 is the slowest sample")
    workdir = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        with redis_server(workdir) as url:
            reg = Registry.from_url(url)
            names = register(reg, services=args.services)
            end_moves(reg, names, moves=args.moves)
            record, secret = tokens.mint(role=Role.VIEWER, name="bench.metrics")
            reg.put_token(record)
            with api_server(workdir, url) as base, httpx.Client(
                    base_url=base, timeout=30,
                    headers={"Authorization": f"Bearer {secret}"}) as client:
                for _ in range(5):  # warm: connections, the app's first requests
                    timed(client, "/metrics")
                    timed(client, f"/v1/services/{names[0]}")
                scrape: list[float] = []
                service: list[float] = []
                healthz: list[float] = []
                size = 0
                for i in range(args.scrapes):
                    ms, resp = timed(client, "/metrics")
                    scrape.append(ms)
                    size = len(resp.content)
                    service.append(timed(client, f"/v1/services/{names[i % len(names)]}")[0])
                    healthz.append(timed(client, "/healthz")[0])
                counted = sum(
                    float(line.rsplit(" ", 1)[1]) for line in resp.text.splitlines()
                    if line.startswith("mobility_moves_total{"))
                services_shown = next(float(line.split()[1]) for line in resp.text.splitlines()
                                      if line.startswith("mobility_services "))
            reg.r.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if counted != args.moves or services_shown != args.services:
        raise SystemExit(f"/metrics shows {counted} moves and {services_shown} services, "
                         f"not {args.moves} and {args.services}")

    def p(values: list[float], q: int) -> float:
        return round(nearest_rank(values, q), 2)

    out = {
        "services": args.services, "moves_ended": args.moves, "scrapes": args.scrapes,
        "exposition_bytes": size,
        "scrape_ms_p50": p(scrape, 50), "scrape_ms_p99": p(scrape, 99),
        "service_read_ms_p50": p(service, 50), "service_read_ms_p99": p(service, 99),
        "healthz_ms_p50": p(healthz, 50), "healthz_ms_p99": p(healthz, 99),
        "scrape_to_service_read_ratio": round(p(scrape, 50) / p(service, 50), 2),
        "scrape_to_healthz_ratio": round(p(scrape, 50) / p(healthz, 50), 2),
        "target_p50_ms": TARGET_P50_MS, "target_met": p(scrape, 50) <= TARGET_P50_MS,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
