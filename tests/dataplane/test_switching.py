"""Make-before-break switching on real namespaces.

Aspects: a link end is created in the node and lands in the pod with the right identity and a
computed MTU; creation is idempotent; the FDB switch moves requests at 5,000/s from one service
instance to another with none lost or duplicated: each request up to the switch reaches the old
instance, each one after it the new one and never the old one again (the instances record the
sequence numbers they answer; the test waits on packet counters, never on a clock); deleting
ends leaves nothing behind.
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


def wait_rx(pod: str, *, at_least: int, what: str, timeout: float = 60.0) -> None:
    """Wait until the pod's link end has received ``at_least`` packets."""
    deadline = time.monotonic() + timeout
    while True:
        with Netlink(pod) as nl:
            rx = nl.link("nsm-1").rx_packets
        if rx >= at_least:
            return
        assert time.monotonic() < deadline, f"{what}: {rx} packets after {timeout}s"
        time.sleep(0.01)


# An echo instance that also records the sequence number of every request it answers (the
# probe's packets open with it), written when it is told to stop: which instance served which
# request, so the test reads the switch point from the traffic itself, not from a clock.
RECORDING_ECHO = """
import json, os, signal, socket, struct, sys
port, ready, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("0.0.0.0", port))
served = []
def stop(*_):
    with open(out + ".tmp", "w") as fh:
        json.dump(served, fh)
    os.replace(out + ".tmp", out)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(ready, "w").close()
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
    if len(data) >= 8:
        served.append(struct.unpack_from("!Q", data)[0])
"""


def test_switch_loses_nothing_at_5000_per_second(prefix: str, tmp_path: Path) -> None:
    nodes = build_underlay(prefix, 3)
    (n1, ip1), (n2, ip2), (n3, ip3) = nodes.items()
    client, old, new = f"{prefix}-c", f"{prefix}-a", f"{prefix}-b"
    make_end(prefix, client, n1, ip1, mac=CLIENT_MAC, ip=CLIENT_IP,
             peer=links.Peer(mac=SERVICE_MAC, ip=SERVICE_IP, node_ip=ip2))
    to_client = links.Peer(mac=CLIENT_MAC, ip=CLIENT_IP, node_ip=ip1)
    for pod, node, ip in ((old, n2, ip2), (new, n3, ip3)):
        make_end(prefix, pod, node, ip, mac=SERVICE_MAC, ip=SERVICE_IP, peer=to_client)

    procs: list[subprocess.Popen[bytes]] = []
    echoes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for pod in (old, new):
            ready = tmp_path / f"{pod}.ready"
            echoes[pod] = subprocess.Popen(
                ["ip", "netns", "exec", pod, sys.executable, "-c", RECORDING_ECHO, "7000",
                 str(ready), str(tmp_path / f"{pod}.served")])
            procs.append(echoes[pod])
            wait_file(ready, timeout=60)
        out = tmp_path / "probe.json"
        # No --count: the probe runs until told to stop, once the new instance has served.
        probe = start(client, "dataplane.lab.workloads.probe", "--target", f"{SERVICE_IP}:7000",
                      "--rate", "5000", "--grace", "30", "--out", str(out))
        procs.append(probe)
        wait_rx(old, at_least=2000, what="the old instance serves before the switch")
        links.switch(pod_namespace=client, ifname="nsm-1", mac=SERVICE_MAC, node_ip=ip3)
        assert links.current_node(pod_namespace=client, ifname="nsm-1", mac=SERVICE_MAC) == ip3
        wait_rx(new, at_least=5000, what="the new instance serves after the switch")
        probe.terminate()
        assert probe.wait(timeout=60) == 0
        result = json.loads(out.read_text())
        served = {}
        for pod, echo in echoes.items():
            echo.terminate()
            assert echo.wait(timeout=30) == 0
            served[pod] = sorted(json.loads((tmp_path / f"{pod}.served").read_text()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(5)
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["received"] == result["sent"], result
    # Every request reached exactly one instance: the old one each request up to the switch,
    # the new one each request after it, and never the old one again.
    cut = len(served[old])
    assert cut >= 1000, "the old instance served before the switch"
    assert served[old] == list(range(cut)), "the old instance served exactly the first requests"
    assert served[new] == list(range(cut, result["sent"])), (
        "the new instance served exactly every request after the switch")
    assert len(served[new]) >= 1000, "the new instance served after the switch"
