"""Pods on one lab node: what a node agent does for its node.

A pod is a network namespace with ``eth0`` on the node's pod bridge (``cni0``) and a default
route through the node, plus the NSM-style links the orchestrator asks for. Its workload is an
OCI container run by the lab's own containerd (:mod:`dataplane.containers`) inside that
namespace: a reference image for a built-in workload (:mod:`dataplane.lab.images`), or the
user's image. The agent runs inside the node's namespace, so the VxLAN sockets of the links it
makes live on the node's underlay.

Per pod, ``<run dir>/pods/<pod>/`` holds what only the node agent sees: ``meta.json`` (node,
address, the container's host PID), the container's log and env file, and for a stateful
workload the state relay's socket ``state.sock`` (the orchestrator's end, which holds the
move's key and Redis credentials) and its log. ``io/`` inside it is mounted into the container
at ``/run/mobility``: the workload's ready file, a probe's results, and the application's own
state SDK socket, which the relay talks to. Nothing in ``io/`` is trusted by the agent beyond
"the file is there".
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataplane import links, netlink
from dataplane.containers import ContainerdPaths, ContainerRun, Mount
from dataplane.cri import CriPods
from dataplane.errors import DataplaneError
from dataplane.lab import images
from dataplane.lab.topology import LabPlan, NodePlan, is_running
from dataplane.netlink import Netlink

log = logging.getLogger(__name__)

STOP_GRACE_S = 3.0
IO_DIR = "io"
IN_CONTAINER = "/run/mobility"  # where a container sees its pod's io/ directory
STATE_SOCKET = f"{IN_CONTAINER}/state.sock"  # the application's state SDK socket

# What a state relay's environment may hold of its agent's: how to run Python and nothing
# about the control plane. The relay gets the move's key and its per-move Redis user over its
# socket from the orchestrator, never from its environment.
WORKLOAD_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH",
                "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "MOBILITY_FAULT_INJECTION",
                "MOBILITY_LOG_LEVEL")
# What a container gets from the agent's environment: only whether faults may be injected.
CONTAINER_ENV = ("MOBILITY_FAULT_INJECTION",)


def workload_env(agent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A host-side helper's environment: the allowed variables of its agent's."""
    source = os.environ if agent_env is None else agent_env
    env = {k: source[k] for k in WORKLOAD_ENV if k in source}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def workload_argv(workload: str, params: Mapping[str, Any], io: str = IN_CONTAINER,
                  python: str = "python3") -> list[str]:
    """The command line of a named workload, its files under ``io`` (as the container sees
    them); nothing else is ever run for a built-in workload."""
    ready = f"{io}/ready"
    module = images.REFERENCE_MODULES.get(workload)
    if module is None:
        raise DataplaneError(f"unknown workload {workload!r}")
    argv = [python, "-m", module]
    if workload == "echo":
        return [*argv, "--port", str(int(params.get("port", 7000))), "--ready-file", ready]
    if workload == "probe":
        argv += ["--target", str(params["target"]), "--rate", str(float(params.get("rate", 1000))),
                 "--count", str(int(params.get("count", 0))),
                 "--out", f"{io}/probe.json", "--progress", f"{io}/progress.json",
                 "--paused-file", f"{io}/paused", "--ready-file", ready]
        if params.get("paused"):
            argv.append("--paused")
        return argv
    if workload == "middlebox":
        return [*argv, "--flows", f"{io}/flows.json", "--ready-file", ready]
    if workload == "sessions":
        argv += ["--port", str(int(params.get("port", 7000))),
                 "--control", f"{io}/state.sock",
                 "--state-mb", str(float(params.get("state_mb", 0))),
                 "--dirty-rate", str(float(params.get("dirty_rate", 0))), "--ready-file", ready]
        if params.get("restore"):
            argv.append("--restore")
        return argv
    if workload == "session-probe":
        argv += ["--target", str(params["target"]), "--rate", str(float(params.get("rate", 1000))),
                 "--sessions", str(int(params.get("sessions", 16))),
                 "--rto-ms", str(float(params.get("rto_ms", 100))),
                 "--out", f"{io}/probe.json", "--progress", f"{io}/progress.json",
                 "--paused-file", f"{io}/paused", "--ready-file", ready]
        if params.get("paused"):
            argv.append("--paused")
        return argv
    raise DataplaneError(f"unknown workload {workload!r}")


STATEFUL_WORKLOADS = frozenset({"sessions"})
# Network sysctls a built-in workload needs in its pod's namespace, set by the node agent
# before its container starts (a container's /proc/sys is read-only), as a Kubernetes pod's
# securityContext.sysctls are: a fixed script per workload, nothing from a request.
POD_SYSCTLS = {
    "middlebox": "echo 1 > /proc/sys/net/ipv4/ip_forward && "
                 "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
}


def container_run(*, pod: str, pod_dir: Path, netns: str, workload: str,
                  params: Mapping[str, Any], spec: Mapping[str, Any],
                  agent_env: Mapping[str, str] | None = None) -> ContainerRun:
    """What containerd runs for a pod: the reference image of a built-in workload with its
    command line, or the user's image with theirs; the pod's io/ at /run/mobility."""
    source = os.environ if agent_env is None else agent_env
    env = {k: source[k] for k in CONTAINER_ENV if k in source}
    image = spec.get("image")
    argv: tuple[str, ...] | None
    if image is None:
        image = images.reference_image(workload)
        argv = tuple(workload_argv(workload, params))
    else:
        # As Kubernetes does: command replaces the entrypoint, args the cmd; with neither, the
        # image's own. (A spec with only args got the image's entrypoint as its command from
        # the catalogue at deploy time: the runtime takes a whole command line or none.)
        command, args = tuple(spec.get("command") or ()), tuple(spec.get("args") or ())
        argv = (command + args) or None
        env.update({str(k): str(v) for k, v in dict(spec.get("env") or {}).items()})
        if spec.get("state") == "sdk":
            env["MOBILITY_STATE_SOCKET"] = STATE_SOCKET
        if params.get("restore"):
            env["MOBILITY_RESTORE"] = "1"
    return ContainerRun(
        id=pod, image=str(image), argv=argv, env=env, netns=f"/var/run/netns/{netns}",
        mounts=(Mount(src=str(pod_dir / IO_DIR), dst=IN_CONTAINER, readonly=False),),
        cpus=spec.get("cpu"), memory_bytes=spec.get("memory"),
        log_path=pod_dir / "workload.log", cwd=None, files_dir=pod_dir)


IO_VOLUME = "mobility-io"
READY_PROBE_PERIOD_S = 1  # the shortest a Kubernetes probe period can be


def kube_pod_spec(workload: str, params: Mapping[str, Any],
                  container: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Kubernetes pod spec of a workload on a real node: what :func:`container_run` runs
    on the lab, as a pod. A reference workload: its image and command line, its own ready file
    as the readiness probe. A user's image (``container``): its command (replacing the
    entry point) and args, its environment (with ``MOBILITY_STATE_SOCKET`` for an app serving
    the state SDK), its CPU and memory as limits, a TCP port as the readiness probe (a UDP
    one cannot be probed: the pod is ready once it runs). Either way the pod's files are an
    ``emptyDir`` at ``/run/mobility``, and the image is never pulled (no registry: it is
    imported on the nodes). A plain dict: dataplane knows the shape of a pod, not a
    Kubernetes client."""
    io = {"name": IO_VOLUME, "mountPath": IN_CONTAINER}
    volumes = [{"name": IO_VOLUME, "emptyDir": {}}]
    secure = {"allowPrivilegeEscalation": False}
    spec = dict(container or {})
    if spec.get("image"):
        env = {str(k): str(v) for k, v in dict(spec.get("env") or {}).items()}
        if spec.get("state") == "sdk":
            env["MOBILITY_STATE_SOCKET"] = STATE_SOCKET
        app: dict[str, Any] = {
            "name": "app", "image": str(spec["image"]), "imagePullPolicy": "Never",
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "volumeMounts": [io], "securityContext": secure}
        if spec.get("command"):
            app["command"] = [str(a) for a in spec["command"]]
        if spec.get("args"):
            app["args"] = [str(a) for a in spec["args"]]
        limits = {}
        if spec.get("cpu"):
            limits["cpu"] = f"{int(float(spec['cpu']) * 1000)}m"
        if spec.get("memory"):
            limits["memory"] = str(int(spec["memory"]))
        if limits:
            app["resources"] = {"limits": limits}
        tcp = [int(p["port"]) for p in spec.get("ports") or () if p.get("protocol") == "tcp"]
        if tcp:
            app["readinessProbe"] = {"tcpSocket": {"port": tcp[0]},
                                     "periodSeconds": READY_PROBE_PERIOD_S}
        return {"containers": [app], "volumes": volumes}
    if workload not in images.REFERENCE_MODULES:
        known = ", ".join(sorted(images.REFERENCE_MODULES))
        raise DataplaneError(f"workload {workload!r}: not a reference workload ({known}) and "
                             "no image", retryable=False)
    return {
        "containers": [{
            "name": workload,
            "image": images.reference_image(workload),
            "imagePullPolicy": "Never",  # no registry: images are imported on the nodes
            "command": workload_argv(workload, params),
            "volumeMounts": [io],
            "readinessProbe": {"exec": {"command": ["test", "-e", f"{IN_CONTAINER}/ready"]},
                               "periodSeconds": READY_PROBE_PERIOD_S, "failureThreshold": 1},
            "securityContext": secure,
        }],
        "volumes": volumes,
    }


def cri_image_name(name: str) -> str:
    """The name the CRI looks an image up by: a pod's ``counter:1`` is
    ``docker.io/library/counter:1``, ``mobility/echo:T`` is ``docker.io/mobility/echo:T``
    (Docker's normalization); a name with a registry host stays as it is."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def _listening(pid: int, ports: list[tuple[int, str]]) -> bool:
    """Whether every (port, protocol) has a bound socket in the network namespace of
    ``pid`` (read from its /proc/<pid>/net tables: no traffic sent)."""
    want: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for port, proto in ports:
        want[proto].add(port)
    for proto, wanted in want.items():
        if not wanted:
            continue
        found: set[int] = set()
        for table in (proto, proto + "6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                cols = line.split()
                local, state = cols[1], cols[3]
                # TCP: LISTEN (0A); UDP: any bound socket (07, unconnected)
                if proto == "tcp" and state != "0A":
                    continue
                found.add(int(local.rsplit(":", 1)[1], 16))
        if not wanted <= found:
            return False
    return True


class NodeRuntime:
    """Pod and link operations for one node; every operation is idempotent."""

    def __init__(self, plan: LabPlan, node: NodePlan, *, cri: CriPods | None = None) -> None:
        self.plan = plan
        self.node = node
        self.pods_dir = plan.run_dir / "pods"
        self.containers = ContainerdPaths(plan.run_dir).client(plan.name)
        self._handles: dict[str, Netlink] = {}
        # On a real Kubernetes node the kubelet runs the pods: links go into the network
        # namespaces its runtime made (see dataplane.cri), named here like the lab's.
        self.cri = cri
        self._adopted: dict[str, Path] = {}  # pod -> the CRI namespace its name points to

    # --- pods ---

    def pod_dir(self, pod: str) -> Path:
        return self.pods_dir / pod

    def io_dir(self, pod: str) -> Path:
        if self.cri is not None and self._meta(pod) is None:
            found = self.cri.find(pod)
            if found is not None:
                return self.cri.io_dir(found)
        return self.pods_dir / pod / IO_DIR

    def _pod_ns(self, pod: str) -> str:
        """The name of the pod's network namespace for link operations: the lab's own, or on
        a kubelet's node the CRI sandbox's namespace, adopted under the same name (a symlink
        in /run/netns, which dangles, so the name reads as absent, once the kubelet removes
        the sandbox; it holds nothing alive). Re-pointed when the pod was recreated."""
        ns = self.plan.pod_namespace(pod)
        if self.cri is None:
            return ns
        link = Path(netlink.NETNS_DIR) / ns
        mine = self._adopted.get(pod)
        if mine is not None and link.is_symlink() and Path(os.readlink(link)) == mine \
                and link.exists():
            return ns  # adopted by this agent, and still there (CUTOVER must not fork ctr)
        if self._meta(pod) is not None:
            return ns
        found = self.cri.find(pod)
        if found is None:
            return ns  # absent: the link operations say so
        if not (link.is_symlink() and Path(os.readlink(link)) == found.netns):
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{ns}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(found.netns)
            tmp.replace(link)
            log.info("pod %s: adopted the network namespace of sandbox %s", pod,
                     found.sandbox[:12])
        self._adopted[pod] = found.netns
        return ns

    def _meta(self, pod: str) -> dict[str, Any] | None:
        path = self.pod_dir(pod) / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write_meta(self, pod: str, meta: dict[str, Any]) -> None:
        d = self.pod_dir(pod)
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json.tmp").write_text(json.dumps(meta))
        (d / "meta.json.tmp").replace(d / "meta.json")

    def _allocate_ip(self) -> str:
        """The lowest free address of the node's pod subnet (this agent is its only writer)."""
        used = {self.node.pod_gateway}
        if self.pods_dir.is_dir():
            for meta_path in self.pods_dir.glob("*/meta.json"):
                m = json.loads(meta_path.read_text())
                if (m["cluster"], m["node"]) == (self.node.cluster, self.node.name):
                    used.add(m["ip"])
        for host in ipaddress.IPv4Network(self.node.pod_subnet).hosts():
            if str(host) not in used:
                return str(host)
        raise DataplaneError(f"node {self.node.queue_id}: pod subnet {self.node.pod_subnet} full")

    @staticmethod
    def _host_ifname(pod: str) -> str:
        return "p" + hashlib.sha1(pod.encode()).hexdigest()[:10]

    def create_pod(self, *, pod: str, workload: str, params: dict[str, Any],
                   start: bool, container: Mapping[str, Any] | None = None) -> dict[str, Any]:
        ns = self.plan.pod_namespace(pod)
        meta = self._meta(pod)
        if meta is None:
            meta = {"pod": pod, "namespace": ns, "cluster": self.node.cluster,
                    "node": self.node.name, "ip": self._allocate_ip(), "workload": workload,
                    "pid": None, "relay_pid": None}
            self._write_meta(pod, meta)
        self.io_dir(pod).mkdir(mode=0o755, exist_ok=True)
        netlink.create_namespace(ns)
        host_if = self._host_ifname(pod)
        with Netlink() as nodenl:
            nodenl.add_veth(host_if, peer="eth0", peer_namespace=ns)
            nodenl.set_master(host_if, "cni0")
            nodenl.set_up(host_if)
        with Netlink(ns) as podnl:
            podnl.add_address("eth0", f"{meta['ip']}/24")
            podnl.set_up("eth0")
            podnl.set_route("default", gateway=self.node.pod_gateway)
        if start:
            self.start_workload(pod=pod, workload=workload, params=params, container=container)
        return {"namespace": ns, "ip": meta["ip"]}

    def start_workload(self, *, pod: str, workload: str, params: dict[str, Any],
                       container: Mapping[str, Any] | None = None) -> int:
        meta = self._meta(pod)
        if meta is None:
            raise DataplaneError(f"pod {pod} does not exist on {self.node.queue_id}")
        spec = dict(container or {})
        if meta.get("pid") and is_running(int(meta["pid"])):
            return int(meta["pid"])
        d = self.pod_dir(pod)
        (self.io_dir(pod) / "ready").unlink(missing_ok=True)
        stateful = workload in STATEFUL_WORKLOADS or spec.get("state") == "sdk"
        if stateful and not (meta.get("relay_pid") and is_running(int(meta["relay_pid"]))):
            meta["relay_pid"] = self._start_relay(pod)
        if workload in POD_SYSCTLS and not spec.get("image"):
            subprocess.run(["nsenter", f"--net=/run/netns/{self.plan.pod_namespace(pod)}",
                            "sh", "-c", POD_SYSCTLS[workload]], check=True, timeout=10)
        run = container_run(pod=pod, pod_dir=d, netns=self.plan.pod_namespace(pod),
                            workload=workload, params=params, spec=spec)
        pid = self.containers.run(run)
        meta["pid"] = pid
        meta["image"] = run.image
        meta["ports"] = ([[int(p["port"]), str(p.get("protocol", "udp"))]
                          for p in spec.get("ports") or ()] if spec.get("image") else None)
        self._write_meta(pod, meta)
        log.info("pod %s: started %s (%s) as pid %s", pod, workload, run.image, pid)
        return pid

    def _start_relay(self, pod: str) -> int:
        """The state relay beside a stateful container, outside it: the orchestrator's
        ``state.sock`` in the pod directory on one side, the application's SDK socket in
        io/ on the other. It runs in the pod's network namespace (so it reaches Redis as the
        pod does, and ends with the pod), with this agent's Python, not the container's."""
        d = self.pod_dir(pod)
        (d / "state.sock").unlink(missing_ok=True)
        with open(d / "relay.log", "ab") as logf:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.plan.pod_namespace(pod), sys.executable, "-m",
                 "state_transfer.relay", "--app", str(self.io_dir(pod) / "state.sock"),
                 "--listen", str(d / "state.sock")],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, env=workload_env(),
            )
        log.info("pod %s: state relay pid %s", pod, proc.pid)
        return proc.pid

    def ensure_relay(self, *, pod: str, timeout: float) -> Path:
        """The state relay beside a kubelet's stateful pod (the lab starts its own with the
        container): on the node, the application's SDK socket in the pod's ``mobility-io``
        volume on one side, ``pods/<pod>/state.sock`` on the other. Started
        once per sandbox; it ends by itself when the volume goes with the pod. Returns the
        socket the orchestrator's state client connects to."""
        if self.cri is None:
            raise DataplaneError(f"pod {pod}: this node runs no kubelet; its relay starts with "
                                 "its container")
        found = self.cri.find(pod)
        if found is None:
            raise DataplaneError(f"pod {pod} has no running sandbox on {self.node.queue_id}",
                                 retryable=True)
        d = self.pod_dir(pod)
        d.mkdir(parents=True, exist_ok=True)
        sock, record = d / "state.sock", d / "relay.json"
        app = self.cri.io_dir(found) / "state.sock"
        # the kubelet's volume path is longer than a Unix socket address may be (108 bytes):
        # the relay connects through a short symlink to it
        short = d / "app.sock"
        if not (short.is_symlink() and Path(os.readlink(short)) == app):
            short.unlink(missing_ok=True)
            short.symlink_to(app)
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
        if not (known.get("sandbox") == found.sandbox and is_running(int(known.get("pid", 0)))
                and sock.exists()):
            sock.unlink(missing_ok=True)
            with open(d / "relay.log", "ab") as logf:
                # In this agent's (the node's) network namespace, not the pod's: a process in
                # the pod's namespace would keep it, and its VxLAN devices with their VNIs,
                # alive after the kubelet removed the pod, and a service moving back to this
                # node would meet EEXIST. The node reaches Redis as the agent does.
                proc = subprocess.Popen(
                    [sys.executable, "-m", "state_transfer.relay",
                     "--app", str(short), "--listen", str(sock),
                     "--exit-when-gone", str(app.parent)],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    start_new_session=True, env=workload_env())
            (d / "relay.json.tmp").write_text(json.dumps({"sandbox": found.sandbox,
                                                         "pid": proc.pid}))
            (d / "relay.json.tmp").replace(record)
            log.info("pod %s: state relay pid %s beside sandbox %s", pod, proc.pid,
                     found.sandbox[:12])
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if time.monotonic() > deadline:
                raise DataplaneError(f"pod {pod}: its state relay did not listen within "
                                     f"{timeout} s: {_tail(d / 'relay.log')}", retryable=True)
            time.sleep(0.01)
        return sock

    def wait_ready(self, *, pod: str, timeout: float) -> None:
        meta = self._meta(pod)
        if meta is None or not meta.get("pid"):
            raise DataplaneError(f"pod {pod} has no workload on {self.node.queue_id}")
        pid = int(meta["pid"])
        ready = self.io_dir(pod) / "ready"
        ports = meta.get("ports")
        relay = self.pod_dir(pod) / "state.sock" if meta.get("relay_pid") else None
        deadline = time.monotonic() + timeout
        while True:
            if not is_running(pid):
                tail = _tail(self.pod_dir(pod) / "workload.log")
                raise DataplaneError(f"pod {pod}: its container exited: {tail}")
            served = _listening(pid, [(int(p), str(q)) for p, q in ports]) if ports is not None \
                else ready.exists()
            if served and (relay is None or relay.exists()):
                return
            if time.monotonic() > deadline:
                raise DataplaneError(f"pod {pod}: not ready after {timeout} s", retryable=True)
            time.sleep(0.005)

    def delete_pod(self, *, pod: str) -> None:
        ns = self.plan.pod_namespace(pod)
        self._drop_handle(ns)
        self.containers.stop(pod, grace=STOP_GRACE_S)
        pids = netlink.namespace_pids(ns)  # the state relay, and anything a container left
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(is_running(p) for p in pids):
            time.sleep(0.01)
        for pid in pids:
            if is_running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in pids:
            # reap our own children so they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if netlink.namespace_exists(ns):
            # Delete the pod's VxLAN devices now: a namespace is destroyed asynchronously, and
            # until then its devices keep their VNIs on this node's VxLAN socket, so a link end
            # made here again right away (a service moving back) would meet EEXIST.
            with Netlink(ns) as podnl:
                for li in podnl.links():
                    if li.kind == "vxlan":
                        podnl.delete_link(li.name)
        with Netlink() as nodenl:
            nodenl.delete_link(self._host_ifname(pod))
        netlink.delete_namespace(ns)
        meta_path = self.pod_dir(pod) / "meta.json"
        if meta_path.exists():
            meta_path.replace(self.pod_dir(pod) / "meta.deleted.json")
        log.info("pod %s deleted", pod)

    # --- links ---

    def _handle(self, ns: str) -> Netlink:
        """A kept-open netlink handle per pod: the cutover path must not fork per call."""
        nl = self._handles.get(ns)
        if nl is None:
            nl = Netlink(ns)
            nl.open()
            self._handles[ns] = nl
        return nl

    def _drop_handle(self, ns: str) -> None:
        nl = self._handles.pop(ns, None)
        if nl is not None:
            nl.close()

    def create_end(self, *, pod: str, ifname: str, vni: int, mac: str, cidr: str,
                   peer_mac: str, peer_ip: str, peer_node_ip: str, underlay_mtu: int) -> int:
        return links.create_end(
            ifname=ifname, vni=vni, underlay_mtu=underlay_mtu,
            end=links.LinkEnd(pod_namespace=self._pod_ns(pod), node_namespace=None,
                              node_ip=self.node.underlay_ip, mac=mac, cidr=cidr),
            peer=links.Peer(mac=peer_mac, ip=peer_ip, node_ip=peer_node_ip),
        )

    def delete_end(self, *, pod: str, ifname: str) -> None:
        links.delete_end(pod_namespace=self._pod_ns(pod), ifname=ifname)

    def switch(self, *, pod: str, ifname: str, mac: str, node_ip: str) -> None:
        ns = self._pod_ns(pod)
        try:
            links.switch(pod_namespace=ns, ifname=ifname, mac=mac, node_ip=node_ip,
                         netlink=self._handle(ns))
        except DataplaneError:
            # the cached handle may point at a namespace that was recreated; retry fresh once
            self._drop_handle(ns)
            links.switch(pod_namespace=ns, ifname=ifname, mac=mac, node_ip=node_ip,
                         netlink=self._handle(ns))

    def set_routes(self, *, pod: str, routes: list[dict[str, str]]) -> None:
        """Routes of a chain element: the chain's far ends through the neighbouring element."""
        with Netlink(self._pod_ns(pod)) as nl:
            for r in routes:
                nl.set_route(r["dst"], gateway=r["via"], dev=r["ifname"])

    def _signal_workload(self, pod: str, sig: signal.Signals) -> int:
        meta = self._meta(pod)
        pid = int(meta["pid"]) if meta is not None and meta.get("pid") else None
        if meta is None and self.cri is not None:
            found = self.cri.find(pod)
            pid = self.cri.workload_pid(found) if found is not None else None
        if pid is None or not is_running(pid):
            raise DataplaneError(f"pod {pod} runs no workload on {self.node.queue_id}")
        os.kill(pid, sig)
        return pid

    def quiesce(self, *, pod: str, timeout: float = 2.0) -> None:
        """Ask a client workload to stop sending and wait until nothing is in flight."""
        paused = self.io_dir(pod) / "paused"
        paused.unlink(missing_ok=True)
        self._signal_workload(pod, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not paused.exists():
            if time.monotonic() > deadline:
                raise DataplaneError(f"pod {pod}: the client did not pause within {timeout} s")
            time.sleep(0.002)

    def resume(self, *, pod: str) -> None:
        self._signal_workload(pod, signal.SIGUSR2)

    def check_end(self, *, pod: str, ifname: str, mac: str, cidr: str, peer_mac: str,
                  peer_ip: str, peer_node_ip: str) -> list[str]:
        """What is wrong with one link end (empty: nothing), without changing anything."""
        ns = self._pod_ns(pod)
        if not netlink.namespace_exists(ns):
            return [f"pod namespace {ns} is gone"]
        problems = []
        with Netlink(ns) as nl:
            if not nl.exists(ifname):
                return [f"{ifname} is missing"]
            info = nl.link(ifname)
            if info.mac.lower() != mac.lower():
                problems.append(f"{ifname} has MAC {info.mac}, not {mac}")
            if not info.up:
                problems.append(f"{ifname} is down")
            if cidr not in nl.addresses(ifname):
                problems.append(f"{ifname} lacks {cidr}")
            dst = {e.mac.lower(): e.dst for e in nl.fdb(ifname)}.get(peer_mac.lower())
            if dst != peer_node_ip:
                problems.append(f"FDB sends {peer_mac} to {dst}, not {peer_node_ip}")
            if not nl.has_neighbour(ifname, ip=peer_ip, mac=peer_mac):
                problems.append(f"no neighbour entry {peer_ip} -> {peer_mac}")
        return problems

    def fdb_dst(self, *, pod: str, ifname: str, mac: str) -> str | None:
        return links.current_node(pod_namespace=self._pod_ns(pod), ifname=ifname,
                                  mac=mac)


def _tail(path: Path, n: int = 500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
