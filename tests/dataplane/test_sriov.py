"""SR-IOV VF paths, verified at the netlink-request level (no SR-IOV hardware exists here).

Aspects: the VF configuration is one RTM_NEWLINK whose IFLA_VFINFO_LIST carries VF index, MAC,
VLAN, QoS, spoof check and trust, checked twice, by pyroute2's decoder and by walking the raw
bytes against the kernel's uapi attribute numbers; the VF listing asks for RTEXT_FILTER_VF; a
kernel-shaped VF list parses back and the free-VF choice skips assigned and reserved VFs; bad
configurations are refused before anything is sent; the VF netdev is found through the sysfs
layout; the real calls against a veth (no VFs) send exactly the built bytes and come back as a
clean DataplaneError carrying the kernel's EOPNOTSUPP, leaving the PF and the pod untouched;
the netdev half (into the pod with the link identity, down and carrying nothing until
activated, idempotent, back to the node under its own name) runs for real with a veth end
standing in for a VF netdev.
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from dataplane import netlink, sriov
from dataplane.errors import DataplaneError, LinkNotFound
from dataplane.netlink import Netlink

# Kernel uapi numbers (include/uapi/linux/if_link.h), independent of pyroute2's tables.
IFLA_VFINFO_LIST, IFLA_EXT_MASK = 22, 29
IFLA_VF_INFO = 1
IFLA_VF_MAC, IFLA_VF_VLAN, IFLA_VF_SPOOFCHK, IFLA_VF_TRUST = 1, 2, 4, 9
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

POD_MAC, POD_IP = "02:5f:00:00:00:02", "169.254.77.2"
PEER_MAC, PEER_IP = "02:5f:00:00:00:01", "169.254.77.1"


def encoded(msg: Any) -> bytes:
    msg.encode()
    return bytes(msg.data)


def decoded(data: bytes) -> Any:
    msg = ifinfmsg(data)
    msg.decode()
    return msg


def nlas(data: bytes) -> list[tuple[int, bytes]]:
    """Walk a run of netlink attributes: (type, payload) pairs, padding skipped."""
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, offset)
        assert length >= 4, f"malformed attribute at {offset}"
        out.append((kind & NLA_TYPE_MASK, data[offset + 4: offset + length]))
        offset += (length + 3) & ~3
    return out


def raw_vf_info(data: bytes) -> dict[int, bytes]:
    """The IFLA_VF_* attributes of the single IFLA_VF_INFO in a VF config request, raw."""
    length, kind, flags = struct.unpack_from("IHH", data, 0)
    assert (length, kind, flags) == (len(data), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
    top = nlas(data[16 + 16:])  # nlmsghdr, then struct ifinfomsg
    assert [k for k, _ in top] == [IFLA_VFINFO_LIST]
    infos = nlas(top[0][1])
    assert [k for k, _ in infos] == [IFLA_VF_INFO]
    attrs = nlas(infos[0][1])
    assert [k for k, _ in attrs] == [IFLA_VF_MAC, IFLA_VF_VLAN, IFLA_VF_SPOOFCHK, IFLA_VF_TRUST]
    return dict(attrs)


# --- the requests, byte for byte ---------------------------------------------------------------


@pytest.mark.parametrize(("spoofchk", "trust"), [(True, False), (False, True)])
def test_config_request_carries_every_vf_attribute(spoofchk: bool, trust: bool) -> None:
    config = sriov.VfConfig(vf=3, mac="02:AA:bb:00:00:07", vlan=100, qos=5, spoofchk=spoofchk,
                            trust=trust)
    data = encoded(sriov.vf_config_request(7, config))

    msg = decoded(data)
    assert msg["header"]["type"] == RTM_NEWLINK
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert (msg["family"], msg["index"]) == (0, 7)
    assert [name for name, _ in msg["attrs"]] == ["IFLA_VFINFO_LIST"]
    infos = msg.get("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")
    assert len(infos) == 1
    info = infos[0]
    assert [name for name, _ in info["attrs"]] == [
        "IFLA_VF_MAC", "IFLA_VF_VLAN", "IFLA_VF_SPOOFCHK", "IFLA_VF_TRUST"]
    assert {info.get(n)["vf"] for n in ("IFLA_VF_MAC", "IFLA_VF_VLAN", "IFLA_VF_SPOOFCHK",
                                         "IFLA_VF_TRUST")} == {3}
    assert info.get("IFLA_VF_MAC")["mac"] == "02:aa:bb:00:00:07"
    assert (info.get("IFLA_VF_VLAN")["vlan"], info.get("IFLA_VF_VLAN")["qos"]) == (100, 5)
    assert info.get("IFLA_VF_SPOOFCHK")["spoofchk"] == int(spoofchk)
    assert info.get("IFLA_VF_TRUST")["trust"] == int(trust)

    raw = raw_vf_info(data)  # the same, against the kernel's own struct layouts
    vf, mac = struct.unpack_from("I32s", raw[IFLA_VF_MAC])
    assert (vf, mac) == (3, bytes.fromhex("02aabb000007") + bytes(26))
    assert struct.unpack("III", raw[IFLA_VF_VLAN]) == (3, 100, 5)
    assert struct.unpack("II", raw[IFLA_VF_SPOOFCHK]) == (3, int(spoofchk))
    assert struct.unpack("II", raw[IFLA_VF_TRUST]) == (3, int(trust))


def test_list_request_asks_the_kernel_for_vf_info() -> None:
    data = encoded(sriov.vf_list_request(12))
    msg = decoded(data)
    assert (msg["header"]["type"], msg["header"]["flags"]) == (RTM_GETLINK,
                                                               NLM_F_REQUEST | NLM_F_ACK)
    assert msg["index"] == 12
    top = nlas(data[32:])
    assert top == [(IFLA_EXT_MASK, struct.pack("I", sriov.RTEXT_FILTER_VF))]


def kernel_reply() -> Any:
    """An RTM_NEWLINK for a PF with three VFs, shaped as the kernel sends it."""
    def vf(n: int, mac: str, *, vlan: int = 0, qos: int = 0, spoofchk: int = 1,
           trust: int = 0) -> Any:
        return ("IFLA_VF_INFO", {"attrs": [
            ("IFLA_VF_MAC", {"vf": n, "mac": mac}),
            ("IFLA_VF_VLAN", {"vf": n, "vlan": vlan, "qos": qos}),
            ("IFLA_VF_SPOOFCHK", {"vf": n, "spoofchk": spoofchk}),
            ("IFLA_VF_LINK_STATE", {"vf": n, "link_state": 0}),
            ("IFLA_VF_TRUST", {"vf": n, "trust": trust}),
        ]})
    msg = ifinfmsg()
    msg["index"] = 4
    msg["header"]["type"] = RTM_NEWLINK
    msg["attrs"] = [
        ("IFLA_IFNAME", "enp3s0f0"),
        ("IFLA_NUM_VF", 3),
        ("IFLA_VFINFO_LIST", {"attrs": [
            vf(0, "00:00:00:00:00:00"),
            vf(1, "02:5f:00:00:00:09", vlan=100, qos=2),
            vf(2, "00:00:00:00:00:00", spoofchk=sriov.U32_UNSET, trust=sriov.U32_UNSET),
        ]}),
    ]
    return decoded(encoded(msg))


def test_vf_list_parses_and_the_free_vf_is_chosen() -> None:
    vfs = sriov.parse_vfs(kernel_reply())
    assert vfs == [
        sriov.VfInfo(vf=0, mac="00:00:00:00:00:00", vlan=0, qos=0, spoofchk=True, trust=False),
        sriov.VfInfo(vf=1, mac="02:5f:00:00:00:09", vlan=100, qos=2, spoofchk=True,
                     trust=False),
        sriov.VfInfo(vf=2, mac="00:00:00:00:00:00", vlan=0, qos=0, spoofchk=None, trust=None),
    ]
    assert sriov.choose_free_vf(vfs) == 0
    assert sriov.choose_free_vf(vfs, reserved={0}) == 2, "VF 1 has a MAC, VF 0 is reserved"
    with pytest.raises(DataplaneError) as full:
        sriov.choose_free_vf(vfs, reserved=[0, 2])
    assert (full.value.errno, full.value.retryable) == (errno.ENOSPC, False)
    with pytest.raises(DataplaneError) as none:
        sriov.choose_free_vf([])
    assert none.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("config", [
    sriov.VfConfig(vf=0, mac="02:5f:00:00:00"),
    sriov.VfConfig(vf=0, mac="03:5f:00:00:00:01"),  # multicast
    sriov.VfConfig(vf=0, mac="00:00:00:00:00:00"),
    sriov.VfConfig(vf=0, mac=POD_MAC, vlan=4096),
    sriov.VfConfig(vf=0, mac=POD_MAC, qos=8),
    sriov.VfConfig(vf=-1, mac=POD_MAC),
], ids=["short-mac", "multicast-mac", "zero-mac", "vlan-4096", "qos-8", "negative-vf"])
def test_bad_configurations_are_refused_before_sending(config: sriov.VfConfig) -> None:
    with pytest.raises(DataplaneError) as err:
        sriov.vf_config_request(1, config)
    assert err.value.errno == errno.EINVAL


def test_vf_netdev_is_found_through_the_sysfs_layout(tmp_path: Path) -> None:
    # The layout of a PF at 0000:03:00.0 with VF 0 (a netdev) and VF 1 (bound to vfio-pci).
    devices = tmp_path / "devices" / "pci0000:00"
    pf_dev, vf0_dev, vf1_dev = (devices / f"0000:03:{s}" for s in ("00.0", "02.0", "02.1"))
    (vf0_dev / "net" / "enp3s0f0v0").mkdir(parents=True)
    vf1_dev.mkdir(parents=True)
    pf_dev.mkdir(parents=True)
    (pf_dev / "virtfn0").symlink_to(vf0_dev)
    (pf_dev / "virtfn1").symlink_to(vf1_dev)
    net = tmp_path / "class" / "net"
    (net / "enp3s0f0").mkdir(parents=True)
    (net / "enp3s0f0" / "device").symlink_to(pf_dev)
    (net / "veth0").mkdir()  # a virtual interface: no device behind it

    assert sriov.vf_netdev("enp3s0f0", 0, sysfs=tmp_path) == "enp3s0f0v0"
    for vf in (1, 5):
        with pytest.raises(DataplaneError) as missing:
            sriov.vf_netdev("enp3s0f0", vf, sysfs=tmp_path)
        assert missing.value.errno == errno.ENODEV
    with pytest.raises(DataplaneError) as virtual:
        sriov.vf_netdev("veth0", 0, sysfs=tmp_path)
    assert virtual.value.errno == errno.EOPNOTSUPP
    with pytest.raises(LinkNotFound):
        sriov.vf_netdev("eth9", 0, sysfs=tmp_path)


# --- the real calls, against a veth ------------------------------------------------------------


def capture_sends(nl: sriov.SriovNetlink, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every buffer the adapter's netlink socket sends, then let it go to the kernel."""
    core = nl._ip.asyncore  # the adapter's own socket: what is captured is what goes out
    original: Callable[..., Any] = core.send
    sent: list[bytes] = []

    def send(data: bytes, *args: Any, **kwargs: Any) -> Any:
        sent.append(bytes(data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(core, "send", send)
    return sent


def same_request(sent: bytes, built: bytes) -> bool:
    """Equal but for the sequence number and port id, which the socket assigns when sending."""
    return sent[:8] == built[:8] and sent[16:] == built[16:]


def ns_python(ns: str, code: str, *args: str, timeout: float = 20) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


SYSFS_IN_NS = """
import json, sys
from dataplane import sriov
from dataplane.errors import DataplaneError
try:
    print(json.dumps({"netdev": sriov.vf_netdev(sys.argv[1], 0)}))
except DataplaneError as exc:
    print(json.dumps({"errno": exc.errno, "message": str(exc)}))
"""


def test_real_calls_on_a_veth_give_clean_errors(prefix: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    node, pod = f"{prefix}-node", f"{prefix}-pod"
    for ns in (node, pod):
        netlink.create_namespace(ns)
    with Netlink(node) as nl:
        nl.add_veth("pf0", peer="pf0p")
        before = nl.link("pf0")

    with sriov.SriovNetlink(node) as nl:
        sent = capture_sends(nl, monkeypatch)
        assert nl.vfs("pf0") == [], "a veth reports no VFs"
        assert same_request(sent[-1], encoded(sriov.vf_list_request(before.index)))

        config = sriov.VfConfig(vf=0, mac=POD_MAC, vlan=42, qos=1)
        with pytest.raises(DataplaneError) as err:
            nl.configure_vf("pf0", config)
        assert err.value.errno == errno.EOPNOTSUPP
        assert err.value.retryable is False
        assert "not an SR-IOV PF" in str(err.value)
        assert isinstance(err.value.__cause__, NetlinkError)
        assert err.value.__cause__.code == errno.EOPNOTSUPP
        changes = [m for m in sent if struct.unpack_from("H", m, 4)[0] == RTM_NEWLINK]
        assert len(changes) == 1, "the whole VF configuration is one RTM_NEWLINK"
        assert changes[0] == sent[-1]
        assert same_request(sent[-1], encoded(sriov.vf_config_request(before.index, config)))
        assert struct.unpack("III", raw_vf_info(sent[-1])[IFLA_VF_VLAN]) == (0, 42, 1)

        with pytest.raises(LinkNotFound) as gone:
            nl.vfs("nope0")
        assert gone.value.errno == errno.ENODEV

    end = sriov.SriovEnd(pod_namespace=pod, pf="pf0", pf_namespace=node, mac=POD_MAC,
                         cidr=f"{POD_IP}/30", vlan=42)
    peer = sriov.VfPeer(mac=PEER_MAC, ip=PEER_IP)
    with pytest.raises(DataplaneError) as no_vfs:  # chooses: the PF lists none
        sriov.prepare_end(ifname="nsm-1", end=end, peer=peer)
    assert no_vfs.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DataplaneError) as refused:  # a persisted VF index: the kernel refuses
        sriov.prepare_end(ifname="nsm-1", end=end, peer=peer, vf=0)
    assert refused.value.errno == errno.EOPNOTSUPP

    with Netlink(node) as nl:
        after = nl.link("pf0")
        assert (after.mac, after.mtu) == (before.mac, before.mtu), "the PF is unchanged"
    with Netlink(pod) as nl:
        assert [li.name for li in nl.links()] == ["lo"], "the pod was not touched"

    # sysfs as the node sees it (ip netns exec mounts the namespace's own /sys).
    seen = json.loads(ns_python(node, SYSFS_IN_NS, "pf0"))
    assert seen["errno"] == errno.EOPNOTSUPP, seen


# --- the netdev half, for real, with a veth end standing in for the VF netdev -----------------


RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7070))
open(sys.argv[2], "w").close()
s.settimeout(10)
data, _ = s.recvfrom(100)
print(data.decode())
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(sys.argv[2].encode(), (sys.argv[1], 7070))
"""


def test_netdev_moves_in_with_identity_down_until_activated(prefix: str,
                                                             tmp_path: Path) -> None:
    node, pod, peer_pod = f"{prefix}-node", f"{prefix}-pod", f"{prefix}-peer"
    for ns in (node, pod, peer_pod):
        netlink.create_namespace(ns)
    with Netlink(node) as nl:
        nl.add_veth("vfstand", peer="nsm-1", peer_namespace=peer_pod)
        nl.set_mac("vfstand", "02:5f:00:00:00:99")
        pf_mtu = nl.link("vfstand").mtu
    with Netlink(peer_pod) as nl:  # the peer holds a static neighbour, as in the VxLAN contract
        nl.set_mac("nsm-1", PEER_MAC)
        nl.add_address("nsm-1", f"{PEER_IP}/30")
        nl.set_up("nsm-1")
        nl.set_neighbour("nsm-1", ip=POD_IP, mac=POD_MAC)

    for _ in range(2):  # the second attach is a retried WIRE: no error, same result
        sriov.attach_netdev(netdev="vfstand", from_namespace=node, ifname="nsm-1",
                            pod_namespace=pod, mac=POD_MAC, cidr=f"{POD_IP}/30", mtu=pf_mtu,
                            peer=sriov.VfPeer(mac=PEER_MAC, ip=PEER_IP))
    with sriov.SriovNetlink(pod) as nl:
        info = nl.link("nsm-1")
        assert (info.mac, info.mtu, info.up) == (POD_MAC, pf_mtu, False)
        assert nl.addresses("nsm-1") == [f"{POD_IP}/30"]
        assert nl.alias("nsm-1") == "vfstand", "the netdev carries its own name for release"
    with Netlink(node) as nl:
        assert not nl.exists("vfstand")
    neigh = subprocess.run(["ip", "-n", pod, "neigh", "show", "dev", "nsm-1"],
                           capture_output=True, text=True, check=True).stdout
    assert PEER_IP in neigh and PEER_MAC in neigh and "PERMANENT" in neigh, neigh

    ready = tmp_path / "ready"
    receiver = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", RECEIVE,
                                 POD_IP, str(ready)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert receiver.poll() is None, "the receiver died before binding"
            assert time.monotonic() < deadline, "the receiver never bound"
            time.sleep(0.02)
        ns_python(peer_pod, SEND, POD_IP, "before")  # the end is prepared but down
        with Netlink(pod) as nl:
            assert nl.link("nsm-1").rx_packets == 0, "a prepared end carried traffic"
        sriov.activate(pod_namespace=pod, ifname="nsm-1")
        ns_python(peer_pod, SEND, POD_IP, "after")
        out, _ = receiver.communicate(timeout=15)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(5)
    assert out.strip() == "after"

    sriov.detach_netdev(pod_namespace=pod, ifname="nsm-1", to_namespace=node, netdev="vfstand")
    sriov.detach_netdev(pod_namespace=pod, ifname="nsm-1", to_namespace=node, netdev="vfstand")
    with Netlink(pod) as p, Netlink(node) as n:
        assert not p.exists("nsm-1")
        assert n.exists("vfstand")
