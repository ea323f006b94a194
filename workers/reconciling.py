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
from typing import Any

from dataplane.errors import DataplaneError
from dataplane.lab.pods import NodeRuntime
from mobility.models import Cluster, Service
from mobility.registry import Registry

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
HEALTH_TTL_S = 10
LOCK = threading.RLock()  # held by the node's tasks and by each reconcile pass


def desired_ends(rt: NodeRuntime, registry: Registry) -> list[tuple[Service, list[dict[str, Any]]]]:
    """Services on this node that no move owns, with the link ends they should have."""
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
            mine, theirs = link.end_of(svc.name), link.peer_of(svc.name)
            peer_node = clusters[peer.instance.cluster].node(peer.instance.node)
            ends.append({
                "link": link.id, "pod": inst.pod, "ifname": mine.ifname, "vni": link.vni,
                "mac": mine.mac, "cidr": mine.cidr, "peer_mac": theirs.mac, "peer_ip": theirs.ip,
                "peer_node_ip": peer_node.underlay_ip,
                "underlay_mtu": min(clusters[inst.cluster].underlay_mtu,
                                    clusters[peer.instance.cluster].underlay_mtu),
            })
        if not owned:
            out.append((svc, ends))
    return out


def reconcile_once(rt: NodeRuntime, registry: Registry) -> dict[str, dict[str, Any]]:
    """One pass; returns the health recorded per service."""
    report = {}
    for svc, ends in desired_ends(rt, registry):
        assert svc.instance is not None
        links: dict[str, str] = {}
        repaired = []
        with LOCK:
            for end in ends:
                args = {k: v for k, v in end.items() if k not in ("link", "vni", "underlay_mtu")}
                try:
                    problems = rt.check_end(**args)
                    if problems:
                        rt.create_end(**{k: v for k, v in end.items() if k != "link"})
                        left = rt.check_end(**args)
                        links[end["link"]] = ("repaired: " + "; ".join(problems) if not left
                                              else "broken: " + "; ".join(left))
                        repaired.append(end["link"])
                        log.warning("service %s link %s drifted (%s); %s", svc.name,
                                    end["link"], "; ".join(problems), links[end["link"]])
                    else:
                        links[end["link"]] = "ok"
                except DataplaneError as exc:
                    links[end["link"]] = f"broken: {exc}"
            if svc.routes and repaired:
                try:
                    rt.set_routes(pod=svc.instance.pod, routes=svc.routes)
                except DataplaneError as exc:
                    log.warning("routes of %s: %s", svc.name, exc)
        health = {"ok": all(not v.startswith("broken") for v in links.values()),
                  "checked_at": time.time(), "node": rt.node.queue_id, "links": links}
        registry.put_health(svc.name, health, ttl_s=HEALTH_TTL_S)
        report[svc.name] = health
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
