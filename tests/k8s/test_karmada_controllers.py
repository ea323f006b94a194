"""The Karmada adapter with Karmada's own controllers doing the propagation (Karmada v1.12).

Aspects: Karmada's API server, webhook, controller manager and scheduler run for real
(tests/k8s/karmada_plane.py) with both member clusters joined in push mode; the adapter
writes only to Karmada's API server, and every check of a member reads that member's own API
server. A service placed on member-a is ready because Karmada scheduled it, rendered its
override rule into a Work, applied it on member-a and reported the Deployment's status back
(the member has the Deployment and a Running pod of that instance, on the planned node). A
move: the target placed as a standby on member-b becomes ready there; the source unplaced is
removed from member-a (no Deployment, no pod) while member-b's pod keeps Running and loses
its standby marker; the last unplace leaves both members clean and the binding gone. An
instance without parameters propagates too (the template Karmada stores has no ``env``).
Errors name the cluster: a cluster Karmada does not know is refused at once, not retryable;
a joined cluster Karmada reports not Ready makes ``wait_ready`` time out, retryable, saying
so. Timings (propagation, move, removal) are logged and recorded as properties, never
asserted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mobility.backends.kube.karmada import KarmadaFederation
from mobility.backends.kube.objects import INSTANCE_LABEL, STANDBY_ANNOTATION
from mobility.errors import FederationError
from mobility.models import Instance
from tests.conftest import free_port
from tests.k8s.controlplane import ControlPlane
from tests.k8s.karmada_plane import KarmadaPlane

pytestmark = pytest.mark.timeout(300)

log = logging.getLogger(__name__)

NS = "karmada-apps"  # not "mobility": KubeFed's adapter uses that one on the same members
DOMAIN = "smk8s.test"
WORK = f"/apis/work.karmada.io/v1alpha2/namespaces/{NS}"
Record = Callable[[str, object], None]


@pytest.fixture
def karmada(karmada_plane: KarmadaPlane) -> Iterator[KarmadaFederation]:
    fed = KarmadaFederation(karmada=karmada_plane.client(), namespace=NS, domain=DOMAIN)
    yield fed
    s = karmada_plane.server
    for service in fed.placements():  # what a failed test left placed
        for path in (f"/apis/apps/v1/namespaces/{NS}/deployments/{service}",
                     f"/apis/policy.karmada.io/v1alpha1/namespaces/{NS}/propagationpolicies/"
                     f"{service}",
                     f"/apis/policy.karmada.io/v1alpha1/namespaces/{NS}/overridepolicies/"
                     f"{service}"):
            with contextlib.suppress(Exception):
                s.http.delete(path)


def deployment(cp: ControlPlane, member: str, service: str) -> dict[str, Any] | None:
    return cp.servers[member].get(f"/apis/apps/v1/namespaces/{NS}/deployments/{service}")


def pods(cp: ControlPlane, member: str, pod: str) -> list[dict[str, Any]]:
    """The member's pods of one instance (the override rule's instance label)."""
    return cp.servers[member].items(f"/api/v1/namespaces/{NS}/pods",
                                    labelSelector=f"{INSTANCE_LABEL}={pod}")


def running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or [])


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> float:
    """Poll until ``check()`` holds; returns how long it took (the member's own controllers
    finish what Karmada started: a deleted Deployment's pods go after it)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return round(time.monotonic() - t0, 3)


def timed(record: Record, name: str, fn: Callable[[], None]) -> float:
    t0 = time.monotonic()
    fn()
    took = round(time.monotonic() - t0, 3)
    record(name, took)
    log.info("%s: %.3f s", name, took)
    return took


def test_place_move_remove_through_karmadas_controllers(
        karmada: KarmadaFederation, karmada_plane: KarmadaPlane,
        record_property: Record) -> None:
    cp = karmada_plane.cp
    record_property("karmada_start_s", karmada_plane.started_s)
    record_property("karmada_start_steps", karmada_plane.timings)
    source = Instance(cluster="member-a", node=cp.node_names("member-a")[0], pod="kw-1")
    target = Instance(cluster="member-b", node=cp.node_names("member-b")[1], pod="kw-2")
    params = {"port": 7000}

    # PLACE: Karmada schedules, renders the rule, applies it on member-a, reports status back
    def place_source() -> None:
        karmada.place(instance=source, workload="echo", params=params, start=True)
        karmada.wait_ready(instance=source, timeout=60)

    timed(record_property, "place_ready_s", place_source)
    dep = deployment(cp, "member-a", "kw")
    assert dep is not None, "Karmada did not create the Deployment on member-a"
    assert dep["spec"]["replicas"] == 1
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"][INSTANCE_LABEL] == "kw-1"
    assert template["spec"]["nodeSelector"] == {"kubernetes.io/hostname": source.node}
    assert template["spec"]["containers"][0]["env"] == [
        {"name": "MOBILITY_PARAM_PORT", "value": "7000"}]
    assert dep["metadata"]["labels"].get("karmada.io/managed") == "true"
    (pod,) = pods(cp, "member-a", "kw-1")
    assert running(pod), pod.get("status")
    assert pod["spec"]["nodeName"] == source.node
    assert deployment(cp, "member-b", "kw") is None
    assert cp.servers["member-b"].get(f"/api/v1/namespaces/{NS}") is not None, (
        "Karmada's namespace controller propagates the namespace to every member")
    rb = karmada_plane.server.get(f"{WORK}/resourcebindings/kw-deployment")
    assert rb is not None
    assert [c["name"] for c in rb["spec"]["clusters"]] == ["member-a"]
    # what wait_ready read: member-a's Deployment status, collected back by Karmada
    (entry,) = rb["status"]["aggregatedStatus"]
    assert (entry["clusterName"], entry["applied"], entry["health"]) == (
        "member-a", True, "Healthy")
    assert entry["status"]["readyReplicas"] == 1

    # a move's PLACE: the target runs on member-b as a standby, the source keeps running
    def place_target() -> None:
        karmada.place(instance=target, workload="echo", params=params, start=True)
        karmada.wait_ready(instance=target, timeout=60)

    timed(record_property, "move_place_ready_s", place_target)
    dep_b = deployment(cp, "member-b", "kw")
    assert dep_b is not None
    assert dep_b["metadata"]["annotations"][STANDBY_ANNOTATION] == "true"
    (pod_b,) = pods(cp, "member-b", "kw-2")
    assert running(pod_b) and pod_b["spec"]["nodeName"] == target.node
    assert [running(p) for p in pods(cp, "member-a", "kw-1")] == [True]

    # RELEASE: the source leaves member-a; member-b serves, no longer a standby
    def release_source() -> None:
        karmada.unplace(instance=source)
        karmada.wait_removed(instance=source, timeout=60)

    timed(record_property, "move_release_removed_s", release_source)
    assert deployment(cp, "member-a", "kw") is None, "the source's Deployment is still there"
    pods_gone = eventually(lambda: pods(cp, "member-a", "kw-1") == [],
                           "member-a's pod of kw-1 gone")
    record_property("move_release_pods_gone_after_s", pods_gone)
    eventually(lambda: (deployment(cp, "member-b", "kw") or {}).get("metadata", {})
               .get("annotations", {}).get(STANDBY_ANNOTATION) == "false",
               "member-b's Deployment lost its standby marker")
    (after,) = pods(cp, "member-b", "kw-2")
    assert running(after) and after["metadata"]["uid"] == pod_b["metadata"]["uid"], (
        "the target's pod was restarted by the release")
    karmada.wait_ready(instance=target, timeout=30)

    # the last unplace: both members clean, the binding gone with its template
    def remove_target() -> None:
        karmada.unplace(instance=target)
        karmada.wait_removed(instance=target, timeout=60)

    timed(record_property, "last_unplace_removed_s", remove_target)
    for member, pod_name in (("member-a", "kw-1"), ("member-b", "kw-2")):
        assert deployment(cp, member, "kw") is None, f"{member} still has the Deployment"
        eventually(lambda m=member, p=pod_name: pods(cp, m, p) == [],
                   f"{member}'s pods of kw gone")
    eventually(lambda: karmada_plane.server.get(f"{WORK}/resourcebindings/kw-deployment")
               is None, "the ResourceBinding gone with its template")
    assert karmada.placements() == {}


def test_instance_without_parameters_and_a_quick_return(
        karmada: KarmadaFederation, karmada_plane: KarmadaPlane,
        record_property: Record) -> None:
    """The template Karmada stores drops the empty ``env``; the rule still applies. The same
    service placed again right after its last unplace (its PropagationPolicy, binding and Work
    still being deleted by Karmada) comes back."""
    cp = karmada_plane.cp
    instance = Instance(cluster="member-a", node=cp.node_names("member-a")[1], pod="kn-1")
    karmada.place(instance=instance, workload="echo", params={}, start=True)
    karmada.wait_ready(instance=instance, timeout=60)
    dep = deployment(cp, "member-a", "kn")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0].get("env") is None
    assert [running(p) for p in pods(cp, "member-a", "kn-1")] == [True]
    karmada.unplace(instance=instance)

    again = Instance(cluster="member-b", node=cp.node_names("member-b")[0], pod="kn-2")

    def come_back() -> None:
        karmada.place(instance=again, workload="echo", params={}, start=True)
        karmada.wait_ready(instance=again, timeout=60)

    timed(record_property, "return_after_unplace_ready_s", come_back)
    assert karmada.placements() == {"kn": ["member-b"]}
    karmada.wait_removed(instance=instance, timeout=60)
    assert deployment(cp, "member-a", "kn") is None
    assert [running(p) for p in pods(cp, "member-b", "kn-2")] == [True]
    karmada.unplace(instance=again)
    karmada.wait_removed(instance=again, timeout=60)
    assert deployment(cp, "member-b", "kn") is None


def test_errors_name_the_cluster(karmada: KarmadaFederation, karmada_plane: KarmadaPlane,
                                 record_property: Record) -> None:
    # a cluster Karmada does not know: refused at once, nothing written
    with pytest.raises(FederationError, match="'member-z' is not a member cluster of "
                       "Karmada") as err:
        karmada.place(instance=Instance(cluster="member-z", node="z1", pod="kx-1"),
                      workload="echo", params={}, start=True)
    assert not err.value.retryable
    assert karmada.placements() == {}

    # a joined cluster whose API server does not answer: Karmada reports it not Ready, its
    # scheduler does not place there, and wait_ready says so (retryable: it may come back)
    ca = (karmada_plane.cp.workdir / "ca.crt").read_bytes()
    down = Instance(cluster="member-down", node="d1", pod="kd-1")
    karmada_plane.join(down.cluster, endpoint=f"https://127.0.0.1:{free_port()}",
                       token="no-such-token", ca=ca)
    try:
        timed(record_property, "join_to_not_ready_s",
              lambda: karmada_plane.wait_cluster(down.cluster, ready=False, timeout=60))
        karmada.place(instance=down, workload="echo", params={}, start=True)
        with pytest.raises(FederationError, match="Karmada reports cluster member-down not "
                           "Ready") as err:
            karmada.wait_ready(instance=down, timeout=5)
        assert err.value.retryable
        log.info("not-ready error: %s", err.value)
        karmada.unplace(instance=down)
        assert karmada.placements() == {}
    finally:
        timed(record_property, "unjoin_s", lambda: karmada_plane.unjoin(down.cluster))
    # the members Karmada joined at the start are untouched by it
    for m in karmada_plane.members:
        karmada_plane.wait_cluster(m, timeout=30)


def test_a_cluster_joins_and_unjoins_through_the_adapter(
        karmada: KarmadaFederation, karmada_plane: KarmadaPlane,
        control_plane: ControlPlane) -> None:
    """What ``karmadactl join`` does, in push mode, from a member's admin client: Karmada
    reports the cluster Ready, the adapter reaches the member with the credentials Karmada
    holds (its nodes, real ones included, become the engine's record); unjoining removes the
    Cluster, its secret and the service account it made in the member."""
    from tests.k8s.conftest import client

    s = karmada_plane.server
    admin = client(control_plane, "member-c")
    karmada.join(name="member-c", member=admin, ready_timeout_s=60)
    cluster = s.get("/apis/cluster.karmada.io/v1alpha1/clusters/member-c")
    assert cluster is not None and cluster["spec"]["syncMode"] == "Push"
    assert cluster["spec"]["apiEndpoint"] == control_plane.servers["member-c"].endpoint
    assert s.get("/api/v1/namespaces/karmada-cluster/secrets/member-c") is not None
    # the member, through Karmada's credentials: a service account, not the admin token
    assert karmada.member("member-c").get("/api/v1/namespaces/karmada-cluster") is not None
    assert karmada.cluster_record("member-c").nodes == ()
    record = karmada.cluster_record("member-a")  # KWOK's nodes and the real ones
    real = {n.name: n.underlay_ip for n in control_plane.real_nodes.values()
            if n.cluster == "member-a"}
    assert real and all(record.node(name).underlay_ip == ip for name, ip in real.items())

    karmada.unjoin(name="member-c", member=admin)
    assert s.get("/apis/cluster.karmada.io/v1alpha1/clusters/member-c") is None
    assert s.get("/api/v1/namespaces/karmada-cluster/secrets/member-c") is None
    member = control_plane.servers["member-c"]
    assert member.get("/api/v1/namespaces/karmada-cluster/serviceaccounts/"
                      "karmada-member-c") is None
    karmada.unjoin(name="member-c", member=admin)  # idempotent
