"""The rebalance planner as it was before its target search was made lazy (the reference).

``tests/unit/test_rebalancing_same_plans.py`` checks that :func:`mobility.rebalancing.
plan_rebalance` gives exactly this function's plans; the data types and helpers are the
module's own, only the search is the old one (every target's bound computed and sorted).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping

from mobility.rebalancing import (
    _CAPACITY_HEADROOM,
    _MAX_PROBES,
    _MIN_RELATIVE_GAIN,
    Constraints,
    Plan,
    PlannedMove,
    ServiceLoad,
    _pct,
    _validate,
    cluster_loads,
    imbalance,
)


def plan_rebalance(
    *,
    clusters: Mapping[str, float],
    services: Iterable[ServiceLoad],
    constraints: Constraints | None = None,
    now: float,
) -> Plan:
    """Propose at most ``constraints.max_moves`` moves that lower the imbalance.

    ``clusters``: cluster -> capacity (> 0, same units as service loads). Every service must
    run in one of them. Raises :class:`Invalid` on bad input. Deterministic: the same input
    gives the same plan (ties are broken by name).
    """
    cons = constraints or Constraints()
    svcs = list(services)
    caps = _validate(clusters, svcs, now)
    names = sorted(caps)
    loads = cluster_loads(svcs, names)
    # Capacity use that never credits departures: see the module docstring.
    committed = dict(loads)
    util_before = {c: loads[c] / caps[c] for c in names}
    before = imbalance(loads, caps)
    total_cap = math.fsum(caps.values())
    overall = math.fsum(loads.values()) / total_cap
    spread = before * before * total_cap  # the squared sum the gains are measured against
    notes: list[str] = []

    frozen = {w.cluster for w in cons.windows if w.active(now) and w.cluster in caps}
    for win in sorted(cons.windows, key=lambda win: (win.cluster, win.start)):
        if win.cluster in frozen and win.active(now):
            notes.append(f"cluster {win.cluster} is in a maintenance window until "
                         f"{win.end:g}: it neither gives nor takes services")
    pinned = sum(1 for s in svcs if s.name in cons.pinned)
    if pinned:
        notes.append(f"{pinned} pinned service(s) stay where they are")
    for c in names:
        if loads[c] > caps[c]:
            notes.append(f"cluster {c} is over capacity ({_pct(util_before[c])})")

    # Anti-affinity: which groups each service is in, and which clusters each group occupies
    # (now or by an incoming move of this plan; departures are not credited).
    where = {s.name: s.cluster for s in svcs}
    group_ids = sorted(cons.anti_affinity)
    groups_of: dict[str, list[int]] = {}
    occupied: list[set[str]] = []
    for gi, group in enumerate(group_ids):
        members = sorted(m for m in cons.anti_affinity[group] if m in where)
        occupied.append({where[m] for m in members})
        for m in members:
            groups_of.setdefault(m, []).append(gi)
        by_cluster: dict[str, list[str]] = {}
        for m in members:
            by_cluster.setdefault(where[m], []).append(m)
        for c, ms in sorted(by_cluster.items()):
            if len(ms) > 1:
                notes.append(f"anti-affinity group {group} already shares cluster {c}: "
                             f"{', '.join(ms)} (not repaired by rebalancing)")

    # Movable services per cluster, sorted by (load, name): parallel lists for bisect.
    mv_loads: dict[str, list[float]] = {c: [] for c in names}
    mv_names: dict[str, list[str]] = {c: [] for c in names}
    for s in sorted(svcs, key=lambda s: (s.load, s.name)):
        if s.name in cons.pinned or s.cluster in frozen or s.load <= 0:
            continue
        mv_loads[s.cluster].append(float(s.load))
        mv_names[s.cluster].append(s.name)
    target_caps = [(c, caps[c], 1.0 / caps[c]) for c in names if c not in frozen]

    def util(c: str) -> float:
        return loads[c] / caps[c]

    def allowed(service: str, b: str) -> bool:
        return all(b not in occupied[gi] for gi in groups_of.get(service, ()))

    def best_on_pair(a: str, b: str, floor: float) -> tuple[float, int] | None:
        """The best (gain, index into a's lists) for moving one service a -> b, if above floor."""
        ua, ub = util(a), util(b)
        d, k = ua - ub, 1.0 / caps[a] + 1.0 / caps[b]
        room = caps[b] * (1.0 - _CAPACITY_HEADROOM) - committed[b]
        ws = mv_loads[a]

        def gain(w: float) -> float:
            return 2.0 * w * d - w * w * k

        def fits(w: float) -> bool:
            return w <= room and ub + w / caps[b] < ua

        ideal = min(d / k, max(room, 0.0), d * caps[b])
        i = bisect.bisect_left(ws, ideal)
        found: tuple[float, int] | None = None
        # Left of the ideal: gain falls as w shrinks, so the first allowed one is the best.
        for j in range(i - 1, max(i - 1 - _MAX_PROBES, -1), -1):
            g = gain(ws[j])
            if g <= floor:
                break
            if fits(ws[j]) and allowed(mv_names[a][j], b):
                found = (g, j)
                break
        # Right of it: gain falls as w grows, and so do room and the utilisation rule.
        for j in range(i, min(i + _MAX_PROBES, len(ws))):
            g = gain(ws[j])
            if g <= floor or not fits(ws[j]):
                break
            if allowed(mv_names[a][j], b):
                if found is None or g > found[0]:
                    found = (g, j)
                break
        return found

    version = dict.fromkeys(names, 0)
    heap: list[tuple[float, str, int]] = []

    def push(c: str) -> None:
        if mv_loads[c] and c not in frozen:
            heapq.heappush(heap, (-util(c), c, version[c]))

    moves: list[PlannedMove] = []
    capped = False
    while True:
        moves_at_round_start = len(moves)
        heap.clear()
        for c in names:
            push(c)
        while heap:
            if len(moves) >= cons.max_moves:
                capped = True
                break
            _, a, ver = heapq.heappop(heap)
            if ver != version[a] or not mv_loads[a]:
                continue
            if spread <= 0:
                break
            floor = spread * _MIN_RELATIVE_GAIN
            # An upper bound on each target's gain: the gain is concave in the load w and
            # peaks at d/k, and no feasible w exceeds a's biggest movable service, b's room
            # or the load that would lift b to a's utilisation.
            ua, inv_a, biggest = util(a), 1.0 / caps[a], mv_loads[a][-1]
            bounds: list[tuple[float, str]] = []
            for b, cap_b, inv_b in target_caps:
                d = ua - loads[b] * inv_b
                if d <= 0 or b == a:
                    continue
                k = inv_a + inv_b
                w = d / k  # min() of four, unrolled: this loop is the planner's hot spot
                if w > biggest:
                    w = biggest
                room = cap_b * (1.0 - _CAPACITY_HEADROOM) - committed[b]
                if w > room:
                    w = room
                if w > d * cap_b:
                    w = d * cap_b
                if w <= 0:
                    continue
                bound = w * (2.0 * d - w * k)
                if bound > floor:
                    bounds.append((-bound, b))
            bounds.sort()
            best: tuple[float, int, str] | None = None
            for neg_bound, b in bounds:
                if -neg_bound <= (best[0] if best else floor):
                    break
                got = best_on_pair(a, b, best[0] if best else floor)
                if got is not None and (best is None or got[0] > best[0]):
                    best = (got[0], got[1], b)
            if best is None:
                continue  # nothing to gain from a for now; a later round may retry it
            gained, j, b = best
            load, svc = mv_loads[a].pop(j), mv_names[a].pop(j)
            ua_before, ub_before = util(a), util(b)
            loads[a] -= load
            loads[b] += load
            committed[b] += load
            spread -= gained
            for gi in groups_of.get(svc, ()):
                occupied[gi].add(b)
            moves.append(PlannedMove(
                service=svc, from_cluster=a, to_cluster=b, load=load,
                reason=(f"{a} at {_pct(ua_before)} -> {_pct(util(a))}, {b} at "
                        f"{_pct(ub_before)} -> {_pct(util(b))} (fleet average "
                        f"{_pct(overall)})"),
            ))
            version[a] += 1
            version[b] += 1
            push(a)
            push(b)
        if capped or len(moves) == moves_at_round_start:
            break
    if capped:
        notes.append(f"the cap of {cons.max_moves} move(s) per plan was reached")

    final = {s.name: s.cluster for s in svcs}
    for planned in moves:
        final[planned.service] = planned.to_cluster
    after_loads = cluster_loads(
        (ServiceLoad(s.name, final[s.name], s.load) for s in svcs), names
    )
    util_after = {c: after_loads[c] / caps[c] for c in names}
    return Plan(
        now=float(now),
        moves=tuple(moves),
        imbalance_before=before,
        imbalance_after=imbalance(after_loads, caps),
        max_utilisation_before=max(util_before.values(), default=0.0),
        max_utilisation_after=max(util_after.values(), default=0.0),
        utilisation_before=util_before,
        utilisation_after=util_after,
        notes=tuple(notes),
    )
