"""The Karmada adapter against a real API server carrying Karmada's own CRDs (v1.12 chart).

No Karmada controller runs here (its scheduler and controllers need the Karmada control plane,
which is not built), so what is tested is what is ours: the objects the adapter writes (the
Deployment template, the PropagationPolicy's ``placement.clusterAffinity.clusterNames``, the
OverridePolicy's per-cluster ``plaintext`` rules with the standby marker and NSM annotation),
the API server's validation of them against Karmada's schemas, 409 conflicts between
concurrent writers retried until every write lands, and the reading of a ResourceBinding's
status: this test writes the binding and its status as Karmada's scheduler and status
controller would, and checks that readiness follows them, with timeouts.
"""

from __future__ import annotations

import threading
import time
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

pytestmark = pytest.mark.timeout(300)

NS = "karmada-test"
POLICY = f"/apis/policy.karmada.io/v1alpha1/namespaces/{NS}"
WORK = f"/apis/work.karmada.io/v1alpha2/namespaces/{NS}"


class CountingClient(KubeClient):
    """The real client, counting the 409 conflicts it met (to see that races happened)."""

    conflicts = 0
    lock = threading.Lock()

    def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                query: Mapping[str, str] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        try:
            return super().request(method, path, body=body, query=query, timeout=timeout)
        except FederationError as e:
            if getattr(e, "conflict", False):
                with CountingClient.lock:
                    CountingClient.conflicts += 1
            raise


@pytest.fixture
def karmada(control_plane: ControlPlane) -> Iterator[KarmadaFederation]:
    base = client(control_plane, "host")
    counting = CountingClient(base.api, name="karmada", timeout=base.timeout)
    yield KarmadaFederation(karmada=counting, namespace=NS, domain="smk8s.test")


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

    # the last instance takes the template and both policies with it
    karmada.unplace(instance=target)
    assert host.get(f"{POLICY}/propagationpolicies/web") is None
    assert host.get(f"{POLICY}/overridepolicies/web") is None
    assert host.get(f"/apis/apps/v1/namespaces/{NS}/deployments/web") is None
    host.http.delete(f"{WORK}/resourcebindings/web-deployment")


def test_concurrent_placements_conflict_and_all_land(karmada: KarmadaFederation,
                                                     control_plane: ControlPlane) -> None:
    host = control_plane.servers["host"]
    clusters = [f"edge-{i}" for i in range(1, 7)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clusters))

    def place(i: int, cluster: str) -> None:
        try:
            barrier.wait()
            karmada.place(instance=Instance(cluster=cluster, node="n1", pod=f"api-{i}"),
                          workload="echo", params={}, start=True)
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    before = CountingClient.conflicts
    threads = [threading.Thread(target=place, args=(i, c)) for i, c in enumerate(clusters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    pp = host.get(f"{POLICY}/propagationpolicies/api")
    op = host.get(f"{POLICY}/overridepolicies/api")
    assert pp is not None and op is not None
    assert pp["spec"]["placement"]["clusterAffinity"]["clusterNames"] == clusters
    assert set(rules(op)) == set(clusters)
    print(f"409 conflicts met and retried: {CountingClient.conflicts - before}")
    deadline = time.monotonic() + 5
    for i, c in enumerate(clusters):
        karmada.unplace(instance=Instance(cluster=c, node="n1", pod=f"api-{i}"))
    assert time.monotonic() < deadline + 60
    assert host.get(f"{POLICY}/propagationpolicies/api") is None
