"""Typed adapter over pyroute2.

pyroute2 speaks in verb strings and loosely typed keyword arguments (``ipr.fdb('replace', ...)``),
and some of its defaults are wrong for us (an FDB ``replace`` needs ``self``/``permanent`` spelled
out, or the kernel answers EOPNOTSUPP). This module is the only place that calls it: the rest of the
code calls ``Netlink.set_fdb(...)`` and gets :class:`DataplaneError` with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.errors import DataplaneError, LinkNotFound, NamespaceNotFound

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFNAMSIZ = 15  # usable characters in an interface name
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


@dataclass(frozen=True)
class LinkInfo:
    """One interface as the kernel reports it."""

    name: str
    index: int
    kind: str
    mac: str
    mtu: int
    up: bool
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class FdbEntry:
    """A forwarding entry on a VxLAN device: frames for ``mac`` go to underlay ``dst``."""

    mac: str
    dst: str | None
    permanent: bool


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Turn pyroute2's errors into DataplaneError, keeping the errno and the cause."""
    try:
        yield
    except NetlinkError as exc:
        raise DataplaneError(f"{what} failed: {exc.args[-1]}", errno=exc.code) from exc
    except OSError as exc:
        raise DataplaneError(f"{what} failed: {exc}", errno=exc.errno) from exc


def check_ifname(name: str) -> str:
    """Refuse names the kernel would refuse (dev_valid_name), with a message that says why."""
    if (not name or len(name.encode()) > IFNAMSIZ or name in (".", "..")
            or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name)):
        raise DataplaneError(f"invalid interface name {name!r}: 1 to {IFNAMSIZ} bytes, no '/', "
                             "':' or white space, not '.' or '..'")
    return name


# --- namespaces -------------------------------------------------------------------------------


def namespace_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def _in_own_thread(work: Callable[[], T], *, name: str) -> T:
    """``work()`` in a thread of its own, which ends with it; its result, or what it raised.

    Why: setns(2) and unshare(2) move only the calling thread into a namespace, so a thread
    that ends afterwards is how this process works in a pod's namespace without leaving
    itself there. pyroute2 forks a child process for the same (its NetNS and netns.create),
    which cost 18-30 ms each in an agent's process, several times on a move's way to its
    cutover (the pod, its link ends, the peers' switches).
    """
    out: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return out[0]


def _enter(namespace: str) -> None:
    """Move the calling thread into ``namespace`` (see :func:`_in_own_thread`)."""
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _route_socket() -> int:
    """A NETLINK_ROUTE socket of the calling thread's namespace, as a descriptor (a socket
    keeps the namespace it was made in, whichever thread uses it later)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()


def _socket_in(namespace: str) -> int:
    def make() -> int:
        _enter(namespace)
        return _route_socket()

    return _in_own_thread(make, name=f"netns-{namespace}")


def create_namespace(name: str) -> None:
    """Create a named namespace with its loopback up; an existing one is kept (idempotent)."""
    if namespace_exists(name):
        return

    def make() -> int:
        # the thread gets a namespace of its own, which the bind mount keeps once it ends
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare: {os.strerror(err)}")
        netns.attach(name, "thread-self")  # /run/netns/<name> bound to /proc/thread-self/ns/net
        try:
            return _route_socket()
        except BaseException:
            netns.remove(name)
            raise

    with _mapped(f"create namespace {name}"):
        fd = _in_own_thread(make, name=f"netns-{name}")
    try:
        with Netlink(name, fileno=fd) as nl:
            nl.set_up("lo")
    except BaseException:
        # not left half made: a namespace that exists is taken as made, loopback and all
        delete_namespace(name)
        raise


def delete_namespace(name: str) -> None:
    """Remove a named namespace; an absent one is not an error."""
    if not namespace_exists(name):
        return
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENODEV):
            raise DataplaneError(f"delete namespace {name} failed: {exc}", errno=exc.errno) from exc


def namespaces(prefix: str) -> list[str]:
    """Names of the namespaces that start with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name``."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry))
    return pids


def set_sysctl(name: str | None, key: str, value: str) -> None:
    """Write a sysctl inside a namespace (pyroute2 has no sysctl; /proc/sys is per netns)."""
    path = "/proc/sys/" + key.replace(".", "/")
    cmd = ["sh", "-c", f"echo {value} > {path}"]
    if name is not None:
        cmd = ["ip", "netns", "exec", name, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DataplaneError(f"sysctl {key}={value} in {name or 'host'}: {proc.stderr.strip()}")


# --- the adapter ------------------------------------------------------------------------------


class Netlink:
    """Netlink operations inside one namespace (``None``: the caller's own).

    Every ``add_*``/``set_*`` is idempotent: an object that is already as asked is not an error,
    so a phase that is run twice after a worker crash does the same thing once.
    """

    def __init__(self, namespace: str | None = None, *, fileno: int | None = None) -> None:
        """``fileno``: a route socket already made in ``namespace`` (taken over)."""
        self.namespace = namespace
        self._ipr: Any = None
        self._fileno = fileno

    def __enter__(self) -> Netlink:
        self.open()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        if self._ipr is not None:
            return
        if self.namespace is None:
            self._ipr = IPRoute()
            return
        if self._fileno is None and not namespace_exists(self.namespace):
            raise NamespaceNotFound(f"network namespace {self.namespace} does not exist",
                                    errno=errno.ENOENT)
        with _mapped(f"open namespace {self.namespace}"):
            fd, self._fileno = self._fileno, None
            if fd is None:
                fd = _socket_in(self.namespace)
            try:
                self._ipr = IPRoute(fileno=fd)  # owns the descriptor from here on
            except BaseException:
                os.close(fd)
                raise

    def close(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    @property
    def _ip(self) -> Any:
        self.open()
        return self._ipr

    def _where(self) -> str:
        return self.namespace or "host"

    # --- lookup ---

    def index(self, ifname: str) -> int:
        with _mapped(f"look up {ifname} in {self._where()}"):
            found = self._ip.link_lookup(ifname=ifname)
        if not found:
            raise LinkNotFound(f"no interface {ifname} in {self._where()}", errno=errno.ENODEV)
        return int(found[0])

    def exists(self, ifname: str) -> bool:
        try:
            self.index(ifname)
        except LinkNotFound:
            return False
        return True

    def links(self) -> list[LinkInfo]:
        with _mapped(f"list links in {self._where()}"):
            msgs = list(self._ip.get_links())
        return [self._info(m) for m in msgs]

    def link(self, ifname: str) -> LinkInfo:
        idx = self.index(ifname)
        with _mapped(f"read {ifname}"):
            msg = self._ip.get_links(idx)[0]
        return self._info(msg)

    @staticmethod
    def _info(msg: Any) -> LinkInfo:
        linkinfo = msg.get("IFLA_LINKINFO")
        kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
        stats = msg.get("IFLA_STATS64") or {}
        return LinkInfo(
            name=str(msg.get("IFLA_IFNAME")),
            index=int(msg["index"]),
            kind=str(kind or ""),
            mac=str(msg.get("IFLA_ADDRESS") or ""),
            mtu=int(msg.get("IFLA_MTU") or 0),
            up=bool(msg["flags"] & 1),
            rx_packets=int(stats.get("rx_packets", 0)),
            tx_packets=int(stats.get("tx_packets", 0)),
        )

    def addresses(self, ifname: str | None = None) -> list[str]:
        """IPv4 addresses as CIDR strings, of one interface or of all."""
        kwargs: dict[str, Any] = {"family": 2}
        if ifname is not None:
            kwargs["index"] = self.index(ifname)
        with _mapped(f"list addresses in {self._where()}"):
            msgs = list(self._ip.get_addr(**kwargs))
        return [f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]

    # --- links ---

    def add_veth(self, ifname: str, *, peer: str, peer_namespace: str | None = None) -> None:
        """A veth pair; the peer end is put straight into ``peer_namespace`` when given."""
        check_ifname(ifname)
        check_ifname(peer)
        if self.exists(ifname):
            return
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_namespace is not None:
            peer_spec["net_ns_fd"] = peer_namespace
        with _mapped(f"add veth {ifname}<->{peer}"):
            self._ip.link("add", ifname=ifname, kind="veth", peer=peer_spec)

    def add_bridge(self, ifname: str) -> None:
        check_ifname(ifname)
        if self.exists(ifname):
            return
        with _mapped(f"add bridge {ifname}"):
            self._ip.link("add", ifname=ifname, kind="bridge")

    def add_vxlan(self, ifname: str, *, vni: int, local: str, port: int = 4789) -> None:
        """A VxLAN device with no learning: forwarding is only what ``set_fdb`` says."""
        check_ifname(ifname)
        if not 0 < vni < 2**24:
            raise DataplaneError(f"VNI {vni} outside 1..16777215")
        if self.exists(ifname):
            return
        with _mapped(f"add vxlan {ifname} vni {vni}"):
            self._ip.link(
                "add", ifname=ifname, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                vxlan_port=port, vxlan_learning=0,
            )

    def move_to(self, ifname: str, namespace: str, *, new_name: str | None = None) -> None:
        """Move an interface into another namespace, optionally renaming it on the way."""
        idx = self.index(ifname)
        kwargs: dict[str, Any] = {"index": idx, "net_ns_fd": namespace}
        if new_name is not None:
            kwargs["ifname"] = check_ifname(new_name)
        with _mapped(f"move {ifname} to {namespace}"):
            self._ip.link("set", **kwargs)

    def set_up(self, ifname: str) -> None:
        self._set(ifname, state="up")

    def set_mac(self, ifname: str, mac: str) -> None:
        self._set(ifname, address=mac)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        if not 68 <= mtu <= 65535:
            raise DataplaneError(f"MTU {mtu} outside 68..65535")
        self._set(ifname, mtu=mtu)

    def set_master(self, ifname: str, bridge: str) -> None:
        self._set(ifname, master=self.index(bridge))

    def _set(self, ifname: str, **attrs: Any) -> None:
        idx = self.index(ifname)
        with _mapped(f"set {attrs} on {ifname} in {self._where()}"):
            self._ip.link("set", index=idx, **attrs)

    def delete_link(self, ifname: str) -> None:
        """Remove an interface; an absent one is not an error (ENODEV is tolerated)."""
        try:
            idx = self.index(ifname)
        except LinkNotFound:
            return
        try:
            self._ip.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise DataplaneError(f"delete {ifname}: {exc.args[-1]}", errno=exc.code) from exc

    # --- addresses, routes, neighbours ---

    def add_address(self, ifname: str, cidr: str) -> None:
        address, _, plen = cidr.partition("/")
        idx = self.index(ifname)
        try:
            self._ip.addr("add", index=idx, address=address, prefixlen=int(plen or 32))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DataplaneError(f"add {cidr} to {ifname}: {exc.args[-1]}",
                                     errno=exc.code) from exc

    def set_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None) -> None:
        """Add or replace a route (``default`` or a CIDR)."""
        kwargs: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
        if gateway is not None:
            kwargs["gateway"] = gateway
        if dev is not None:
            kwargs["oif"] = self.index(dev)
        with _mapped(f"route {dst} in {self._where()}"):
            self._ip.route("replace", **kwargs)

    def set_neighbour(self, ifname: str, *, ip: str, mac: str) -> None:
        """A permanent ARP entry, so the endpoint is never looked up over the link."""
        idx = self.index(ifname)
        with _mapped(f"neighbour {ip} on {ifname}"):
            self._ip.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state=NUD_PERMANENT)

    def set_fdb(self, ifname: str, *, mac: str, dst: str) -> None:
        """Create or replace the unicast FDB entry ``mac -> dst`` in one RTM_NEWNEIGH.

        This is the make-before-break switch: one netlink message with NLM_F_REPLACE, so the
        kernel moves the entry between two consecutive packets. ``self permanent`` must be given
        explicitly; pyroute2 adds them for ``add`` but not for ``replace``.
        """
        idx = self.index(ifname)
        with _mapped(f"fdb {mac} -> {dst} on {ifname}"):
            self._ip.fdb("replace", ifindex=idx, lladdr=mac, dst=dst,
                         state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def has_neighbour(self, ifname: str, *, ip: str, mac: str) -> bool:
        """A permanent neighbour entry ``ip -> mac`` exists on the interface."""
        idx = self.index(ifname)
        with _mapped(f"read neighbours of {ifname}"):
            msgs = list(self._ip.get_neighbours(family=2, ifindex=idx))
        return any(m.get("NDA_DST") == ip and str(m.get("NDA_LLADDR", "")).lower() == mac.lower()
                   and m["state"] & NUD_PERMANENT for m in msgs)

    def delete_neighbour(self, ifname: str, *, ip: str) -> None:
        idx = self.index(ifname)
        with _mapped(f"delete neighbour {ip} on {ifname}"):
            self._ip.neigh("del", ifindex=idx, dst=ip)

    def delete_fdb(self, ifname: str, *, mac: str, dst: str) -> None:
        idx = self.index(ifname)
        with _mapped(f"delete fdb {mac} on {ifname}"):
            self._ip.fdb("del", ifindex=idx, lladdr=mac, dst=dst)

    def fdb(self, ifname: str) -> list[FdbEntry]:
        idx = self.index(ifname)
        with _mapped(f"read fdb of {ifname}"):
            msgs = list(self._ip.fdb("dump", ifindex=idx))
        return [
            FdbEntry(mac=str(m.get("NDA_LLADDR")), dst=m.get("NDA_DST"),
                     permanent=bool(m["state"] & NUD_PERMANENT))
            for m in msgs
            if m.get("NDA_LLADDR") and m.get("NDA_LLADDR") != "00:00:00:00:00:00"
        ]
