"""Moves nobody asked for by hand: policies that react to signals, and rebalancing.

Reads what the pure engines (:mod:`mobility.policies`, :mod:`mobility.rebalancing`) need from
the registry: placements, cluster labels and capacity, recent signal windows, when each
service last moved, which ones are moving. Capacity in the lab is counted in instance slots:
``slots_per_node`` per node, one per running instance, unless a cluster reports a
``free_capacity`` signal, which then wins.

What is stored can be older than today's rules: a plan leaves out a cluster without capacity
(and the services placed in it, or in a cluster that is gone) and a ``load`` that is not a
number >= 0, and says so in its notes, rather than refusing to plan.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from mobility import keys, policies, rebalancing
from mobility.errors import Invalid, MobilityError
from mobility.policies import Decision, Policy, SeriesKey
from mobility.rebalancing import Constraints, Plan, ServiceLoad
from mobility.store import Registry
from mobility.store.automation import DEFAULT_MAX_SERIES

# The series a signal may carry; anything else is refused (a typo would never trigger).
SERIES = frozenset({"latency_ms", "rtt_ms", "cpu", "load", "requests_per_s", "free_capacity"})
MAX_BATCH = 1000
MAX_FUTURE_S = 60.0
MAX_AGE_S = 3600.0
KEEP_S = 900.0
KEEP_SAMPLES = 2000
SLOTS_PER_NODE = 8


def check_samples(batch: list[dict[str, Any]], *,
                  now: float) -> list[tuple[SeriesKey, float, float]]:
    """Samples ready to store, or Invalid naming the first bad one; nothing is stored then."""
    if len(batch) > MAX_BATCH:
        raise Invalid(f"a batch holds at most {MAX_BATCH} samples, this one {len(batch)}")
    out = []
    for i, s in enumerate(batch):
        series = s["series"]
        if series not in SERIES:
            raise Invalid(f"sample {i}: unknown series {series!r}; known: {sorted(SERIES)}")
        for part in ("cluster", "service", "region"):  # each becomes part of the series' key
            given = s.get(part)
            if (given is not None or part == "cluster") and not keys.safe_component(given):
                raise Invalid(f"sample {i}: {part} {given!r} must match {keys.SAFE_COMPONENT}")
        value, ts = s["value"], s.get("ts", now)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
                value):
            raise Invalid(f"sample {i}: value must be a finite number")
        if not isinstance(ts, int | float) or not math.isfinite(ts):
            raise Invalid(f"sample {i}: ts must be a finite number of seconds since the epoch")
        if ts > now + MAX_FUTURE_S:
            raise Invalid(f"sample {i}: ts is {ts - now:.0f} s in the future")
        if ts < now - MAX_AGE_S:
            raise Invalid(f"sample {i}: ts is older than {MAX_AGE_S:.0f} s")
        out.append((SeriesKey(series=series, cluster=s["cluster"], service=s.get("service"),
                              region=s.get("region")), float(ts), float(value)))
    return out


def store_samples(registry: Registry, batch: list[dict[str, Any]], *,
                  now: float | None = None, max_series: int = DEFAULT_MAX_SERIES) -> int:
    """Check and store a batch, all or nothing: Invalid for a bad sample, Conflict when a
    service (or a cluster's own series) would hold more than ``max_series`` series."""
    clean = check_samples(batch, now=time.time() if now is None else now)
    registry.add_samples(clean, keep_s=KEEP_S, keep_samples=KEEP_SAMPLES,
                         max_series=max_series)
    return len(clean)


def _capacity(registry: Registry) -> dict[str, float]:
    return {name: float(len(c.nodes) * SLOTS_PER_NODE)
            for name, c in registry.clusters().items()}


def load_policies(registry: Registry) -> list[Policy]:
    return registry.policies()


def evaluate(registry: Registry, *, now: float | None = None) -> list[Decision]:
    """Every stored policy against the current signals and placements."""
    now = time.time() if now is None else now
    services = registry.services()
    placements = {s.name: s.instance.cluster for s in services.values() if s.instance}
    clusters = registry.clusters()
    signals = registry.samples()
    capacity = _capacity(registry)
    used: dict[str, float] = {}
    for cluster in placements.values():
        used[cluster] = used.get(cluster, 0.0) + 1.0
    free = {c: capacity[c] - used.get(c, 0.0) for c in capacity}
    for key, samples in signals.items():
        if key.series == "free_capacity" and key.service is None and samples:
            free[key.cluster] = samples[-1][1]
    return policies.evaluate(
        load_policies(registry), signals, placements=placements,
        cluster_labels={name: dict(c.labels) for name, c in clusters.items()},
        free_capacity=free, last_moves=registry.last_moves(list(services)), now=now,
        moving=[s.name for s in services.values() if s.moving],
    )


def constraints(registry: Registry) -> Constraints:
    return registry.rebalance_config()


def plan(registry: Registry, *, now: float | None = None) -> Plan:
    """The rebalance plan for the current placement (load: a service's latest ``load``
    signal, else one slot)."""
    now = time.time() if now is None else now
    services = registry.services()
    notes: list[str] = []
    latest: dict[str, float] = {}
    for key, samples in registry.samples().items():
        if key.series == "load" and key.service and samples:
            value = samples[-1][1]
            if math.isfinite(value) and value >= 0:
                latest[key.service] = value
            else:
                notes.append(f"service {key.service}: load {value!r} ignored (not >= 0)")
    base = constraints(registry)
    moving = frozenset(s.name for s in services.values() if s.moving)
    cons = Constraints(pinned=base.pinned | moving, anti_affinity=base.anti_affinity,
                       max_moves=base.max_moves, windows=base.windows)
    capacity = {c: cap for c, cap in _capacity(registry).items() if cap > 0}
    placed = []
    for s in services.values():
        if s.instance is None:
            continue
        if s.instance.cluster not in capacity:
            notes.append(f"service {s.name} runs in {s.instance.cluster}, a cluster without "
                         "capacity: left where it is")
            continue
        placed.append(ServiceLoad(name=s.name, cluster=s.instance.cluster,
                                  load=latest.get(s.name, 1.0)))
    if not capacity:
        return Plan(now=now, moves=(), imbalance_before=0.0, imbalance_after=0.0,
                    max_utilisation_before=0.0, max_utilisation_after=0.0,
                    utilisation_before={}, utilisation_after={},
                    notes=("no cluster has capacity: nothing to plan", *notes))
    p = rebalancing.plan_rebalance(clusters=capacity, services=placed, constraints=cons,
                                   now=now)
    return dataclasses.replace(p, notes=(*p.notes, *notes)) if notes else p


def start_decided(requests: Any, decisions: list[Decision],
                  start: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Start the moves the decisions call for; one refused move does not stop the others.

    ``requests`` is a :class:`mobility.moving.MoveRequests`; ``start(move_id)`` dispatches a
    recorded move. Returns the started move ids and the refusals (service, reason).
    """
    started, refused = [], []
    for d in decisions:
        if not d.moves or d.to_cluster is None:
            continue
        try:
            move = requests.request_move(service=d.service, to_cluster=d.to_cluster,
                                         origin="policy", policy_id=d.policy_id,
                                         trigger=d.to_dict())
        except MobilityError as exc:
            refused.append({"service": str(d.service), "reason": str(exc)})
            continue
        start(move.id)
        started.append(move.id)
    return started, refused


def run_plan(requests: Any, p: Plan, start: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Start every move of a rebalance plan; a failed one does not stop the others."""
    started, refused = [], []
    for mv in p.moves:
        try:
            move = requests.request_move(service=mv.service, to_cluster=mv.to_cluster,
                                         origin="rebalance", trigger=mv.to_dict())
        except MobilityError as exc:
            refused.append({"service": mv.service, "reason": str(exc)})
            continue
        start(move.id)
        started.append(move.id)
    return started, refused
