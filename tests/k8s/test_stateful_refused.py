"""A stateful move on a Kubernetes backend, with the production state-agent port.

Aspects: the engine built as the workers build it for the KubeFed backend uses
``UnavailableStateAgents``; a stateful service's move there stops in SYNC with a message that
says why, rolls back, releases the lock and leaves the service placed only where it was.
"""

from __future__ import annotations

import pytest

from mobility.backends.unavailable import UnavailableStateAgents
from mobility.deploying import Deployer
from mobility.errors import MobilityError
from mobility.models import MoveStatus, Phase
from mobility.moving import Engine, MoveRequests
from mobility.phases import ORDER
from mobility.settings import Settings
from mobility.store import Registry
from tests.k8s.conftest import NAMESPACE, Federated

pytestmark = pytest.mark.timeout(300)


def test_a_stateful_move_without_state_agents_rolls_back_in_sync(
        registry: Registry, federated: Federated) -> None:
    settings = Settings(ready_timeout_s=30.0, lease_ttl_s=5.0)
    for cluster in federated.clusters.values():
        registry.put_cluster(cluster)
    deployer = Deployer(registry=registry, federation=federated.federation,
                        wiring=federated.wiring, settings=settings)
    svc = deployer.deploy(name="st-refused", workload="sessions", params={},
                          cluster="member-a", peers=[])
    engine = Engine(registry=registry, federation=federated.federation,
                    wiring=federated.wiring, state_agents=UnavailableStateAgents("kubefed"),
                    settings=settings)
    move = MoveRequests(registry=registry, settings=settings).request_move(
        service=svc.name, to_cluster="member-b")
    assert move.stateful
    failed_in = None
    try:
        for phase in ORDER:
            engine.run_phase(move.id, move.epoch, phase)
    except MobilityError as exc:
        failed_in = registry.get_move(move.id).phase
        ended = engine.compensate(move.id, move.epoch, error=str(exc))
    else:
        ended = engine.complete(move.id, move.epoch)
    try:
        assert failed_in == Phase.SYNC
        assert ended.status == MoveStatus.ROLLED_BACK, ended
        assert ended.error is not None and "cannot reach state agents" in ended.error, ended
        now = registry.get_service(svc.name)
        assert now is not None and now.moving is None
        assert now.instance is not None and now.instance.cluster == "member-a"
        obj = federated.cp.servers["host"].get(
            f"/apis/types.kubefed.io/v1beta1/namespaces/{NAMESPACE}/federateddeployments/"
            f"{svc.name}")
        assert obj is not None
        assert [c["name"] for c in obj["spec"]["placement"]["clusters"]] == ["member-a"]
    finally:
        deployer.remove(svc.name)
