"""Scheduled rebalancing: propose moves that even out load against capacity.

Pure, like :mod:`mobility.policies`: the caller (the beat task, the ``/v1/rebalance/plan``
view) gathers capacities, loads and constraints, calls :func:`plan_rebalance`, shows or runs
the :class:`Plan`. Nothing here does I/O or reads the clock.

The imbalance metric
--------------------
With ``u_c = load_c / capacity_c`` and the overall utilisation ``U = total load / total
capacity``::

    imbalance = sqrt( sum_c capacity_c * (u_c - U)**2  /  sum_c capacity_c )

the capacity-weighted standard deviation of utilisation around ``U``, in utilisation units
(0.10: clusters sit typically ten points from the fleet's average; 0: all equal). Why this one:

* ``U`` does not change when a service moves, so the metric's change for moving load ``w``
  from ``a`` to ``b`` is a closed form, ``gain = 2*w*(u_a - u_b) - w**2 * (1/C_a + 1/C_b)``
  (in units of the squared sum), computed in O(1). That is what lets a greedy planner score
  thousands of candidates per second in Python.
* Weighting by capacity makes a big cluster at 90 % count more than a small one.

A move is only taken when it lowers the metric (strictly, by more than float noise) **and**
leaves its target below the source's utilisation before the move, so the maximum
utilisation never grows either (``Plan.max_utilisation_*`` reports it).

Moves of one plan run concurrently and may fail one by one, so no move relies on another:
* **capacity** on a target counts what is there now plus everything the plan sends to it,
  never crediting services the plan takes away (with make-before-break both copies exist
  during the move, and a failed move leaves its service where it was);
* **anti-affinity** likewise: a target must hold no member of the service's groups now and
  receive none in the plan;
* each service moves at most once; pinned services and clusters inside a maintenance window
  (neither giving nor taking) are left alone; at most ``max_moves`` moves.

The search (greedy, best-first): pop the most utilised cluster that still has movable
services (a heap); for each colder target compute the best possible gain ``(u_a-u_b)**2 /
(1/C_a + 1/C_b)`` and search targets in that order, stopping once the bound cannot beat the
best move found (the bounds are computed lazily: targets are kept sorted by utilisation in
groups of like capacity, where a cheap ceiling of the bound falls along each group, so only
the few targets that could come first are computed, and they come in the very order a sort
of every target's bound gives); on one (source, target) pair the ideal load is
``(u_a-u_b) / (1/C_a + 1/C_b)`` and, the gain being concave in ``w``, the best service is
the nearest feasible one on either side of it in the source's load-sorted list (a
bisection). When the heap runs dry the
clusters are tried again while the previous round found moves. Quality is greedy, not
optimal; the guarantees above hold for every plan.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mobility.errors import Invalid

# A move must gain more than this fraction of the current (squared) imbalance: a gain below
# float noise could, once recomputed, show as a rise; and such a move is not worth a migration.
_MIN_RELATIVE_GAIN: Final = 1e-9
# A target keeps this fraction of its capacity free, so summation order can never tip it over.
_CAPACITY_HEADROOM: Final = 1e-9
# How far above rounding a ceiling of a target's gain bound stays (a relative margin).
_CEILING_MARGIN: Final = 1.0 + 1e-9
# Targets are searched in this many groups of like capacity (see ``targets``).
_TARGET_GROUPS: Final = 8
# How many services on each side of the ideal load a pair looks at past anti-affinity misses.
_MAX_PROBES: Final = 64


@dataclass(frozen=True)
class ServiceLoad:
    """One running service: where it is and how many capacity units it uses."""

    name: str
    cluster: str
    load: float


@dataclass(frozen=True)
class MaintenanceWindow:
    """A cluster that must neither receive nor lose services during ``[start, end)``."""

    cluster: str
    start: float
    end: float

    def active(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class Constraints:
    """What the planner must respect besides capacity.

    ``pinned``: services that never move (pass services with a move in progress here too).
    ``anti_affinity``: group name -> services that must not share a cluster; names that are
    not running are ignored. ``max_moves``: the most moves one plan may hold (they run
    concurrently). ``windows``: maintenance windows; those on unknown clusters are ignored.
    """

    pinned: frozenset[str] = frozenset()
    anti_affinity: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_moves: int = 10
    windows: tuple[MaintenanceWindow, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_moves, bool) or not isinstance(self.max_moves, int):
            raise Invalid(f"max_moves must be an integer, got {self.max_moves!r}")
        if self.max_moves < 0:
            raise Invalid(f"max_moves must be 0 or more, got {self.max_moves}")
        for w in self.windows:
            if not (math.isfinite(w.start) and math.isfinite(w.end)):
                raise Invalid(f"maintenance window on {w.cluster!r} needs finite start and end")
            if w.end <= w.start:
                raise Invalid(
                    f"maintenance window on {w.cluster!r} ends ({w.end:g}) before it starts "
                    f"({w.start:g})"
                )
        object.__setattr__(self, "pinned", frozenset(self.pinned))
        object.__setattr__(
            self, "anti_affinity", {g: frozenset(m) for g, m in self.anti_affinity.items()}
        )


@dataclass(frozen=True)
class PlannedMove:
    service: str
    from_cluster: str
    to_cluster: str
    load: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "from_cluster": self.from_cluster,
                "to_cluster": self.to_cluster, "load": self.load, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """Proposed moves (in the order chosen, best first) and what they would do.

    ``imbalance_*`` is the metric of the module docstring; ``utilisation_*`` per cluster;
    ``notes`` explain what held the plan back (maintenance, pins, the cap, existing
    anti-affinity clashes the planner does not repair).
    """

    now: float
    moves: tuple[PlannedMove, ...]
    imbalance_before: float
    imbalance_after: float
    max_utilisation_before: float
    max_utilisation_after: float
    utilisation_before: Mapping[str, float]
    utilisation_after: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "moves": [m.to_dict() for m in self.moves],
            "imbalance_before": self.imbalance_before,
            "imbalance_after": self.imbalance_after,
            "max_utilisation_before": self.max_utilisation_before,
            "max_utilisation_after": self.max_utilisation_after,
            "utilisation_before": dict(self.utilisation_before),
            "utilisation_after": dict(self.utilisation_after),
            "notes": list(self.notes),
        }


def imbalance(loads: Mapping[str, float], capacities: Mapping[str, float]) -> float:
    """The capacity-weighted standard deviation of utilisation (see the module docstring).

    ``loads`` may omit clusters (no load); every key of ``capacities`` counts.
    """
    total_cap = math.fsum(capacities.values())
    if total_cap <= 0:
        return 0.0
    overall = math.fsum(loads.get(c, 0.0) for c in capacities) / total_cap
    spread = math.fsum(
        cap * (loads.get(c, 0.0) / cap - overall) ** 2 for c, cap in capacities.items()
    )
    return math.sqrt(spread / total_cap)


def cluster_loads(services: Iterable[ServiceLoad], clusters: Iterable[str]) -> dict[str, float]:
    """Load per cluster (``math.fsum``, so the order of services does not matter)."""
    per: dict[str, list[float]] = {c: [] for c in clusters}
    for s in services:
        per.setdefault(s.cluster, []).append(s.load)
    return {c: math.fsum(v) for c, v in per.items()}


def _validate(
    clusters: Mapping[str, float], services: list[ServiceLoad], now: float,
) -> dict[str, float]:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise Invalid(f"now must be a finite number, got {now!r}")
    caps: dict[str, float] = {}
    for name, cap in clusters.items():
        if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap):
            raise Invalid(f"capacity of cluster {name!r} must be a finite number, got {cap!r}")
        if cap <= 0:
            raise Invalid(f"capacity of cluster {name!r} must be greater than 0, got {cap!r}")
        caps[name] = float(cap)
    seen: set[str] = set()
    for s in services:
        if s.name in seen:
            raise Invalid(f"service {s.name!r} is listed twice")
        seen.add(s.name)
        if s.cluster not in caps:
            raise Invalid(
                f"service {s.name!r} runs in cluster {s.cluster!r}, which has no capacity given"
            )
        ok = not isinstance(s.load, bool) and isinstance(s.load, int | float)
        if not ok or not math.isfinite(s.load) or s.load < 0:
            raise Invalid(f"load of service {s.name!r} must be a finite number >= 0, "
                          f"got {s.load!r}")
    return caps


def _gain_ceiling(d: float, k_least: float, biggest: float) -> float:
    """At least the bound ``w * (2*d - w*k)`` of any target ``d`` below the source whose ``k``
    is at least ``k_least`` and whose ``w`` is at most ``biggest`` (the gain being concave in
    ``w``, its peak with the smallest ``k``), rising with ``d``; a margin far above rounding
    keeps it above the bound as computed."""
    w = d / k_least
    if w > biggest:
        w = biggest
    return w * (2.0 * d - w * k_least) * _CEILING_MARGIN


def _pct(u: float) -> str:
    return f"{u * 100:.0f}%"


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

    # Targets by utilisation (``loads[b] * inv_b``, as the bounds compute it), in groups of
    # like capacity, each kept sorted as moves change loads: in that order a group's targets
    # are in falling order of a ceiling of their gain bound (``_gain_ceiling``, with the
    # group's smallest ``1/C``), so the search computes the exact bounds of the best
    # candidates only, not of every cluster, and meets them in the order sorting all gives.
    by_inv = sorted(target_caps, key=lambda t: (t[2], t[0]))
    size = max(1, -(-len(by_inv) // _TARGET_GROUPS))
    chunks = [by_inv[i:i + size] for i in range(0, len(by_inv), size)]
    groups = [sorted((loads[c] * inv, c, inv, cap) for c, cap, inv in chunk) for chunk in chunks]
    group_inv = [chunk[0][2] for chunk in chunks]  # each group's smallest 1/C
    group_of = {c: g for g, chunk in enumerate(chunks) for c, _, _ in chunk}
    inv_of = {c: inv for c, _, inv in target_caps}

    def relocate(c: str, before: float) -> None:
        """Move ``c`` in its group after its load changed from ``before``."""
        if c in inv_of:
            group = groups[group_of[c]]
            del group[bisect.bisect_left(group, (before * inv_of[c], c))]
            bisect.insort(group, (loads[c] * inv_of[c], c, inv_of[c], caps[c]))

    def targets(a: str, ua: float, inv_a: float, biggest: float,
                floor: float) -> Generator[tuple[float, str], float, None]:
        """``(-bound, b)`` of every target whose bound beats ``floor``, in sorted order (bound
        falling, then name): what sorting every target's bound gives. The caller sends the
        floor it compares against (the best gain so far) after each."""
        heap: list[tuple[float, str]] = []
        top = -math.inf  # the best bound in the heap
        fronts: list[tuple[float, int, int]] = []  # (-ceiling, group, position) of each group

        def front(g: int, pos: int) -> None:
            group = groups[g]
            if pos < len(group):
                d = ua - group[pos][0]
                if d > 0:  # else every later target of the group is as warm as a, or warmer
                    heapq.heappush(fronts, (-_gain_ceiling(d, inv_a + group_inv[g], biggest),
                                            g, pos))

        for g in range(len(groups)):
            front(g, 0)
        while True:
            while fronts:
                ceiling = -fronts[0][0]
                if ceiling <= floor or ceiling < top:
                    break  # no target left reaches the best bound computed
                _, g, pos = heapq.heappop(fronts)
                front(g, pos + 1)
                key, b, inv_b, cap_b = groups[g][pos]
                if b == a:
                    continue
                d = ua - key
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
                    heapq.heappush(heap, (-bound, b))
                    if bound > top:
                        top = bound
            if not heap:
                return
            got = heapq.heappop(heap)
            top = -heap[0][0] if heap else -math.inf
            floor = yield got

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
            search = targets(a, ua, inv_a, biggest, floor)
            best: tuple[float, int, str] | None = None
            step = next(search, None)
            while step is not None:
                neg_bound, b = step
                if -neg_bound <= (best[0] if best else floor):
                    break
                got = best_on_pair(a, b, best[0] if best else floor)
                if got is not None and (best is None or got[0] > best[0]):
                    best = (got[0], got[1], b)
                try:
                    step = search.send(best[0] if best else floor)
                except StopIteration:
                    step = None
            search.close()
            if best is None:
                continue  # nothing to gain from a for now; a later round may retry it
            gained, j, b = best
            load, svc = mv_loads[a].pop(j), mv_names[a].pop(j)
            ua_before, ub_before = util(a), util(b)
            was_a, was_b = loads[a], loads[b]
            loads[a] -= load
            loads[b] += load
            relocate(a, was_a)
            relocate(b, was_b)
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
