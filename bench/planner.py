"""Rebalance planning time for 10,000 services over 50 clusters.

Usage: .venv/bin/python -m bench.planner [--services 10000] [--clusters 50] [--runs 7]
       [--max-moves N] [--seed 42]

Builds one deterministic, deliberately skewed fleet (seeded): cluster capacities between 400
and 1,200 units, log-normal service loads, services placed with Zipf-like weights so the first
clusters are far over their share (some over capacity), 3 % of services pinned, anti-affinity
groups of three, two clusters in a maintenance window. Plans it ``--runs`` times with
:func:`mobility.rebalancing.plan_rebalance` and prints one JSON object: ``services``,
``clusters``, ``runs``, ``max_moves``, ``plan_ms_p50``, ``plan_ms_max``, ``moves_planned``,
``imbalance_before``, ``imbalance_after``, ``max_utilisation_before``/``after``.

By default the move cap is the number of services (the cap never binds), the planner's worst
case; ``--max-moves 100`` shows a realistic batch. The same-run baseline is the time to sort
the fleet's ``(load, name)`` pairs once (``baseline_sort_ms_p50``), a yardstick of this
machine's speed at the moment; ``plan_to_sort_ratio`` compares against it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from mobility.rebalancing import Constraints, MaintenanceWindow, ServiceLoad, plan_rebalance

NOW = 1_700_000_000.0


def fleet(*, services: int, clusters: int, seed: int
          ) -> tuple[dict[str, float], list[ServiceLoad], Constraints]:
    """A skewed, constrained fleet; the same seed gives the same fleet."""
    rng = random.Random(seed)
    names = [f"c{i:02d}" for i in range(clusters)]
    caps = {c: float(rng.randrange(400, 1201, 50)) for c in names}
    weights = [1.0 / (i + 1) ** 0.9 for i in range(clusters)]
    placed = rng.choices(names, weights=weights, k=services)
    svcs = [
        ServiceLoad(name=f"s{i:05d}", cluster=c, load=round(rng.lognormvariate(0.0, 0.6), 3))
        for i, c in enumerate(placed)
    ]
    pinned = frozenset(s.name for s in rng.sample(svcs, k=services * 3 // 100))
    order = [s.name for s in svcs]
    rng.shuffle(order)
    groups = {f"g{i:03d}": frozenset(order[3 * i:3 * i + 3]) for i in range(services // 100)}
    windows = (
        MaintenanceWindow(cluster=names[-1], start=NOW - 60, end=NOW + 3600),
        MaintenanceWindow(cluster=names[clusters // 2], start=NOW - 60, end=NOW + 3600),
    )
    cons = Constraints(pinned=pinned, anti_affinity=groups, max_moves=services, windows=windows)
    return caps, svcs, cons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-moves", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    caps, svcs, cons = fleet(services=args.services, clusters=args.clusters, seed=args.seed)
    if args.max_moves is not None:
        cons = Constraints(pinned=cons.pinned, anti_affinity=cons.anti_affinity,
                           max_moves=args.max_moves, windows=cons.windows)
    plan_ms: list[float] = []
    sort_ms: list[float] = []
    plan = None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sorted((s.load, s.name) for s in svcs)
        sort_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        plan = plan_rebalance(clusters=caps, services=svcs, constraints=cons, now=NOW)
        plan_ms.append((time.perf_counter() - t0) * 1000)
    assert plan is not None
    p50, base = statistics.median(plan_ms), statistics.median(sort_ms)
    print(json.dumps({
        "services": len(svcs),
        "clusters": len(caps),
        "runs": args.runs,
        "max_moves": cons.max_moves,
        "plan_ms_p50": round(p50, 1),
        "plan_ms_max": round(max(plan_ms), 1),
        "moves_planned": len(plan.moves),
        "imbalance_before": round(plan.imbalance_before, 4),
        "imbalance_after": round(plan.imbalance_after, 4),
        "max_utilisation_before": round(plan.max_utilisation_before, 3),
        "max_utilisation_after": round(plan.max_utilisation_after, 3),
        "baseline_sort_ms_p50": round(base, 2),
        "plan_to_sort_ratio": round(p50 / base, 1) if base > 0 else None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
