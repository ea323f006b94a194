"""The lab's address and name plan in dataplane.lab.topology (pure parts only).

Aspects: the packaged default config; plan() names (router, nodes, bridges, host link) and
addresses (cluster underlays, node IPs, pod subnets, host/router /30) for it; pod subnets
distinct, inside the underlay, overlapping neither the cluster underlays nor the host link;
every interface name within the kernel's 15 characters even at the longest allowed names;
LabConfigError for a bad lab or cluster name, an underlay that is not a /16 inside
198.18.0.0/15, no or too many clusters, duplicate clusters, a bad node count or MTU; labs up
to the limits (7 clusters, 15 nodes) accepted with sound addresses, and 8 or more clusters
refused;
load_config from a TOML file, with overrides and a TOML error; LabPlan.node, pod_namespace;
LabPlan.to_dict/from_dict round trip, also through JSON as save_plan writes it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from dataplane.lab.topology import (
    ClusterConfig,
    LabConfig,
    LabConfigError,
    LabPlan,
    load_config,
    plan,
)

IFNAMSIZ = 15
FIXED_IFNAMES = ("up0", "eth0", "cni0")


def lab(
    *clusters: ClusterConfig, name: str = "smlab", underlay: str = "198.18.0.0/16"
) -> LabConfig:
    return LabConfig(
        name=name, underlay=underlay, clusters=clusters or (ClusterConfig(name="core"),)
    )


def ifnames(p: LabPlan) -> list[str]:
    return [
        p.host_ifname,
        *FIXED_IFNAMES,
        *(c.bridge for c in p.clusters),
        *(n.router_port for n in p.nodes),
    ]


def assert_addresses_sound(p: LabPlan) -> None:
    underlay = ipaddress.IPv4Network(p.underlay)
    host_link = ipaddress.IPv4Network(f"{p.host_ip}/30", strict=False)
    cluster_nets = [ipaddress.IPv4Network(c.subnet) for c in p.clusters]
    pod_nets = [ipaddress.IPv4Network(n.pod_subnet) for n in p.nodes]
    every = [*cluster_nets, *pod_nets, host_link]
    for net in every:
        assert net.subnet_of(underlay), f"{net} is outside the underlay {underlay}"
    for i, a in enumerate(every):
        for b in every[i + 1 :]:
            assert not a.overlaps(b), f"{a} overlaps {b}"


# --- the packaged default ---


def test_default_config() -> None:
    cfg = load_config()
    assert cfg.name == "smlab"
    assert cfg.underlay == "198.18.0.0/16"
    assert [(c.name, c.nodes, c.underlay_mtu) for c in cfg.clusters] == [
        ("core", 2, 1500),
        ("edge", 2, 1500),
    ]


def test_default_plan_names() -> None:
    p = plan(load_config())
    assert p.name == "smlab"
    assert p.router_namespace == "smlab-wan"
    assert p.host_ifname == "smlab-h0"
    assert p.prefix == "smlab-"
    assert [n.namespace for n in p.nodes] == [
        "smlab-core-n1",
        "smlab-core-n2",
        "smlab-edge-n1",
        "smlab-edge-n2",
    ]
    assert [c.bridge for c in p.clusters] == ["br-core", "br-edge"]
    assert [n.router_port for n in p.nodes] == ["core-n1", "core-n2", "edge-n1", "edge-n2"]
    assert p.nodes[0].queue_id == "core.n1"
    assert p.pod_namespace("web-1") == "smlab-pod-web-1"


def test_default_plan_addresses() -> None:
    p = plan(load_config())
    assert p.underlay == "198.18.0.0/16"
    core, edge = p.clusters
    assert (core.subnet, core.gateway, core.mtu) == ("198.18.1.0/24", "198.18.1.1", 1500)
    assert (edge.subnet, edge.gateway) == ("198.18.2.0/24", "198.18.2.1")
    n1 = p.node("core", "n1")
    assert (n1.underlay_ip, n1.gateway, n1.mtu) == ("198.18.1.11", "198.18.1.1", 1500)
    assert p.node("core", "n2").underlay_ip == "198.18.1.12"
    assert p.node("edge", "n2").underlay_ip == "198.18.2.12"
    assert p.node("edge", "n2").gateway == "198.18.2.1"
    assert (p.host_ip, p.router_ip) == ("198.18.255.253", "198.18.255.254")


def test_default_plan_pod_subnets() -> None:
    p = plan(load_config())
    subnets = [n.pod_subnet for n in p.nodes]
    assert len(set(subnets)) == len(subnets)
    for n in p.nodes:
        net = ipaddress.IPv4Network(n.pod_subnet)
        assert net.prefixlen == 24
        assert n.pod_gateway == str(net.network_address + 1)
    assert_addresses_sound(p)


def test_node_underlay_ips_are_in_their_cluster_subnet() -> None:
    p = plan(load_config())
    subnets = {c.name: ipaddress.IPv4Network(c.subnet) for c in p.clusters}
    for n in p.nodes:
        assert ipaddress.IPv4Address(n.underlay_ip) in subnets[n.cluster]
        assert n.underlay_ip != n.gateway


def test_default_interface_names_fit() -> None:
    assert all(0 < len(n) <= IFNAMSIZ for n in ifnames(plan(load_config())))


def test_longest_names_still_fit() -> None:
    p = plan(lab(ClusterConfig(name="abcdefgh", nodes=15), name="abcdefghij"))
    names = ifnames(p)
    assert "abcdefghij-h0" in names and "abcdefgh-n15" in names
    assert all(len(n) <= IFNAMSIZ for n in names), [n for n in names if len(n) > IFNAMSIZ]


def test_other_underlay_in_the_lab_range() -> None:
    p = plan(lab(underlay="198.19.0.0/16"))
    assert p.clusters[0].subnet == "198.19.1.0/24"
    assert p.host_ip == "198.19.255.253"
    assert_addresses_sound(p)


def test_mtu_and_node_count_are_carried_over() -> None:
    p = plan(lab(ClusterConfig(name="core", nodes=3, underlay_mtu=9000)))
    assert [n.name for n in p.nodes] == ["n1", "n2", "n3"]
    assert {n.mtu for n in p.nodes} == {9000} and p.clusters[0].mtu == 9000


def test_plan_node_lookup_miss() -> None:
    with pytest.raises(KeyError):
        plan(load_config()).node("core", "n9")


def test_a_mid_sized_lab_is_sound() -> None:
    p = plan(lab(*(ClusterConfig(name=f"c{i}", nodes=4) for i in range(4))))
    assert_addresses_sound(p)


# --- refused configs ---


@pytest.mark.parametrize("name", ["s", "Smlab", "1lab", "sm-lab", "sm_lab", "abcdefghijk", ""])
def test_bad_lab_name(name: str) -> None:
    with pytest.raises(LabConfigError, match="lab name"):
        plan(lab(name=name))


@pytest.mark.parametrize("underlay", ["198.18.0.0/17", "198.18.0.0/15", "198.18.0.0/24"])
def test_underlay_must_be_a_slash16(underlay: str) -> None:
    with pytest.raises(LabConfigError, match="/16"):
        plan(lab(underlay=underlay))


@pytest.mark.parametrize(
    "underlay", ["10.0.0.0/16", "198.20.0.0/16", "198.17.0.0/16", "192.168.0.0/16"]
)
def test_underlay_must_be_in_the_benchmarking_range(underlay: str) -> None:
    with pytest.raises(LabConfigError, match=re.escape("198.18.0.0/15")):
        plan(lab(underlay=underlay))


@pytest.mark.parametrize("underlay", ["not-a-network", "198.18.0.1/16", "fd00::/16"])
def test_unparsable_underlay(underlay: str) -> None:
    with pytest.raises(LabConfigError, match="underlay"):
        plan(lab(underlay=underlay))


def test_no_clusters() -> None:
    with pytest.raises(LabConfigError, match="1 to 7 clusters"):
        plan(LabConfig(clusters=()))


def test_too_many_clusters() -> None:
    with pytest.raises(LabConfigError, match="1 to 7 clusters"):
        plan(lab(*(ClusterConfig(name=f"c{i}", nodes=1) for i in range(8))))


def test_duplicate_cluster_names() -> None:
    with pytest.raises(LabConfigError, match="unique"):
        plan(lab(ClusterConfig(name="core"), ClusterConfig(name="core")))


@pytest.mark.parametrize("name", ["Core", "1core", "abcdefghi", "co-re", ""])
def test_bad_cluster_name(name: str) -> None:
    with pytest.raises(LabConfigError, match="cluster name"):
        plan(lab(ClusterConfig(name=name)))


@pytest.mark.parametrize("nodes", [0, 16, -1])
def test_bad_node_count(nodes: int) -> None:
    with pytest.raises(LabConfigError, match="1 to 15 nodes"):
        plan(lab(ClusterConfig(name="core", nodes=nodes)))


@pytest.mark.parametrize("mtu", [1279, 9001, 0])
def test_bad_mtu(mtu: int) -> None:
    with pytest.raises(LabConfigError, match="underlay_mtu"):
        plan(lab(ClusterConfig(name="core", underlay_mtu=mtu)))


@pytest.mark.parametrize("mtu", [1280, 9000])
def test_mtu_bounds_are_inclusive(mtu: int) -> None:
    assert plan(lab(ClusterConfig(name="core", underlay_mtu=mtu))).clusters[0].mtu == mtu


@pytest.mark.parametrize(("clusters", "nodes"), [(7, 15), (7, 1), (1, 15), (1, 1), (3, 8)])
def test_labs_up_to_the_limits_are_accepted_with_sound_addresses(clusters: int,
                                                                 nodes: int) -> None:
    p = plan(lab(*(ClusterConfig(name=f"c{i}", nodes=nodes) for i in range(clusters))))
    assert (len(p.clusters), len(p.nodes)) == (clusters, clusters * nodes)
    assert_addresses_sound(p)


@pytest.mark.parametrize(("clusters", "nodes"), [(8, 15), (8, 1), (9, 1), (16, 15)])
def test_labs_past_the_cluster_limit_are_refused(clusters: int, nodes: int) -> None:
    # Past 7 clusters of 15 nodes the pod subnets would reach the host link's /24.
    with pytest.raises(LabConfigError, match="1 to 7 clusters"):
        plan(lab(*(ClusterConfig(name=f"c{i}", nodes=nodes) for i in range(clusters))))


@pytest.mark.parametrize(("name", "cluster"), [("smlab\n", "core"), ("smlab", "core\n")])
def test_names_with_a_trailing_newline_are_refused(name: str, cluster: str) -> None:
    with pytest.raises(LabConfigError):
        plan(lab(ClusterConfig(name=cluster), name=name))


# --- load_config ---


TOML = """
name = "mylab"
underlay = "198.19.0.0/16"

[[clusters]]
name = "a"
nodes = 3
underlay_mtu = 9000

[[clusters]]
name = "b"
"""


def test_load_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(TOML)
    cfg = load_config(path)
    assert cfg.name == "mylab" and cfg.underlay == "198.19.0.0/16"
    assert cfg.clusters == (
        ClusterConfig(name="a", nodes=3, underlay_mtu=9000),
        ClusterConfig(name="b", nodes=2, underlay_mtu=1500),
    )
    p = plan(cfg)
    assert p.node("a", "n3").namespace == "mylab-a-n3"
    assert p.node("a", "n1").underlay_ip == "198.19.1.11"


def test_load_config_accepts_a_str_path(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(TOML)
    assert load_config(str(path)).name == "mylab"


def test_load_config_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(TOML)
    cfg = load_config(path, name="other", underlay="198.18.0.0/16")
    assert (cfg.name, cfg.underlay) == ("other", "198.18.0.0/16")
    assert [c.name for c in cfg.clusters] == ["a", "b"]


def test_load_config_fills_defaults(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[[clusters]]\nname = "solo"\n')
    cfg = load_config(path)
    assert (cfg.name, cfg.underlay) == ("smlab", "198.18.0.0/16")
    assert cfg.clusters == (ClusterConfig(name="solo"),)


def test_load_config_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('name = "unterminated\n')
    with pytest.raises(LabConfigError, match=str(path)):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_config(tmp_path / "absent.toml")


def test_load_config_unknown_cluster_key(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[[clusters]]\nname = "core"\nnode = 2\n')
    with pytest.raises(LabConfigError):
        load_config(path)


# --- LabPlan serialisation ---


def test_plan_round_trip() -> None:
    p = plan(load_config())
    assert LabPlan.from_dict(p.to_dict()) == p


def test_plan_round_trip_through_json() -> None:
    p = plan(lab(ClusterConfig(name="a", nodes=3), ClusterConfig(name="b", underlay_mtu=9000)))
    back = LabPlan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert isinstance(back.clusters, tuple) and isinstance(back.nodes, tuple)
    assert back.node("a", "n3") == p.node("a", "n3")
