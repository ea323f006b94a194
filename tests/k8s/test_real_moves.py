"""A move on Kubernetes moves a running pod, with its client's traffic kept: 0 lost.

On both backends (KubeFed, and Karmada with its own controllers): the member clusters' real
nodes (tests/k8s/nodes.py) each get a node agent (tests/k8s/realpods.py); a UDP echo runs as a
real pod in ``member-a``; a probe client, a real pod too, sends it 500 sequenced requests a
second over an NSM-style VxLAN link that the node agents plumbed into both pods' network
namespaces (found from their CRI sandboxes). The engine then moves the echo to ``member-b``
phase by phase, as the workers do: PLACE through the federation (a real pod, ready by its own
readiness probe), WIRE by the target node's agent, CUTOVER on the client's node (one FDB
write), RELEASE through the federation, returning once the source pod is gone. The probe's
own count says nothing was lost; the member API servers show the pod Running on the target
and none left on the source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mobility.models import MoveStatus
from mobility.moving import Engine, MoveRequests
from mobility.node_ops import Quiesce
from tests.k8s.controlplane import ControlPlane
from tests.k8s.karmada_plane import KarmadaPlane
from tests.k8s.realpods import (
    RealLab,
    deploy_pair,
    import_counter_image,
    member_pods,
    real_lab,
)
from tests.k8s.stateless import NoStateAgents
from tests.k8s.test_kubefed_moves import run_move

pytestmark = [
    pytest.mark.timeout(400),
    # celery_bound_to reads redbeat's configuration, which warns about a fallback it does not
    # use (no beat runs here)
    pytest.mark.filterwarnings(
        "ignore:RedBeat will stop falling back to broker_transport_options:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def lab(control_plane: ControlPlane, federated: object,
        karmada_plane: KarmadaPlane) -> Iterator[RealLab]:
    with real_lab(control_plane, karmada=karmada_plane.client()) as running:
        yield running


@pytest.mark.parametrize("backend", ["kubefed", "karmada"])
def test_a_running_pod_moves_between_clusters_and_its_client_loses_nothing(
        lab: RealLab, backend: str) -> None:
    pair = deploy_pair(lab, backend, f"rm{backend[:2]}")
    ns = lab.namespace(backend)
    try:
        source = pair.placed[0]
        settings = lab.settings()
        engine = Engine(registry=lab.registry, federation=pair.fed, wiring=lab.wiring,
                        state_agents=NoStateAgents(), settings=settings)
        move = MoveRequests(registry=lab.registry, settings=settings).request_move(
            service=pair.echo, to_cluster="member-b")
        t0 = time.monotonic()
        done = run_move(engine, move)
        took = time.monotonic() - t0
        assert done.status == MoveStatus.SUCCEEDED, done
        target = done.target
        assert target is not None and target.cluster == "member-b"
        pair.placed.append(target)
        pair.wait_replies(1000)
        lab.agent.call(lab.node("member-a", 1), Quiesce(pod=pair.client_at.pod), timeout=20)
        time.sleep(0.5)  # the probe writes its progress every few hundred milliseconds
        result = pair.progress()
        assert result["sent"] > 1000, result
        assert result["sent"] == result["received"], result  # 0 lost
        assert member_pods(lab, "member-a", source.pod, ns) == []
        [pod] = member_pods(lab, "member-b", target.pod, ns)
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == target.node
        print(f"{backend}: moved a running pod in {took:.2f} s; probe: {result}")
    finally:
        pair.remove()


@pytest.mark.parametrize("backend", ["kubefed", "karmada"])
def test_a_stateful_pod_moves_with_its_state_and_its_client_loses_nothing(
        lab: RealLab, backend: str) -> None:
    """SYNC and CUTOVER as on the lab: the session service's SDK socket is in its pod's
    volume, the node agent starts the state relay beside the pod, the state goes over Redis,
    and the target (told to restore by its instance's environment) serves every session's
    counter where the source left it."""
    pair = deploy_pair(lab, backend, f"sm{backend[:2]}", state_mb=8)
    ns = lab.namespace(backend)
    try:
        source = pair.placed[0]
        settings = lab.settings()
        engine = Engine(registry=lab.registry, federation=pair.fed, wiring=lab.wiring,
                        state_agents=lab.state_agents, settings=settings)
        move = MoveRequests(registry=lab.registry, settings=settings).request_move(
            service=pair.echo, to_cluster="member-b")
        t0 = time.monotonic()
        done = run_move(engine, move)
        took = time.monotonic() - t0
        assert done.status == MoveStatus.SUCCEEDED, (done, done.error)
        target = done.target
        assert target is not None and target.cluster == "member-b"
        pair.placed.append(target)
        assert done.freeze_ms is not None, done
        pair.wait_replies(1000)
        lab.agent.call(lab.node("member-a", 1), Quiesce(pod=pair.client_at.pod), timeout=20)
        time.sleep(0.5)
        result = pair.progress()
        assert result["lost"] == 0 and result["counters_ok"] is True, result
        assert result["answered"] == result["sent"] > 1000, result
        assert member_pods(lab, "member-a", source.pod, ns) == []
        [pod] = member_pods(lab, "member-b", target.pod, ns)
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == target.node
        print(f"{backend}: moved a stateful pod in {took:.2f} s, froze {done.freeze_ms} ms; "
              f"client: {result}")
    finally:
        pair.remove()


def test_a_users_own_image_moves_with_its_state(lab: RealLab, control_plane: ControlPlane
                                                ) -> None:
    """The README's example app (examples/counter: a UDP session counter embedding the state
    SDK), built as ``mobility image build`` builds it and imported on the nodes, runs as a real
    pod through Karmada (the recommended backend) and moves with its counters: its command
    is its image's own, its SDK socket is named by ``MOBILITY_STATE_SOCKET``, the target is
    told ``MOBILITY_RESTORE=1`` by its instance's environment."""
    image = import_counter_image(control_plane)
    pair = deploy_pair(lab, "karmada", "uim", image=image)
    ns = lab.namespace("karmada")
    try:
        [pod] = member_pods(lab, "member-a", pair.placed[0].pod, ns)
        assert pod["spec"]["containers"][0]["image"] == image
        settings = lab.settings()
        engine = Engine(registry=lab.registry, federation=pair.fed, wiring=lab.wiring,
                        state_agents=lab.state_agents, settings=settings)
        move = MoveRequests(registry=lab.registry, settings=settings).request_move(
            service=pair.echo, to_cluster="member-b")
        done = run_move(engine, move)
        assert done.status == MoveStatus.SUCCEEDED, (done, done.error)
        assert done.target is not None
        pair.placed.append(done.target)
        pair.wait_replies(1000)
        lab.agent.call(lab.node("member-a", 1), Quiesce(pod=pair.client_at.pod), timeout=20)
        time.sleep(0.5)
        result = pair.progress()
        assert result["lost"] == 0 and result["counters_ok"] is True, result
        assert result["answered"] == result["sent"] > 1000, result
        [pod] = member_pods(lab, "member-b", done.target.pod, ns)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MOBILITY_RESTORE"] == "1" and env["MOBILITY_STATE_SOCKET"]
        print(f"user image: moved with its state, froze {done.freeze_ms} ms; client: {result}")
    finally:
        pair.remove()
