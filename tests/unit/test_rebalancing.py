"""The rebalance planner in mobility.rebalancing.

Aspects: the imbalance metric (0 when every cluster runs at the same utilisation, a known value,
weighted by capacity); plans on small fleets (the service nearest the ideal load moves, a balanced
fleet gets no moves, a move that only mirrors the imbalance is not taken, pinned services stay,
anti-affinity steers the choice, departures are not credited to a target's capacity or anti-
affinity, active maintenance windows freeze a cluster and past or future ones do not, the move cap
and its note, notes for over-capacity clusters and existing anti-affinity clashes, zero-load
services stay, the same input in another order gives the same plan, Plan.to_dict); Invalid for bad
input (a service on an unknown cluster, listed twice, a negative or non-finite load, a capacity of
0, a bad ``now``, a window ending before it starts, a negative or bool move cap). Properties on
random fleets: never more moves than the cap, never beyond a target's capacity (counting every move
into it and no move out), never a pinned service or a frozen cluster, each service at most once and
from where it runs, anti-affinity never broken by a move, imbalance and maximum utilisation never
higher after the plan, the plan's reported figures match the moves.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobility.errors import Invalid
from mobility.rebalancing import (
    Constraints,
    MaintenanceWindow,
    Plan,
    ServiceLoad,
    cluster_loads,
    imbalance,
    plan_rebalance,
)

PROPS = settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOW = 1_000_000.0


def svcs(**by_cluster: list[float]) -> list[ServiceLoad]:
    """Services named ``<cluster><load>`` (``a4``, ``b1``...) from loads per cluster."""
    return [ServiceLoad(name=f"{c}{load:g}", cluster=c, load=load)
            for c, loads in by_cluster.items() for load in loads]


def plan(caps: dict[str, float], services: list[ServiceLoad], **kw: Any) -> Plan:
    return plan_rebalance(clusters=caps, services=services, constraints=Constraints(**kw),
                          now=NOW)


def moved(p: Plan) -> list[tuple[str, str, str]]:
    return [(m.service, m.from_cluster, m.to_cluster) for m in p.moves]


# ---------------------------------------------------------------------------------- metric


def test_imbalance_is_zero_when_utilisation_is_even() -> None:
    assert imbalance({"a": 5.0, "b": 10.0}, {"a": 10.0, "b": 20.0}) == 0.0
    assert imbalance({}, {"a": 10.0}) == 0.0


def test_imbalance_is_the_capacity_weighted_deviation_of_utilisation() -> None:
    # U = 0.5; both clusters 0.5 away: sqrt((10*.25 + 10*.25) / 20).
    assert imbalance({"a": 10.0}, {"a": 10.0, "b": 10.0}) == 0.5
    # U = 10/40; a big idle cluster weighs three times the small full one.
    got = imbalance({"a": 10.0}, {"a": 10.0, "b": 30.0})
    assert got == pytest.approx(math.sqrt((10 * 0.75**2 + 30 * 0.25**2) / 40))


# ---------------------------------------------------------------------------------- examples


def test_the_service_nearest_the_ideal_load_moves_to_the_cold_cluster() -> None:
    p = plan({"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0]))
    assert moved(p) == [("a4", "a", "b")]
    assert p.imbalance_before == pytest.approx(0.4)
    assert p.imbalance_after == 0.0
    assert (p.max_utilisation_before, p.max_utilisation_after) == (0.9, 0.5)
    assert p.utilisation_after == {"a": 0.5, "b": 0.5}
    assert p.moves[0].reason == "a at 90% -> 50%, b at 10% -> 50% (fleet average 50%)"


def test_a_balanced_fleet_gets_no_moves() -> None:
    p = plan({"a": 10.0, "b": 20.0}, svcs(a=[2.0, 3.0], b=[6.0, 4.0]))
    assert p.moves == ()
    assert p.imbalance_after == p.imbalance_before == 0.0


def test_pinned_services_stay() -> None:
    p = plan({"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0]), pinned=frozenset({"a4"}))
    assert moved(p) == [("a3", "a", "b")]
    assert "1 pinned service(s) stay where they are" in p.notes
    everything = frozenset({"a4", "a3", "a2"})
    assert plan({"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0]),
                pinned=everything).moves == ()


def test_anti_affinity_keeps_group_members_apart() -> None:
    p = plan({"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0]),
             anti_affinity={"replicas": frozenset({"a4", "b1"})})
    assert moved(p) == [("a3", "a", "b")]


def test_departures_are_not_credited_to_a_target() -> None:
    # z leaves b for c; x would fit in b only if z's capacity counted as free already, which
    # it is not while both moves run (and not at all if z's move fails).
    caps = {"a": 10.0, "b": 20.0, "c": 24.0}
    p = plan(caps, [ServiceLoad("x", "a", 6.0), ServiceLoad("z", "b", 19.8)])
    assert moved(p) == [("z", "b", "c")]
    # The same for anti-affinity: y still counts in b while it moves out, and in c as soon as
    # it is planned there; so x, which follows y into b when they may share, stays put.
    caps, services = {"a": 10.0, "b": 30.0, "c": 60.0}, [ServiceLoad("x", "a", 5.5),
                                                         ServiceLoad("y", "b", 24.0)]
    assert moved(plan(caps, services)) == [("y", "b", "c"), ("x", "a", "b")]
    p = plan(caps, services, anti_affinity={"g": frozenset({"x", "y"})})
    assert moved(p) == [("y", "b", "c")]


def test_an_active_maintenance_window_freezes_its_cluster() -> None:
    caps, services = {"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0])
    for frozen in ("a", "b"):
        p = plan(caps, services,
                 windows=(MaintenanceWindow(cluster=frozen, start=NOW - 1, end=NOW + 60),))
        assert p.moves == ()
        assert (f"cluster {frozen} is in a maintenance window until {NOW + 60:g}: it neither "
                "gives nor takes services") in p.notes
    for start, end in ((NOW - 60, NOW), (NOW + 1, NOW + 60)):  # over, not yet begun
        p = plan(caps, services, windows=(MaintenanceWindow(cluster="b", start=start, end=end),))
        assert moved(p) == [("a4", "a", "b")]


def test_the_move_cap_bounds_the_plan_and_says_so() -> None:
    caps = {"a": 100.0, "b": 100.0}
    services = svcs(a=[float(i) for i in range(1, 11)])
    assert len(plan(caps, services, max_moves=10).moves) > 2
    p = plan(caps, services, max_moves=2)
    assert len(p.moves) == 2
    assert "the cap of 2 move(s) per plan was reached" in p.notes
    assert plan(caps, services, max_moves=0).moves == ()


def test_notes_name_over_capacity_clusters_and_existing_clashes() -> None:
    p = plan({"a": 4.0, "b": 10.0}, svcs(a=[3.0, 2.0], b=[1.0]),
             anti_affinity={"g": frozenset({"a3", "a2"})}, pinned=frozenset({"a3", "a2"}))
    assert "cluster a is over capacity (125%)" in p.notes
    assert ("anti-affinity group g already shares cluster a: a2, a3 (not repaired by "
            "rebalancing)") in p.notes


def test_a_move_that_only_mirrors_the_imbalance_is_not_taken() -> None:
    # a at 60 %, b empty and the same size: moving the one service just swaps them.
    assert plan({"a": 10.0, "b": 10.0}, [ServiceLoad("busy", "a", 6.0)]).moves == ()


def test_a_target_is_never_filled_beyond_capacity() -> None:
    p = plan({"a": 10.0, "b": 2.0}, svcs(a=[9.0, 3.0], b=[1.5]))
    assert p.moves == ()  # b is the coldest but has room for neither service


def test_zero_load_services_stay() -> None:
    idle = [ServiceLoad("idle-1", "a", 0.0), ServiceLoad("idle-2", "a", 0.0)]
    p = plan({"a": 10.0, "b": 20.0}, [*idle, ServiceLoad("busy", "a", 6.0)])
    assert [m.service for m in p.moves] == ["busy"]


def test_the_same_input_in_another_order_gives_the_same_plan() -> None:
    rng = random.Random(3)
    caps = {f"c{i}": float(rng.randint(5, 50)) for i in range(6)}
    services = [ServiceLoad(f"s{i}", rng.choice(["c0", "c1"]), rng.uniform(0.1, 4))
                for i in range(40)]
    first = plan(caps, services, max_moves=20)
    rng.shuffle(services)
    again = plan_rebalance(clusters=dict(reversed(caps.items())), services=services,
                           constraints=Constraints(max_moves=20), now=NOW)
    assert again == first
    assert len(first.moves) > 5


def test_plan_to_dict_is_plain_data() -> None:
    d = plan({"a": 10.0, "b": 10.0}, svcs(a=[4.0, 3.0, 2.0], b=[1.0])).to_dict()
    assert d["moves"] == [{"service": "a4", "from_cluster": "a", "to_cluster": "b", "load": 4.0,
                           "reason": "a at 90% -> 50%, b at 10% -> 50% (fleet average 50%)"}]
    assert d["utilisation_before"] == {"a": 0.9, "b": 0.1}
    assert d["now"] == NOW and d["notes"] == []


@pytest.mark.parametrize(
    ("caps", "services", "kw", "message"),
    [
        ({"a": 1.0}, [ServiceLoad("s", "x", 1.0)], {},
         "service 's' runs in cluster 'x', which has no capacity given"),
        ({"a": 1.0}, [ServiceLoad("s", "a", 1.0)] * 2, {}, "service 's' is listed twice"),
        ({"a": 1.0}, [ServiceLoad("s", "a", -1.0)], {}, "load of service 's' must be"),
        ({"a": 1.0}, [ServiceLoad("s", "a", math.nan)], {}, "load of service 's' must be"),
        ({"a": 0.0}, [], {}, "capacity of cluster 'a' must be greater than 0"),
        ({"a": math.inf}, [], {}, "capacity of cluster 'a' must be a finite number"),
        ({"a": 1.0}, [], {"now": math.nan}, "now must be a finite number"),
    ],
)
def test_bad_input_is_invalid(caps: dict[str, float], services: list[ServiceLoad],
                              kw: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        plan_rebalance(clusters=caps, services=services, now=kw.get("now", NOW))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_moves": -1}, "max_moves must be 0 or more"),
        ({"max_moves": True}, "max_moves must be an integer"),
        ({"windows": (MaintenanceWindow("a", NOW, NOW),)}, "ends .* before it starts"),
        ({"windows": (MaintenanceWindow("a", NOW, math.inf),)}, "needs finite start and end"),
    ],
)
def test_bad_constraints_are_invalid(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        Constraints(**kw)


# ------------------------------------------------------------------------------ properties


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, float], list[ServiceLoad], Constraints]:
    names = [f"c{i}" for i in range(draw(st.integers(1, 6)))]
    # Integral and fractional values both: exact sums and rounding both get exercised.
    amount = st.one_of(st.integers(1, 60).map(float),
                       st.floats(0.01, 60, allow_subnormal=False))
    caps = {c: draw(amount) for c in names}
    # Skewed placements: most services on the first clusters.
    weights = [1.0 / (i + 1) ** draw(st.floats(0, 2)) for i in range(len(names))]
    rng = draw(st.randoms(use_true_random=False))
    services = [
        ServiceLoad(f"s{i}", rng.choices(names, weights=weights)[0],
                    draw(st.one_of(st.just(0.0), amount.map(lambda x: x / 4))))
        for i in range(draw(st.integers(0, 40)))
    ]
    snames = [s.name for s in services]
    pick = st.frozensets(st.sampled_from(snames), max_size=6) if snames else st.just(frozenset())
    groups = {f"g{i}": draw(pick) for i in range(draw(st.integers(0, 3)))}
    windows = tuple(
        MaintenanceWindow(cluster=c, start=NOW + draw(st.integers(-100, 100)),
                          end=NOW + draw(st.integers(101, 200)) * draw(st.sampled_from([1, -1])))
        for c in names if draw(st.integers(0, 4)) == 0
    )
    windows = tuple(w for w in windows if w.end > w.start)
    cons = Constraints(pinned=draw(pick), anti_affinity=groups,
                       max_moves=draw(st.integers(0, 12)), windows=windows)
    return caps, services, cons


@PROPS
@given(fleet=fleets())
def test_every_plan_respects_every_constraint_and_never_worsens_imbalance(
    fleet: tuple[dict[str, float], list[ServiceLoad], Constraints],
) -> None:
    caps, services, cons = fleet
    p = plan_rebalance(clusters=caps, services=services, constraints=cons, now=NOW)
    where = {s.name: s.cluster for s in services}
    frozen = {w.cluster for w in cons.windows if w.active(NOW)}

    assert len(p.moves) <= cons.max_moves
    names = [m.service for m in p.moves]
    assert len(names) == len(set(names))
    incoming: dict[str, float] = defaultdict(float)
    for m in p.moves:
        assert m.service not in cons.pinned
        assert m.from_cluster == where[m.service] != m.to_cluster
        assert m.from_cluster not in frozen and m.to_cluster not in frozen
        assert m.load > 0
        incoming[m.to_cluster] += m.load
    before = cluster_loads(services, caps)
    for c, units in incoming.items():
        assert before[c] + units <= caps[c]

    arriving: dict[tuple[str, str], int] = defaultdict(int)
    for m in p.moves:
        for group, members in cons.anti_affinity.items():
            if m.service in members:
                others = members - {m.service}
                assert all(where.get(o) != m.to_cluster for o in others)
                arriving[(group, m.to_cluster)] += 1
    assert all(n == 1 for n in arriving.values())

    final = dict(where) | {m.service: m.to_cluster for m in p.moves}
    after = cluster_loads([ServiceLoad(s.name, final[s.name], s.load) for s in services], caps)
    assert p.imbalance_before == imbalance(before, caps)
    assert p.imbalance_after == imbalance(after, caps)
    assert p.imbalance_after <= p.imbalance_before
    assert p.max_utilisation_after <= p.max_utilisation_before
    if p.moves:
        assert p.imbalance_after < p.imbalance_before
