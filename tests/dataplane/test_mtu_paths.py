"""MTU across an interdomain path: two clusters joined by a router, at 1,500 and 9,000 bytes.

Aspects: two clusters, each a node on its own underlay subnet, joined by a router namespace
(self-contained: the test's own prefix, addresses inside 198.19.128.0/17, no host route); a pod
on each node, linked by ``links.create_end`` across the router; the link MTU is what
``mtu.vxlan_mtu`` computes from the underlay (never hand-set) on both ends; a UDP datagram of
exactly link MTU minus the IP and UDP headers, sent with IP_PMTUDISC_DO (DF), arrives whole and
nothing is fragmented or reassembled anywhere on the path (router, nodes, pods); one byte more
fails locally with EMSGSIZE; a control shows that the fragment counters do see fragmentation
and that the computed MTU is the largest that crosses whole: an end hand-set one byte above it
has its full-size datagram split into two outer fragments by the sending node. The receiver
is bound before the send and stops at an end marker the sender sends last (no clock decides
when the exchange is over).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane import links, netlink
from dataplane.mtu import vxlan_mtu
from dataplane.netlink import Netlink

IP_UDP_HEADERS = 20 + 8
VNI = 4343
MAC_A, MAC_B = "02:4d:00:00:00:0a", "02:4d:00:00:00:0b"
IP_A, IP_B = "169.254.21.1", "169.254.21.2"
PORT = 7171
# Two underlay subnets, one per cluster, inside the range kept for this kind of test.
CLUSTERS = {"a": "198.19.210", "b": "198.19.211"}


def build_interdomain(prefix: str, underlay_mtu: int) -> dict[str, str]:
    """Router ``<p>-r`` with a node per cluster (``<p>-a``, ``<p>-b``); returns node ns -> IP."""
    router = f"{prefix}-r"
    netlink.create_namespace(router)
    netlink.set_sysctl(router, "net.ipv4.ip_forward", "1")
    nodes = {}
    with Netlink(router) as r:
        for cluster, net in CLUSTERS.items():
            node = f"{prefix}-{cluster}"
            netlink.create_namespace(node)
            r.add_veth(f"c{cluster}", peer="eth0", peer_namespace=node)
            r.set_mtu(f"c{cluster}", underlay_mtu)
            r.add_address(f"c{cluster}", f"{net}.1/24")
            r.set_up(f"c{cluster}")
            with Netlink(node) as n:
                n.set_mtu("eth0", underlay_mtu)
                n.add_address("eth0", f"{net}.11/24")
                n.set_up("eth0")
                n.set_route("default", gateway=f"{net}.1")
            nodes[node] = f"{net}.11"
    return nodes


def link_pods(prefix: str, nodes: dict[str, str], *, underlay_mtu: int) -> tuple[str, str, int]:
    """A pod on each node and one VxLAN link between them; returns (pod a, pod b, link MTU)."""
    (node_a, ip_a), (node_b, ip_b) = nodes.items()
    pod_a, pod_b = f"{prefix}-pa", f"{prefix}-pb"
    mtus = []
    for pod, node, node_ip, mac, ip, peer in (
        (pod_a, node_a, ip_a, MAC_A, IP_A, links.Peer(mac=MAC_B, ip=IP_B, node_ip=ip_b)),
        (pod_b, node_b, ip_b, MAC_B, IP_B, links.Peer(mac=MAC_A, ip=IP_A, node_ip=ip_a)),
    ):
        netlink.create_namespace(pod)
        mtus.append(links.create_end(
            ifname="nsm-1", vni=VNI, underlay_mtu=underlay_mtu, peer=peer,
            end=links.LinkEnd(pod_namespace=pod, node_namespace=node, node_ip=node_ip, mac=mac,
                              cidr=f"{ip}/30"),
        ))
    assert mtus[0] == mtus[1]
    return pod_a, pod_b, mtus[0]


# The sender ends with a marker datagram on the same path. The receiver stops once it has the
# marker and ``expected`` datagrams (in either order, so a reordering cannot cut the count
# short), or gives up at the deadline, which only a lost datagram lets run out.
RECEIVE = """
import json, socket, sys, time
END = b"end-of-exchange"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
open(sys.argv[3], "w").close()
expected, deadline = int(sys.argv[4]), time.monotonic() + float(sys.argv[5])
sizes, ended = [], False
while not (ended and len(sizes) >= expected):
    left = deadline - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(65535)
    except TimeoutError:
        break
    if data == END:
        ended = True
    else:
        sizes.append(len(data))
print(json.dumps({"sizes": sizes, "ended": ended}))
"""

# Linux <linux/in.h> values; Python 3.11's socket module does not export them.
SEND = """
import errno, json, socket, sys
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
target, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
s.connect((target, port))
result = {"path_mtu": s.getsockopt(socket.IPPROTO_IP, IP_MTU)}
for n in (size, size + 1):
    try:
        s.send(b"x" * n)
        result[str(n)] = "sent"
    except OSError as exc:
        result[str(n)] = exc.errno
s.send(b"end-of-exchange")
print(json.dumps(result))
"""


def snmp(ns: str) -> dict[str, int]:
    """The namespace's IP counters (/proc/net/snmp is per network namespace)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    names, values = (line.split()[1:] for line in out.splitlines() if line.startswith("Ip:"))
    return dict(zip(names, map(int, values), strict=True))


FRAG_COUNTERS = ("FragCreates", "FragOKs", "FragFails", "ReasmReqds")


def exchange(sender: str, receiver: str, *, size: int,
             tmp_path: Path) -> tuple[dict[str, object], list[int]]:
    """Send ``size`` and ``size + 1`` bytes with DF from ``sender``; report what ``receiver`` got.

    The receiver is bound before anything is sent (it says so with a file) and stops at the
    end marker once one datagram has arrived; nothing here waits on a clock.
    """
    ready = tmp_path / f"{receiver}.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(["ip", "netns", "exec", receiver, sys.executable, "-c", RECEIVE,
                             IP_B, str(PORT), str(ready), "1", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), "the receiver never bound"
        sent = subprocess.run(["ip", "netns", "exec", sender, sys.executable, "-c", SEND, IP_B,
                               str(PORT), str(size)],
                              capture_output=True, text=True, check=False, timeout=60)
        assert sent.returncode == 0, sent.stderr
    finally:
        if not ready.exists():
            proc.kill()
        out, err = proc.communicate(timeout=90)  # also closes the pipes on every path
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["ended"], f"the end marker never arrived (got {got['sizes']})"
    return json.loads(sent.stdout), got["sizes"]


@pytest.mark.parametrize("underlay_mtu", [1500, 9000])
def test_full_size_packets_cross_the_router_unfragmented(prefix: str, tmp_path: Path,
                                                         underlay_mtu: int) -> None:
    nodes = build_interdomain(prefix, underlay_mtu)
    pod_a, pod_b, mtu = link_pods(prefix, nodes, underlay_mtu=underlay_mtu)
    assert mtu == vxlan_mtu(underlay_mtu)
    for pod in (pod_a, pod_b):
        with Netlink(pod) as nl:
            assert nl.link("nsm-1").mtu == mtu

    path = [pod_a, *nodes, f"{prefix}-r", pod_b]
    before = {ns: snmp(ns) for ns in path}
    full = mtu - IP_UDP_HEADERS
    result, arrived = exchange(pod_a, pod_b, size=full, tmp_path=tmp_path)
    after = {ns: snmp(ns) for ns in path}

    assert result["path_mtu"] == mtu
    assert result[str(full)] == "sent"
    assert result[str(full + 1)] == errno.EMSGSIZE, "one byte more must fail locally"
    assert arrived == [full], "the full-size datagram arrives whole, and only it"
    for ns in path:
        for counter in FRAG_COUNTERS:
            assert after[ns][counter] == before[ns][counter], f"{counter} moved in {ns}"


def test_one_byte_over_the_computed_mtu_does_not_cross(prefix: str, tmp_path: Path) -> None:
    nodes = build_interdomain(prefix, 1500)
    pod_a, pod_b, mtu = link_pods(prefix, nodes, underlay_mtu=1500)
    (node_a, _), (node_b, _) = nodes.items()
    with Netlink(pod_a) as nl:
        nl.set_mtu("nsm-1", mtu + 1)  # the control: exactly the hand-setting the code forbids
    before = {ns: snmp(ns) for ns in (node_a, node_b)}
    size = mtu + 1 - IP_UDP_HEADERS
    result, arrived = exchange(pod_a, pod_b, size=size, tmp_path=tmp_path)
    after = {ns: snmp(ns) for ns in (node_a, node_b)}
    assert result[str(size)] == "sent", "locally it still fits"
    assert arrived == [size]
    # The VxLAN device sends its outer packets without DF, so the sending node splits the
    # 1,501-byte outer packet and the receiving node puts it back together.
    assert after[node_a]["FragCreates"] - before[node_a]["FragCreates"] == 2
    assert after[node_b]["ReasmOKs"] - before[node_b]["ReasmOKs"] == 1
