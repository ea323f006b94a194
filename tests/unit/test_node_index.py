"""The per-node index of the registry and the reconciler's reads from it, on a real Redis.

Aspects: each node's index holds exactly the services placed on it through a deploy's writes
(created unplaced, links added to both ends, then placed), a move (placement changed by
``update_service``), a removal (links dropped from the peer, link and service deleted) and a
re-placement by ``put_service``; after any random sequence of such writes the maintained index
equals the one rebuilt from a scan, and each node's desired link ends read from the index equal
those read by the full scan (moving services and services whose peer moves left out, in the
same order); a registry written before the index existed answers None (readers scan), and its
first writer of a placement builds the index (``ensure_node_index`` too, once), as does a
writer's next write after the registry was emptied; a missing link fails the pass in both
reads the same way; a node agent's ACL user reads its own node's index and no other node's,
and writes none, while the orchestrator's may rebuild it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobility import keys
from mobility.errors import NotFound
from mobility.models import Cluster, Instance, Link, LinkEnd, Node, Service
from mobility.store import Registry, acl
from mobility.store.base import pack
from tests.conftest import RedisServer
from workers.reconciling import node_desired_ends, scan_desired_ends
from workers.routing import ORCHESTRATION, node_queue

DB = 12  # this module's database on the session's Redis (the ACL test: 0, as test_metrics)
CLUSTERS = ("c0", "c1", "c2")
NODES = ("n0", "n1", "n2")
ALL_NODES = [(c, n) for c in CLUSTERS for n in NODES]


@pytest.fixture()
def reg(redis_server: RedisServer) -> Iterator[Registry]:
    r = Registry.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}")
    r.r.flushdb()
    yield r
    r.r.flushdb()
    r.r.close()


def fleet(reg: Registry) -> None:
    for ci, c in enumerate(CLUSTERS):
        reg.put_cluster(Cluster(name=c, underlay_mtu=1500 - 50 * ci, nodes=tuple(
            Node(name=n, cluster=c, underlay_ip=f"198.18.{ci}.{ni + 2}")
            for ni, n in enumerate(NODES))))


def index_of(reg: Registry) -> dict[tuple[str, str], set[str]]:
    """Every node's index as stored (empty ones left out)."""
    out = {}
    for c, n in ALL_NODES:
        names = reg.node_index(c, n)
        assert names is not None
        if names:
            out[(c, n)] = set(names)
    return out


def placed(reg: Registry) -> dict[tuple[str, str], set[str]]:
    """What the index should be: from every service's record."""
    out: dict[tuple[str, str], set[str]] = {}
    for s in reg.services().values():
        if s.instance is not None:
            out.setdefault((s.instance.cluster, s.instance.node), set()).add(s.name)
    return out


def at(cluster: str, node: str, pod: str) -> Instance:
    return Instance(cluster=cluster, node=node, pod=pod)


def link_between(reg: Registry, a: str, b: str) -> Link:
    block = reg.next_link_block()
    return Link(id=f"{a}.{b}", vni=reg.next_vni(), ends=(
        LinkEnd(service=a, ifname=f"nsm-{block}", mac=f"02:6d:00:00:{block:02x}:01",
                ip=f"169.254.{block}.1"),
        LinkEnd(service=b, ifname=f"nsm-{block}", mac=f"02:6d:00:00:{block:02x}:02",
                ip=f"169.254.{block}.2")))


def deploy(reg: Registry, name: str, where: Instance, *, peers: tuple[str, ...] = ()) -> None:
    """The registry writes of ``Deployer._deploy``, in its order."""
    svc = Service(name=name, workload="echo")
    reg.put_service(svc, create=True)
    links = [link_between(reg, name, p) for p in peers]
    for link in links:
        reg.put_link(link)
    svc.links = [lk.id for lk in links]
    reg.put_service(svc)
    for link, peer in zip(links, peers, strict=True):
        reg.update_service(peer, lambda s, i=link.id: s.links.append(i))

    def running(s: Service) -> None:
        s.instance = where

    reg.update_service(name, running)


def move(reg: Registry, name: str, to: Instance) -> None:
    """CUTOVER's write of the new placement (``serve_from_target``)."""
    def serve(s: Service) -> None:
        s.instance = to

    reg.update_service(name, serve)


def remove(reg: Registry, name: str) -> None:
    """The registry writes of ``Deployer._remove``."""
    svc = reg.get_service(name)
    assert svc is not None
    for link in reg.links_of(svc):
        peer = link.peer_of(name).service
        if reg.get_service(peer) is not None:
            reg.update_service(peer, lambda s, i=link.id: s.links.remove(i))
        reg.delete_link(link.id)
    reg.delete_service(name)


def same_ends(reg: Registry) -> None:
    for c, n in ALL_NODES:
        assert node_desired_ends(cluster=c, node=n, registry=reg) == scan_desired_ends(
            cluster=c, node=n, registry=reg), (c, n)


def test_the_index_follows_deploy_move_and_remove(reg: Registry) -> None:
    fleet(reg)
    deploy(reg, "srv", at("c0", "n0", "p1"))
    assert index_of(reg) == {("c0", "n0"): {"srv"}}
    deploy(reg, "cli", at("c1", "n1", "p2"), peers=("srv",))
    assert index_of(reg) == {("c0", "n0"): {"srv"}, ("c1", "n1"): {"cli"}}
    ends = dict((s.name, e) for s, e in node_desired_ends(cluster="c0", node="n0",
                                                           registry=reg))
    assert [lid for lid, _ in ends["srv"]] == ["cli.srv"]
    assert ends["srv"][0][1].peer_node_ip == "198.18.1.3"
    assert ends["srv"][0][1].underlay_mtu == 1450  # the smaller of the two clusters'
    move(reg, "srv", at("c2", "n2", "p3"))
    assert index_of(reg) == {("c2", "n2"): {"srv"}, ("c1", "n1"): {"cli"}}
    assert node_desired_ends(cluster="c0", node="n0", registry=reg) == []
    same_ends(reg)
    remove(reg, "cli")
    assert index_of(reg) == {("c2", "n2"): {"srv"}}
    srv = reg.get_service("srv")
    assert srv is not None and srv.links == []
    reg.put_service(Service(name="srv", workload="echo", instance=at("c0", "n1", "p4")))
    assert index_of(reg) == {("c0", "n1"): {"srv"}}
    reg.put_service(Service(name="srv", workload="echo"))  # unplaced again
    assert index_of(reg) == {}
    assert reg.rebuild_node_index() == {}


def test_moving_services_and_their_peers_are_left_out_of_both_reads(reg: Registry) -> None:
    fleet(reg)
    deploy(reg, "a", at("c0", "n0", "p1"))
    deploy(reg, "b", at("c0", "n1", "p2"), peers=("a",))
    deploy(reg, "c", at("c0", "n0", "p3"), peers=("b",))
    assert reg.take_lock("b", "mv-x", ttl_s=60)
    mine = node_desired_ends(cluster="c0", node="n0", registry=reg)
    assert mine == scan_desired_ends(cluster="c0", node="n0", registry=reg)
    assert mine == []  # a and c: each has b, which moves, at the other end
    assert node_desired_ends(cluster="c0", node="n1", registry=reg) == []  # b itself
    reg.release_lock("b", "mv-x")
    assert [s.name for s, _ in node_desired_ends(cluster="c0", node="n0", registry=reg)] == [
        "a", "c"]
    same_ends(reg)


def test_a_missing_link_fails_both_reads_alike(reg: Registry) -> None:
    fleet(reg)
    deploy(reg, "a", at("c0", "n0", "p1"))
    deploy(reg, "b", at("c1", "n0", "p2"), peers=("a",))
    reg.delete_link("b.a")
    for read in (node_desired_ends, scan_desired_ends):
        with pytest.raises(NotFound, match=r"link b\.a does not exist"):
            read(cluster="c0", node="n0", registry=reg)


def test_a_registry_from_before_the_index_gets_one_from_its_first_writer(
        reg: Registry, redis_server: RedisServer) -> None:
    fleet(reg)
    deploy(reg, "a", at("c0", "n0", "p1"))
    deploy(reg, "b", at("c1", "n2", "p2"), peers=("a",))
    # as an older registry: no index at all
    reg.r.delete(keys.NODE_INDEX_BUILT, *[keys.node_services(c, n) for c, n in ALL_NODES])
    assert reg.node_index("c0", "n0") is None
    assert reg.ensure_node_index() and not reg.ensure_node_index()
    assert index_of(reg) == {("c0", "n0"): {"a"}, ("c1", "n2"): {"b"}}
    reg.r.delete(keys.NODE_INDEX_BUILT, *[keys.node_services(c, n) for c, n in ALL_NODES])
    assert [s.name for s, _ in node_desired_ends(cluster="c0", node="n0", registry=reg)] == [
        "a"]  # from the scan
    writer = Registry.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}")
    try:
        writer.put_service(Service(name="z", workload="echo"), create=True)
        assert index_of(reg) == {("c0", "n0"): {"a"}, ("c1", "n2"): {"b"}}
        same_ends(reg)
        # emptied under a live writer (a Redis that lost its data): its next write builds again
        reg.r.flushdb()
        fleet(reg)
        old = Service(name="old", workload="echo", instance=at("c2", "n1", "p9"))
        reg.r.set(keys.service("old"), pack(old.to_dict()))  # as written before the index
        reg.r.sadd(keys.SERVICES, "old")
        assert reg.node_index("c2", "n1") is None
        writer.put_service(Service(name="new", workload="echo",
                                   instance=at("c0", "n0", "p8")), create=True)
        assert index_of(reg) == {("c2", "n1"): {"old"}, ("c0", "n0"): {"new"}}
    finally:
        writer.r.close()


OPS = st.lists(st.tuples(st.sampled_from(["deploy", "move", "remove", "link", "unlink",
                                          "lock", "unlock", "replace"]),
                         st.integers(0, 7), st.integers(0, 7), st.sampled_from(ALL_NODES)),
               max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_after_any_writes_the_index_equals_the_scan(reg: Registry, ops: list[
        tuple[str, int, int, tuple[str, str]]]) -> None:
    reg.r.flushdb()
    fleet(reg)
    assert reg.rebuild_node_index() == {}  # a new registry's: empty, and built
    for i, (op, x, y, (c, n)) in enumerate(ops):
        a, b = f"s{x}", f"s{y}"
        sa, sb = reg.get_service(a), reg.get_service(b)
        if op == "deploy" and sa is None:
            deploy(reg, a, at(c, n, f"p{i}"),
                   peers=(b,) if sb is not None and a != b else ())
        elif op == "move" and sa is not None:
            move(reg, a, at(c, n, f"p{i}"))
        elif op == "remove" and sa is not None:
            remove(reg, a)
        elif (op == "link" and sa is not None and sb is not None and a != b
              and f"{a}.{b}" not in sa.links and f"{b}.{a}" not in sa.links):
            link = link_between(reg, a, b)
            reg.put_link(link)
            reg.update_service(a, lambda s, i=link.id: s.links.append(i))
            reg.update_service(b, lambda s, i=link.id: s.links.append(i))
        elif op == "unlink" and sa is not None and sa.links:
            link = reg.get_link(sa.links[0])
            for end in link.ends:
                reg.update_service(end.service, lambda s, i=link.id: s.links.remove(i))
            reg.delete_link(link.id)
        elif op == "lock" and sa is not None:
            reg.take_lock(a, "mv-t", ttl_s=60)
        elif op == "unlock":
            reg.release_lock(a, "mv-t")
        elif op == "replace" and sa is not None:
            sa.instance = None if x % 2 else at(c, n, f"p{i}")
            reg.put_service(sa)
        assert index_of(reg) == placed(reg)
    maintained = index_of(reg)
    assert reg.rebuild_node_index() == maintained
    assert index_of(reg) == maintained
    same_ends(reg)


def test_an_agent_reads_its_own_nodes_index_and_no_other(redis_server: RedisServer) -> None:
    admin = Registry.from_url(redis_server.url)  # database 0: users may not SELECT another
    admin.r.flushdb()
    users = acl.component_users(
        orchestration=ORCHESTRATION, node_queues=node_queue("*", "*"),
        agents={acl.agent_user("core", n): acl.CeleryRole(
            consumes=(node_queue("core", n),), worker=f"agent-core-{n}@lab")
            for n in ("n1", "n10")})
    tag = secrets.token_hex(3)
    made: dict[str, redis.Redis] = {}
    try:
        for user in (acl.ORCHESTRATOR, acl.agent_user("core", "n1")):
            name, password = f"{user}-t{tag}", secrets.token_urlsafe(12)
            admin.r.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", name, "reset", "on", f">{password}", *users[user])
            made[user] = redis.Redis.from_url(redis_server.url_for(name, password))
        orchestrator = Registry(made[acl.ORCHESTRATOR])
        orchestrator.put_cluster(Cluster(name="core", nodes=tuple(
            Node(name=n, cluster="core", underlay_ip=f"198.18.0.{i + 2}")
            for i, n in enumerate(("n1", "n10")))))
        orchestrator.put_service(Service(name="a", workload="echo",
                                         instance=at("core", "n1", "p1")), create=True)
        orchestrator.put_service(Service(name="b", workload="echo",
                                         instance=at("core", "n10", "p2")), create=True)
        assert orchestrator.rebuild_node_index() == {("core", "n1"): {"a"},
                                                    ("core", "n10"): {"b"}}
        agent = Registry(made[acl.agent_user("core", "n1")])
        assert agent.node_index("core", "n1") == ["a"]
        assert [s.name for s, _ in node_desired_ends(cluster="core", node="n1",
                                                      registry=agent)] == ["a"]
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.node_index("core", "n10")
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.r.sadd(keys.node_services("core", "n1"), "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.r.set(keys.NODE_INDEX_BUILT, b"1")
    finally:
        for c in made.values():
            c.close()
        for user in made:
            admin.r.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "DELUSER", f"{user}-t{tag}")
        admin.r.flushdb()
        admin.r.close()
