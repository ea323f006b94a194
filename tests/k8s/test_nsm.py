"""NSM objects on a real API server carrying the NetworkService/NetworkServiceEndpoint CRDs.

Aspects: the client annotation's form; a NetworkService whose ``matches`` route a chain
client -> mb1 -> mb2 -> server, one middlebox label to the next, accepted by the API server
and read back as written; NetworkServiceEndpoints serving it with the labels the routes
select; applying is idempotent (a second apply writes nothing) and updates what changed.
(The CRDs are minimal ones with NSM's real group, version and kinds: see docs/kubernetes.md.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mobility.backends.kube import nsm
from mobility.backends.kube.client import KubeClient
from tests.k8s.conftest import client
from tests.k8s.controlplane import ApiServer, ControlPlane

pytestmark = pytest.mark.timeout(300)

NS = "nsm-test"
API = f"/apis/networkservicemesh.io/v1/namespaces/{NS}"


@pytest.fixture
def host(control_plane: ControlPlane) -> Iterator[tuple[ApiServer, KubeClient]]:
    server = control_plane.servers["host"]
    server.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    yield server, client(control_plane, "host")


def test_client_annotation() -> None:
    assert nsm.client_annotation("firewall", domain="edge.example") == (
        "kernel://firewall@edge.example/nsm-1")
    assert nsm.client_annotation("db", domain="core", ifname="nsm-2") == "kernel://db@core/nsm-2"


def test_chain_network_service_routes_each_middlebox_to_the_next(
        host: tuple[ApiServer, KubeClient]) -> None:
    server, kube = host
    chain = ["client", "mb1", "mb2", "server"]
    nsm.apply(kube, nsm.chain_service("web-chain", chain, namespace=NS))
    stored = server.get(f"{API}/networkservices/web-chain")
    assert stored is not None
    assert stored["spec"]["payload"] == "ETHERNET"
    assert [(m["source_selector"]["app"], [r["destination_selector"]["app"]
                                           for r in m["routes"]])
            for m in stored["spec"]["matches"]] == [
        ("client", ["mb1"]), ("mb1", ["mb2"]), ("mb2", ["server"])]

    version = stored["metadata"]["resourceVersion"]
    nsm.apply(kube, nsm.chain_service("web-chain", chain, namespace=NS))  # nothing changed
    again = server.get(f"{API}/networkservices/web-chain")
    assert again is not None and again["metadata"]["resourceVersion"] == version

    # a middlebox added: the same object now routes mb2 -> mb3 -> server
    nsm.apply(kube, nsm.chain_service("web-chain", [*chain[:3], "mb3", "server"],
                                      namespace=NS))
    updated = server.get(f"{API}/networkservices/web-chain")
    assert updated is not None
    assert updated["spec"]["matches"][-1]["source_selector"] == {"app": "mb3"}

    for mb in ("mb1", "mb2", "server"):
        nsm.apply(kube, nsm.network_service_endpoint(
            f"web-chain-{mb}", namespace=NS, network_service="web-chain",
            labels={"app": mb}, url=f"tcp://{mb}.{NS}:5001"))
    endpoints = server.items(f"{API}/networkserviceendpoints")
    by_app = {e["spec"]["network_service_labels"]["web-chain"]["labels"]["app"]: e
              for e in endpoints}
    assert set(by_app) == {"mb1", "mb2", "server"}
    assert all(e["spec"]["network_service_names"] == ["web-chain"] for e in endpoints)
    # every route's destination is served by one registered endpoint
    for m in updated["spec"]["matches"]:
        dest = m["routes"][0]["destination_selector"]["app"]
        assert dest in by_app or dest == "mb3"

    for e in endpoints:
        kube.delete(f"{API}/networkserviceendpoints/{e['metadata']['name']}")
    kube.delete(f"{API}/networkservices/web-chain")
    assert server.items(f"{API}/networkserviceendpoints") == []


def test_chain_needs_two_distinct_elements() -> None:
    with pytest.raises(ValueError):
        nsm.chain_matches(["only"])
    with pytest.raises(ValueError):
        nsm.chain_matches(["a", "b", "a"])
