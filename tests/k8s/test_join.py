"""Joining and unjoining a cluster with the KubeFed adapter, against real API servers.

Aspects: join creates what ``kubefedctl join`` creates (in the member: the KubeFed namespace,
a service account, a token secret filled by the member's token controller, a cluster role and
its binding; in the host: a secret with that token and a KubeFedCluster with the member's
endpoint and CA) and the KubeFed controller reports the cluster Ready; the adapter reaches the
member with those credentials; join is idempotent; unjoin leaves both clusters exactly as they
were; unjoining a cluster that still runs an instance is refused.
"""

from __future__ import annotations

import base64

import pytest

from mobility.backends.kube.membership import KUBEFED_NAMESPACE
from mobility.errors import FederationError
from mobility.models import Instance
from tests.k8s.conftest import Federated, client
from tests.k8s.controlplane import ApiServer

pytestmark = pytest.mark.timeout(300)

KFC = f"/apis/core.kubefed.io/v1beta1/namespaces/{KUBEFED_NAMESPACE}/kubefedclusters"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def snapshot(server: ApiServer, *, host: bool) -> dict[str, set[str]]:
    """Names of every object a join could touch (events aside: they are a log)."""

    def names(path: str) -> set[str]:
        return {f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}"
                for i in server.items(path)}

    snap = {
        "namespaces": names("/api/v1/namespaces"),
        "serviceaccounts": names("/api/v1/serviceaccounts"),
        "secrets": names("/api/v1/secrets"),
        "clusterroles": names(f"{RBAC}/clusterroles"),
        "clusterrolebindings": names(f"{RBAC}/clusterrolebindings"),
        "roles": names(f"{RBAC}/roles"),
        "rolebindings": names(f"{RBAC}/rolebindings"),
    }
    if host:
        snap["kubefedclusters"] = names(KFC)
    return snap


def test_join_then_unjoin_leaves_both_clusters_as_they_were(federated: Federated) -> None:
    cp, fed = federated.cp, federated.federation
    host, spare = cp.servers["host"], cp.servers["member-c"]
    before = (snapshot(host, host=True), snapshot(spare, host=False))

    fed.join(name="member-c", member=client(cp, "member-c"), ready_timeout_s=60)
    fed.join(name="member-c", member=client(cp, "member-c"), ready_timeout_s=60)  # idempotent
    sa = "member-c-host"
    role = f"kubefed-controller-manager:{sa}"
    assert spare.get(f"/api/v1/namespaces/{KUBEFED_NAMESPACE}/serviceaccounts/{sa}")
    token_secret = spare.get(f"/api/v1/namespaces/{KUBEFED_NAMESPACE}/secrets/{sa}")
    assert token_secret and token_secret["data"]["token"]
    assert spare.get(f"{RBAC}/clusterroles/{role}")
    binding = spare.get(f"{RBAC}/clusterrolebindings/{role}")
    assert binding and binding["subjects"][0]["name"] == sa
    kfc = host.get(f"{KFC}/member-c")
    assert kfc is not None
    assert kfc["spec"]["apiEndpoint"] == spare.endpoint
    assert base64.b64decode(kfc["spec"]["caBundle"]) == spare.ca.read_bytes()
    stored = host.get(f"/api/v1/namespaces/{KUBEFED_NAMESPACE}/secrets/"
                      f"{kfc['spec']['secretRef']['name']}")
    assert stored and stored["data"]["token"] == token_secret["data"]["token"]
    assert fed.cluster_ready("member-c")  # the KubeFed controller's health check
    assert "member-c" in fed.joined()
    # the adapter reaches the member with the joined service account's token
    assert fed.member("member-c").request("GET", "/version")["gitVersion"].startswith("v1.")
    assert fed.member("member-c").get(f"/api/v1/namespaces/{KUBEFED_NAMESPACE}") is not None

    fed.unjoin(name="member-c", member=client(cp, "member-c"))
    fed.unjoin(name="member-c", member=client(cp, "member-c"))  # idempotent
    assert (snapshot(host, host=True), snapshot(spare, host=False)) == before
    assert "member-c" not in fed.joined()


def test_unjoin_refused_while_an_instance_runs_there(federated: Federated) -> None:
    fed = federated.federation
    instance = Instance(cluster="member-a", node="a1", pod="holder-1")
    fed.place(instance=instance, workload="echo", params={}, start=False)
    try:
        with pytest.raises(FederationError, match="still runs holder") as err:
            fed.unjoin(name="member-a")
        assert not err.value.retryable
        assert fed.cluster_ready("member-a")
    finally:
        fed.unplace(instance=instance)
    assert "holder" not in fed.placements()
