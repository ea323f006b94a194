"""NSM-style point-to-point VxLAN links and the make-before-break switch.

A link end is a VxLAN device created in the *node* namespace, so its UDP socket lives on the
node's underlay, then moved into the *pod* namespace, where the pod sees it as ``nsm-1``. It has
no learning: a permanent neighbour entry names the peer's MAC and a unicast FDB entry says which
node carries that MAC. Moving a service makes a second end with the **same MAC and IP** on the
target node; switching is one FDB replace on every peer, so no packet meets a half-made path.

Both ends of one link share its VNI; on one node they would share one VxLAN socket and the
kernel could not tell them apart, so the planner never puts both ends of a link on one node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dataplane.errors import DataplaneError
from dataplane.mtu import vxlan_mtu
from dataplane.netlink import Netlink, check_ifname, namespace_exists

log = logging.getLogger(__name__)

VXLAN_PORT = 4789


@dataclass(frozen=True)
class LinkEnd:
    """Our side of a link: where it lives and the identity it carries."""

    pod_namespace: str
    node_namespace: str | None  # where the VxLAN socket lives; None: the caller's namespace
    node_ip: str  # the node's underlay address
    mac: str
    cidr: str  # link address with prefix, from 169.254.0.0/16


@dataclass(frozen=True)
class Peer:
    """The other side, as our end needs to know it."""

    mac: str
    ip: str
    node_ip: str


def _staging_name(vni: int) -> str:
    return check_ifname(f"vx{vni}")


def create_end(
    *, ifname: str, vni: int, end: LinkEnd, peer: Peer, underlay_mtu: int,
    port: int = VXLAN_PORT,
) -> int:
    """Create (or complete) one link end; returns the MTU it was given.

    Idempotent: a device that is already in the pod is re-asserted, not recreated, and a
    half-made device left in the node by an interrupted attempt is replaced.
    """
    check_ifname(ifname)
    mtu = vxlan_mtu(underlay_mtu)
    with Netlink(end.pod_namespace) as pod:
        if not pod.exists(ifname):
            staging = _staging_name(vni)
            with Netlink(end.node_namespace) as node:
                node.delete_link(staging)
                node.add_vxlan(staging, vni=vni, local=end.node_ip, port=port)
                node.move_to(staging, end.pod_namespace, new_name=ifname)
        pod.set_mac(ifname, end.mac)
        pod.set_mtu(ifname, mtu)
        pod.add_address(ifname, end.cidr)
        pod.set_up(ifname)
        pod.set_neighbour(ifname, ip=peer.ip, mac=peer.mac)
        pod.set_fdb(ifname, mac=peer.mac, dst=peer.node_ip)
    log.info("link end %s in %s: vni %s mac %s mtu %s -> peer %s at %s",
             ifname, end.pod_namespace, vni, end.mac, mtu, peer.mac, peer.node_ip)
    return mtu


def switch(*, pod_namespace: str, ifname: str, mac: str, node_ip: str,
           netlink: Netlink | None = None) -> None:
    """Point ``mac`` at ``node_ip`` on one peer's device: the whole cutover for that peer.

    ``netlink`` lets a caller that switches often keep its namespace handle open.
    """
    if netlink is not None:
        netlink.set_fdb(ifname, mac=mac, dst=node_ip)
        return
    with Netlink(pod_namespace) as nl:
        nl.set_fdb(ifname, mac=mac, dst=node_ip)


def current_node(*, pod_namespace: str, ifname: str, mac: str) -> str | None:
    """Which underlay address the peer's device sends ``mac`` to now (None: no entry)."""
    with Netlink(pod_namespace) as nl:
        for entry in nl.fdb(ifname):
            if entry.mac.lower() == mac.lower():
                return entry.dst
    return None


def delete_end(*, pod_namespace: str, ifname: str) -> None:
    """Remove a link end; absent namespace or device is not an error."""
    if not namespace_exists(pod_namespace):
        return
    try:
        with Netlink(pod_namespace) as nl:
            nl.delete_link(ifname)
    except DataplaneError:
        if namespace_exists(pod_namespace):
            raise
