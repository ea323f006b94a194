"""Joining and unjoining a cluster with the KubeFed adapter, against real API servers.

Aspects: join creates what ``kubefedctl join`` creates (in the member: the KubeFed namespace,
a service account, a token secret filled by the member's token controller, a cluster role and
its binding; in the host: a secret with that token and a KubeFedCluster with the member's
endpoint and CA) and the KubeFed controller reports the cluster Ready; the adapter reaches the
member with those credentials; join is idempotent; unjoin leaves both clusters exactly as they
were; unjoining a cluster that still runs an instance is refused. A member client built
from a caller's parsed inline credentials (``KubeClient.from_credentials``, what the worker
uses; never the kubeconfig loader) joins and unjoins the same way; one with a client
certificate and key (held in memory files) is authenticated by the API server; TLS is always
verified (a wrong CA fails to connect, and says so without the server's words).
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mobility.backends.kube.client import KubeClient
from mobility.backends.kube.membership import KUBEFED_NAMESPACE
from mobility.errors import ClusterUnreachable, FederationError
from mobility.kubeconfigs import MemberCredentials, parse
from mobility.models import Instance
from tests.k8s.conftest import Federated, client
from tests.k8s.controlplane import ApiServer, ControlPlane

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


def inline_client(cp: ControlPlane, name: str) -> KubeClient:
    """A member client the way the worker makes one: the kubeconfig parsed and checked, the
    client built from the parsed fields."""
    creds = parse(cp.kubeconfig.read_text(), context=name)
    return KubeClient.from_credentials(creds, name=name, timeout=5)


def test_join_and_unjoin_with_parsed_inline_credentials(federated: Federated) -> None:
    cp, fed = federated.cp, federated.federation
    host, spare = cp.servers["host"], cp.servers["member-c"]
    before = (snapshot(host, host=True), snapshot(spare, host=False))
    try:
        fed.join(name="member-c", member=inline_client(cp, "member-c"), ready_timeout_s=60)
        kfc = host.get(f"{KFC}/member-c")
        assert kfc is not None and kfc["spec"]["apiEndpoint"] == spare.endpoint
        assert base64.b64decode(kfc["spec"]["caBundle"]) == spare.ca.read_bytes()
        assert "disabledTLSValidations" not in kfc["spec"]
        assert fed.cluster_ready("member-c")
    finally:
        fed.unjoin(name="member-c", member=inline_client(cp, "member-c"))
    assert (snapshot(host, host=True), snapshot(spare, host=False)) == before


def client_certificate(cp: ControlPlane) -> tuple[bytes, bytes]:
    """A client certificate of the control plane's CA for a cluster admin, and its key."""
    ca_cert = x509.load_pem_x509_certificate((cp.workdir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((cp.workdir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cert-admin"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                        "system:masters")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_a_client_certificate_in_memory_authenticates(federated: Federated) -> None:
    cp = federated.cp
    spare = cp.servers["member-c"]
    cert, key = client_certificate(cp)
    creds = MemberCredentials(server=spare.endpoint, ca_data=spare.ca.read_bytes(),
                              client_cert_data=cert, client_key_data=key)
    member = KubeClient.from_credentials(creds, name="member-c", timeout=5)
    assert not Path(member.api.configuration.key_file).is_relative_to("/tmp")
    namespaces = member.request("GET", "/api/v1/namespaces")  # needs an authenticated admin
    assert "default" in [n["metadata"]["name"] for n in namespaces["items"]]
    review = member.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           {"apiVersion": "authentication.k8s.io/v1",
                            "kind": "SelfSubjectReview"})
    assert review is not None
    assert review["status"]["userInfo"]["username"] == "cert-admin"


def test_tls_is_verified_with_the_given_ca(federated: Federated) -> None:
    spare = federated.cp.servers["member-c"]
    other_ca = client_certificate(federated.cp)[0]  # a certificate, but not the server's CA
    member = KubeClient.from_credentials(
        MemberCredentials(server=spare.endpoint, ca_data=other_ca, token=spare.token),
        name="member-c", timeout=5)
    with pytest.raises(ClusterUnreachable, match="TLS certificate verification failed"):
        member.request("GET", "/api/v1/namespaces")
