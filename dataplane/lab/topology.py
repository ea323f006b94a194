"""The lab topology: plan it from a small config, bring it up, report it, tear it down.

Layout (names for the default lab ``smlab``):

- ``smlab-wan``: the WAN router. One bridge per cluster (``br-core``) carries that cluster's
  underlay /24 with the router as gateway; ``up0`` joins the host.
- ``smlab-core-n1`` ...: nodes. ``eth0`` on the cluster underlay, default route to the router,
  and a bridge ``cni0`` as the node's pod network gateway.
- ``smlab-pod-<pod>``: pods, made by the node agents (see :mod:`dataplane.lab.pods`).
- ``smlab-h0`` on the host, the host end of the link to the router, with a route for the lab's
  underlay range. It lets processes inside the lab reach the control plane (Redis) on the host.

Teardown works from names alone (every namespace starting with ``<name>-``, the host link
``<name>-h0``) so it also cleans up after a crash that lost the run directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dataplane import netlink
from dataplane.errors import DataplaneError
from dataplane.netlink import Netlink

log = logging.getLogger(__name__)

RUN_ROOT = Path(os.environ.get("MOBILITY_RUN_ROOT", "/run/service-mobility"))
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
CLUSTER_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# Pod networks take the /24s from 128 + 16 * cluster + node (node 1..15): seven clusters keep
# them at or below the 239th /24, clear of the host link in the last one.
MAX_CLUSTERS = 7
MAX_NODES = 15


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: int = 2
    underlay_mtu: int = 1500
    labels: dict[str, str] = field(default_factory=dict)  # e.g. tier = "edge", for policies


@dataclass(frozen=True)
class LabConfig:
    name: str = "smlab"
    underlay: str = "198.18.0.0/16"
    clusters: tuple[ClusterConfig, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class NodePlan:
    cluster: str
    name: str
    namespace: str
    underlay_ip: str
    gateway: str
    pod_subnet: str
    pod_gateway: str
    mtu: int
    router_port: str

    @property
    def queue_id(self) -> str:
        return f"{self.cluster}.{self.name}"


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    subnet: str
    gateway: str
    mtu: int
    bridge: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LabPlan:
    name: str
    underlay: str
    host_ifname: str
    host_ip: str
    router_ip: str
    router_namespace: str
    clusters: tuple[ClusterPlan, ...]
    nodes: tuple[NodePlan, ...]

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    def pod_namespace(self, pod: str) -> str:
        return f"{self.name}-pod-{pod}"

    def node(self, cluster: str, name: str) -> NodePlan:
        for n in self.nodes:
            if (n.cluster, n.name) == (cluster, name):
                return n
        raise KeyError(f"lab {self.name} has no node {cluster}/{name}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabPlan:
        return cls(
            **{k: v for k, v in d.items() if k not in ("clusters", "nodes")},
            clusters=tuple(ClusterPlan(**c) for c in d["clusters"]),
            nodes=tuple(NodePlan(**n) for n in d["nodes"]),
        )


class LabConfigError(ValueError):
    """The lab config is not usable; the message says what to change."""


def load_config(path: str | Path | None = None, *, name: str | None = None,
                underlay: str | None = None) -> LabConfig:
    """The config at ``path`` (or the packaged default), with optional overrides."""
    if path is None:
        text = resources.files("dataplane.lab").joinpath("default.toml").read_text()
    else:
        text = Path(path).read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabConfigError(f"lab config {path or 'default'}: {exc}") from exc
    known = {"name", "nodes", "underlay_mtu", "labels"}
    for c in raw.get("clusters", []):
        unknown = sorted(set(c) - known)
        if unknown:
            raise LabConfigError(f"lab config {path or 'default'}: cluster keys {unknown} are "
                                 f"unknown; a cluster takes {sorted(known)}")
    unknown_top = sorted(set(raw) - {"name", "underlay", "clusters"})
    if unknown_top:
        raise LabConfigError(f"lab config {path or 'default'}: unknown keys {unknown_top}")
    try:
        clusters = tuple(ClusterConfig(**c) for c in raw.get("clusters", []))
    except TypeError as exc:
        raise LabConfigError(f"lab config {path or 'default'}: {exc}") from exc
    return LabConfig(name=name or raw.get("name", "smlab"),
                     underlay=underlay or raw.get("underlay", "198.18.0.0/16"), clusters=clusters)


def plan(config: LabConfig) -> LabPlan:
    """Addresses and names for every lab object; pure, so it can be checked without root."""
    if not NAME_RE.fullmatch(config.name):
        raise LabConfigError(f"lab name {config.name!r}: 2-10 lowercase letters or digits")
    try:
        net = ipaddress.IPv4Network(config.underlay)
    except ValueError as exc:
        raise LabConfigError(f"underlay {config.underlay!r}: {exc}") from exc
    if net.prefixlen != 16 or not net.subnet_of(LAB_RANGE):
        raise LabConfigError(f"underlay {config.underlay}: must be a /16 inside {LAB_RANGE}")
    if not 1 <= len(config.clusters) <= MAX_CLUSTERS:
        raise LabConfigError(f"a lab needs 1 to {MAX_CLUSTERS} clusters")
    if len({c.name for c in config.clusters}) != len(config.clusters):
        raise LabConfigError("cluster names must be unique")
    base = int(net.network_address)

    def addr(offset: int) -> str:
        return str(ipaddress.IPv4Address(base + offset))

    clusters, nodes = [], []
    for i, c in enumerate(config.clusters):
        if not CLUSTER_RE.fullmatch(c.name):
            raise LabConfigError(f"cluster name {c.name!r}: 1-8 lowercase letters or digits")
        if not 1 <= c.nodes <= MAX_NODES:
            raise LabConfigError(f"cluster {c.name}: 1 to {MAX_NODES} nodes")
        if not 1280 <= c.underlay_mtu <= 9000:
            raise LabConfigError(f"cluster {c.name}: underlay_mtu must be 1280..9000")
        subnet = (i + 1) * 256
        clusters.append(ClusterPlan(name=c.name, subnet=f"{addr(subnet)}/24",
                                    gateway=addr(subnet + 1), mtu=c.underlay_mtu,
                                    bridge=f"br-{c.name}", labels=dict(c.labels)))
        for j in range(1, c.nodes + 1):
            pods = (128 + i * 16 + j) * 256
            nodes.append(NodePlan(
                cluster=c.name, name=f"n{j}", namespace=f"{config.name}-{c.name}-n{j}",
                underlay_ip=addr(subnet + 10 + j), gateway=addr(subnet + 1),
                pod_subnet=f"{addr(pods)}/24", pod_gateway=addr(pods + 1), mtu=c.underlay_mtu,
                router_port=f"{c.name}-n{j}",
            ))
    return LabPlan(
        name=config.name, underlay=str(net), host_ifname=f"{config.name}-h0",
        host_ip=addr(65536 - 3), router_ip=addr(65536 - 2),
        router_namespace=f"{config.name}-wan", clusters=tuple(clusters), nodes=tuple(nodes),
    )


def save_plan(p: LabPlan) -> None:
    p.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = p.run_dir / "lab.json.tmp"
    tmp.write_text(json.dumps(p.to_dict(), indent=2))
    tmp.replace(p.run_dir / "lab.json")


def load_plan(name: str) -> LabPlan | None:
    path = RUN_ROOT / name / "lab.json"
    if not path.exists():
        return None
    return LabPlan.from_dict(json.loads(path.read_text()))


def up(p: LabPlan) -> LabPlan:
    """Build the lab; idempotent, so running it on a lab that is up changes nothing."""
    save_plan(p)
    netlink.create_namespace(p.router_namespace)
    netlink.set_sysctl(p.router_namespace, "net.ipv4.ip_forward", "1")
    with Netlink(p.router_namespace) as router, Netlink() as host:
        host.add_veth(p.host_ifname, peer="up0", peer_namespace=p.router_namespace)
        host.add_address(p.host_ifname, f"{p.host_ip}/30")
        host.set_up(p.host_ifname)
        router.add_address("up0", f"{p.router_ip}/30")
        router.set_up("up0")
        for c in p.clusters:
            router.add_bridge(c.bridge)
            router.set_mtu(c.bridge, c.mtu)
            router.add_address(c.bridge, f"{c.gateway}/24")
            router.set_up(c.bridge)
        for n in p.nodes:
            _node_up(p, n, router)
            router.set_route(n.pod_subnet, gateway=n.underlay_ip)
        host.set_route(p.underlay, gateway=p.router_ip, dev=p.host_ifname)
    log.info("lab %s is up: %d clusters, %d nodes", p.name, len(p.clusters), len(p.nodes))
    return p


def _node_up(p: LabPlan, n: NodePlan, router: Netlink) -> None:
    netlink.create_namespace(n.namespace)
    netlink.set_sysctl(n.namespace, "net.ipv4.ip_forward", "1")
    bridge = next(c.bridge for c in p.clusters if c.name == n.cluster)
    router.add_veth(n.router_port, peer="eth0", peer_namespace=n.namespace)
    router.set_mtu(n.router_port, n.mtu)
    router.set_master(n.router_port, bridge)
    router.set_up(n.router_port)
    with Netlink(n.namespace) as node:
        node.set_mtu("eth0", n.mtu)
        node.add_address("eth0", f"{n.underlay_ip}/24")
        node.set_up("eth0")
        node.set_route("default", gateway=n.gateway)
        node.add_bridge("cni0")
        node.add_address("cni0", f"{n.pod_gateway}/24")
        node.set_up("cni0")


@dataclass
class DownReport:
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)  # containers, mounts, cgroups removed


def down(name: str) -> DownReport:
    """Remove everything lab ``name`` made: its processes, namespaces, host link, run dir.

    Idempotent and name-based, so it also works after a crash. Processes are ended by PID:
    those recorded in the lab's pid files (checked against their start time, so a reused PID
    is never hit) and those living inside the lab's own namespaces.
    """
    if not NAME_RE.fullmatch(name):
        raise LabConfigError(f"lab name {name!r}: 2-10 lowercase letters or digits")
    report = DownReport()
    run_dir = RUN_ROOT / name
    # The containers first, through the lab's containerd while it runs; then, once every
    # recorded process (containerd among them) is gone, whatever a crash left: shims,
    # mounts, cgroups of this lab's containerd namespace.
    from dataplane import containers

    paths = containers.ContainerdPaths(run_dir)
    report.containers.extend(containers.cleanup(
        paths, name, daemon_pid=recorded_pid(run_dir, "containerd")))
    report.processes.extend(stop_recorded_processes(run_dir / "pids"))
    report.containers.extend(containers.cleanup(paths, name, daemon_pid=None))
    spaces = netlink.namespaces(f"{name}-")
    victims = {pid for ns in spaces for pid in netlink.namespace_pids(ns)}
    report.processes.extend(terminate(sorted(victims)))
    for ns in spaces:
        netlink.delete_namespace(ns)
        report.namespaces.append(ns)
    with Netlink() as host:
        if host.exists(f"{name}-h0"):
            host.delete_link(f"{name}-h0")
            report.links.append(f"{name}-h0")
    shutil.rmtree(run_dir, ignore_errors=True)
    return report


def terminate(pids: list[int], *, grace: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if is_running(pid)]
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def process_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return None


def record_process(run_dir: Path, role: str, pid: int) -> None:
    """Remember a process we started: its PID and start time, in ``pids/<role>.json``."""
    d = run_dir / "pids"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{role}.json").write_text(json.dumps({"pid": pid, "start": process_start_time(pid)}))


def recorded_pid(run_dir: Path, role: str) -> int | None:
    """The PID of a recorded process if that very process still runs."""
    path = run_dir / "pids" / f"{role}.json"
    try:
        rec = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = int(rec["pid"])
    if process_start_time(pid) == rec["start"] and is_running(pid):
        return pid
    return None


def stop_recorded_processes(pid_dir: Path) -> list[int]:
    """End the recorded processes, a supervisor first (it would restart the others)."""
    pids = []
    if pid_dir.is_dir():
        first = pid_dir / "supervisor.json"
        if first.exists():
            pid = recorded_pid(pid_dir.parent, "supervisor")
            first.unlink(missing_ok=True)
            if pid is not None:
                terminate([pid])
        for path in sorted(pid_dir.glob("*.json")):
            pid = recorded_pid(pid_dir.parent, path.stem)
            if pid is not None:
                pids.append(pid)
            path.unlink(missing_ok=True)
    return terminate(pids)


def status(name: str) -> dict[str, Any]:
    """What the kernel says about the lab now: clusters, nodes, pods with addresses and links."""
    p = load_plan(name)
    spaces = set(netlink.namespaces(f"{name}-"))
    result: dict[str, Any] = {"name": name, "up": p is not None and bool(spaces),
                              "clusters": [], "pods": [], "stray_namespaces": []}
    if p is None:
        result["stray_namespaces"] = sorted(spaces)
        return result
    result["underlay"] = p.underlay
    result["host_link"] = {"ifname": p.host_ifname, "ip": p.host_ip}
    for c in p.clusters:
        result["clusters"].append({
            "name": c.name, "subnet": c.subnet, "underlay_mtu": c.mtu,
            "nodes": [{"name": n.name, "namespace": n.namespace, "underlay_ip": n.underlay_ip,
                       "pod_subnet": n.pod_subnet, "up": n.namespace in spaces}
                      for n in p.nodes if n.cluster == c.name],
        })
    pod_prefix = f"{name}-pod-"
    for ns in sorted(s for s in spaces if s.startswith(pod_prefix)):
        entry: dict[str, Any] = {"pod": ns[len(pod_prefix):], "namespace": ns}
        meta = p.run_dir / "pods" / entry["pod"] / "meta.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            entry.update(cluster=m.get("cluster"), node=m.get("node"),
                         workload=m.get("workload"), pid=m.get("pid"))
        try:
            with Netlink(ns) as nl:
                entry["links"] = [
                    {"ifname": li.name, "kind": li.kind or "loopback", "mac": li.mac,
                     "mtu": li.mtu, "addresses": nl.addresses(li.name)}
                    for li in nl.links() if li.name != "lo"
                ]
        except DataplaneError as exc:
            entry["error"] = str(exc)
        result["pods"].append(entry)
    return result


def namespaces_left(name: str) -> list[str]:
    """The lab's namespaces still present (empty after a clean ``down``)."""
    return netlink.namespaces(f"{name}-")
