"""The rebalance planner's lazy target search gives exactly the plans of the old full sort.

Aspects: for random fleets (hypothesis: capacities with many ties, loads with ties and zeros,
pinned services, anti-affinity groups, maintenance windows, any move cap) and for larger
skewed fleets like ``bench/planner.py``'s (seeded), :func:`mobility.rebalancing.plan_rebalance`
returns a plan equal, move by move and in every figure and note, to the one of the search
it replaced (``tests/unit/rebalancing_before.py``: every target's bound computed and sorted).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mobility.rebalancing import Constraints, MaintenanceWindow, ServiceLoad, plan_rebalance
from tests.unit.rebalancing_before import plan_rebalance as plan_before

NOW = 1_700_000_000.0


def same(caps: dict[str, float], svcs: list[ServiceLoad], cons: Constraints) -> None:
    new = plan_rebalance(clusters=caps, services=svcs, constraints=cons, now=NOW)
    old = plan_before(clusters=caps, services=svcs, constraints=cons, now=NOW)
    assert new.to_dict() == old.to_dict()


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, float], list[ServiceLoad], Constraints]:
    n_clusters = draw(st.integers(1, 24))
    cap_values = draw(st.lists(st.sampled_from([1.0, 3.0, 10.0, 40.0, 100.0, 250.0, 1000.0]),
                               min_size=1, max_size=4))
    caps = {f"c{i:02d}": draw(st.sampled_from(cap_values)) for i in range(n_clusters)}
    names = sorted(caps)
    n = draw(st.integers(0, 160))
    hot = draw(st.integers(1, n_clusters))  # the first ``hot`` clusters take most services
    svcs = []
    for i in range(n):
        cluster = names[draw(st.integers(0, hot - 1))] if draw(st.booleans()) else \
            draw(st.sampled_from(names))
        load = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 7.5]) | st.floats(0, 20))
        svcs.append(ServiceLoad(name=f"s{i:03d}", cluster=cluster, load=load))
    svc_names = [s.name for s in svcs]
    pinned = frozenset(draw(st.lists(st.sampled_from(svc_names), max_size=10))) \
        if svc_names else frozenset()
    groups = {}
    if len(svc_names) >= 2:
        for g in range(draw(st.integers(0, 6))):
            groups[f"g{g}"] = frozenset(draw(st.lists(st.sampled_from(svc_names),
                                                      min_size=2, max_size=4)))
    windows = tuple(MaintenanceWindow(cluster=c, start=NOW - 10, end=NOW + 10)
                    for c in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)))
    cons = Constraints(pinned=pinned, anti_affinity=groups, windows=windows,
                       max_moves=draw(st.integers(0, 200)))
    return caps, svcs, cons


@settings(max_examples=300, deadline=None)
@given(fleet=fleets())
def test_random_fleets_get_the_same_plan(
        fleet: tuple[dict[str, float], list[ServiceLoad], Constraints]) -> None:
    same(*fleet)


def skewed(*, services: int, clusters: int, seed: int
           ) -> tuple[dict[str, float], list[ServiceLoad], Constraints]:
    """As ``bench/planner.py``'s fleet: Zipf-like placement, log-normal loads, pins, groups."""
    rng = random.Random(seed)
    names = [f"c{i:03d}" for i in range(clusters)]
    caps = {c: float(rng.randrange(400, 1201, 50)) for c in names}
    weights = [1.0 / (i + 1) ** 0.9 for i in range(clusters)]
    placed = rng.choices(names, weights=weights, k=services)
    svcs = [ServiceLoad(name=f"s{i:05d}", cluster=c, load=round(rng.lognormvariate(0, 0.6), 3))
            for i, c in enumerate(placed)]
    pinned = frozenset(s.name for s in rng.sample(svcs, k=services * 3 // 100))
    order = [s.name for s in svcs]
    rng.shuffle(order)
    groups = {f"g{i:03d}": frozenset(order[3 * i:3 * i + 3]) for i in range(services // 100)}
    windows = (MaintenanceWindow(cluster=names[-1], start=NOW - 60, end=NOW + 3600),)
    return caps, svcs, Constraints(pinned=pinned, anti_affinity=groups, windows=windows,
                                   max_moves=rng.choice([10, 100, services]))


def test_large_skewed_fleets_get_the_same_plan() -> None:
    for seed in range(4):
        same(*skewed(services=3000, clusters=120, seed=seed))
