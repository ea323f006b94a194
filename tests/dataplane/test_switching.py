"""Make-before-break switching on real namespaces.

Aspects: a link end is created in the node and lands in the pod with the right identity and a
computed MTU; creation is idempotent; the FDB switch moves 20,000 requests at 5,000/s from one
service instance to another with none lost or duplicated; deleting ends leaves nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dataplane import links, netlink
from dataplane.netlink import Netlink

VNI = 4242
CLIENT_MAC, SERVICE_MAC = "02:aa:00:00:00:01", "02:aa:00:00:00:02"
CLIENT_IP, SERVICE_IP = "169.254.10.1", "169.254.10.2"


def build_underlay(prefix: str, nodes: int, mtu: int = 1500) -> dict[str, str]:
    """An L2 underlay namespace with ``nodes`` node namespaces; returns node ns -> IP."""
    underlay = f"{prefix}-ul"
    netlink.create_namespace(underlay)
    result = {}
    with Netlink(underlay) as ul:
        ul.add_bridge("br0")
        ul.set_up("br0")
        for i in range(1, nodes + 1):
            node = f"{prefix}-n{i}"
            netlink.create_namespace(node)
            ul.add_veth(f"u{i}", peer="eth0", peer_namespace=node)
            ul.set_master(f"u{i}", "br0")
            ul.set_mtu(f"u{i}", mtu)
            ul.set_up(f"u{i}")
            with Netlink(node) as nl:
                ip = f"198.19.200.{10 + i}"
                nl.set_mtu("eth0", mtu)
                nl.add_address("eth0", f"{ip}/24")
                nl.set_up("eth0")
            result[node] = ip
    return result


def make_end(prefix: str, pod: str, node: str, node_ip: str, *, mac: str, ip: str,
             peer: links.Peer) -> int:
    netlink.create_namespace(pod)
    return links.create_end(
        ifname="nsm-1", vni=VNI, underlay_mtu=1500, peer=peer,
        end=links.LinkEnd(pod_namespace=pod, node_namespace=node, node_ip=node_ip, mac=mac,
                          cidr=f"{ip}/30"),
    )


def start(ns: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", *args])


def wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_link_end_has_identity_and_computed_mtu(prefix: str) -> None:
    nodes = build_underlay(prefix, 2)
    (n1, ip1), (_n2, ip2) = nodes.items()
    peer = links.Peer(mac=SERVICE_MAC, ip=SERVICE_IP, node_ip=ip2)
    mtu = make_end(prefix, f"{prefix}-c", n1, ip1, mac=CLIENT_MAC, ip=CLIENT_IP, peer=peer)
    assert mtu == 1450
    # A second call is a no-op, not an error.
    make_end(prefix, f"{prefix}-c", n1, ip1, mac=CLIENT_MAC, ip=CLIENT_IP, peer=peer)
    with Netlink(f"{prefix}-c") as pod:
        info = pod.link("nsm-1")
        assert (info.kind, info.mac, info.mtu, info.up) == ("vxlan", CLIENT_MAC, 1450, True)
        assert pod.addresses("nsm-1") == [f"{CLIENT_IP}/30"]
        assert [(e.mac, e.dst) for e in pod.fdb("nsm-1")] == [(SERVICE_MAC, ip2)]
    with Netlink(n1) as node:
        assert not node.exists(f"vx{VNI}"), "the staging device must have left the node"
    links.delete_end(pod_namespace=f"{prefix}-c", ifname="nsm-1")
    links.delete_end(pod_namespace=f"{prefix}-c", ifname="nsm-1")
    with Netlink(f"{prefix}-c") as pod:
        assert not pod.exists("nsm-1")


def test_switch_loses_nothing_at_5000_per_second(prefix: str, tmp_path: Path) -> None:
    nodes = build_underlay(prefix, 3)
    (n1, ip1), (n2, ip2), (n3, ip3) = nodes.items()
    client, old, new = f"{prefix}-c", f"{prefix}-a", f"{prefix}-b"
    make_end(prefix, client, n1, ip1, mac=CLIENT_MAC, ip=CLIENT_IP,
             peer=links.Peer(mac=SERVICE_MAC, ip=SERVICE_IP, node_ip=ip2))
    to_client = links.Peer(mac=CLIENT_MAC, ip=CLIENT_IP, node_ip=ip1)
    for pod, node, ip in ((old, n2, ip2), (new, n3, ip3)):
        make_end(prefix, pod, node, ip, mac=SERVICE_MAC, ip=SERVICE_IP, peer=to_client)

    procs = []
    try:
        for pod in (old, new):
            ready = tmp_path / f"{pod}.ready"
            procs.append(start(pod, "dataplane.lab.workloads.echo", "--port", "7000",
                               "--ready-file", str(ready)))
            wait_file(ready)
        out = tmp_path / "probe.json"
        probe = start(client, "dataplane.lab.workloads.probe", "--target", f"{SERVICE_IP}:7000",
                      "--rate", "5000", "--count", "20000", "--out", str(out))
        procs.append(probe)
        time.sleep(2.0)
        with Netlink(old) as o:
            before_old = o.link("nsm-1").rx_packets
        links.switch(pod_namespace=client, ifname="nsm-1", mac=SERVICE_MAC, node_ip=ip3)
        assert links.current_node(pod_namespace=client, ifname="nsm-1", mac=SERVICE_MAC) == ip3
        time.sleep(0.2)  # what was in flight at the switch has landed by now
        with Netlink(old) as o:
            settled_old = o.link("nsm-1").rx_packets
        time.sleep(0.5)
        with Netlink(old) as o:
            after_old = o.link("nsm-1").rx_packets
        assert probe.wait(timeout=30) == 0
        result = json.loads(out.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(5)
    assert result["sent"] == 20000
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    with Netlink(old) as o, Netlink(new) as n:
        assert before_old > 1000, "the old instance served before the switch"
        assert after_old == settled_old, "traffic stayed on the old path after the switch"
        assert n.link("nsm-1").rx_packets > 5000, "the new instance served after the switch"
