"""Placement decisions: which node takes a new instance, and whether a move makes sense.

Pure: it gets the clusters, the services and their links, and answers or raises.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

from mobility.errors import Conflict, NotFound, PlacementError
from mobility.models import Cluster, Instance, Link, Node, Service


def validate_move(
    *, service: Service | None, service_name: str, to_cluster: str,
    clusters: Mapping[str, Cluster],
) -> Service:
    """Refuse a move that cannot or need not happen, with a message a person can act on."""
    if service is None:
        raise NotFound(f"service {service_name!r} does not exist")
    if to_cluster not in clusters:
        known = ", ".join(sorted(clusters)) or "none"
        raise NotFound(f"cluster {to_cluster!r} does not exist (known clusters: {known})")
    if service.instance is None:
        raise Conflict(f"service {service_name!r} is not running anywhere yet")
    if service.instance.cluster == to_cluster:
        raise Conflict(f"service {service_name!r} already runs in cluster {to_cluster!r}")
    if service.moving:
        raise Conflict(f"service {service_name!r} is already moving (move {service.moving})")
    return service


def peer_nodes(service: str, links: Iterable[Link], services: Mapping[str, Service]) -> set[str]:
    """Nodes (as ``cluster/node``) that hold the other end of one of the service's links."""
    result = set()
    for link in links:
        peer = services.get(link.peer_of(service).service)
        if peer is not None and peer.instance is not None:
            result.add(f"{peer.instance.cluster}/{peer.instance.node}")
    return result


def choose_node(
    *, cluster: Cluster, avoid: set[str], load: Mapping[str, int] | None = None,
    spread: str = "",
) -> Node:
    """The least loaded node of ``cluster`` that is not in ``avoid``.

    ``avoid`` holds the nodes of the service's link peers: both ends of one link on one node
    would share a VxLAN socket and VNI, which the kernel cannot tell apart.
    """
    counts: Counter[str] = Counter(load or {})
    candidates = [n for n in cluster.nodes if f"{cluster.name}/{n.name}" not in avoid]
    if not candidates:
        raise PlacementError(
            f"no node in cluster {cluster.name!r} can take the instance: every node holds the "
            "other end of one of its links"
        )
    if not spread:
        return min(candidates, key=lambda n: (counts[f"{cluster.name}/{n.name}"], n.name))
    # ties broken by a hash of ``spread`` (the move's id): moves admitted at the same moment
    # read the same loads, and by name they would all take the first node
    return min(candidates, key=lambda n: (counts[f"{cluster.name}/{n.name}"], hashlib.blake2b(
        f"{spread}/{n.name}".encode(), digest_size=8).digest()))


def node_load(services: Iterable[Service], *, reserved: Iterable[Instance] = ()) -> Counter[str]:
    """Instances per ``cluster/node``, counting the targets of moves in flight (``reserved``):
    a target is an instance from ADMIT on, long before it is the service's."""
    counts = Counter(
        f"{s.instance.cluster}/{s.instance.node}" for s in services if s.instance is not None
    )
    counts.update(f"{i.cluster}/{i.node}" for i in reserved)
    return counts
