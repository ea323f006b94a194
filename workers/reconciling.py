"""The node agent's reconciler: desired link state from the registry, repaired on the node.

Every second (and once at start) the agent of a node reads, from the registry, the services
whose instance runs on its node (from its node's index, not a scan of every service) and the
link ends they should have, checks each end in the
kernel (device, MAC, address, up, FDB entry for the peer, permanent neighbour entry) and
recreates whatever drifted, then records the path health of each service (visible in
``GET /v1/services``). Services with a move in progress, or whose link peer is moving, are
left alone: the move owns their paths until it ends.

Reconciling and the agent's tasks share one lock, so a repair never interleaves with a
task's change to the same pod.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from dataplane.errors import DataplaneError
from dataplane.lab.pods import NodeRuntime
from mobility.errors import NotFound
from mobility.models import Cluster, Link, PathHealth, Service
from mobility.node_ops import CreateEnd
from mobility.store import Registry
from mobility.store.metrics import MetricStore

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
HEALTH_TTL_S = 10
LOCK = threading.RLock()  # held by the node's tasks and by each reconcile pass


def create_end(rt: NodeRuntime, op: CreateEnd) -> object:
    """Make (or remake) the link end ``op`` describes; the agent's ``node.create_end`` too."""
    return rt.create_end(pod=op.pod, ifname=op.ifname, vni=op.vni, mac=op.mac, cidr=op.cidr,
                         peer_mac=op.peer_mac, peer_ip=op.peer_ip,
                         peer_node_ip=op.peer_node_ip, underlay_mtu=op.underlay_mtu)


def check_end(rt: NodeRuntime, op: CreateEnd) -> list[str]:
    """What differs between the kernel and the link end ``op`` would make (empty: nothing)."""
    return rt.check_end(pod=op.pod, ifname=op.ifname, mac=op.mac, cidr=op.cidr,
                        peer_mac=op.peer_mac, peer_ip=op.peer_ip, peer_node_ip=op.peer_node_ip)


Ends = list[tuple[Service, list[tuple[str, CreateEnd]]]]


def desired_ends(rt: NodeRuntime, registry: Registry) -> Ends:
    """Services on this node that no move owns, with the link ends they should have (each
    with its link's id), built exactly as WIRE builds them."""
    return node_desired_ends(cluster=rt.node.cluster, node=rt.node.name, registry=registry)


def node_desired_ends(*, cluster: str, node: str, registry: Registry) -> Ends:
    """:func:`desired_ends` of ``cluster``/``node``, from its index: the node's services,
    then their links, their peers and the clusters involved, one batched read each, so a
    tick costs the node's share of the registry, not the registry. Without an index yet (a
    registry from before it) it scans, as :func:`scan_desired_ends`."""
    names = registry.node_index(cluster, node)
    if names is None:
        return scan_desired_ends(cluster=cluster, node=node, registry=registry)
    mine = [s for s in registry.services_named(names).values()
            if s.instance is not None and (s.instance.cluster, s.instance.node) == (cluster, node)
            and not s.moving]
    links = registry.links_named(i for s in mine for i in s.links)
    peers = registry.services_named(link.peer_of(s.name).service for s in mine
                                    for i in s.links if (link := links.get(i)) is not None)
    clusters = registry.clusters_named(
        [cluster, *(p.instance.cluster for p in peers.values() if p.instance is not None)])

    def link_of(link_id: str) -> Link:
        if link_id not in links:
            raise NotFound(f"link {link_id} does not exist")  # as Registry.get_link
        return links[link_id]

    return ends_of(mine, links=link_of, services=peers, clusters=clusters)


def scan_desired_ends(*, cluster: str, node: str, registry: Registry) -> Ends:
    """:func:`desired_ends` from a read of every service and cluster: what the reconciler did
    before the per-node index (and still does on a registry without one)."""
    services = registry.services()
    mine = [s for s in services.values() if s.instance is not None
            and (s.instance.cluster, s.instance.node) == (cluster, node) and not s.moving]
    return ends_of(mine, links=registry.get_link, services=services,
                 clusters=registry.clusters())


def ends_of(mine: list[Service], *, links: Callable[[str], Link], services: Mapping[str, Service],
          clusters: Mapping[str, Cluster]) -> Ends:
    """The ends of each service of ``mine`` (sorted by name), or none for a service whose
    link peer is moving (the move owns the link); ``services`` holds at least its peers."""
    out = []
    for svc in sorted(mine, key=lambda s: s.name):
        inst = svc.instance
        assert inst is not None
        ends = []
        owned = False
        for link in [links(i) for i in svc.links]:  # all first: a missing one fails the pass
            peer = services.get(link.peer_of(svc.name).service)
            if peer is None or peer.instance is None:
                continue  # the other end is being deployed or removed
            if peer.moving:
                owned = True
                break
            ends.append((link.id, CreateEnd.for_link(link=link, service=svc.name, instance=inst,
                                                     peer_instance=peer.instance,
                                                     clusters=clusters)))
        if not owned:
            out.append((svc, ends))
    return out


def reconcile_once(rt: NodeRuntime, registry: Registry) -> dict[str, PathHealth]:
    """One pass; returns the health recorded per service."""
    report = {}
    fixed = still_broken = 0
    for svc, ends in desired_ends(rt, registry):
        assert svc.instance is not None
        links: dict[str, str] = {}
        repaired = []
        with LOCK:
            for link_id, end in ends:
                try:
                    problems = check_end(rt, end)
                    if problems:
                        create_end(rt, end)
                        left = check_end(rt, end)
                        links[link_id] = ("repaired: " + "; ".join(problems) if not left
                                          else "broken: " + "; ".join(left))
                        repaired.append(link_id)
                        fixed, still_broken = (fixed, still_broken + 1) if left else (
                            fixed + 1, still_broken)
                        log.warning("service %s link %s drifted (%s); %s", svc.name,
                                    link_id, "; ".join(problems), links[link_id])
                    else:
                        links[link_id] = "ok"
                except DataplaneError as exc:
                    links[link_id] = f"broken: {exc}"
            if svc.routes and repaired:
                try:
                    rt.set_routes(pod=svc.instance.pod, routes=svc.routes)
                except DataplaneError as exc:
                    log.warning("routes of %s: %s", svc.name, exc)
        health = PathHealth(ok=all(not v.startswith("broken") for v in links.values()),
                            checked_at=time.time(), node=rt.node.queue_id, links=links)
        registry.put_health(svc.name, health, ttl_s=HEALTH_TTL_S)
        report[svc.name] = health
    MetricStore(registry.r).count_repairs(rt.node.queue_id, repaired=fixed,
                                          broken=still_broken)
    registry.count_reconcile_pass(rt.node.queue_id)
    return report


def run_forever(rt: NodeRuntime, registry: Registry, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            reconcile_once(rt, registry)
        except Exception:  # the loop must outlive any one bad pass
            log.exception("reconcile pass failed")
        stop.wait(INTERVAL_S)


def start(rt: NodeRuntime, registry: Registry) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(rt, registry, stop), name="reconciler",
                     daemon=True).start()
    return stop
