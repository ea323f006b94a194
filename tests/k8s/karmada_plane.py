"""Karmada's own control plane on loopback, beside :class:`~tests.k8s.controlplane.ControlPlane`.

What a Karmada installation runs, minus what these tests do not need, each piece the real one:

- a kube-apiserver "karmada" (the Karmada API server is a kube-apiserver) on the control
  plane's etcd under its own prefix, with a kube-controller-manager running the
  ``namespace`` and ``garbagecollector`` controllers (as Karmada's chart does: a resource
  template's ResourceBinding is owned by the template, and only the garbage collector deletes
  it when the template goes);
- every CRD of Karmada's v1.12 chart (its controllers refuse to start without the
  ``config.karmada.io`` ones), the ResourceBinding conversion patches of the chart, and a
  minimal ``cluster.karmada.io/v1alpha1`` Cluster CRD written here: Karmada serves Cluster
  from its aggregated API server, which is not built;
- ``karmada-webhook`` on 127.0.0.1 with a serving certificate from the control plane's CA,
  registered as the chart's Mutating/ValidatingWebhookConfigurations with ``url`` clients:
  its mutations are load-bearing (a PropagationPolicy's permanent-id label, which the detector
  and scheduler need; a ResourceBinding's and a Work's);
- ``karmada-controller-manager`` (cluster, clusterStatus, binding, bindingStatus, execution,
  workStatus, namespace) and ``karmada-scheduler``;
- the member clusters joined in **Push** mode: a Secret with the member's token and CA in
  ``karmada-cluster`` and a Cluster naming it; start() returns once Karmada reports every
  member Ready, untainted, with its API enablements and its execution namespace.

Every process goes through ``ControlPlane._spawn`` (so ``ControlPlane.stop`` would stop it
too) and is recorded here; :meth:`KarmadaPlane.stop` stops exactly those, by PID. A failure to
start raises ``ControlPlaneError`` with the logs' tails: the tests fail, never skip.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from mobility.backends.kube.client import KubeClient, write_kubeconfig
from tests.conftest import free_port
from tests.k8s.controlplane import (
    CACHE,
    ApiServer,
    ControlPlane,
    ControlPlaneError,
    crd_dir,
    find_binaries,
)

log = logging.getLogger(__name__)

KARMADA_VERSION = "v1.12.0"
KARMADA_BINARIES = ("karmada-controller-manager", "karmada-scheduler", "karmada-webhook")
NAME = "karmada"  # the API server's name in ControlPlane.servers, and its etcd prefix
SYSTEM_NS = "karmada-system"
CLUSTER_NS = "karmada-cluster"  # where the members' credentials live (push mode)
CLUSTER_API = "/apis/cluster.karmada.io/v1alpha1/clusters"
# What the controller manager runs: the propagation path (cluster health, binding -> Work,
# Work -> member, member status -> Work -> binding) and the namespace propagation.
CONTROLLERS = "cluster,clusterStatus,binding,bindingStatus,execution,workStatus,namespace"
# The chart's webhooks time out after 3 s; two shared cores under a full test session are
# slower than a cluster node, and a timed-out mutation fails the write, so more time here.
WEBHOOK_TIMEOUT_S = 10

_CU = ("CREATE", "UPDATE")
# (name, path, group, resource, operations, scope), as in the chart's
# templates/_karmada_webhook_configuration.tpl (v1.12.0)
MUTATING: tuple[tuple[str, str, str, str, tuple[str, ...], str], ...] = (
    ("propagationpolicy.karmada.io", "/mutate-propagationpolicy", "policy.karmada.io",
     "propagationpolicies", _CU, "Namespaced"),
    ("clusterpropagationpolicy.karmada.io", "/mutate-clusterpropagationpolicy",
     "policy.karmada.io", "clusterpropagationpolicies", _CU, "Cluster"),
    ("overridepolicy.karmada.io", "/mutate-overridepolicy", "policy.karmada.io",
     "overridepolicies", _CU, "Namespaced"),
    ("resourcebinding.karmada.io", "/mutate-resourcebinding", "work.karmada.io",
     "resourcebindings", ("CREATE",), "Namespaced"),
    ("clusterresourcebinding.karmada.io", "/mutate-clusterresourcebinding", "work.karmada.io",
     "clusterresourcebindings", ("CREATE",), "Cluster"),
    ("work.karmada.io", "/mutate-work", "work.karmada.io", "works", _CU, "Namespaced"),
    ("autoscaling.karmada.io", "/mutate-federatedhpa", "autoscaling.karmada.io",
     "federatedhpas", _CU, "Namespaced"),
    ("multiclusterservice.karmada.io", "/mutate-multiclusterservice", "networking.karmada.io",
     "multiclusterservices", _CU, "Namespaced"),
)
VALIDATING: tuple[tuple[str, str, str, str, tuple[str, ...], str], ...] = (
    ("propagationpolicy.karmada.io", "/validate-propagationpolicy", "policy.karmada.io",
     "propagationpolicies", _CU, "Namespaced"),
    ("clusterpropagationpolicy.karmada.io", "/validate-clusterpropagationpolicy",
     "policy.karmada.io", "clusterpropagationpolicies", _CU, "Cluster"),
    ("overridepolicy.karmada.io", "/validate-overridepolicy", "policy.karmada.io",
     "overridepolicies", _CU, "Namespaced"),
    ("clusteroverridepolicy.karmada.io", "/validate-clusteroverridepolicy",
     "policy.karmada.io", "clusteroverridepolicies", _CU, "Cluster"),
    ("config.karmada.io", "/validate-resourceinterpreterwebhookconfiguration",
     "config.karmada.io", "resourceinterpreterwebhookconfigurations", _CU, "Cluster"),
    ("resourceinterpretercustomization.karmada.io",
     "/validate-resourceinterpretercustomization", "config.karmada.io",
     "resourceinterpretercustomizations", _CU, "Cluster"),
    ("federatedresourcequota.karmada.io", "/validate-federatedresourcequota",
     "policy.karmada.io", "federatedresourcequotas", _CU, "Namespaced"),
    ("multiclusteringress.karmada.io", "/validate-multiclusteringress",
     "networking.karmada.io", "multiclusteringresses", _CU, "Namespaced"),
    ("multiclusterservice.karmada.io", "/validate-multiclusterservice",
     "networking.karmada.io", "multiclusterservices", _CU, "Namespaced"),
    ("resourcedeletionprotection.karmada.io", "/validate-resourcedeletionprotection", "*", "*",
     ("DELETE",), "*"),
)
DELETION_PROTECTED = "resourcetemplate.karmada.io/deletion-protected"
# the CRDs whose v1alpha1 and v1alpha2 the webhook converts (the chart's _crds/patches)
CONVERTED = ("resourcebindings.work.karmada.io", "clusterresourcebindings.work.karmada.io")


def cluster_crd() -> dict[str, Any]:
    """A minimal CRD for Karmada's Cluster (``cluster.karmada.io/v1alpha1``, cluster-scoped).

    Karmada serves Cluster from karmada-aggregated-apiserver, not from a CRD; what its
    controllers need of the API is the same group, version, kind and a status subresource
    (the status controller writes ``status`` through it). The fields are Karmada's business:
    kept as they are sent.
    """
    keep = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusters.cluster.karmada.io"},
        "spec": {
            "group": "cluster.karmada.io", "scope": "Cluster",
            "names": {"kind": "Cluster", "listKind": "ClusterList", "plural": "clusters",
                      "singular": "cluster"},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": dict(keep), "status": dict(keep)}}},
            }],
        },
    }


def karmada_binaries() -> dict[str, Path]:
    """Karmada's binaries and CRDs, found (or built) as the other binaries are."""
    found = find_binaries(KARMADA_BINARIES)
    crd_dir()  # writes Karmada's CRDs when missing
    if not karmada_crd_dir().is_dir():
        raise ControlPlaneError(f"Karmada's CRDs missing and not written: {karmada_crd_dir()}")
    return found


def karmada_crd_dir() -> Path:
    return CACHE / "crds" / "karmada" / "all"


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """The ``status.conditions`` entry of type ``kind``, or an empty dict."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


class KarmadaPlane:
    """Karmada's API server, webhook, controller manager and scheduler; members joined (Push)."""

    def __init__(self, cp: ControlPlane, *, members: tuple[str, ...] | None = None,
                 log_level: int = 2) -> None:
        self.cp = cp
        self.members = cp.members if members is None else members
        self.log_level = log_level
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.bin: dict[str, Path] = {}
        self.kubeconfig = cp.workdir / f"kubeconfig-{NAME}"
        self.webhook_port = 0
        self.timings: dict[str, float] = {}  # step -> seconds, for the report
        self.started_s = 0.0

    @property
    def server(self) -> ApiServer:
        return self.cp.servers[NAME]

    def client(self, *, timeout: float = 5.0) -> KubeClient:
        """The adapters' client for the Karmada API server."""
        return KubeClient.from_kubeconfig(self.kubeconfig, context=NAME, timeout=timeout)

    # --- lifecycle ---

    def start(self) -> KarmadaPlane:
        t0 = time.monotonic()
        try:
            self._step("binaries", self._binaries)
            self._step("apiserver", self._apiserver)
            self._step("crds", self._crds)
            self._step("webhook", self._webhook)
            self._step("controllers", self._controllers)
            self._step("join", self._join_members)
            self._check_alive("start")
        except ControlPlaneError:
            self.stop()
            raise
        except Exception as e:  # an API answer or a tool failed: the same failure, with logs
            tails = self._tails()
            self.stop()
            raise ControlPlaneError(f"Karmada did not start: {e!r}\n{tails}") from e
        except BaseException:
            self.stop()
            raise
        self.started_s = round(time.monotonic() - t0, 2)
        log.info("Karmada started in %.1f s: %s", self.started_s, self.timings)
        return self

    def stop(self) -> None:
        """Stop the processes started here, newest first, by PID (SIGTERM, then SIGKILL)."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        mine = {id(p) for _n, p in self.procs}
        self.cp.procs[:] = [(n, p) for n, p in self.cp.procs if id(p) not in mine]
        self.procs.clear()
        server = self.cp.servers.pop(NAME, None)
        if server is not None and server._http is not None:
            server._http.close()

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs}

    # --- joining ---

    def join(self, name: str, *, endpoint: str, token: str, ca: bytes) -> None:
        """Join a cluster in Push mode: its credentials in a Secret, and a Cluster naming it.

        What ``karmadactl join`` writes, less the impersonator secret (read only by the
        unifiedAuth controller, which does not run here).
        """
        s = self.server
        s.create(f"/api/v1/namespaces/{CLUSTER_NS}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": CLUSTER_NS},
            "data": {"token": base64.b64encode(token.encode()).decode(),
                     "caBundle": base64.b64encode(ca).decode()}})
        s.create(CLUSTER_API, {
            "apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {"syncMode": "Push", "apiEndpoint": endpoint,
                     "secretRef": {"namespace": CLUSTER_NS, "name": name}}})

    def unjoin(self, name: str, *, timeout: float = 30) -> None:
        """Delete the Cluster (Karmada's finalizer removes its execution namespace), then its
        Secret. Returns once the Cluster is gone."""
        s = self.server
        s.http.delete(f"{CLUSTER_API}/{name}")
        deadline = time.monotonic() + timeout
        while s.get(f"{CLUSTER_API}/{name}") is not None:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"Karmada did not remove cluster {name}:\n"
                                        f"{self._tails()}")
            time.sleep(0.2)
        s.http.delete(f"/api/v1/namespaces/{CLUSTER_NS}/secrets/{name}")

    def wait_cluster(self, name: str, *, ready: bool = True, timeout: float = 60) -> None:
        """Wait until Karmada reports the cluster Ready (or, ``ready=False``, not Ready).

        Ready means what scheduling needs too: no ``NoSchedule`` taint left (the cluster
        controller lifts its not-ready taint after the status controller reports Ready), the
        API enablements collected (the scheduler's APIEnablement filter reads them) and the
        execution namespace made (the binding controller writes Works there).
        """
        s = self.server
        deadline = time.monotonic() + timeout
        while True:
            cluster = s.get(f"{CLUSTER_API}/{name}")
            is_ready = condition(cluster, "Ready").get("status") == "True"
            if not ready and cluster is not None and condition(cluster, "Ready") and not is_ready:
                return
            if ready and is_ready:
                taints = ((cluster or {}).get("spec") or {}).get("taints") or []
                apis = ((cluster or {}).get("status") or {}).get("apiEnablements") or []
                if (not any(t.get("effect") == "NoSchedule" for t in taints)
                        and any(a.get("groupVersion") == "apps/v1" for a in apis)
                        and s.get(f"/api/v1/namespaces/karmada-es-{name}") is not None):
                    return
            self._check_alive(f"waiting for cluster {name}")
            if time.monotonic() > deadline:
                conditions = ((cluster or {}).get("status") or {}).get("conditions")
                raise ControlPlaneError(
                    f"Karmada did not report cluster {name} {'' if ready else 'not '}Ready in "
                    f"{timeout}s (conditions: {conditions}):\n{self._tails()}")
            time.sleep(0.1)

    # --- pieces ---

    def _step(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = round(time.monotonic() - t, 2)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = self.cp._spawn(name, argv)
        self.procs.append((name, proc))
        return proc

    def _tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {n} ---\n{self.cp.log(n, lines)}" for n, _p in self.procs)

    def _check_alive(self, during: str) -> None:
        dead = [n for n, up in self.alive().items() if not up]
        if dead:
            raise ControlPlaneError(f"Karmada processes exited ({during}): {dead}:\n"
                                    + "\n".join(f"--- {n} ---\n{self.cp.log(n, 30)}"
                                                for n in dead))

    def _binaries(self) -> None:
        if "etcd" not in self.cp.bin:
            raise ControlPlaneError("start the ControlPlane (its etcd) before Karmada")
        self.bin = karmada_binaries()

    def _apiserver(self) -> None:
        before = len(self.cp.procs)
        self.cp._apiserver(NAME)
        self.procs += self.cp.procs[before:]
        self.cp._wait_ready(self.server)
        ca = (self.cp.workdir / "ca.crt").read_bytes()
        write_kubeconfig(self.kubeconfig, clusters={NAME: (self.server.endpoint,
                                                           self.server.token, ca)})
        for ns in (SYSTEM_NS, CLUSTER_NS):
            self.server.create("/api/v1/namespaces", {"metadata": {"name": ns}})

    def _crds(self) -> None:
        self.webhook_port = free_port()
        ca_bundle = base64.b64encode((self.cp.workdir / "ca.crt").read_bytes()).decode()
        names = []
        for path in sorted(karmada_crd_dir().glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                if doc["metadata"]["name"] in CONVERTED:  # the chart's conversion patches
                    doc["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                        "clientConfig": {"url": f"https://127.0.0.1:{self.webhook_port}/convert",
                                         "caBundle": ca_bundle},
                        "conversionReviewVersions": ["v1"]}}
                self.server.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                   doc)
                names.append(doc["metadata"]["name"])
        crd = cluster_crd()
        self.server.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        names.append(crd["metadata"]["name"])
        if not any(n.startswith("resourceinterpretercustomizations.") for n in names):
            raise ControlPlaneError(f"{karmada_crd_dir()}: Karmada's config CRDs are missing")
        self.server.wait_crds(names)
        log.info("Karmada CRDs established: %d", len(names))
        # The garbage collector deletes a template's ResourceBinding with the template; the
        # namespace controller finalizes deleted namespaces (execution spaces on unjoin).
        # Started after the CRDs: the collector watches the kinds discovery shows at its start
        # and finds later ones only at its next resync (30 s), so removals would wait for it.
        before = len(self.cp.procs)
        self.cp._controller_manager(NAME, controllers="namespace,garbagecollector")
        self.procs += self.cp.procs[before:]

    def _webhook(self) -> None:
        workdir = self.cp.workdir
        certs = workdir / "karmada-webhook-certs"
        certs.mkdir(exist_ok=True)
        (workdir / "karmada-webhook-san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        self.cp._openssl("req", "-newkey", "rsa:2048", "-nodes",
                         "-keyout", str(certs / "tls.key"), "-out", "karmada-webhook.csr",
                         "-subj", "/CN=karmada-webhook")
        self.cp._openssl("x509", "-req", "-in", "karmada-webhook.csr", "-CA", "ca.crt",
                         "-CAkey", "ca.key", "-CAcreateserial", "-out", str(certs / "tls.crt"),
                         "-days", "2", "-extfile", "karmada-webhook-san.ext")
        self._spawn("karmada-webhook", [
            str(self.bin["karmada-webhook"]), f"--kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.webhook_port}",
            f"--cert-dir={certs}", f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}", f"--v={self.log_level}",
        ])
        url = f"https://127.0.0.1:{self.webhook_port}"
        ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz/", verify=ctx, timeout=2).status_code == 200:
                    break
            self._check_alive("starting the webhook")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"karmada-webhook did not serve on {url}:\n"
                                        f"{self.cp.log('karmada-webhook')}")
            time.sleep(0.1)
        ca_bundle = base64.b64encode((workdir / "ca.crt").read_bytes()).decode()
        for kind, hooks in (("MutatingWebhookConfiguration", MUTATING),
                            ("ValidatingWebhookConfiguration", VALIDATING)):
            plural = kind.lower() + "s"
            self.server.create(f"/apis/admissionregistration.k8s.io/v1/{plural}", {
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                "metadata": {"name": "mutating-config" if kind.startswith("M")
                             else "validating-config", "labels": {"app": "karmada-webhook"}},
                "webhooks": [self._hook(h, url=url, ca_bundle=ca_bundle) for h in hooks]})
        self._wait_mutation()

    @staticmethod
    def _hook(hook: tuple[str, str, str, str, tuple[str, ...], str], *, url: str,
              ca_bundle: str) -> dict[str, Any]:
        name, path, group, resource, operations, scope = hook
        out: dict[str, Any] = {
            "name": name,
            "rules": [{"operations": list(operations), "apiGroups": [group],
                       "apiVersions": ["*"], "resources": [resource], "scope": scope}],
            "clientConfig": {"url": f"{url}{path}", "caBundle": ca_bundle},
            "failurePolicy": "Fail", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": WEBHOOK_TIMEOUT_S,
        }
        if name.startswith("resourcedeletionprotection."):
            out["objectSelector"] = {"matchExpressions": [
                {"key": DELETION_PROTECTED, "operator": "Exists"}]}
        return out

    def _wait_mutation(self, timeout: float = 30) -> None:
        """Until the API server calls the webhook: a dry-run PropagationPolicy comes back with
        the permanent-id label (the API server loads webhook configurations asynchronously;
        a policy written before would miss its label, and Karmada would never schedule it)."""
        path = f"/apis/policy.karmada.io/v1alpha1/namespaces/{SYSTEM_NS}/propagationpolicies"
        probe = {"apiVersion": "policy.karmada.io/v1alpha1", "kind": "PropagationPolicy",
                 "metadata": {"name": "smk8s-webhook-probe"},
                 "spec": {"resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap",
                                                 "name": "none"}], "placement": {}}}
        deadline = time.monotonic() + timeout
        while True:
            r = self.server.http.post(path, params={"dryRun": "All"}, json=copy.deepcopy(probe))
            labels = ((r.json().get("metadata") or {}).get("labels") or {}
                      if r.status_code in (200, 201) else {})
            if "propagationpolicy.karmada.io/permanent-id" in labels:
                return
            self._check_alive("waiting for the webhook")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"the Karmada API server does not call the webhook "
                                        f"(last answer {r.status_code}: {r.text[:500]}):\n"
                                        f"{self.cp.log('karmada-webhook')}")
            time.sleep(0.1)

    def _controllers(self) -> None:
        kc = f"--kubeconfig={self.kubeconfig}"
        health = {"karmada-controller-manager": free_port(), "karmada-scheduler": free_port()}
        self._spawn("karmada-controller-manager", [
            str(self.bin["karmada-controller-manager"]), kc, "--leader-elect=false",
            f"--controllers={CONTROLLERS}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{health['karmada-controller-manager']}",
            # test-sized periods: a member's health is read every 2 s, and a change of it
            # counts after 2 s (30 s by default, against flapping networks)
            "--cluster-status-update-frequency=2s", "--cluster-success-threshold=2s",
            "--cluster-failure-threshold=2s", "--cluster-monitor-period=1s",
            f"--v={self.log_level}",
        ])
        self._spawn("karmada-scheduler", [
            str(self.bin["karmada-scheduler"]), kc, "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{health['karmada-scheduler']}",
            f"--v={self.log_level}",
        ])
        deadline = time.monotonic() + 60
        for name, port in health.items():
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz",
                                 timeout=1).status_code == 200:
                        break
                self._check_alive(f"starting {name}")
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"{name} not healthy:\n{self.cp.log(name)}")
                time.sleep(0.1)

    def _join_members(self) -> None:
        ca = (self.cp.workdir / "ca.crt").read_bytes()
        for m in self.members:
            member = self.cp.servers[m]
            self.join(m, endpoint=member.endpoint, token=member.token, ca=ca)
        for m in self.members:
            self.wait_cluster(m)
