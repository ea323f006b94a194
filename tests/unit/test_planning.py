"""Placement rules in mobility.planning.

Aspects: validate_move (NotFound for a missing service or cluster, naming the known clusters;
Conflict for a service not running, already in the target cluster, or already moving; the
service itself when the move is fine); choose_node (least loaded, ties broken by name, load
counted per ``cluster/node``, link peers' nodes avoided, PlacementError when every node is
avoided; ties spread by a hash of the move when asked); peer_nodes; node_load (with the
targets of moves in flight).
"""

from __future__ import annotations

from collections import Counter

import pytest

from mobility.errors import Conflict, NotFound, PlacementError
from mobility.models import Cluster, Instance, Link, LinkEnd, Node, Service
from mobility.planning import choose_node, node_load, peer_nodes, validate_move


def cluster(name: str, *nodes: str) -> Cluster:
    return Cluster(
        name=name,
        nodes=tuple(
            Node(name=n, cluster=name, underlay_ip=f"198.18.1.{10 + i}")
            for i, n in enumerate(nodes)
        ),
    )


CLUSTERS = {"core": cluster("core", "n1", "n2"), "edge": cluster("edge", "n1", "n2", "n3")}


def running(name: str, where: str | None, *, moving: str | None = None) -> Service:
    inst = None
    if where is not None:
        c, n = where.split("/")
        inst = Instance(cluster=c, node=n, pod=f"{name}-1")
    return Service(name=name, workload="echo", instance=inst, moving=moving)


def link(a: str, b: str) -> Link:
    return Link(
        id=f"{a}.{b}",
        vni=100,
        ends=(
            LinkEnd(service=a, ifname="nsm-1", mac="02:6d:00:00:01:01", ip="169.254.1.1"),
            LinkEnd(service=b, ifname="nsm-1", mac="02:6d:00:00:01:02", ip="169.254.1.2"),
        ),
    )


# --- validate_move ---


def test_valid_move_returns_the_service() -> None:
    svc = running("web", "core/n1")
    assert (
        validate_move(service=svc, service_name="web", to_cluster="edge", clusters=CLUSTERS) is svc
    )


def test_missing_service_is_not_found() -> None:
    with pytest.raises(NotFound, match="'web'"):
        validate_move(service=None, service_name="web", to_cluster="edge", clusters=CLUSTERS)


def test_missing_cluster_is_not_found_and_names_known_clusters() -> None:
    with pytest.raises(NotFound) as info:
        validate_move(
            service=running("web", "core/n1"),
            service_name="web",
            to_cluster="mars",
            clusters=CLUSTERS,
        )
    msg = str(info.value)
    assert "'mars'" in msg
    assert "core, edge" in msg


def test_missing_cluster_with_no_clusters_says_none() -> None:
    with pytest.raises(NotFound, match=r"known clusters: none"):
        validate_move(
            service=running("web", "core/n1"), service_name="web", to_cluster="edge", clusters={}
        )


def test_service_not_running_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="not running"):
        validate_move(
            service=running("web", None), service_name="web", to_cluster="edge", clusters=CLUSTERS
        )


def test_move_to_the_same_cluster_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="already runs in cluster 'core'"):
        validate_move(
            service=running("web", "core/n2"),
            service_name="web",
            to_cluster="core",
            clusters=CLUSTERS,
        )


def test_service_already_moving_is_a_conflict_naming_the_move() -> None:
    with pytest.raises(Conflict, match="m-123"):
        validate_move(
            service=running("web", "core/n1", moving="m-123"),
            service_name="web",
            to_cluster="edge",
            clusters=CLUSTERS,
        )


# --- choose_node ---


def test_least_loaded_node_wins() -> None:
    load = {"edge/n1": 2, "edge/n2": 0, "edge/n3": 1}
    assert choose_node(cluster=CLUSTERS["edge"], avoid=set(), load=load).name == "n2"


def test_tie_is_broken_by_name_not_by_position() -> None:
    c = cluster("edge", "n3", "n2", "n1")
    assert (
        choose_node(cluster=c, avoid=set(), load={"edge/n1": 1, "edge/n3": 1, "edge/n2": 1}).name
        == "n1"
    )
    assert choose_node(cluster=c, avoid=set()).name == "n1"


def test_load_is_counted_per_cluster_and_node() -> None:
    # n1 of *another* cluster is busy; edge/n1 is not, and edge/n2 has one instance.
    load = {"core/n1": 9, "edge/n2": 1, "edge/n3": 1}
    assert choose_node(cluster=CLUSTERS["edge"], avoid=set(), load=load).name == "n1"


def test_peer_nodes_are_avoided_even_when_least_loaded() -> None:
    load = {"edge/n1": 5, "edge/n2": 0, "edge/n3": 3}
    chosen = choose_node(cluster=CLUSTERS["edge"], avoid={"edge/n2"}, load=load)
    assert chosen.name == "n3"


def test_avoid_only_applies_to_its_own_cluster() -> None:
    chosen = choose_node(cluster=CLUSTERS["edge"], avoid={"core/n1"})
    assert (chosen.cluster, chosen.name) == ("edge", "n1")


def test_every_node_avoided_raises_placement_error() -> None:
    with pytest.raises(PlacementError, match="'core'"):
        choose_node(cluster=CLUSTERS["core"], avoid={"core/n1", "core/n2"})


# --- peer_nodes and node_load ---


def test_peer_nodes_from_either_end_of_a_link() -> None:
    services = {
        "web": running("web", "core/n1"),
        "db": running("db", "edge/n2"),
        "cache": running("cache", "core/n2"),
        "idle": running("idle", None),
    }
    links = [link("web", "db"), link("cache", "web"), link("web", "idle"), link("web", "gone")]
    assert peer_nodes("web", links, services) == {"edge/n2", "core/n2"}


def test_peer_nodes_without_links_is_empty() -> None:
    assert peer_nodes("web", [], {"web": running("web", "core/n1")}) == set()


def test_node_load_counts_instances_per_node() -> None:
    services = [
        running("a", "core/n1"),
        running("b", "core/n1"),
        running("c", "edge/n1"),
        running("d", None),
    ]
    assert node_load(services) == Counter({"core/n1": 2, "edge/n1": 1})


def test_node_load_feeds_choose_node() -> None:
    services = [running("a", "edge/n1"), running("b", "edge/n2")]
    chosen = choose_node(cluster=CLUSTERS["edge"], avoid=set(), load=node_load(services))
    assert chosen.name == "n3"


def test_targets_of_moves_in_flight_count_as_load() -> None:
    services = [running("a", "edge/n2")]
    load = node_load(services, reserved=[Instance(cluster="edge", node="n1", pod="b-7"),
                                         Instance(cluster="edge", node="n1", pod="c-8")])
    assert load == Counter({"edge/n1": 2, "edge/n2": 1})
    assert choose_node(cluster=CLUSTERS["edge"], avoid=set(), load=load).name == "n3"


def test_moves_admitted_together_spread_over_tied_nodes() -> None:
    """With the same loads, ties go by a hash of each move's id, not by name: 60 moves that
    read the same fleet do not all take the first node; the same id always gets the same."""
    picks = Counter(choose_node(cluster=CLUSTERS["edge"], avoid=set(), load={},
                                spread=f"mv-{i}").name for i in range(60))
    assert set(picks) == {"n1", "n2", "n3"} and max(picks.values()) < 40, picks
    again = choose_node(cluster=CLUSTERS["edge"], avoid=set(), load={}, spread="mv-7").name
    assert again == choose_node(cluster=CLUSTERS["edge"], avoid=set(), load={},
                                spread="mv-7").name
    # the load still comes first: the only node with less of it wins whatever the hash
    assert {choose_node(cluster=CLUSTERS["edge"], avoid=set(), load={"edge/n1": 1,
                                                                      "edge/n3": 1},
                        spread=f"mv-{i}").name for i in range(20)} == {"n2"}
