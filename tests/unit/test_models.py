"""Domain records in mobility.models.

Aspects: to_dict/from_dict round trips (directly and through msgpack, as the registry stores
them) for Cluster, Service, Link and Move, with Instances and enums restored to their types;
Move.from_dict ignoring unknown keys; Cluster.node; Link.end_of / peer_of from either end and
KeyError for a service not on the link; LinkEnd.cidr; Move.total_ms; MoveStatus.terminal.
"""

from __future__ import annotations

import msgpack
import pytest

from mobility.models import (
    Cluster,
    Instance,
    Link,
    LinkEnd,
    Move,
    MoveStatus,
    Node,
    Phase,
    Service,
)


def packed(d: dict[str, object]) -> dict[str, object]:
    out = msgpack.unpackb(msgpack.packb(d), raw=False)
    assert isinstance(out, dict)
    return out


CLUSTER = Cluster(
    name="core",
    nodes=(
        Node(name="n1", cluster="core", underlay_ip="198.18.1.11", namespace="smlab-core-n1"),
        Node(name="n2", cluster="core", underlay_ip="198.18.1.12"),
    ),
    underlay_mtu=9000,
    labels=(("region", "eu"), ("tier", "gold")),
)
LINK = Link(
    id="probe.web",
    vni=4242,
    ends=(
        LinkEnd(service="probe", ifname="nsm-1", mac="02:6d:00:00:01:01", ip="169.254.1.1"),
        LinkEnd(
            service="web", ifname="nsm-2", mac="02:6d:00:00:01:02", ip="169.254.1.2", prefixlen=29
        ),
    ),
)
SRC = Instance(cluster="core", node="n1", pod="web-1")
DST = Instance(cluster="edge", node="n2", pod="web-2")


def full_move() -> Move:
    return Move(
        id="m-1",
        service="web",
        from_cluster="core",
        to_cluster="edge",
        status=MoveStatus.ROLLING_BACK,
        phase=Phase.SYNC,
        epoch=3,
        created_at=100.0,
        finished_at=101.5,
        source=SRC,
        target=DST,
        phases_started=["admit", "place", "wire"],
        phases_done=["admit", "place"],
        phase_ms={"admit": 1.5, "place": 20.25},
        cutover_confirmed=False,
        abort_requested=True,
        faults=["sync"],
        error="sync failed",
        origin="cli",
        strategy="stateful",
    )


# --- Cluster ---


def test_cluster_round_trip() -> None:
    assert Cluster.from_dict(CLUSTER.to_dict()) == CLUSTER
    assert Cluster.from_dict(packed(CLUSTER.to_dict())) == CLUSTER


def test_cluster_to_dict_shape() -> None:
    d = CLUSTER.to_dict()
    assert d["labels"] == {"region": "eu", "tier": "gold"}
    assert d["nodes"][0] == {
        "name": "n1",
        "cluster": "core",
        "underlay_ip": "198.18.1.11",
        "namespace": "smlab-core-n1",
    }


def test_cluster_from_dict_defaults() -> None:
    c = Cluster.from_dict({"name": "edge", "nodes": []})
    assert (c.underlay_mtu, c.labels, c.nodes) == (1500, (), ())


def test_cluster_node_lookup() -> None:
    assert CLUSTER.node("n2").underlay_ip == "198.18.1.12"
    with pytest.raises(KeyError):
        CLUSTER.node("n9")


# --- Service ---


def test_service_round_trip_running() -> None:
    svc = Service(
        name="web",
        workload="probe",
        params={"port": 7000, "rate": 2.5, "target": "169.254.1.2:7000"},
        instance=SRC,
        links=["probe.web"],
        moving="m-1",
    )
    back = Service.from_dict(svc.to_dict())
    assert back == svc
    assert isinstance(back.instance, Instance)
    assert Service.from_dict(packed(svc.to_dict())) == svc


def test_service_round_trip_not_running() -> None:
    svc = Service(name="web", workload="echo")
    assert svc.to_dict()["instance"] is None
    assert Service.from_dict(svc.to_dict()) == svc


def test_service_to_dict_copies_its_lists() -> None:
    svc = Service(name="web", workload="echo", links=["a"])
    d = svc.to_dict()
    d["links"].append("b")
    d["params"]["port"] = 1
    assert svc.links == ["a"] and svc.params == {}


# --- Link ---


def test_link_round_trip() -> None:
    assert Link.from_dict(LINK.to_dict()) == LINK
    assert Link.from_dict(packed(LINK.to_dict())) == LINK


def test_end_of_and_peer_of_from_both_ends() -> None:
    probe, web = LINK.ends
    assert LINK.end_of("probe") is probe and LINK.end_of("web") is web
    assert LINK.peer_of("probe") is web and LINK.peer_of("web") is probe


@pytest.mark.parametrize("method", ["end_of", "peer_of"])
def test_service_not_on_the_link_is_a_key_error(method: str) -> None:
    with pytest.raises(KeyError, match="db"):
        getattr(LINK, method)("db")


def test_link_end_cidr() -> None:
    assert LINK.ends[0].cidr == "169.254.1.1/30"
    assert LINK.ends[1].cidr == "169.254.1.2/29"


# --- Move ---


def test_move_round_trip_restores_types() -> None:
    m = full_move()
    back = Move.from_dict(m.to_dict())
    assert back == m
    assert type(back.status) is MoveStatus and back.status is MoveStatus.ROLLING_BACK
    assert type(back.phase) is Phase and back.phase is Phase.SYNC
    assert back.source == SRC and isinstance(back.source, Instance)
    assert back.target == DST and isinstance(back.target, Instance)


def test_move_round_trip_through_msgpack() -> None:
    m = full_move()
    assert Move.from_dict(packed(m.to_dict())) == m


def test_move_to_dict_holds_plain_values() -> None:
    d = full_move().to_dict()
    assert d["status"] == "rolling_back" and type(d["status"]) is str
    assert d["phase"] == "sync" and type(d["phase"]) is str
    assert d["source"] == {"cluster": "core", "node": "n1", "pod": "web-1"}


def test_fresh_move_round_trip() -> None:
    m = Move(id="m-2", service="web", from_cluster="core", to_cluster="edge")
    d = m.to_dict()
    assert d["phase"] is None and d["source"] is None and d["target"] is None
    assert Move.from_dict(d) == m


def test_move_from_dict_ignores_unknown_keys() -> None:
    d = full_move().to_dict()
    d["added_in_a_later_version"] = 1
    assert Move.from_dict(d) == full_move()


def test_move_from_dict_does_not_modify_its_input() -> None:
    d = full_move().to_dict()
    Move.from_dict(d)
    assert d["status"] == "rolling_back" and isinstance(d["source"], dict)


def test_total_ms() -> None:
    m = Move(id="m", service="web", from_cluster="core", to_cluster="edge", created_at=10.0)
    assert m.total_ms is None
    m.finished_at = 10.25
    assert m.total_ms == 250.0
    m.finished_at = 10.0
    assert m.total_ms == 0.0


def test_total_ms_rounds_to_a_tenth() -> None:
    m = Move(
        id="m",
        service="web",
        from_cluster="core",
        to_cluster="edge",
        created_at=1.0,
        finished_at=1.00123,
    )
    assert m.total_ms == 1.2


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (MoveStatus.PENDING, False),
        (MoveStatus.RUNNING, False),
        (MoveStatus.ROLLING_BACK, False),
        (MoveStatus.SUCCEEDED, True),
        (MoveStatus.FAILED, True),
        (MoveStatus.ROLLED_BACK, True),
    ],
)
def test_terminal_statuses(status: MoveStatus, terminal: bool) -> None:
    assert status.terminal is terminal
