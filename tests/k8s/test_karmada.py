"""The Karmada adapter against a real API server carrying Karmada's own CRDs (v1.12 chart).

No Karmada controller runs here (tests/k8s/test_karmada_controllers.py runs them), so what is
tested is what is ours: the objects the adapter writes (the
Deployment template, the PropagationPolicy's ``placement.clusterAffinity.clusterNames``, the
OverridePolicy's per-cluster ``plaintext`` rules with the standby marker and NSM annotation),
the API server's validation of them against Karmada's schemas, 409 conflicts between
concurrent writers retried until every write lands (each policy's first write is made to
conflict for certain by a competing writer, whose annotation survives the retry), and the
reading of a ResourceBinding's status: this test writes the binding and its status as
Karmada's scheduler and status controller would, and checks that readiness follows them, with
timeouts. The clusters are Karmada Cluster objects (the minimal Cluster CRD of
tests/k8s/karmada_plane.py) whose Ready condition the test writes; placing on a cluster with
no Cluster object is refused.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.karmada import KarmadaFederation
from mobility.backends.kube.objects import NSM_ANNOTATION, STANDBY_ANNOTATION
from mobility.errors import FederationError
from mobility.models import Instance
from tests.k8s.conftest import client
from tests.k8s.controlplane import ApiServer, ControlPlane
from tests.k8s.karmada_plane import CLUSTER_API, cluster_crd

pytestmark = pytest.mark.timeout(300)

NS = "karmada-test"
POLICY = f"/apis/policy.karmada.io/v1alpha1/namespaces/{NS}"
WORK = f"/apis/work.karmada.io/v1alpha2/namespaces/{NS}"


INTERFERED = "test.mobility.io/interfered"


class CountingClient(KubeClient):
    """The real client, counting the 409 conflicts it meets, per path.

    A path in ``armed`` gets a competing writer once: just before the adapter's first write
    to it (after the adapter read it), the object is changed behind the adapter's back (an
    annotation, as another controller or a person would), so that write certainly loses the
    race and has to be retried.
    """

    def __init__(self, api: Any, *, name: str, timeout: float) -> None:
        super().__init__(api, name=name, timeout=timeout)
        self.conflicts: Counter[str] = Counter()
        self.armed: set[str] = set()
        self.lock = threading.Lock()
        self.local = threading.local()

    def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                query: Mapping[str, str] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        if getattr(self.local, "interfering", False):
            return super().request(method, path, body=body, query=query, timeout=timeout)
        if method == "PUT":
            with self.lock:
                interfere = path in self.armed
                self.armed.discard(path)
            if interfere:
                self.interfere(path)
        try:
            return super().request(method, path, body=body, query=query, timeout=timeout)
        except FederationError as e:
            if getattr(e, "conflict", False):
                with self.lock:
                    self.conflicts[path] += 1
            raise

    def interfere(self, path: str) -> None:
        def annotate(obj: dict[str, Any]) -> bool:
            obj["metadata"].setdefault("annotations", {})[INTERFERED] = "yes"
            return True

        self.local.interfering = True
        try:
            assert self.update(path, annotate) is not None
        finally:
            self.local.interfering = False


CLUSTERS = [f"edge-{i}" for i in range(1, 7)]


def ready_clusters(host: ApiServer, names: list[str]) -> None:
    """Karmada Cluster objects reported Ready, as Karmada's cluster status controller would."""
    crd = cluster_crd()
    host.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    host.wait_crds([crd["metadata"]["name"]])
    for name in names:
        host.create(CLUSTER_API, {
            "apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {"syncMode": "Push", "apiEndpoint": "https://127.0.0.1:9"}})
        cluster = host.get(f"{CLUSTER_API}/{name}")
        assert cluster is not None
        cluster["status"] = {"conditions": [{
            "type": "Ready", "status": "True", "reason": "ClusterReady",
            "message": "written by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        host.http.put(f"{CLUSTER_API}/{name}/status", json=cluster).raise_for_status()


@pytest.fixture
def karmada(control_plane: ControlPlane) -> Iterator[KarmadaFederation]:
    ready_clusters(control_plane.servers["host"], CLUSTERS)
    base = client(control_plane, "host")
    counting = CountingClient(base.api, name="karmada", timeout=base.timeout)
    # no Karmada controller removes anything here: unplace must not wait for it
    yield KarmadaFederation(karmada=counting, namespace=NS, domain="smk8s.test",
                            wait_on_unplace=False)


def rules(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for rule in op["spec"]["overrideRules"]:
        (cluster,) = rule["targetCluster"]["clusterNames"]
        out[cluster] = {p["path"]: p.get("value") for p in rule["overriders"]["plaintext"]}
    return out


def write_binding(host: ApiServer, service: str, *, clusters: list[str],
                  health: dict[str, str]) -> None:
    """What Karmada's scheduler (spec.clusters) and status controller (status) would write."""
    path = f"{WORK}/resourcebindings/{service}-deployment"
    current = host.get(path)
    spec = {"resource": {"apiVersion": "apps/v1", "kind": "Deployment", "name": service,
                         "namespace": NS},
            "clusters": [{"name": c, "replicas": 1} for c in clusters]}
    if current is None:
        host.create(f"{WORK}/resourcebindings", {
            "apiVersion": "work.karmada.io/v1alpha2", "kind": "ResourceBinding",
            "metadata": {"name": f"{service}-deployment", "namespace": NS}, "spec": spec})
    else:
        current["spec"] = spec
        host.http.put(path, json=current).raise_for_status()
    current = host.get(path)
    assert current is not None
    current["status"] = {"aggregatedStatus": [
        {"clusterName": c, "applied": True, "health": h, "status": {"readyReplicas": 1}}
        for c, h in health.items()]}
    host.http.put(f"{path}/status", json=current).raise_for_status()


def test_placement_policies_and_binding_status(karmada: KarmadaFederation,
                                               control_plane: ControlPlane) -> None:
    host = control_plane.servers["host"]
    source = Instance(cluster="edge-1", node="e1", pod="web-1")
    target = Instance(cluster="edge-2", node="e7", pod="web-2")
    karmada.place(instance=source, workload="echo", params={"port": 7000}, start=True)
    karmada.place(instance=source, workload="echo", params={"port": 7000}, start=True)

    dep = host.get(f"/apis/apps/v1/namespaces/{NS}/deployments/web")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "MOBILITY_PARAM_PORT", "value": "7000"}]
    pp = host.get(f"{POLICY}/propagationpolicies/web")
    assert pp is not None
    assert pp["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["edge-1"]
    assert pp["spec"]["resourceSelectors"][0]["name"] == "web"

    # readiness follows the binding: none yet -> timeout, retryable, saying why
    with pytest.raises(FederationError, match="no ResourceBinding") as err:
        karmada.wait_ready(instance=source, timeout=0.3)
    assert err.value.retryable
    write_binding(host, "web", clusters=["edge-1"], health={"edge-1": "Healthy"})
    karmada.wait_ready(instance=source, timeout=5)

    # a move's PLACE: the target joins the policy as a standby
    karmada.place(instance=target, workload="echo", params={"port": 7000}, start=True)
    pp = host.get(f"{POLICY}/propagationpolicies/web")
    assert pp is not None
    assert pp["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["edge-1", "edge-2"]
    op = host.get(f"{POLICY}/overridepolicies/web")
    assert op is not None
    r = rules(op)
    assert r["edge-2"]["/metadata/annotations"][STANDBY_ANNOTATION] == "true"
    assert r["edge-1"]["/metadata/annotations"][STANDBY_ANNOTATION] == "false"
    assert r["edge-2"]["/spec/template/metadata/annotations"] == {
        NSM_ANNOTATION: "kernel://web@smk8s.test/nsm-1"}
    assert r["edge-2"]["/spec/template/spec/nodeSelector"] == {"kubernetes.io/hostname": "e7"}
    with pytest.raises(FederationError, match="not scheduled"):
        karmada.wait_ready(instance=target, timeout=0.3)
    write_binding(host, "web", clusters=["edge-1", "edge-2"],
                  health={"edge-1": "Healthy", "edge-2": "Unhealthy"})
    with pytest.raises(FederationError, match="Unhealthy"):
        karmada.wait_ready(instance=target, timeout=0.3)
    write_binding(host, "web", clusters=["edge-1", "edge-2"],
                  health={"edge-1": "Healthy", "edge-2": "Healthy"})
    karmada.wait_ready(instance=target, timeout=5)
    assert karmada.placements() == {"web": ["edge-1", "edge-2"]}

    # RELEASE: the source leaves; the target serves
    karmada.unplace(instance=source)
    karmada.unplace(instance=source)  # idempotent
    pp = host.get(f"{POLICY}/propagationpolicies/web")
    op = host.get(f"{POLICY}/overridepolicies/web")
    assert pp is not None and op is not None
    assert pp["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["edge-2"]
    assert set(rules(op)) == {"edge-2"}
    assert rules(op)["edge-2"]["/metadata/annotations"][STANDBY_ANNOTATION] == "false"
    with pytest.raises(FederationError, match="still holds"):
        karmada.wait_removed(instance=source, timeout=0.3)
    write_binding(host, "web", clusters=["edge-2"], health={"edge-2": "Healthy"})
    karmada.wait_removed(instance=source, timeout=5)

    # a cluster Karmada does not know is refused at once, not retryable
    with pytest.raises(FederationError, match="not a member cluster of Karmada") as err:
        karmada.place(instance=Instance(cluster="edge-404", node="x1", pod="web-3"),
                      workload="echo", params={}, start=True)
    assert not err.value.retryable

    # the last instance takes the template and both policies with it
    karmada.unplace(instance=target)
    assert host.get(f"{POLICY}/propagationpolicies/web") is None
    assert host.get(f"{POLICY}/overridepolicies/web") is None
    assert host.get(f"/apis/apps/v1/namespaces/{NS}/deployments/web") is None
    host.http.delete(f"{WORK}/resourcebindings/web-deployment")


def test_concurrent_placements_conflict_and_all_land(karmada: KarmadaFederation,
                                                     control_plane: ControlPlane) -> None:
    host = control_plane.servers["host"]
    counting = karmada.karmada
    assert isinstance(counting, CountingClient)
    pp_path, op_path = f"{POLICY}/propagationpolicies/api", f"{POLICY}/overridepolicies/api"
    counting.armed = {pp_path, op_path}  # each policy's first write certainly conflicts
    clusters = CLUSTERS
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clusters))

    def place(i: int, cluster: str) -> None:
        try:
            barrier.wait()
            karmada.place(instance=Instance(cluster=cluster, node="n1", pod=f"api-{i}"),
                          workload="echo", params={}, start=True)
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=place, args=(i, c)) for i, c in enumerate(clusters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a placement hung"
    assert errors == []
    assert counting.armed == set(), "the adapter never wrote a policy it had read"
    # every write that lost a race was retried and landed, over the other writer's change
    assert counting.conflicts[pp_path] >= 1 and counting.conflicts[op_path] >= 1, (
        counting.conflicts)
    pp = host.get(pp_path)
    op = host.get(op_path)
    assert pp is not None and op is not None
    assert pp["spec"]["placement"]["clusterAffinity"]["clusterNames"] == clusters
    assert set(rules(op)) == set(clusters)
    for obj in (pp, op):
        assert obj["metadata"]["annotations"][INTERFERED] == "yes"
    for i, c in enumerate(clusters):
        karmada.unplace(instance=Instance(cluster=c, node="n1", pod=f"api-{i}"))
    assert host.get(pp_path) is None
    assert host.get(op_path) is None
