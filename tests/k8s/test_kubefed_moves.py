"""Moves through KubeFed on a real control plane, driven by the engine with a real Redis.

Aspects: a stateless move completes: at PLACE the FederatedDeployment gains the target cluster
with the standby marker and the NSM annotation in its overrides, the Deployment appears in the
target member and its pod runs (KWOK makes it Running); WIRE registers the target's NSM
endpoint without routing to it; CUTOVER moves the NetworkService route; RELEASE takes the
source out of the placement, KubeFed deletes its Deployment and the garbage collector its
endpoint; every phase has a start and an end event; a client is paused and resumed through
its pod's annotation without a restart, and routes inside an instance land on its link end's
endpoint. A member made unreachable mid-move (its API server stopped) fails the move cleanly:
it rolls back, the service keeps its source, and once the member answers again KubeFed has
removed everything the move put there; the source kept serving throughout: before the move,
mid-move (after SYNC) and after the rollback its placement, overrides (one replica, no standby
marker), Deployment and pod (the same objects, by uid), NSM endpoint and the client's route are
the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from mobility.backends.kube.nsm import link_service_name
from mobility.backends.kube.objects import NSM_ANNOTATION, STANDBY_ANNOTATION
from mobility.deploying import Deployer
from mobility.errors import MobilityError
from mobility.models import Instance, Move, MoveStatus, Phase, Service
from mobility.moving import Engine, MoveRequests
from mobility.phases import ORDER
from mobility.settings import Settings
from mobility.store import Registry
from tests.k8s.conftest import DOMAIN, NAMESPACE, Federated
from tests.k8s.controlplane import ApiServer
from tests.k8s.stateless import NoStateAgents

pytestmark = pytest.mark.timeout(300)

PHASES = [str(p) for p in ORDER]


def settings() -> Settings:
    return Settings(ready_timeout_s=30.0, lease_ttl_s=5.0)


def deploy_pair(registry: Registry, fed: Federated, tag: str) -> tuple[Service, Service]:
    """An echo service and a probe client linked to it, both in member-a."""
    for cluster in fed.clusters.values():
        registry.put_cluster(cluster)
    deployer = Deployer(registry=registry, federation=fed.federation, wiring=fed.wiring,
                        settings=settings())
    echo = deployer.deploy(name=f"echo-{tag}", workload="echo", params={},
                           cluster="member-a", peers=[])
    client = deployer.deploy(name=f"client-{tag}", workload="probe", params={},
                             cluster="member-a", peers=[echo.name])
    echo_now = registry.get_service(echo.name)
    assert echo_now is not None
    return echo_now, client


def run_move(engine: Engine, move: Move,
             after: dict[Phase, Callable[[], None]] | None = None) -> Move:
    """Run every phase in order as the workers would; compensate on the first failure."""
    try:
        for phase in ORDER:
            assert engine.run_phase(move.id, move.epoch, phase)
            if after and phase in after:
                after[phase]()
        return engine.complete(move.id, move.epoch)
    except MobilityError as e:
        return engine.compensate(move.id, move.epoch, error=str(e))


def fd(fed: Federated, service: str) -> dict[str, Any]:
    obj = fed.cp.servers["host"].get(
        f"/apis/types.kubefed.io/v1beta1/namespaces/{NAMESPACE}/federateddeployments/{service}")
    assert obj is not None, f"no FederatedDeployment {service}"
    return obj


def placement(obj: dict[str, Any]) -> list[str]:
    return sorted(c["name"] for c in obj["spec"]["placement"]["clusters"])


def overrides(obj: dict[str, Any], cluster: str) -> dict[str, Any]:
    for item in obj["spec"].get("overrides") or []:
        if item["clusterName"] == cluster:
            return {o["path"]: o.get("value") for o in item["clusterOverrides"]}
    return {}


def deployment(server: ApiServer, service: str) -> dict[str, Any] | None:
    return server.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{service}")


def pods(server: ApiServer, pod: str) -> list[dict[str, Any]]:
    return server.items(f"/api/v1/namespaces/{NAMESPACE}/pods",
                        labelSelector=f"mobility.io/instance={pod}")


def endpoints(server: ApiServer, pod: str) -> list[str]:
    items = server.items(f"/apis/networkservicemesh.io/v1/namespaces/{NAMESPACE}/"
                         "networkserviceendpoints", labelSelector=f"mobility.io/instance={pod}")
    return [i["metadata"]["name"] for i in items]


def workload_objects(server: ApiServer) -> set[str]:
    """Every workload object in the namespace: what a move could leave behind in a member."""
    out = set()
    for kind, path in (("deployment", "/apis/apps/v1"), ("replicaset", "/apis/apps/v1"),
                       ("pod", "/api/v1"),
                       ("networkserviceendpoint", "/apis/networkservicemesh.io/v1")):
        for item in server.items(f"{path}/namespaces/{NAMESPACE}/{kind}s"):
            out.add(f"{kind}/{item['metadata']['name']}")
    return out


def route_of(fed: Federated, registry: Registry, echo: Service, client: Service) -> str | None:
    """The echo instance the client's traffic is routed to in the link's NetworkService."""
    link = registry.links_of(echo)[0]
    ns = fed.cp.servers["host"].get(f"/apis/networkservicemesh.io/v1/namespaces/{NAMESPACE}/"
                                    f"networkservices/{link_service_name(link)}")
    assert ns is not None
    for m in ns["spec"]["matches"]:
        if m["source_selector"] == {"mobility.io/service": client.name}:
            return str(m["routes"][0]["destination_selector"]["mobility.io/instance"])
    return None


def serving(fed: Federated, registry: Registry, echo: Service, client: Service,
            source: Instance) -> dict[str, Any]:
    """What says that ``source`` serves, as the adapters record it.

    On the host: the FederatedDeployment places the source's cluster with one replica and no
    standby marker, and the link's NetworkService routes the client to the source; in the
    source's member: its Deployment (the same object, by uid) without the standby marker, its
    pod (the same, by uid: never restarted) and its NSM endpoint. A source torn down, stopped,
    marked standby, re-created or switched away from early changes one of these.
    """
    member = fed.cp.servers[source.cluster]
    obj = fd(fed, echo.name)
    mine = overrides(obj, source.cluster)
    dep = deployment(member, echo.name) or {}
    meta = dep.get("metadata", {})
    return {
        "placed": source.cluster in placement(obj),
        "replicas": mine.get("/spec/replicas"),
        "standby": (mine.get("/metadata/annotations") or {}).get(STANDBY_ANNOTATION),
        "deployment": meta.get("uid"),
        "deployment_standby": (meta.get("annotations") or {}).get(STANDBY_ANNOTATION),
        "pods": [p["metadata"]["uid"] for p in pods(member, source.pod)],
        "endpoints": endpoints(member, source.pod),
        "route": route_of(fed, registry, echo, client),
    }


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def remove_pair(registry: Registry, fed: Federated, echo: Service, client: Service) -> None:
    deployer = Deployer(registry=registry, federation=fed.federation, wiring=fed.wiring,
                        settings=settings())
    deployer.remove(client.name)
    deployer.remove(echo.name)


def test_stateless_move_through_kubefed(registry: Registry, federated: Federated) -> None:
    echo, client = deploy_pair(registry, federated, "mv")
    source = echo.instance
    assert source is not None and source.cluster == "member-a"
    host, a, b = (federated.cp.servers[n] for n in ("host", "member-a", "member-b"))
    assert placement(fd(federated, echo.name)) == ["member-a"]
    assert route_of(federated, registry, echo, client) == source.pod

    engine = Engine(registry=registry, federation=federated.federation,
                    wiring=federated.wiring, state_agents=NoStateAgents(), settings=settings())
    requests = MoveRequests(registry=engine.registry, settings=engine.settings)
    move = requests.request_move(service=echo.name, to_cluster="member-b")
    seen: dict[str, Any] = {}

    def after_place() -> None:
        target = registry.get_move(move.id).target
        assert target is not None and target.cluster == "member-b"
        obj = fd(federated, echo.name)
        seen["placement"] = placement(obj)
        seen["target_overrides"] = overrides(obj, "member-b")
        seen["source_overrides"] = overrides(obj, "member-a")
        dep = deployment(b, echo.name)
        seen["target_standby"] = (dep or {}).get("metadata", {}).get("annotations", {}).get(
            STANDBY_ANNOTATION)
        seen["target_pods"] = [p["status"].get("phase") for p in pods(b, target.pod)]
        seen["target_node"] = [p["spec"].get("nodeName") for p in pods(b, target.pod)]

    def after_wire() -> None:
        target = registry.get_move(move.id).target
        assert target is not None
        seen["target_endpoints"] = endpoints(b, target.pod)
        seen["route_after_wire"] = route_of(federated, registry, echo, client)

    def after_cutover() -> None:
        seen["route_after_cutover"] = route_of(federated, registry, echo, client)

    final = run_move(engine, move, after={Phase.PLACE: after_place, Phase.WIRE: after_wire,
                                          Phase.CUTOVER: after_cutover})
    assert final.status == MoveStatus.SUCCEEDED, final.error
    target = final.target
    assert target is not None

    # PLACE: the FederatedDeployment was edited; the standby target ran beside the source
    assert seen["placement"] == ["member-a", "member-b"]
    tgt = seen["target_overrides"]
    assert tgt["/metadata/annotations"][STANDBY_ANNOTATION] == "true"
    assert tgt["/spec/template/metadata/annotations"] == {
        NSM_ANNOTATION: f"kernel://{echo.name}@{DOMAIN}/nsm-1"}
    assert tgt["/spec/template/spec/nodeSelector"] == {"kubernetes.io/hostname": target.node}
    assert seen["source_overrides"]["/metadata/annotations"][STANDBY_ANNOTATION] == "false"
    assert seen["target_standby"] == "true"
    assert seen["target_pods"] == ["Running"]
    assert seen["target_node"] == [target.node]
    # WIRE registered the new end without routing to it; CUTOVER moved the route
    assert len(seen["target_endpoints"]) == 1
    assert seen["route_after_wire"] == source.pod
    assert seen["route_after_cutover"] == target.pod

    # RELEASE: only the target is placed, serving (no standby marker), source removed
    obj = fd(federated, echo.name)
    assert placement(obj) == ["member-b"]
    assert overrides(obj, "member-a") == {}
    eventually(lambda: (deployment(b, echo.name) or {}).get("metadata", {})
               .get("annotations", {}).get(STANDBY_ANNOTATION) == "false",
               "KubeFed clears the standby marker on the target's Deployment")
    assert deployment(a, echo.name) is None
    assert [p["status"]["phase"] for p in pods(b, target.pod)] == ["Running"]
    eventually(lambda: pods(a, source.pod) == [], "the source pod is deleted")
    eventually(lambda: endpoints(a, source.pod) == [],
               "the garbage collector removes the source's NSM endpoint")
    svc = registry.get_service(echo.name)
    assert svc is not None and svc.instance == target and svc.moving is None

    # the event stream has a start and an end for every phase, in order
    events = registry.events(move.id)
    started = [e.phase for e in events if e.kind == "phase_started"]
    ended = [e.phase for e in events if e.kind == "phase_ended"]
    assert started == PHASES and ended == PHASES
    assert any(e.kind == "cutover_confirmed" for e in events)
    assert events[-1].kind == "status" and events[-1].detail == "succeeded"
    assert set(final.phase_ms) == set(PHASES)

    # a client is paused and resumed through its pod's annotation (no restart)
    assert client.instance is not None
    federated.federation.quiesce(instance=client.instance)
    (client_pod,) = pods(a, client.instance.pod)
    assert client_pod["metadata"]["annotations"]["mobility.io/paused"] == "true"
    federated.federation.resume(instance=client.instance)
    (again,) = pods(a, client.instance.pod)
    assert again["metadata"]["annotations"]["mobility.io/paused"] == "false"
    assert again["metadata"]["uid"] == client_pod["metadata"]["uid"]
    # routes inside an instance ride on its link end's endpoint
    end = registry.links_of(echo)[0].end_of(echo.name)
    federated.wiring.set_routes(instance=target, routes=[
        {"dst": "169.254.9.0/30", "via": "169.254.1.2", "ifname": end.ifname}])
    items = b.items(f"/apis/networkservicemesh.io/v1/namespaces/{NAMESPACE}/"
                    "networkserviceendpoints", labelSelector=f"mobility.io/instance={target.pod}")
    assert [i["metadata"]["annotations"]["mobility.io/routes"] for i in items] == [
        '[{"dst": "169.254.9.0/30", "via": "169.254.1.2"}]']

    remove_pair(registry, federated, registry.get_service(echo.name) or echo, client)
    assert deployment(b, echo.name) is None  # unplace waits for the member to be clean
    eventually(lambda: host.get(f"/apis/types.kubefed.io/v1beta1/namespaces/{NAMESPACE}/"
                                f"federateddeployments/{echo.name}") is None,
               "KubeFed lets the deleted FederatedDeployment go")


def test_unreachable_member_mid_move_rolls_back_and_leaves_nothing(
        registry: Registry, federated: Federated) -> None:
    echo, client = deploy_pair(registry, federated, "cut")
    source = echo.instance
    assert source is not None
    b = federated.cp.servers["member-b"]
    before = workload_objects(b)
    # the source serves before the move; the same record must hold all through it
    source_before = serving(federated, registry, echo, client, source)
    assert source_before["placed"] and source_before["replicas"] == 1
    assert source_before["standby"] == source_before["deployment_standby"] == "false"
    assert source_before["deployment"] is not None
    assert len(source_before["pods"]) == 1 and len(source_before["endpoints"]) == 1
    assert source_before["route"] == source.pod
    engine = Engine(registry=registry, federation=federated.federation,
                    wiring=federated.wiring, state_agents=NoStateAgents(), settings=settings())
    requests = MoveRequests(registry=engine.registry, settings=engine.settings)
    move = requests.request_move(service=echo.name, to_cluster="member-b")
    seen: dict[str, Any] = {}

    def partition() -> None:
        target = registry.get_move(move.id).target
        assert target is not None
        seen["target"] = target
        seen["deployment_before"] = deployment(b, echo.name) is not None
        seen["endpoints_before"] = endpoints(b, target.pod)
        # mid-move, the target placed, wired and synced: the source still serves, untouched
        seen["source_mid_move"] = serving(federated, registry, echo, client, source)
        b.pause()  # member-b's API server stops answering: a partition, mid-move

    try:
        final = run_move(engine, move, after={Phase.SYNC: partition})
        assert final.status == MoveStatus.ROLLED_BACK, (final.status, final.error)
        assert final.error  # CUTOVER could not confirm the switch to the unreachable target
        assert "cutover" in final.phases_started and "cutover" not in final.phases_done
        assert not final.cutover_confirmed
        # the host holds the rolled-back state while the member is still unreachable
        obj = fd(federated, echo.name)
        assert placement(obj) == ["member-a"]
        assert overrides(obj, "member-b") == {}
        assert overrides(obj, "member-a")["/metadata/annotations"][STANDBY_ANNOTATION] == "false"
        assert route_of(federated, registry, echo, client) == source.pod
    finally:
        if b.paused:
            b.resume()

    target = seen["target"]
    assert seen["deployment_before"] and len(seen["endpoints_before"]) == 1
    assert seen["source_mid_move"] == source_before, "the source changed before the cutover"
    svc = registry.get_service(echo.name)
    assert svc is not None and svc.instance == source and svc.moving is None
    assert registry.lock_owner(echo.name) is None
    kinds = [(e.kind, e.phase) for e in registry.events(move.id)]
    for phase in ("cutover", "wire", "place"):
        assert ("compensated", phase) in kinds
    # once member-b answers again, KubeFed deletes the target's Deployment there and the
    # garbage collector its endpoint: nothing of the move is left behind
    eventually(lambda: deployment(b, echo.name) is None,
               "KubeFed removes the target's Deployment from member-b", timeout=90)
    eventually(lambda: pods(b, target.pod) == [], "the target's pod is gone")
    eventually(lambda: endpoints(b, target.pod) == [], "the target's NSM endpoint is gone")
    assert workload_objects(b) == before
    # the source kept serving throughout: the same objects, pod and route as before the move
    assert serving(federated, registry, echo, client, source) == source_before
    remove_pair(registry, federated, echo, client)
