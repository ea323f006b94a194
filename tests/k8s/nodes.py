"""Real Kubernetes nodes for the test control plane: a kubelet on its own containerd.

Each node is a network namespace of its own (``<prefix>-<node>``) on an underlay bridge of the
control plane's (``<prefix>ul``, 198.19.240.0/24, the host at .1): ``eth0`` carries the node's
underlay address, and the pods sit on the node's CNI bridge (``kcni0``, 198.19.24x.0/24 from
CNI's ``host-local``), routed from the underlay, so a pod answers from the host and from the
other nodes. The kubelet and its containerd run in that namespace (the kubelet refuses a
loopback node address, and CNI makes the pods' veths in the namespace its runtime runs in);
they reach their cluster's API server, which listens on the host's loopback, through a
forwarder on the bridge's host address.

What this kind of machine needs, found by trying (see docs/kubernetes.md):

- cgroup v1 only: ``failCgroupV1: false``, ``cgroupDriver: cgroupfs``, and the kubelet's
  ``cgroupRoot`` made beforehand in every v1 hierarchy (cpuset's with its parent's cpus and
  mems, which a new cpuset cgroup lacks);
- no negative ``oom_score_adj``: ``restrict_oom_score_adj`` in containerd's CRI section and
  ``oomScoreAdj: 0`` for the kubelet;
- no registry: the pause image is built here from the reference base image (its entry point
  sleeps), and every image is imported into the node's containerd (``k8s.io`` namespace) under
  the name the CRI looks up (``docker.io/<name>``); pods use ``imagePullPolicy: Never``;
- no iptables: ``makeIPTablesUtilChains: false``, CNI without masquerading.

Everything a node makes carries the prefix: its namespace, its host link, its run directory
(containerd's root and state, the pods' network namespaces through
``netns_mounts_under_state_dir``), its cgroups. Teardown deletes the pods through the API
first (so the kubelet tears their sandboxes down through CNI), then stops the processes it
started, by PID, then removes whatever a crash left, and checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dataplane import containers
from dataplane.images import build_archive
from dataplane.lab import images as lab_images
from dataplane.lab.pods import cri_image_name
from tests.conftest import TEST_UNDERLAY

if TYPE_CHECKING:
    from tests.k8s.controlplane import ApiServer, ControlPlane

# Inside the test lab's /16 (MOBILITY_TEST_UNDERLAY, 198.19.0.0/16 by default), above what a
# lab plans (its pods stay below .240): two test runs on one machine pick two /16s, so their
# real nodes never share an address either.
_NET = ipaddress.IPv4Network(TEST_UNDERLAY)
_BASE = ".".join(str(_NET.network_address).split(".")[:2])
UNDERLAY = ipaddress.IPv4Network(f"{_BASE}.240.0/24")
HOST_IP = str(UNDERLAY.network_address + 1)
POD_NETS = _BASE + ".{}.0/24"  # .241, .242, ...: one per node
CRI_NAMESPACE = "k8s.io"
CNI_BRIDGE = "kcni0"
RUN_ROOT = Path("/run/service-mobility")


class NodeError(RuntimeError):
    """A real node could not start; the tests fail on it, never skip."""


def cni_dir(cache: Path) -> Path:
    return cache / "cni"


def pause_image(cache: Path) -> tuple[str, Path]:
    """The sandbox image (name, archive): the reference base image with ``sleep infinity`` as
    its entry point, built once per reference tag (no registry serves ``registry.k8s.io/pause``
    here)."""
    tag = lab_images.reference_tag()
    name = f"mobility/pause:{tag}"
    out = cache / "images" / f"pause-{tag}.tar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        base = lab_images.images_dir() / lab_images.archive_name(lab_images.BASE_IMAGE)
        if not base.exists():
            lab_images.build_reference()
        build_archive(out, name=name, layers=[], base=base,
                      entrypoint=["sleep", "infinity"], cmd=[])
    return name, out


class Forwarder:
    """TCP from ``listen`` (the underlay bridge's host address) to ``target`` on loopback:
    how a kubelet in its node namespace reaches an API server bound to the host's 127.0.0.1
    (the server's certificate names the bridge address too)."""

    def __init__(self, listen_ip: str, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.create_server((listen_ip, 0))
        self.port = int(self.sock.getsockname()[1])
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True,
                                       name=f"fwd-{self.port}")
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.close()
            self.conns.clear()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _v1_hierarchies() -> list[Path]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup"]:
            out.append(Path(left.split()[4]))
    return out


@dataclass
class RealNode:
    """One kubelet node of a member cluster (see the module's docstring)."""

    cp: ControlPlane
    cluster: str
    name: str
    index: int  # 1, 2, ...: the node's addresses
    prefix: str
    procs: dict[str, int] = field(default_factory=dict)
    started_s: float = 0.0

    @property
    def namespace(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def host_ifname(self) -> str:
        return f"{self.prefix}{self.name}"[:15]

    @property
    def underlay_ip(self) -> str:
        return str(UNDERLAY.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        return POD_NETS.format(240 + self.index)

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.namespace

    @property
    def paths(self) -> containers.ContainerdPaths:
        return containers.ContainerdPaths(self.run_dir)

    @property
    def cgroup_root(self) -> str:
        return f"/{self.namespace}"

    @property
    def workdir(self) -> Path:
        return self.cp.workdir / "nodes" / self.name

    def runtime(self) -> containers.Containerd:
        return self.paths.client(CRI_NAMESPACE, timeout=60)

    # --- start ---

    def start(self, *, images: list[Path], forwarder_port: int) -> None:
        t0 = time.monotonic()
        self._network()
        self._cgroups()
        self._containerd()
        self._images(images)
        self._kubelet(forwarder_port)
        self.started_s = round(time.monotonic() - t0, 1)

    def _network(self) -> None:
        ns = self.namespace
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self.host_ifname, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("link", "set", self.host_ifname, "master", self.cp.underlay_bridge, "up")
        _ip("-n", ns, "addr", "add", f"{self.underlay_ip}/{UNDERLAY.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", HOST_IP)
        # each node reaches the other nodes' pods through that node's underlay address
        for other in self.cp.real_nodes.values():
            if other is not self:
                _ip("-n", ns, "route", "replace", other.pod_cidr, "via", other.underlay_ip)
                _ip("-n", other.namespace, "route", "replace", self.pod_cidr, "via",
                    self.underlay_ip, check=False)
        _ip("route", "replace", self.pod_cidr, "via", self.underlay_ip)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True, capture_output=True)
        conf = self.workdir / "cni" / "net.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "10-mobility.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": f"{self.prefix}-pods",
            "plugins": [{
                "type": "bridge", "bridge": CNI_BRIDGE, "isGateway": True, "ipMasq": False,
                "hairpinMode": False,
                "ipam": {"type": "host-local", "dataDir": str(self.workdir / "cni" / "ipam"),
                         "ranges": [[{"subnet": self.pod_cidr, "gateway": self.pod_gateway}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }))

    def _cgroups(self) -> None:
        for h in _v1_hierarchies():
            d = h / self.cgroup_root.lstrip("/")
            d.mkdir(exist_ok=True)
            if (h / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((h / f).read_text())

    def _containerd(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.paths.write_config(containers.CriConfig(
            sandbox_image=f"docker.io/{self.cp.pause_name}",
            cni_bin_dir=self.cp.cni_bin, cni_conf_dir=self.workdir / "cni" / "net.d"))
        proc = self.cp._spawn(f"containerd-{self.name}", [
            "nsenter", f"--net=/run/netns/{self.namespace}", "containerd", "--config",
            str(conf)])
        self.procs["containerd"] = proc.pid
        try:
            self.runtime().wait_up(30)
        except Exception as e:
            raise NodeError(f"{self.name}: containerd did not start: {e}\n"
                            f"{self.cp.log('containerd-' + self.name)}") from e

    def _images(self, archives: list[Path]) -> None:
        self.import_images(archives)

    def import_images(self, archives: list[Path]) -> list[str]:
        """Import image archives into the node's runtime, under the names the CRI resolves
        a pod's image to (``mobility/echo:T`` -> ``docker.io/mobility/echo:T``)."""
        rt, out = self.runtime(), []
        for archive in archives:
            for name in rt.import_archive(archive, timeout=300):
                rt._ctr("images", "tag", "--force", name, cri_image_name(name))
                out.append(name)
        return out

    def _kubelet(self, forwarder_port: int) -> None:
        server: ApiServer = self.cp.servers[self.cluster]
        d = self.workdir
        from mobility.backends.kube.client import write_kubeconfig

        write_kubeconfig(d / "kubeconfig", clusters={self.cluster: (
            f"https://{HOST_IP}:{forwarder_port}", server.token, server.ca.read_bytes())})
        sock = f"unix://{self.paths.address}"
        (d / "kubelet.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "enableServer": False, "readOnlyPort": 0, "healthzPort": 0,
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "cgroupsPerQOS": True,
            "failCgroupV1": False, "failSwapOn": False, "oomScoreAdj": 0,
            "containerRuntimeEndpoint": sock, "imageServiceEndpoint": sock,
            "authentication": {"anonymous": {"enabled": False},
                               "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "resolvConf": "", "makeIPTablesUtilChains": False,
            "localStorageCapacityIsolation": False,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "0%",
                             "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "imageMinimumGCAge": "87600h", "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "2s", "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s", "fileCheckFrequency": "20s", "maxPods": 30,
            "shutdownGracePeriod": "0s", "rotateCertificates": False,
            "registerNode": True, "podPidsLimit": -1, "containerLogMaxSize": "1Mi",
        }))
        proc = self.cp._spawn(f"kubelet-{self.name}", [
            "nsenter", f"--net=/run/netns/{self.namespace}", str(self.cp.bin["kubelet"]),
            f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={d / 'kubeconfig'}",
            f"--root-dir={self.run_dir / 'kubelet'}", f"--hostname-override={self.name}",
            f"--node-ip={self.underlay_ip}", f"--node-labels=mobility.io/real-node=true,"
            f"mobility.io/underlay-ip={self.underlay_ip}", "-v=1",
        ])
        self.procs["kubelet"] = proc.pid

    def wait_ready(self, timeout: float = 90) -> None:
        server = self.cp.servers[self.cluster]
        deadline = time.monotonic() + timeout
        while True:
            node = server.get(f"/api/v1/nodes/{self.name}") or {}
            conds = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
            if conds.get("Ready", {}).get("status") == "True":
                return
            alive = self.cp.alive()
            if not alive.get(f"kubelet-{self.name}", False) or time.monotonic() > deadline:
                raise NodeError(f"{self.name} not Ready ({conds.get('Ready')}):\n"
                                f"{self.cp.log('kubelet-' + self.name, 30)}")
            time.sleep(0.2)

    # --- stop ---

    def pod_sandboxes(self) -> list[str]:
        """The CRI's pod sandboxes on this node (containerd containers of the ``k8s.io``
        namespace labelled as sandboxes)."""
        try:
            out = self.runtime()._ctr("containers", "list", "labels.io.cri-containerd.kind"
                                      "==sandbox", "-q").stdout
        except Exception:
            return []
        return [line.strip() for line in out.splitlines() if line.strip()]

    def stop(self) -> list[str]:
        """Stop this node's kubelet and containerd (by PID) and remove everything it made.
        Returns what was left and had to be removed by force (shims, mounts, cgroups)."""
        forced: list[str] = []
        for role in ("kubelet", "containerd"):
            pid = self.procs.pop(role, None)
            if pid is None:
                continue
            if role == "containerd":
                forced += containers.cleanup(self.paths, CRI_NAMESPACE, daemon_pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            self.cp.reap(pid, timeout=10)
        # the pods' processes, if the kubelet and containerd left any, and their cgroups
        for h in _v1_hierarchies():
            root = h / self.cgroup_root.lstrip("/")
            if not root.is_dir():
                continue
            for d in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    forced += self._empty_cgroup(d)
                    with contextlib.suppress(OSError):
                        d.rmdir()
            forced += self._empty_cgroup(root)
            with contextlib.suppress(OSError):
                root.rmdir()
        netns_dir = self.paths.state / "netns"
        if netns_dir.is_dir():  # pods' namespaces (netns_mounts_under_state_dir)
            for f in netns_dir.iterdir():
                subprocess.run(["umount", "-l", str(f)], capture_output=True, check=False)
                forced.append(f"netns {f.name}")
        # the kubelet bind-mounts its root directory onto itself (to share mounts with the
        # runtime); pod volumes may sit below it: unmount all of it, deepest first
        for _ in range(10):  # a mount point may hold several mounts (propagated copies)
            points = self._mounts_under(self.run_dir)
            if not points:
                break
            for point in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        _ip("route", "del", self.pod_cidr, check=False)
        _ip("link", "del", self.host_ifname, check=False)
        _ip("netns", "del", self.namespace, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return forced

    @staticmethod
    def _mounts_under(root: Path) -> list[str]:
        prefix = str(root).rstrip("/") + "/"
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(prefix) or point == str(root):
                out.append(point)
        return out

    @staticmethod
    def _empty_cgroup(d: Path) -> list[str]:
        forced = []
        with contextlib.suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                forced.append(f"process {pid} in {d}")
        return forced

    def left(self) -> list[str]:
        """What of this node is still there (empty after :meth:`stop`)."""
        out = []
        if _ip("netns", "list").stdout.count(self.namespace):
            out.append(f"namespace {self.namespace}")
        if _ip("link", "show", self.host_ifname, check=False).returncode == 0:
            out.append(f"link {self.host_ifname}")
        if self.run_dir.exists():
            out.append(f"run dir {self.run_dir}")
        out += [f"mount {m}" for m in self._mounts_under(self.run_dir)]
        for h in _v1_hierarchies():
            if (h / self.cgroup_root.lstrip("/")).exists():
                out.append(f"cgroup {h / self.cgroup_root.lstrip('/')}")
        out += [f"shim {pid}" for pid in containers.shims_of(str(self.paths.address))]
        return out


def pod_of(server: ApiServer, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The pods of ``namespace`` carrying every label of ``labels``."""
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    return server.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)
