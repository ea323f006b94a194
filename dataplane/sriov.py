"""SR-IOV VF paths: a virtual function of a NIC's physical function (PF) as a pod's link end.

An SR-IOV end is the hardware counterpart of a VxLAN end (:mod:`dataplane.links`): instead of a
VxLAN device made in the node and moved into the pod, a *VF netdev* of the node's PF is
configured from the PF and moved into the pod. The contract is the same make-before-break one:

1. :func:`prepare_end` chooses a free VF (or reuses the one the caller persisted), configures
   it from the PF in **one** ``RTM_NEWLINK`` request whose ``IFLA_VFINFO_LIST`` carries MAC,
   VLAN/QoS, spoof check and trust, finds the VF's netdev in sysfs
   (``/sys/class/net/<pf>/device/virtfn<N>/net/``), moves it into the pod namespace under the
   link's name and gives it the link's **identity**: the same MAC and IP the old end had, the
   MTU of the PF (computed from the underlay, never hand-set: a VLAN tag costs no IP MTU), a
   permanent neighbour entry for the peer. It is left administratively **down**: it carries no
   traffic yet.
2. :func:`activate` brings it up at CUTOVER. The VF's MAC is programmed in the NIC's embedded
   switch by step 1; an external switch learns it from the VF's first frame (at the latest its
   answer to the CUTOVER probe); peers keep their static neighbour entry because MAC and IP did
   not change. The caller then takes the old end down (RELEASE).
3. :func:`release_end` moves the VF netdev back to the PF's namespace under its own name and
   clears its MAC and VLAN (again one request), so :func:`choose_free_vf` sees it free again.

Where the code runs: sysfs shows the net devices of the namespace it was mounted in, so the
caller (the node agent) runs in the namespace that holds the PF and its VF netdevs, as on a
real node where both live in the host namespace. ``pf_namespace`` names that namespace for the
netlink calls; ``None`` means the caller's own.

**How this is verified.** No SR-IOV hardware exists on the machines this project is developed
and tested on (their kernel offers no SR-IOV devices at all). This module is therefore verified
*only at the netlink-request level* (``tests/dataplane/test_sriov.py``): the exact messages it
sends are built with pyroute2's ``ifinfmsg`` encoding, captured at the socket when the real call
runs, decoded back and asserted attribute by attribute (VF index, MAC, VLAN, QoS, spoof check,
trust); a kernel-shaped VF list is encoded and parsed back; and the real calls run against a
veth, which has no VFs, where the kernel answers EOPNOTSUPP and the caller gets a clean
:class:`DataplaneError` carrying that errno. The netdev half (move into the pod, identity,
down until activated, move back) runs for real with a veth end standing in for a VF netdev,
because those netlink operations do not depend on the device kind. What no test here can show:
that a given NIC driver accepts the request, and how fast a physical switch re-learns the MAC.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from dataplane.errors import DataplaneError, LinkNotFound
from dataplane.netlink import Netlink, _mapped, check_ifname  # _mapped: one error mapping

log = logging.getLogger(__name__)

AF_UNSPEC = 0
RTEXT_FILTER_VF = 1  # IFLA_EXT_MASK bit: without it the kernel leaves IFLA_VFINFO_LIST out
U32_UNSET = 0xFFFFFFFF  # the kernel reports spoofchk/trust as (u32)-1 when the driver has no say
ZERO_MAC = "00:00:00:00:00:00"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
SYSFS = "/sys"


@dataclass(frozen=True)
class VfConfig:
    """What the PF is told about one VF: the link identity and the VF's privileges.

    Spoof check on and trust off are the safe defaults for a pod: the VF may send only with the
    MAC it was given and may not turn on promiscuous mode or change its own MAC.
    """

    vf: int
    mac: str
    vlan: int = 0  # 0: untagged
    qos: int = 0
    spoofchk: bool = True
    trust: bool = False


@dataclass(frozen=True)
class VfInfo:
    """One VF as the PF reports it; ``spoofchk``/``trust`` are None when the driver has no say."""

    vf: int
    mac: str
    vlan: int
    qos: int
    spoofchk: bool | None
    trust: bool | None


@dataclass(frozen=True)
class SriovEnd:
    """Our side of an SR-IOV link: the PF it is cut from, the pod, and the link identity."""

    pod_namespace: str
    pf: str
    pf_namespace: str | None  # where the PF and its VF netdevs live; None: the caller's
    mac: str
    cidr: str  # link address with prefix, from 169.254.0.0/16
    vlan: int = 0
    qos: int = 0


@dataclass(frozen=True)
class VfPeer:
    """The other side of the link, as a static neighbour entry needs it."""

    mac: str
    ip: str


@dataclass(frozen=True)
class SriovPath:
    """What :func:`prepare_end` allocated; the caller persists it so a restart reuses it."""

    vf: int
    netdev: str  # the VF netdev's name in the PF's namespace (restored on release)
    mtu: int


# --- the requests, as pure functions so a test can decode exactly what is sent ---------------


def _check_mac(mac: str) -> str:
    value = mac.lower()
    if not _MAC_RE.fullmatch(value):
        raise DataplaneError(f"MAC {mac!r} is not xx:xx:xx:xx:xx:xx", errno=errno.EINVAL)
    return value


def _check_config(config: VfConfig, *, allow_zero_mac: bool = False) -> None:
    """Refuse what the kernel would refuse, before sending, with a message that says what."""
    if config.vf < 0:
        raise DataplaneError(f"VF index {config.vf} is negative", errno=errno.EINVAL)
    mac = _check_mac(config.mac)
    if mac == ZERO_MAC and not allow_zero_mac:
        raise DataplaneError("a link end needs a MAC; 00:00:00:00:00:00 means unassigned",
                             errno=errno.EINVAL)
    if int(mac[:2], 16) & 1:
        raise DataplaneError(f"MAC {mac} is multicast; a VF needs a unicast MAC",
                             errno=errno.EINVAL)
    if not 0 <= config.vlan <= 4095:
        raise DataplaneError(f"VLAN {config.vlan} outside 0..4095", errno=errno.EINVAL)
    if not 0 <= config.qos <= 7:
        raise DataplaneError(f"QoS {config.qos} outside 0..7 (802.1p priority)",
                             errno=errno.EINVAL)


def vf_config_request(pf_index: int, config: VfConfig, *, clearing: bool = False) -> Any:
    """The one RTM_NEWLINK that configures a VF: MAC, VLAN/QoS, spoof check and trust together.

    One request, so the VF never runs with the new MAC but the old VLAN: the kernel applies the
    nested IFLA_VF_INFO attributes in order and stops at the first the driver refuses.
    ``clearing`` allows the all-zero MAC, which is how :func:`release_end` frees a VF.
    """
    _check_config(config, allow_zero_mac=clearing)
    vf = config.vf
    msg = ifinfmsg()
    msg["family"] = AF_UNSPEC
    msg["index"] = pf_index
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["attrs"] = [("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": [
        ("IFLA_VF_MAC", {"vf": vf, "mac": config.mac.lower()}),
        ("IFLA_VF_VLAN", {"vf": vf, "vlan": config.vlan, "qos": config.qos}),
        ("IFLA_VF_SPOOFCHK", {"vf": vf, "spoofchk": int(config.spoofchk)}),
        ("IFLA_VF_TRUST", {"vf": vf, "trust": int(config.trust)}),
    ]})]})]
    return msg


def vf_list_request(pf_index: int) -> Any:
    """RTM_GETLINK for the PF with RTEXT_FILTER_VF, the only way the kernel lists its VFs."""
    msg = ifinfmsg()
    msg["family"] = AF_UNSPEC
    msg["index"] = pf_index
    msg["header"]["type"] = RTM_GETLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_VF)]
    return msg


def _flag(nla: Any, key: str) -> bool | None:
    if nla is None:
        return None
    value = int(nla[key])
    return None if value == U32_UNSET else bool(value)


def parse_vfs(msg: Any) -> list[VfInfo]:
    """The VFs in a PF's RTM_NEWLINK reply; a device without SR-IOV has none."""
    vflist = msg.get("IFLA_VFINFO_LIST")
    if vflist is None:
        return []
    result = []
    for info in vflist.get_attrs("IFLA_VF_INFO"):
        mac, vlan = info.get("IFLA_VF_MAC"), info.get("IFLA_VF_VLAN")
        if mac is None:
            continue  # every driver reports the MAC; without it there is no VF index either
        result.append(VfInfo(
            vf=int(mac["vf"]), mac=str(mac["mac"]).lower(),
            vlan=int(vlan["vlan"]) if vlan is not None else 0,
            qos=int(vlan["qos"]) if vlan is not None else 0,
            spoofchk=_flag(info.get("IFLA_VF_SPOOFCHK"), "spoofchk"),
            trust=_flag(info.get("IFLA_VF_TRUST"), "trust"),
        ))
    return sorted(result, key=lambda v: v.vf)


def choose_free_vf(vfs: list[VfInfo], *, reserved: Iterable[int] = ()) -> int:
    """The lowest VF with no MAC assigned that no one has reserved.

    A VF's MAC is all zeros until someone configures it, and :func:`release_end` zeroes it
    again, so "no MAC" is the kernel's own record of "free". ``reserved`` adds the VFs the
    registry has handed out (a VF being prepared may not have its MAC yet).
    """
    if not vfs:
        raise DataplaneError("the PF has no VFs: not an SR-IOV device, or sriov_numvfs is 0",
                             errno=errno.EOPNOTSUPP, retryable=False)
    taken = set(reserved)
    for info in vfs:
        if info.mac == ZERO_MAC and info.vf not in taken:
            return info.vf
    raise DataplaneError(f"all {len(vfs)} VFs of the PF are in use", errno=errno.ENOSPC,
                         retryable=False)


def vf_netdev(pf: str, vf: int, *, sysfs: str | os.PathLike[str] = SYSFS) -> str:
    """The name of VF ``vf``'s netdev, from ``<sysfs>/class/net/<pf>/device/virtfn<vf>/net/``.

    sysfs is the one place that ties a VF index to its netdev; netlink does not say. It shows
    only the netdevs of the namespace it was mounted in, so a VF already moved into a pod (or
    bound to vfio-pci, with no netdev at all) is reported as not found here.
    """
    pf_dir = Path(sysfs) / "class" / "net" / check_ifname(pf)
    if not pf_dir.exists():
        raise LinkNotFound(f"no interface {pf} in {pf_dir.parent}", errno=errno.ENODEV)
    device = pf_dir / "device"
    if not device.exists():
        raise DataplaneError(f"{pf} has no device behind it (a virtual interface), so no VFs",
                             errno=errno.EOPNOTSUPP, retryable=False)
    virtfn = device / f"virtfn{vf}"
    if not virtfn.exists():
        raise DataplaneError(f"{pf} has no VF {vf} ({virtfn} is missing)", errno=errno.ENODEV)
    try:
        names = sorted(os.listdir(virtfn / "net"))
    except FileNotFoundError:
        names = []
    if not names:
        raise DataplaneError(f"VF {vf} of {pf} has no netdev here: moved to a pod, or bound to "
                             "a userspace driver", errno=errno.ENODEV)
    return names[0]


# --- the adapter ------------------------------------------------------------------------------


class SriovNetlink(Netlink):
    """The typed adapter's SR-IOV verbs, in the namespace that holds the PF.

    pyroute2's ``link('set', vf=...)`` would build a similar request, but its request filter
    decides the attribute order, and the sync ``nlm_request`` of 0.9.7 fails (KeyError
    ``nlm_generator``) before sending; here the message is ours (:func:`vf_config_request`) and
    goes out through ``nlm_request_batch`` exactly as it was built.
    """

    def __enter__(self) -> SriovNetlink:
        self.open()
        return self

    def _request(self, msg: Any, what: str) -> list[Any]:
        with _mapped(what):
            return list(self._ip.nlm_request_batch([msg]))

    def vfs(self, pf: str) -> list[VfInfo]:
        """The PF's VFs as the kernel reports them; ``[]`` for a device without SR-IOV."""
        replies = self._request(vf_list_request(self.index(pf)), f"list VFs of {pf}")
        found: list[VfInfo] = []
        for reply in replies:
            if reply["header"]["type"] == RTM_NEWLINK:
                found.extend(parse_vfs(reply))
        return found

    def configure_vf(self, pf: str, config: VfConfig, *, clearing: bool = False) -> None:
        """Send :func:`vf_config_request` for ``pf``; the kernel's refusal keeps its errno."""
        msg = vf_config_request(self.index(pf), config, clearing=clearing)
        try:
            self._request(msg, f"configure VF {config.vf} of {pf} in {self._where()}")
        except DataplaneError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise DataplaneError(
                    f"configure VF {config.vf} of {pf} in {self._where()}: the driver has no "
                    "VF operations (not an SR-IOV PF)", errno=exc.errno, retryable=False,
                ) from exc.__cause__
            raise
        log.info("VF %s of %s: mac %s vlan %s qos %s spoofchk %s trust %s", config.vf, pf,
                 config.mac, config.vlan, config.qos, config.spoofchk, config.trust)

    def alias(self, ifname: str) -> str | None:
        """The interface's alias (IFLA_IFALIAS), where an attached VF keeps its own name."""
        idx = self.index(ifname)
        with _mapped(f"read alias of {ifname}"):
            msg = self._ip.get_links(idx)[0]
        value = msg.get("IFLA_IFALIAS")
        return str(value) if value else None

    def set_alias(self, ifname: str, alias: str) -> None:
        self._set(ifname, ifalias=alias)

    def move_into(self, ifname: str, namespace: str | None, *, new_name: str) -> None:
        """Move an interface to ``namespace`` (None: the caller's own), renaming it on the way."""
        kwargs: dict[str, Any] = {"index": self.index(ifname), "ifname": check_ifname(new_name)}
        if namespace is None:
            kwargs["net_ns_pid"] = os.getpid()
        else:
            kwargs["net_ns_fd"] = namespace
        with _mapped(f"move {ifname} from {self._where()} to {namespace or 'caller'}"):
            self._ip.link("set", **kwargs)


# --- the link end -----------------------------------------------------------------------------


def attach_netdev(
    *, netdev: str, from_namespace: str | None, ifname: str, pod_namespace: str, mac: str,
    cidr: str, mtu: int, peer: VfPeer,
) -> None:
    """Move ``netdev`` into the pod as ``ifname`` with the link identity, leaving it down.

    The netdev's own name goes into its alias before it moves, so a retried WIRE or a RELEASE
    after a restart can still name it back (the kernel keeps the alias across namespaces; an
    alias the operator set on a VF is overwritten). Idempotent: if the pod already has
    ``ifname`` (a retried WIRE) only the identity is re-asserted. The MAC is written only when
    it differs, because some VF drivers refuse a MAC change from the VF side once the PF has
    set one, even to the same value.
    """
    check_ifname(ifname)
    with Netlink(pod_namespace) as pod:
        if not pod.exists(ifname):
            with SriovNetlink(from_namespace) as node:
                node.set_alias(netdev, netdev)
                node.move_into(netdev, pod_namespace, new_name=ifname)
        if pod.link(ifname).mac.lower() != mac.lower():
            pod.set_mac(ifname, mac)
        pod.set_mtu(ifname, mtu)
        pod.add_address(ifname, cidr)
        pod.set_neighbour(ifname, ip=peer.ip, mac=peer.mac)


def prepare_end(
    *, ifname: str, end: SriovEnd, peer: VfPeer, vf: int | None = None,
    reserved: Iterable[int] = (), sysfs: str | os.PathLike[str] = SYSFS,
) -> SriovPath:
    """WIRE for an SR-IOV end: choose (or reuse) a VF, configure it, put it in the pod, down.

    ``vf`` is the index the registry persisted for this end, so a restarted WIRE reuses it; it
    is required once the pod holds ``ifname``, since a VF in a pod is no longer listed as free.
    Nothing is sent to the pod before the PF accepted the configuration: a PF that refuses
    (EOPNOTSUPP on a device without SR-IOV) leaves the pod untouched.
    """
    check_ifname(ifname)
    with SriovNetlink(end.pf_namespace) as node:
        mtu = node.link(end.pf).mtu
        with SriovNetlink(end.pod_namespace) as pod:
            in_pod = pod.exists(ifname)
            own_name = pod.alias(ifname) if in_pod else None
        if in_pod and vf is None:
            raise DataplaneError(f"{end.pod_namespace} already has {ifname}: pass the VF index "
                                 "persisted for it", errno=errno.EINVAL, retryable=False)
        if vf is None:
            vf = choose_free_vf(node.vfs(end.pf), reserved=reserved)
        node.configure_vf(end.pf, VfConfig(vf=vf, mac=end.mac, vlan=end.vlan, qos=end.qos))
        netdev = (own_name or ifname) if in_pod else vf_netdev(end.pf, vf, sysfs=sysfs)
    attach_netdev(netdev=netdev, from_namespace=end.pf_namespace, ifname=ifname,
                  pod_namespace=end.pod_namespace, mac=end.mac, cidr=end.cidr, mtu=mtu,
                  peer=peer)
    log.info("SR-IOV end %s in %s: VF %s of %s (%s), mac %s vlan %s mtu %s, down until cutover",
             ifname, end.pod_namespace, vf, end.pf, netdev, end.mac, end.vlan, mtu)
    return SriovPath(vf=vf, netdev=netdev, mtu=mtu)


def activate(*, pod_namespace: str, ifname: str) -> None:
    """CUTOVER for an SR-IOV end: bring the prepared VF up so it starts carrying traffic."""
    with Netlink(pod_namespace) as pod:
        pod.set_up(ifname)


def detach_netdev(*, pod_namespace: str, ifname: str, to_namespace: str | None,
                  netdev: str) -> None:
    """Move the pod's ``ifname`` back to ``to_namespace`` as ``netdev``; absent is not an error.

    A VF netdev cannot be deleted, only moved: a pod namespace deleted with a VF inside would
    hand it back to the host's initial namespace, not to the node, so release moves it first.
    """
    with SriovNetlink(pod_namespace) as pod:
        if pod.exists(ifname):
            pod.move_into(ifname, to_namespace, new_name=netdev)


def release_end(*, end: SriovEnd, ifname: str, path: SriovPath) -> None:
    """RELEASE for an SR-IOV end: the VF goes back to the PF's namespace and is zeroed (free)."""
    detach_netdev(pod_namespace=end.pod_namespace, ifname=ifname, to_namespace=end.pf_namespace,
                  netdev=path.netdev)
    with SriovNetlink(end.pf_namespace) as node:
        node.configure_vf(end.pf, VfConfig(vf=path.vf, mac=ZERO_MAC, spoofchk=True),
                          clearing=True)

