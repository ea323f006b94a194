"""A real multi-cluster control plane on loopback, for the k8s tests and bench/k8s_move.py.

One etcd serves every API server through ``--etcd-prefix``. The KubeFed host is an API server
alone (like a KubeFed host's control plane it runs no workloads); each member cluster has its
API server, a kube-controller-manager (deployments, replica sets, service-account tokens,
namespaces, garbage collection), a kube-scheduler and KWOK (fake nodes; pods become Running);
the join/unjoin cluster has an API server and a controller manager only. The KubeFed
controller manager runs against the host. Static token auth; TLS from a CA made here with
openssl; every port on 127.0.0.1.

Binaries: each one from ``KUBEBUILDER_ASSETS`` when it is there, else from the cache that
``scripts/k8s_assets.sh`` fills (run when something is missing; a failed build fails the test,
it never skips). Teardown stops exactly the processes started here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import REPO, free_port
from tests.k8s.nodes import HOST_IP, UNDERLAY, Forwarder, NodeError, RealNode, pause_image

K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.13")
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "etcd",
            "kwok", "kubefed-controller-manager")
KUBEFED_NS = "kube-federation-system"
CACHE = (Path(os.environ.get("SERVICE_MOBILITY_CACHE", Path.home() / ".cache/service-mobility"))
         / "k8s" / f"v{K8S_VERSION}")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; tests fail on it, never skip."""


def find_binaries(names: tuple[str, ...] = BINARIES, *,
                  build: bool = True) -> dict[str, Path]:
    """Every binary of ``names``, from KUBEBUILDER_ASSETS first, else the cache (built when
    missing)."""

    def lookup() -> dict[str, Path]:
        found = {}
        assets = os.environ.get("KUBEBUILDER_ASSETS")
        for name in names:
            for d in ([Path(assets)] if assets else []) + [CACHE / "bin"]:
                if os.access(d / name, os.X_OK):
                    found[name] = d / name
                    break
        return found

    found = lookup()
    missing = [b for b in names if b not in found]
    if missing and build:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "k8s_assets.sh")],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ControlPlaneError(f"scripts/k8s_assets.sh failed; missing {missing}:\n"
                                    f"{proc.stderr[-3000:]}")
        found = lookup()
        missing = [b for b in names if b not in found]
    if missing:
        raise ControlPlaneError(f"binaries missing and not built: {missing} (run "
                                "scripts/k8s_assets.sh, or point KUBEBUILDER_ASSETS at them)")
    return found


def crd_dir() -> Path:
    d = CACHE / "crds"
    if not (d / "kubefed" / "core.yaml").exists() or not (d / "karmada" / "all").is_dir():
        proc = subprocess.run(["bash", str(REPO / "scripts" / "k8s_assets.sh")],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:  # the script writes the CRDs too
            raise ControlPlaneError(f"scripts/k8s_assets.sh failed:\n{proc.stderr[-3000:]}")
    return d


@dataclass
class ApiServer:
    """One cluster's API server, reached with its static admin token."""

    name: str
    port: int
    token: str
    ca: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http(self) -> httpx.Client:
        """An independent HTTP client for checks (not the adapters' client library)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.endpoint, timeout=10,
                                      verify=ssl.create_default_context(cafile=str(self.ca)),
                                      headers={"Authorization": f"Bearer {self.token}"})
        return self._http

    def get(self, path: str, **params: str) -> dict[str, Any] | None:
        r = self.http.get(path, params=params)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        return list((self.get(path, **params) or {}).get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> None:
        r = self.http.post(path, json=body)
        if r.status_code != 409:
            r.raise_for_status()

    def apply_yaml(self, path: Path, *, only: set[str] | None = None) -> list[str]:
        """Create every document of a YAML file (CRDs, FederatedTypeConfigs); skip existing."""
        names = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            if only is not None and name not in only:
                continue
            kind, api = doc["kind"], doc["apiVersion"]
            if kind == "CustomResourceDefinition":
                self.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
            elif kind == "FederatedTypeConfig":
                self.create(f"/apis/{api}/namespaces/{KUBEFED_NS}/federatedtypeconfigs", doc)
            else:
                raise ControlPlaneError(f"{path}: cannot apply a {kind}")
            names.append(name)
        return names

    def wait_crds(self, names: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                crd = self.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conds = {c["type"]: c["status"] for c in
                         ((crd or {}).get("status") or {}).get("conditions") or []}
                if conds.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"{self.name}: CRD {name} not established")
                time.sleep(0.1)

    def pause(self) -> None:
        """Make the cluster unreachable: its API server stops answering (SIGSTOP)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


class ControlPlane:
    """etcd, a KubeFed host, member clusters with KWOK, and the KubeFed controller."""

    def __init__(self, workdir: Path, *, members: tuple[str, ...] = ("member-a", "member-b"),
                 nodes_per_member: int = 2, spare: str | None = "member-c",
                 log_level: int = 1, real_nodes: bool = True) -> None:
        self.workdir = workdir
        self.members = members
        self.nodes_per_member = nodes_per_member
        self.spare = spare
        self.log_level = log_level
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.servers: dict[str, ApiServer] = {}
        self.bin: dict[str, Path] = {}
        self.kubeconfig = workdir / "kubeconfig"
        self.started_s = 0.0
        self._token = secrets.token_hex(4)  # unique per control plane on this machine
        # Real nodes (tests/k8s/nodes.py): one kubelet per member, beside the KWOK nodes.
        self.real = real_nodes
        self.prefix = f"smk{secrets.token_hex(2)}"
        self.underlay_bridge = f"{self.prefix}ul"
        self.real_nodes: dict[str, RealNode] = {}
        self.forwarders: dict[str, Forwarder] = {}
        self.cni_bin = CACHE / "cni"
        self.pause_name = ""

    # --- lifecycle ---

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        try:
            self.bin = find_binaries()
            self._certs()
            self._etcd()
            for name in ("host", *self.members, *([self.spare] if self.spare else [])):
                self._apiserver(name)
            for s in self.servers.values():
                self._wait_ready(s)
            self._write_kubeconfig()
            for m in self.members:
                self._controller_manager(m, controllers="deployment,replicaset,serviceaccount,"
                                         "serviceaccount-token,namespace,garbagecollector,"
                                         "root-ca-cert-publisher")
                self._scheduler(m)
                self._kwok(m)
            if self.spare:
                self._controller_manager(self.spare, controllers="serviceaccount,"
                                         "serviceaccount-token,namespace,garbagecollector")
            self._install_crds()
            for m in self.members:
                self._nodes(m)
            if self.real:
                self._real_nodes()
            self._kubefed()
            dead = [name for name, up in self.alive().items() if not up]
            if dead:
                raise ControlPlaneError(f"exited during start: {dead}:\n"
                                        + "\n".join(self.log(n, 10) for n in dead))
        except BaseException:
            self.stop()
            raise
        self.started_s = round(time.monotonic() - t0, 1)
        return self

    def stop(self) -> None:
        """Stop every process started here, newest first, by PID; then remove the data.
        What the real nodes left is raised after everything else is stopped."""
        try:
            self.stop_real_nodes()
        finally:
            self._stop_processes()

    def _stop_processes(self) -> None:
        for s in self.servers.values():
            if s.paused and s.proc is not None and s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(s.proc.pid, signal.SIGCONT)
            if s._http is not None:
                s._http.close()
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        shutil.rmtree(self._etcd_dir, ignore_errors=True)

    def reap(self, pid: int, *, timeout: float) -> None:
        """Wait for one of our processes (already signalled) to end; SIGKILL it if it does
        not within ``timeout``."""
        for _name, proc in self.procs:
            if proc.pid == pid:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                return

    # --- real nodes ---

    def real_node(self, member: str, index: int = 0) -> RealNode:
        """The member's first real node (``index`` 1: its second, where it has one)."""
        return [n for n in self.real_nodes.values() if n.cluster == member][index]

    def _real_nodes(self) -> None:
        """One real node per member cluster (see tests/k8s/nodes.py)."""
        from dataplane.lab import images as lab_images

        for b in ("kubelet",):
            if b not in self.bin:
                raise ControlPlaneError(f"{b} is missing (scripts/k8s_assets.sh builds it)")
        for plugin in ("bridge", "host-local", "loopback"):
            if not os.access(self.cni_bin / plugin, os.X_OK):
                raise ControlPlaneError(f"CNI plugin {plugin} is missing from {self.cni_bin} "
                                        "(scripts/k8s_assets.sh builds it)")
        lab_images.build_reference()
        self.pause_name, pause_archive = pause_image(CACHE)
        archives = [lab_images.bundle_path(), pause_archive]
        subprocess.run(["ip", "link", "add", self.underlay_bridge, "type", "bridge"],
                       check=True, capture_output=True)
        subprocess.run(["ip", "addr", "add", f"{HOST_IP}/{UNDERLAY.prefixlen}", "dev",
                        self.underlay_bridge], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", self.underlay_bridge, "up"], check=True,
                       capture_output=True)
        for m in self.members:
            self.forwarders[m] = Forwarder(HOST_IP, self.servers[m].port)
        index = 0
        for m in self.members:
            # the first member gets two: a link's two ends never share a node (one VNI per
            # node's VxLAN socket), so a client and the service it follows need two nodes
            for j in range(1, (2 if m == self.members[0] else 1) + 1):
                index += 1
                node = RealNode(cp=self, cluster=m, name=f"{m.rsplit('-', 1)[-1]}r{j}",
                                index=index, prefix=self.prefix)
                self.real_nodes[node.name] = node
                try:
                    node.start(images=archives, forwarder_port=self.forwarders[m].port)
                except NodeError as e:
                    raise ControlPlaneError(str(e)) from e
        for node in self.real_nodes.values():
            try:
                node.wait_ready()
            except NodeError as e:
                raise ControlPlaneError(str(e)) from e

    def stop_real_nodes(self) -> list[str]:
        """Stop the real nodes and remove what they made; returns what had to be forced."""
        forced: list[str] = []
        for node in reversed(list(self.real_nodes.values())):
            forced += node.stop()
        left = [x for node in self.real_nodes.values() for x in node.left()]
        self.real_nodes.clear()
        for f in self.forwarders.values():
            f.close()
        self.forwarders.clear()
        subprocess.run(["ip", "link", "del", self.underlay_bridge], capture_output=True,
                       check=False)
        if left:
            raise ControlPlaneError(f"real nodes left behind: {left}")
        return forced

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs}

    def log(self, name: str, lines: int = 40) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- pieces ---

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.workdir,
                                    env={**os.environ, **(env or {})})
        self.procs.append((name, proc))
        return proc

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.workdir, check=True,
                       capture_output=True)

    def _certs(self) -> None:
        if shutil.which("openssl") is None:
            raise ControlPlaneError("openssl is needed to make the test CA")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                      "-out", "ca.crt", "-days", "2", "-subj", "/CN=smk8s-test-ca")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key",
                      "-out", "serving.csr", "-subj", "/CN=kube-apiserver")
        # the bridge address too: the real nodes' kubelets reach the servers through it
        (self.workdir / "san.ext").write_text(
            f"subjectAltName=IP:127.0.0.1,IP:{HOST_IP},DNS:localhost\n")
        self._openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "serving.crt", "-days", "2",
                      "-extfile", "san.ext")

    @property
    def _etcd_dir(self) -> Path:
        """etcd's data on tmpfs when there is one: fsync-bound writes, and nothing to keep."""
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        return base / f"smk8s-etcd-{self._token}"

    def _etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        self._spawn("etcd", [
            str(self.bin["etcd"]), "--name", "smk8s", "--data-dir", str(self._etcd_dir),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"smk8s=http://127.0.0.1:{peer}",
            "--quota-backend-bytes", str(2 * 1024**3), "--log-level", "warn",
        ])
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.etcd_port}/health",
                             timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"etcd did not start:\n{self.log('etcd')}")
            time.sleep(0.1)

    def _apiserver(self, name: str) -> None:
        token = secrets.token_hex(16)
        (self.workdir / f"tokens-{name}.csv").write_text(
            f"{token},admin,admin-uid,system:masters\n")
        self._openssl("genrsa", "-out", f"sa-{name}.key", "2048")
        port = free_port()
        server = ApiServer(name=name, port=port, token=token, ca=self.workdir / "ca.crt")
        server.proc = self._spawn(f"apiserver-{name}", [
            str(self.bin["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}", f"--etcd-prefix=/{name}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={port}", f"--cert-dir={self.workdir / ('certs-' + name)}",
            "--tls-cert-file=serving.crt", "--tls-private-key-file=serving.key",
            "--client-ca-file=ca.crt", f"--token-auth-file=tokens-{name}.csv",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://{name}.smk8s.test",
            f"--service-account-key-file=sa-{name}.key",
            f"--service-account-signing-key-file=sa-{name}.key",
            "--service-cluster-ip-range=198.19.239.0/24",
            "--enable-priority-and-fairness=false", "--profiling=false",
            "--endpoint-reconciler-type=none", f"-v={self.log_level}",
            # no node lifecycle controller runs (KWOK keeps the fake nodes Ready), so nodes
            # must not start with the not-ready taint that controller would lift
            "--disable-admission-plugins=TaintNodesByCondition",
        ])
        self.servers[name] = server

    def _wait_ready(self, server: ApiServer, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert server.proc is not None
            if server.proc.poll() is not None:
                raise ControlPlaneError(f"kube-apiserver {server.name} exited:\n"
                                        f"{self.log('apiserver-' + server.name)}")
            with contextlib.suppress(httpx.HTTPError):
                if server.http.get("/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"kube-apiserver {server.name} not ready:\n"
                                        f"{self.log('apiserver-' + server.name)}")
            time.sleep(0.2)

    def _write_kubeconfig(self) -> None:
        from mobility.backends.kube.client import write_kubeconfig

        ca = (self.workdir / "ca.crt").read_bytes()
        write_kubeconfig(self.kubeconfig, clusters={
            name: (s.endpoint, s.token, ca) for name, s in self.servers.items()})
        for name, s in self.servers.items():  # one file per cluster, for the Go components
            write_kubeconfig(self.workdir / f"kubeconfig-{name}",
                             clusters={name: (s.endpoint, s.token, ca)})

    def _controller_manager(self, name: str, *, controllers: str) -> None:
        kc = str(self.workdir / f"kubeconfig-{name}")
        self._spawn(f"controller-manager-{name}", [
            str(self.bin["kube-controller-manager"]), f"--kubeconfig={kc}",
            "--leader-elect=false", "--secure-port=0", f"--controllers={controllers}",
            f"--service-account-private-key-file=sa-{name}.key", "--root-ca-file=ca.crt",
            "--use-service-account-credentials=false",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            f"-v={self.log_level}",
        ])

    def _scheduler(self, name: str) -> None:
        kc = str(self.workdir / f"kubeconfig-{name}")
        self._spawn(f"scheduler-{name}", [
            str(self.bin["kube-scheduler"]), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--secure-port=0", f"-v={self.log_level}",
        ])

    def _kwok(self, name: str) -> None:
        kc = str(self.workdir / f"kubeconfig-{name}")
        self._spawn(f"kwok-{name}", [
            str(self.bin["kwok"]), f"--kubeconfig={kc}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=198.19.236.0/22", "--node-ip=198.19.235.1",
        ])

    def node_names(self, member: str) -> list[str]:
        suffix = member.rsplit("-", 1)[-1]
        return [f"{suffix}{i}" for i in range(1, self.nodes_per_member + 1)]

    def _nodes(self, member: str) -> None:
        s = self.servers[member]
        for node in self.node_names(member):
            s.create("/api/v1/nodes", {"metadata": {
                "name": node, "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": node, "type": "kwok"}}})
        deadline = time.monotonic() + 30
        while True:
            ready = [n["metadata"]["name"] for n in s.items("/api/v1/nodes")
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (n.get("status") or {}).get("conditions") or [])]
            if len(ready) >= self.nodes_per_member:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"KWOK did not make {member}'s nodes Ready:\n"
                                        f"{self.log('kwok-' + member)}")
            time.sleep(0.2)

    def _install_crds(self) -> None:
        crds = crd_dir()
        host = self.servers["host"]
        names = []
        for f in ("kubefed/core.yaml", "karmada/propagationpolicies.yaml",
                  "karmada/resourcebindings.yaml", "karmada/overridepolicies.yaml",
                  "nsm/crds.yaml"):
            names += host.apply_yaml(crds / f)
        names += host.apply_yaml(crds / "kubefed/types.yaml", only={
            "federateddeployments.types.kubefed.io", "federatednamespaces.types.kubefed.io"})
        host.wait_crds(names)
        for m in self.members:  # NSM endpoints live in the cluster of their instance
            member_names = self.servers[m].apply_yaml(crds / "nsm/crds.yaml")
            self.servers[m].wait_crds(member_names)
        host.create("/api/v1/namespaces", {"metadata": {"name": KUBEFED_NS}})

    def _kubefed(self) -> None:
        host = self.servers["host"]
        host.apply_yaml(crd_dir() / "kubefed/federatedtypeconfigs.yaml",
                        only={"deployments.apps", "namespaces"})
        config = self.workdir / "kubefedconfig.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "core.kubefed.io/v1beta1", "kind": "KubeFedConfig",
            "metadata": {"name": "kubefed", "namespace": KUBEFED_NS},
            "spec": {
                "scope": "Cluster",
                "controllerDuration": {"availableDelay": "1s", "unavailableDelay": "1s",
                                       "cacheSyncTimeout": "30s"},
                "leaderElect": {"leaseDuration": "15s", "renewDeadline": "10s",
                                "retryPeriod": "2s", "resourceLock": "configmaps"},
                "clusterHealthCheck": {"period": "1s", "failureThreshold": 2,
                                       "successThreshold": 1, "timeout": "2s"},
                "syncController": {"maxConcurrentReconciles": 4, "adoptResources": "Enabled"},
                "statusController": {"maxConcurrentReconciles": 1},
                "featureGates": [
                    {"name": "PushReconciler", "configuration": "Enabled"},
                    {"name": "SchedulerPreferences", "configuration": "Disabled"},
                    {"name": "RawResourceStatusCollection", "configuration": "Disabled"},
                ],
            }}))
        self._spawn("kubefed-controller-manager", [
            str(self.bin["kubefed-controller-manager"]),
            f"--kubeconfig={self.workdir / 'kubeconfig-host'}",
            f"--kubefed-namespace={KUBEFED_NS}", f"--kubefed-config={config}",
            f"--healthz-addr=127.0.0.1:{free_port()}",
            f"--metrics-addr=127.0.0.1:{free_port()}", "-v=2",
        ])
        deadline = time.monotonic() + 60
        while True:  # the type config controller reports each enabled type's sync controller
            ftc = host.get(f"/apis/core.kubefed.io/v1beta1/namespaces/{KUBEFED_NS}/"
                           "federatedtypeconfigs/deployments.apps") or {}
            if (ftc.get("status") or {}).get("propagationController") == "Running":
                return
            if not self.alive().get("kubefed-controller-manager", False) or (
                    time.monotonic() > deadline):
                raise ControlPlaneError("the KubeFed controller manager did not start its "
                                        "deployment sync controller:\n"
                                        f"{self.log('kubefed-controller-manager', 60)}")
            time.sleep(0.2)
