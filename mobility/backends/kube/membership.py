"""KubeFed cluster membership: join and unjoin (what ``kubefedctl join``/``unjoin`` do), the
KubeFedCluster records, member clients built from the credentials KubeFed holds, and the
federated workload namespace that follows the clusters an instance is placed on.

Members are reached with the credentials KubeFed itself uses (the KubeFedCluster's endpoint and
CA, its secret's token), so a worker needs only a host kubeconfig.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping

from mobility.backends.kube.client import KubeClient, Obj
from mobility.backends.kube.objects import (
    MANAGED_BY,
    PodSpecFor,
    default_image,
    default_pod_spec,
    placement_clusters,
    set_placement,
)
from mobility.errors import FederationError, KubeError
from mobility.models import Cluster, Node

log = logging.getLogger(__name__)

KUBEFED_NAMESPACE = "kube-federation-system"
CORE_API = "/apis/core.kubefed.io/v1beta1"
TYPES_API = "/apis/types.kubefed.io/v1beta1"
TOKEN_KEY = "token"
# What kubefedctl join grants the member's service account (cluster scope).
CLUSTER_POLICY_RULES: list[Obj] = [
    {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
    {"verbs": ["get"], "nonResourceURLs": ["*"]},
]


def grant_access(member: KubeClient, *, namespace: str, account: str, role: str,
                 timeout: float, poll_s: float = 0.1) -> str:
    """What ``kubefedctl join`` and ``karmadactl join`` make in a member so that their
    controllers can manage it: ``namespace``, a service account ``account``, a cluster role
    ``role`` with everything and its binding, and a token secret the member's token controller
    fills. Idempotent. Returns the token (base64, as the secret holds it)."""
    member.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    member.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {
        "metadata": {"name": account, "annotations": {
            "kubernetes.io/enforce-mountable-secrets": "true"}},
        "automountServiceAccountToken": False})
    member.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "metadata": {"name": account,
                     "annotations": {"kubernetes.io/service-account.name": account}},
        "type": "kubernetes.io/service-account-token"})
    member.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "metadata": {"name": role}, "rules": CLUSTER_POLICY_RULES})
    member.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
    path = f"/api/v1/namespaces/{namespace}/secrets/{account}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        secret = member.get(path)
        token = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
        if token:
            return str(token)
        time.sleep(poll_s)
    raise FederationError(f"{member.name}: no token in {path} after {timeout}s (is the "
                          "member's kube-controller-manager running?)", retryable=True)


def revoke_access(member: KubeClient, *, namespace: str, account: str, role: str) -> None:
    """Undo :func:`grant_access`, but for the namespace (the caller knows whether it is its)."""
    for kind in ("clusterrolebindings", "clusterroles"):
        member.delete(f"/apis/rbac.authorization.k8s.io/v1/{kind}/{role}")
    member.delete(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}")
    member.delete(f"/api/v1/namespaces/{namespace}/secrets/{account}")


def nodes_of(member: KubeClient, cluster: str, *, underlay_mtu: int = 1500) -> Cluster:
    """The engine's record of a member cluster: its nodes and their InternalIPs."""
    nodes = member.request("GET", "/api/v1/nodes").get("items") or []
    out = []
    for n in nodes:
        addrs = (n.get("status") or {}).get("addresses") or []
        ip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), "")
        out.append(Node(name=str(n["metadata"]["name"]), cluster=cluster, underlay_ip=ip))
    return Cluster(name=cluster, nodes=tuple(sorted(out, key=lambda n: n.name)),
                   underlay_mtu=underlay_mtu)


class KubeFedMembership:
    """The clusters joined to a KubeFed host, and the workload namespace federated to them.

    ``host`` reaches the KubeFed host cluster (where the KubeFed CRDs and controller live).
    Member clients are built from the KubeFedCluster objects on demand and cached; ``members``
    may pre-seed them (e.g. from kubeconfig contexts).
    """

    def __init__(self, *, host: KubeClient, namespace: str = "mobility",
                 domain: str = "cluster.local", host_name: str = "host",
                 kubefed_namespace: str = KUBEFED_NAMESPACE,
                 image_for: Callable[[str], str] = default_image,
                 pod_spec_for: PodSpecFor | None = None,
                 members: Mapping[str, KubeClient] | None = None,
                 removal_timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.host = host
        self.namespace = namespace
        self.domain = domain
        self.host_name = host_name
        self.kubefed_namespace = kubefed_namespace
        self.image_for = image_for
        self.pod_spec_for = pod_spec_for or default_pod_spec(image_for)
        self.removal_timeout_s = removal_timeout_s
        self.poll_s = poll_s
        self._members: dict[str, KubeClient] = dict(members or {})

    def _kfc_path(self, name: str = "") -> str:
        base = f"{CORE_API}/namespaces/{self.kubefed_namespace}/kubefedclusters"
        return f"{base}/{name}" if name else base

    # --- members ---

    def member(self, name: str) -> KubeClient:
        """A client for a joined cluster, with the credentials KubeFed holds for it."""
        if name in self._members:
            return self._members[name]
        kfc = self.host.get(self._kfc_path(name))
        if kfc is None:
            raise FederationError(f"cluster {name!r} is not joined to the KubeFed host")
        spec = kfc.get("spec") or {}
        secret = self.host.get(f"/api/v1/namespaces/{self.kubefed_namespace}/secrets/"
                               f"{spec.get('secretRef', {}).get('name', '')}")
        if secret is None or TOKEN_KEY not in (secret.get("data") or {}):
            raise FederationError(f"cluster {name!r}: its KubeFed secret has no token")
        token = base64.b64decode(secret["data"][TOKEN_KEY]).decode()
        ca = base64.b64decode(spec["caBundle"]) if spec.get("caBundle") else None
        insecure = "*" in (spec.get("disabledTLSValidations") or [])
        client = KubeClient.from_token(str(spec["apiEndpoint"]), token=token, ca_data=ca,
                                       name=name, insecure=insecure, timeout=self.host.timeout)
        self._members[name] = client
        return client

    def joined(self) -> list[str]:
        """Names of the joined clusters."""
        items = self.host.request("GET", self._kfc_path()).get("items") or []
        return sorted(str(i["metadata"]["name"]) for i in items)

    def cluster_ready(self, name: str) -> bool:
        """Whether KubeFed's health check marks the joined cluster Ready."""
        kfc = self.host.get(self._kfc_path(name))
        for cond in ((kfc or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                return bool(cond.get("status") == "True")
        return False

    def cluster_record(self, name: str, *, underlay_mtu: int = 1500) -> Cluster:
        """The engine's record of a member cluster: its nodes and their InternalIPs."""
        return nodes_of(self.member(name), name, underlay_mtu=underlay_mtu)

    # --- join / unjoin ---

    def join(self, *, name: str, member: KubeClient, token_timeout_s: float = 30.0,
             ready_timeout_s: float | None = 30.0) -> None:
        """Register ``member`` with the KubeFed host as ``name``, as ``kubefedctl join`` does.

        In the member: the KubeFed namespace, a service account ``<name>-<host>``, a
        cluster role with everything (and its binding), and a token secret that the member's
        token controller fills. In the host: a secret with that token and a KubeFedCluster
        with the member's endpoint and CA. Idempotent: what exists is kept. Waits until
        KubeFed's health check says Ready when ``ready_timeout_s`` is set.
        """
        ns = self.kubefed_namespace
        sa = f"{name}-{self.host_name}"
        token = grant_access(member, namespace=ns, account=sa,
                             role=f"kubefed-controller-manager:{sa}",
                             timeout=token_timeout_s, poll_s=self.poll_s)

        self.host.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        secret_name = f"{name}-token"
        secret = {"metadata": {"name": secret_name, "namespace": ns},
                  "data": {TOKEN_KEY: token}}
        if self.host.create(f"/api/v1/namespaces/{ns}/secrets", secret) is None:
            def same_token(obj: Obj) -> bool:
                if (obj.get("data") or {}).get(TOKEN_KEY) == token:
                    return False
                obj["data"] = {TOKEN_KEY: token}
                return True

            self.host.update(f"/api/v1/namespaces/{ns}/secrets/{secret_name}", same_token)
        ca = member.ca_data()
        spec: Obj = {"apiEndpoint": member.endpoint, "secretRef": {"name": secret_name}}
        if ca:
            spec["caBundle"] = base64.b64encode(ca).decode()
        if member.insecure:
            spec["disabledTLSValidations"] = ["*"]
        kfc = {"apiVersion": "core.kubefed.io/v1beta1", "kind": "KubeFedCluster",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}
        if self.host.create(self._kfc_path(), kfc) is None:
            def same_spec(obj: Obj) -> bool:
                if obj.get("spec") == spec:
                    return False
                obj["spec"] = spec
                return True

            self.host.update(self._kfc_path(name), same_spec)
        self._members.pop(name, None)
        log.info("joined cluster %s (%s) to KubeFed", name, member.endpoint)
        if ready_timeout_s is not None:
            self.wait_cluster_ready(name, timeout=ready_timeout_s)

    def wait_cluster_ready(self, name: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.cluster_ready(name):
            if time.monotonic() > deadline:
                raise FederationError(f"KubeFed does not report cluster {name!r} Ready after "
                                      f"{timeout}s", retryable=True)
            time.sleep(self.poll_s)

    def unjoin(self, *, name: str, member: KubeClient | None = None,
               namespace_timeout_s: float = 60.0) -> None:
        """Undo :meth:`join` (what ``kubefedctl unjoin`` does). Idempotent.

        Refused while a FederatedDeployment still places an instance on the cluster. The
        workload namespace is withdrawn from the member first (KubeFed deletes it there);
        then, with ``member`` (an admin client, as kubefedctl uses the member's kubeconfig
        context), the service account, its token, role, binding and the KubeFed namespace
        go, unless the member is the host itself; last the host's secret and KubeFedCluster.
        Without ``member`` only the host side is cleaned, like ``unjoin --force-deletion``:
        the joined service account cannot remove its own permissions and then itself.
        """
        busy = [svc for svc, clusters in self.placements().items() if name in clusters]
        if busy:
            raise FederationError(f"cluster {name!r} still runs {', '.join(sorted(busy))}; "
                                  "move them away before unjoining it")
        if member is None:
            log.warning("unjoining %s without its credentials: its service account and "
                        "role stay in the member", name)
        try:
            joined: KubeClient | None = self.member(name)
        except FederationError:
            joined = None  # not joined (any more): only host-side leftovers to clean
        self._withdraw_namespace(name, member or joined, timeout=namespace_timeout_s)
        ns = self.kubefed_namespace
        if member is not None:
            sa = f"{name}-{self.host_name}"
            for kind in ("clusterrolebindings", "clusterroles"):
                member.delete(f"/apis/rbac.authorization.k8s.io/v1/{kind}/"
                              f"kubefed-controller-manager:{ns}:healthcheck-{sa}")
            revoke_access(member, namespace=ns, account=sa,
                          role=f"kubefed-controller-manager:{sa}")
            if not self._same_cluster(member):
                member.delete(f"/api/v1/namespaces/{ns}")
                member.wait_gone(f"/api/v1/namespaces/{ns}", timeout=namespace_timeout_s,
                                 poll_s=self.poll_s)
        kfc = self.host.get(self._kfc_path(name))
        if kfc is not None:
            secret = (kfc.get("spec") or {}).get("secretRef", {}).get("name")
            if secret:
                self.host.delete(f"/api/v1/namespaces/{ns}/secrets/{secret}")
            self.host.delete(self._kfc_path(name))
        self._members.pop(name, None)
        log.info("unjoined cluster %s from KubeFed", name)

    def _same_cluster(self, member: KubeClient) -> bool:
        """Whether the member is the host (kubefedctl compares the namespaces' UIDs)."""
        path = f"/api/v1/namespaces/{self.kubefed_namespace}"
        mine, theirs = self.host.get(path), member.get(path)
        return bool(mine and theirs and mine["metadata"]["uid"] == theirs["metadata"]["uid"])

    # --- the workload namespace ---

    def _fns_path(self) -> str:
        return f"{TYPES_API}/namespaces/{self.namespace}/federatednamespaces/{self.namespace}"

    def _ensure_namespace(self, cluster: str) -> None:
        """The workload namespace on the host, federated to ``cluster``.

        KubeFed propagates namespaced resources only inside a FederatedNamespace whose
        placement includes the cluster. Its placement lists clusters explicitly (never a
        selector), so joining a cluster puts nothing on it until an instance is placed there.
        """
        self.host.create("/api/v1/namespaces", {"metadata": {"name": self.namespace}})

        def add(obj: Obj) -> bool:
            names = placement_clusters(obj)
            if cluster in names:
                return False
            set_placement(obj, sorted([*names, cluster]))
            return True

        if self.host.update(self._fns_path(), add) is None:
            body = {"apiVersion": "types.kubefed.io/v1beta1", "kind": "FederatedNamespace",
                    "metadata": {"name": self.namespace, "namespace": self.namespace},
                    "spec": {"placement": {"clusters": [{"name": cluster}]}}}
            if self.host.create(
                    f"{TYPES_API}/namespaces/{self.namespace}/federatednamespaces", body) is None:
                self.host.update(self._fns_path(), add)

    def _withdraw_namespace(self, cluster: str, member: KubeClient | None, *,
                            timeout: float) -> None:
        def drop(obj: Obj) -> bool:
            names = placement_clusters(obj)
            if cluster not in names:
                return False
            set_placement(obj, [n for n in names if n != cluster])
            return True

        before = self.host.get(self._fns_path())
        if before is None or cluster not in placement_clusters(before):
            return
        self.host.update(self._fns_path(), drop)
        if member is not None:  # KubeFed removes the namespace it made there
            member.wait_gone(f"/api/v1/namespaces/{self.namespace}", timeout=timeout,
                             poll_s=self.poll_s)

    # --- what runs where ---

    def placements(self) -> dict[str, list[str]]:
        """Service name -> clusters its FederatedDeployment places it on."""
        try:
            items = self.host.request(
                "GET", f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments",
                query={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"}).get("items") or []
        except KubeError as e:
            if e.not_found:
                return {}
            raise
        return {str(i["metadata"]["name"]): placement_clusters(i) for i in items
                if not i["metadata"].get("deletionTimestamp")}
