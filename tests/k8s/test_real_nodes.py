"""Member clusters with real nodes: a kubelet on containerd runs the pods KubeFed places.

Each member of the test control plane has one real node (tests/k8s/nodes.py) beside its KWOK
nodes. Here a service of the reference ``echo`` image is placed through the KubeFed adapter on
the real node of ``member-a``: the member's own API server shows its pod Running and Ready
(readiness is the pod's own probe, the workload's ready file), the pod has an address of that
node's pod network, and it answers UDP from the host. Then it moves: placed on ``member-b``'s
real node, that pod answers too; the source is taken out, and RELEASE returns only once the
source pod is gone from the API server and its container from the node's containerd.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dataplane.lab.pods import kube_pod_spec
from mobility.backends.kube.kubefed import KubeFedFederation
from mobility.backends.kube.objects import INSTANCE_LABEL
from mobility.models import Instance
from tests.k8s.conftest import DOMAIN, NAMESPACE, client
from tests.k8s.controlplane import ControlPlane
from tests.k8s.nodes import RealNode

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def real_fed(control_plane: ControlPlane, federated: object) -> Iterator[KubeFedFederation]:
    """KubeFed placing real pods: the reference images' pod spec (members joined already by
    the ``federated`` fixture)."""
    fed = KubeFedFederation(host=client(control_plane, "host"), namespace=NAMESPACE,
                            domain=DOMAIN, pod_spec_for=kube_pod_spec, removal_timeout_s=60)
    yield fed


def pods(cp: ControlPlane, member: str, pod: str) -> list[dict[str, Any]]:
    return cp.servers[member].items(f"/api/v1/namespaces/{NAMESPACE}/pods",
                                    labelSelector=f"{INSTANCE_LABEL}={pod}")


def echo_answers(ip: str, port: int = 7000, timeout: float = 20) -> float:
    """Seconds until the pod's UDP echo answers from the host (fails if it never does)."""
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while True:
            s.sendto(b"ping", (ip, port))
            try:
                data, _ = s.recvfrom(64)
                if data == b"ping":
                    return time.monotonic() - t0
            except OSError:
                pass
            assert time.monotonic() - t0 < timeout, f"{ip}:{port} never echoed"


def running_pod(cp: ControlPlane, node: RealNode, pod: str) -> dict[str, Any]:
    [p] = pods(cp, node.cluster, pod)
    assert p["spec"]["nodeName"] == node.name
    assert p["status"]["phase"] == "Running", p["status"]
    ready = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
    assert ready.get("Ready") == "True", p["status"]
    assert ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(node.pod_cidr)
    return p


def test_each_member_has_a_real_ready_node(control_plane: ControlPlane) -> None:
    for m in control_plane.members:
        node = control_plane.real_node(m)
        got = control_plane.servers[m].get(f"/api/v1/nodes/{node.name}")
        assert got is not None
        addresses = {a["type"]: a["address"] for a in got["status"]["addresses"]}
        assert addresses["InternalIP"] == node.underlay_ip
        info = got["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"].startswith("containerd://"), info
        assert info["kubeletVersion"].startswith("v1.33"), info


def test_kubefed_places_and_moves_a_running_pod(control_plane: ControlPlane,
                                                real_fed: KubeFedFederation) -> None:
    cp = control_plane
    a, b = cp.real_node("member-a"), cp.real_node("member-b")
    source = Instance(cluster=a.cluster, node=a.name, pod="rn-1")
    target = Instance(cluster=b.cluster, node=b.name, pod="rn-2")
    params: dict[str, Any] = {"port": 7000}
    try:
        t0 = time.monotonic()
        real_fed.place(instance=source, workload="echo", params=params, start=True)
        real_fed.wait_ready(instance=source, timeout=120)
        placed_s = time.monotonic() - t0
        src = running_pod(cp, a, source.pod)
        echo_answers(src["status"]["podIP"])
        container = src["spec"]["containers"][0]
        assert container["image"].startswith("mobility/echo:")
        assert src["spec"]["automountServiceAccountToken"] is False

        real_fed.place(instance=target, workload="echo", params=params, start=True)
        real_fed.wait_ready(instance=target, timeout=120)
        dst = running_pod(cp, b, target.pod)
        echo_answers(dst["status"]["podIP"])

        t1 = time.monotonic()
        real_fed.unplace(instance=source)  # RELEASE: returns once the source pod is gone
        released_s = time.monotonic() - t1
        assert pods(cp, a.cluster, source.pod) == []
        running = {c: st for c, (_pid, st) in a.runtime().tasks().items() if st == "RUNNING"}
        assert running == {}, f"containers still running on {a.name}: {running}"
        running_pod(cp, b, target.pod)
        echo_answers(dst["status"]["podIP"], timeout=5)
        print(f"placed on a real node in {placed_s:.2f} s, released in {released_s:.2f} s")
    finally:
        for inst in (source, target):
            real_fed.unplace(instance=inst)
    assert pods(cp, b.cluster, target.pod) == []
