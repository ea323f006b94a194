"""The node agent's reconciler: desired link state from the registry, repaired on the node.

Every second (and once at start) the agent of a node reads, from the registry, the services
whose instance runs on its node and the link ends they should have, checks each end in the
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

from dataplane.errors import DataplaneError
from dataplane.lab.pods import NodeRuntime
from mobility.models import Cluster, PathHealth, Service
from mobility.node_ops import CreateEnd
from mobility.store import Registry

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


def desired_ends(rt: NodeRuntime,
                 registry: Registry) -> list[tuple[Service, list[tuple[str, CreateEnd]]]]:
    """Services on this node that no move owns, with the link ends they should have (each
    with its link's id), built exactly as WIRE builds them."""
    services = registry.services()
    clusters: dict[str, Cluster] = registry.clusters()
    out = []
    for svc in services.values():
        inst = svc.instance
        if inst is None or (inst.cluster, inst.node) != (rt.node.cluster, rt.node.name):
            continue
        if svc.moving:
            continue
        ends = []
        owned = False
        for link in registry.links_of(svc):
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
