"""KubeFed placement: a move adds the target cluster to a FederatedDeployment, RELEASE removes
the source cluster; cluster join and unjoin do what ``kubefedctl join``/``unjoin`` do.

One FederatedDeployment per service, named after it, in one workload namespace of the host
cluster. Each cluster in ``spec.placement.clusters`` runs one instance of the service, and
``spec.overrides`` carries what differs per instance: the instance label (``Instance.pod``), the
node it was planned on (a ``nodeSelector``), its replica count (0 while placed but not started),
the NSM client annotation, and a standby marker on the member Deployment while another instance
of the service still serves. The marker sits on the Deployment's own metadata, not on the pod
template, so flipping it at RELEASE never restarts the instance.

The KubeFed controller manager propagates the FederatedDeployment to the members; this adapter
waits for it by reading both sides: the FederatedDeployment's propagation status on the host and
the Deployment (and its pod) in the member. Members are reached with the credentials KubeFed
itself uses (the KubeFedCluster's endpoint and CA, its secret's token), so a worker needs only a
host kubeconfig.

This module also holds :class:`KubeClient`, the small JSON client over the ``kubernetes``
package shared by the Karmada and NSM adapters: one place maps HTTP and connection errors to
:class:`FederationError` (retryable or not) and retries 409 conflicts with tenacity.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import urllib3
import yaml
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from mobility.errors import FederationError
from mobility.models import Cluster, Instance, Node, Params
from mobility.nsm import client_annotation

if TYPE_CHECKING:
    from mobility.ports import Federation

log = logging.getLogger(__name__)

Obj = dict[str, Any]

KUBEFED_NAMESPACE = "kube-federation-system"
CORE_API = "/apis/core.kubefed.io/v1beta1"
TYPES_API = "/apis/types.kubefed.io/v1beta1"
SERVICE_LABEL = "mobility.io/service"
INSTANCE_LABEL = "mobility.io/instance"
STANDBY_ANNOTATION = "mobility.io/standby"
NODE_ANNOTATION = "mobility.io/node"
PAUSED_ANNOTATION = "mobility.io/paused"
MANAGED_BY = ("app.kubernetes.io/managed-by", "service-mobility")
NSM_ANNOTATION = "networkservicemesh.io"
TOKEN_KEY = "token"
# What kubefedctl join grants the member's service account (cluster scope).
CLUSTER_POLICY_RULES: list[Obj] = [
    {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
    {"verbs": ["get"], "nonResourceURLs": ["*"]},
]

_POD_SUFFIX = re.compile(r"^(?P<service>[a-z][a-z0-9-]*)-(?P<index>[0-9]+)$")


# --- the shared Kubernetes client -------------------------------------------------------------


class KubeError(FederationError):
    """The API server answered with an error status; ``status`` and ``reason`` say which."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        retryable = (status == 409 and reason != "AlreadyExists") or status == 429 or status >= 500
        super().__init__(message, retryable=retryable)
        self.status = status
        self.reason = reason

    @property
    def conflict(self) -> bool:
        """A write lost an optimistic-concurrency race: read again and retry."""
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ClusterUnreachable(FederationError):
    """No answer from a cluster's API server (refused, reset, timed out): a retry may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, KubeError) and exc.conflict


class KubeClient:
    """JSON over one cluster's API server, with the project's errors and bounded timeouts.

    The ``kubernetes`` package's typed APIs are untyped for mypy and differ between resource
    kinds; every call here is ``request(method, path, body)`` on plain dicts instead, so the
    adapters read like the REST API they drive. Every request carries a timeout: a partitioned
    cluster must fail a phase, not hang it.
    """

    def __init__(self, api: Any, *, name: str, timeout: float = 10.0) -> None:
        self.api = api
        self.name = name
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Mapping[str, Any] | str | os.PathLike[str], *,
                        context: str | None = None, name: str | None = None,
                        timeout: float = 10.0) -> KubeClient:
        """A client for one context of a kubeconfig (a parsed dict or a file)."""
        if isinstance(kubeconfig, Mapping):
            doc = dict(kubeconfig)
        else:
            try:
                doc = yaml.safe_load(Path(kubeconfig).expanduser().read_text())
            except (OSError, yaml.YAMLError) as e:
                raise FederationError(f"cannot read kubeconfig {kubeconfig}: {e}") from e
        cfg = Configuration()
        load: Any = k8s_config.new_client_from_config_dict  # untyped in the package
        try:
            api = load(
                config_dict=doc, context=context, persist_config=False,
                client_configuration=cfg)
        except Exception as e:  # the loader raises ConfigException, KeyError, ValueError...
            raise FederationError(f"invalid kubeconfig (context {context!r}): {e}") from e
        cfg = api.configuration
        cfg.retries = 0  # retries are ours: a dead cluster must not cost four timeouts
        api = ApiClient(configuration=cfg)
        return cls(api, name=name or context or doc.get("current-context") or "cluster",
                   timeout=timeout)

    @classmethod
    def from_token(cls, endpoint: str, *, token: str, ca_data: bytes | None, name: str,
                   insecure: bool = False, timeout: float = 10.0) -> KubeClient:
        """A client from an endpoint, a bearer token and a CA bundle (what KubeFed stores)."""
        cfg = Configuration(host=endpoint.rstrip("/"),
                            api_key={"authorization": f"Bearer {token}"},
                            ca_cert_data=ca_data.decode() if ca_data else None,
                            verify_ssl=not insecure, retries=0)
        return cls(ApiClient(configuration=cfg), name=name, timeout=timeout)

    @property
    def endpoint(self) -> str:
        return str(self.api.configuration.host)

    @property
    def insecure(self) -> bool:
        return not bool(self.api.configuration.verify_ssl)

    def ca_data(self) -> bytes | None:
        """The CA bundle this client trusts, to hand on to KubeFed (``spec.caBundle``)."""
        cfg = self.api.configuration
        if cfg.ca_cert_data:
            data = cfg.ca_cert_data
            return data.encode() if isinstance(data, str) else bytes(data)
        if cfg.ssl_ca_cert:
            try:
                return Path(cfg.ssl_ca_cert).read_bytes()
            except OSError as e:
                raise FederationError(f"{self.name}: cannot read CA {cfg.ssl_ca_cert}: {e}") from e
        return None

    def request(self, method: str, path: str, *, body: Obj | None = None,
                query: Mapping[str, str] | None = None, timeout: float | None = None) -> Obj:
        """One API call; returns the decoded JSON body. Raises KubeError/ClusterUnreachable."""
        limit = self.timeout if timeout is None else max(0.2, timeout)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            m, url, hdrs, payload, _ = self.api.param_serialize(
                method=method, resource_path=path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=["BearerToken"])
            resp = self.api.call_api(m, url, header_params=hdrs, body=payload,
                                     _request_timeout=(min(limit, 5.0), limit))
            raw = resp.read()
        except ApiException as e:  # status 0: TLS and transport failures
            raise ClusterUnreachable(f"{self.name}: {method} {path}: {e.reason}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ClusterUnreachable(f"{self.name}: {method} {path}: {e}") from e
        status = int(resp.status)
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= status < 300:
            reason, message = str(resp.reason or ""), text.strip()
            with contextlib.suppress(ValueError):
                st = json.loads(text)
                reason = str(st.get("reason") or reason)
                message = str(st.get("message") or message)
            raise KubeError(f"{self.name}: {method} {path}: {status} {reason}: {message}",
                            status=status, reason=reason)
        if not text:
            return {}
        try:
            return cast(Obj, json.loads(text))
        except ValueError as e:
            raise FederationError(f"{self.name}: {method} {path}: not JSON: {text[:200]}") from e

    def get(self, path: str, *, timeout: float | None = None) -> Obj | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return self.request("GET", path, timeout=timeout)
        except KubeError as e:
            if e.not_found:
                return None
            raise

    def create(self, collection: str, body: Obj) -> Obj | None:
        """Create ``body`` in ``collection``; None when it exists already (idempotent)."""
        try:
            return self.request("POST", collection, body=body)
        except KubeError as e:
            if e.already_exists:
                return None
            raise

    def delete(self, path: str, *, timeout: float | None = None) -> bool:
        """Delete the object at ``path``; False when it was not there (idempotent)."""
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"},
                         timeout=timeout)
        except KubeError as e:
            if e.not_found:
                return False
            raise
        return True

    def update(self, path: str, mutate: Callable[[Obj], bool]) -> Obj | None:
        """Read, change, write back with the read ``resourceVersion``; 409s retried.

        ``mutate`` changes the object in place and returns whether it changed anything (no
        write when it did not). Returns the object as stored, or None when it does not exist.
        A lost race (409 Conflict) is retried with jittered backoff by tenacity; after the
        last attempt the KubeError is raised, marked retryable.
        """
        for attempt in Retrying(retry=retry_if_exception(_is_conflict),
                                stop=stop_after_attempt(10),
                                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                                reraise=True):
            with attempt:
                obj = self.get(path)
                if obj is None:
                    return None
                if not mutate(obj):
                    return obj
                return self.request("PUT", path, body=obj)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def wait_gone(self, path: str, *, timeout: float, poll_s: float = 0.2) -> None:
        """Return once ``path`` no longer exists; FederationError (retryable) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.get(path, timeout=max(0.5, min(self.timeout, remaining))) is None:
                return
            if remaining <= 0:
                raise FederationError(f"{self.name}: {path} still exists after {timeout}s",
                                      retryable=True)
            time.sleep(poll_s)


# --- helpers ----------------------------------------------------------------------------------


def service_of(instance: Instance) -> str:
    """The service an instance belongs to.

    The engine names every instance ``<service>-<n>`` (``Registry.next_pod_index``); the
    Federation port passes only the instance, so the service's FederatedDeployment is found
    through that name.
    """
    m = _POD_SUFFIX.fullmatch(instance.pod)
    if m is None:
        raise FederationError(f"instance {instance.pod!r} is not named <service>-<n>")
    return m.group("service")


def _escape(key: str) -> str:
    """A map key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def default_image(workload: str) -> str:
    """The image of a named workload. KWOK never pulls it; a real cluster needs it published."""
    return f"ghcr.io/service-mobility/{workload}:0.1"


def placement_clusters(obj: Obj) -> list[str]:
    clusters = (obj.get("spec") or {}).get("placement", {}).get("clusters") or []
    return [str(c["name"]) for c in clusters]


def _set_placement(obj: Obj, names: list[str]) -> None:
    obj.setdefault("spec", {}).setdefault("placement", {})["clusters"] = [
        {"name": n} for n in names]


def _annotations(obj: Obj) -> dict[str, str]:
    return cast(dict[str, str], (obj.get("metadata") or {}).get("annotations") or {})


@dataclass(frozen=True)
class InstanceSpec:
    """What differs per instance of a service: written as one cluster's overrides."""

    instance: Instance
    replicas: int
    standby: bool
    annotation: str  # the NSM client annotation
    # The container's environment for this instance: the service's parameters plus the
    # move's own (``paused``, ``restore``). Set at placement and never changed afterwards:
    # any pod-template change restarts the instance.
    env: tuple[tuple[str, str], ...] = ()

    def overrides(self) -> list[Obj]:
        """JSON-patch overrides for the instance's cluster (KubeFed applies them in order)."""
        pod = self.instance.pod
        return [
            {"op": "replace", "path": "/spec/replicas", "value": self.replicas},
            {"op": "add", "path": "/metadata/annotations", "value": {
                STANDBY_ANNOTATION: "true" if self.standby else "false",
                INSTANCE_LABEL: pod, NODE_ANNOTATION: self.instance.node}},
            {"op": "add", "path": f"/spec/template/metadata/labels/{_escape(INSTANCE_LABEL)}",
             "value": pod},
            {"op": "add", "path": "/spec/template/metadata/annotations",
             "value": {NSM_ANNOTATION: self.annotation}},
            {"op": "add", "path": "/spec/template/spec/nodeSelector",
             "value": {"kubernetes.io/hostname": self.instance.node}},
            {"op": "replace", "path": "/spec/template/spec/containers/0/env",
             "value": [{"name": k, "value": v} for k, v in self.env]},
        ]

    @classmethod
    def read(cls, cluster: str, overrides: list[Obj]) -> InstanceSpec | None:
        """The instance recorded in a cluster's overrides, or None if they are not ours."""
        by_path = {str(o.get("path")): o.get("value") for o in overrides}
        pod = by_path.get(f"/spec/template/metadata/labels/{_escape(INSTANCE_LABEL)}")
        meta = by_path.get("/metadata/annotations") or {}
        if not isinstance(pod, str) or not isinstance(meta, dict):
            return None
        nsm = (by_path.get("/spec/template/metadata/annotations") or {}).get(NSM_ANNOTATION, "")
        env = by_path.get("/spec/template/spec/containers/0/env") or []
        return cls(instance=Instance(cluster=cluster, node=str(meta.get(NODE_ANNOTATION, "")),
                                     pod=pod),
                   replicas=int(by_path.get("/spec/replicas", 1) or 0),
                   standby=meta.get(STANDBY_ANNOTATION) == "true", annotation=str(nsm),
                   env=tuple((str(e["name"]), str(e.get("value", ""))) for e in env))


def _overrides_of(obj: Obj) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for item in (obj.get("spec") or {}).get("overrides") or []:
        out[str(item["clusterName"])] = list(item.get("clusterOverrides") or [])
    return out


def _set_overrides(obj: Obj, overrides: Mapping[str, list[Obj]]) -> None:
    obj.setdefault("spec", {})["overrides"] = [
        {"clusterName": c, "clusterOverrides": o} for c, o in sorted(overrides.items())]


def params_env(params: Params) -> tuple[tuple[str, str], ...]:
    """Workload parameters as ``MOBILITY_PARAM_<NAME>`` environment variables, sorted."""
    return tuple((f"MOBILITY_PARAM_{k.upper()}", str(v)) for k, v in sorted(params.items()))


def deployment_template(*, service: str, workload: str, params: Params,
                        image: str) -> Obj:
    """The Deployment every instance of a service starts from (KubeFed's ``spec.template``).

    Workload parameters become ``MOBILITY_PARAM_<NAME>`` environment variables: named
    parameters of a named workload, never a command from a request.
    """
    labels = {"app": service, SERVICE_LABEL: service}
    env = [{"name": k, "value": v} for k, v in params_env(params)]
    return {
        "metadata": {"labels": {**labels, MANAGED_BY[0]: MANAGED_BY[1]}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {SERVICE_LABEL: service}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": workload, "image": image, "env": env}]},
            },
        },
    }


# --- KubeFed ----------------------------------------------------------------------------------


class KubeFedFederation:
    """The ``Federation`` port over KubeFed, plus cluster join/unjoin.

    ``host`` reaches the KubeFed host cluster (where the KubeFed CRDs and controller live).
    Member clients are built from the KubeFedCluster objects on demand and cached; ``members``
    may pre-seed them (e.g. from kubeconfig contexts).
    """

    def __init__(self, *, host: KubeClient, namespace: str = "mobility",
                 domain: str = "cluster.local", host_name: str = "host",
                 kubefed_namespace: str = KUBEFED_NAMESPACE,
                 image_for: Callable[[str], str] = default_image,
                 members: Mapping[str, KubeClient] | None = None,
                 removal_timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.host = host
        self.namespace = namespace
        self.domain = domain
        self.host_name = host_name
        self.kubefed_namespace = kubefed_namespace
        self.image_for = image_for
        self.removal_timeout_s = removal_timeout_s
        self.poll_s = poll_s
        self._members: dict[str, KubeClient] = dict(members or {})

    # --- paths ---

    def _fd_path(self, service: str) -> str:
        return f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments/{service}"

    def _kfc_path(self, name: str = "") -> str:
        base = f"{CORE_API}/namespaces/{self.kubefed_namespace}/kubefedclusters"
        return f"{base}/{name}" if name else base

    def _deployment_path(self, service: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{service}"

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
        nodes = self.member(name).request("GET", "/api/v1/nodes").get("items") or []
        out = []
        for n in nodes:
            addrs = (n.get("status") or {}).get("addresses") or []
            ip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), "")
            out.append(Node(name=str(n["metadata"]["name"]), cluster=name, underlay_ip=ip))
        return Cluster(name=name, nodes=tuple(sorted(out, key=lambda n: n.name)),
                       underlay_mtu=underlay_mtu)

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
        role = f"kubefed-controller-manager:{sa}"
        member.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        member.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {
            "metadata": {"name": sa, "annotations": {
                "kubernetes.io/enforce-mountable-secrets": "true"}},
            "automountServiceAccountToken": False})
        member.create(f"/api/v1/namespaces/{ns}/secrets", {
            "metadata": {"name": sa, "annotations": {"kubernetes.io/service-account.name": sa}},
            "type": "kubernetes.io/service-account-token"})
        member.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "metadata": {"name": role}, "rules": CLUSTER_POLICY_RULES})
        member.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
        token = self._wait_token(member, f"/api/v1/namespaces/{ns}/secrets/{sa}",
                                 timeout=token_timeout_s)

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

    def _wait_token(self, member: KubeClient, path: str, *, timeout: float) -> str:
        """The service account token, once the member's token controller has written it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            secret = member.get(path)
            token = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
            if token:
                return str(token)
            time.sleep(self.poll_s)
        raise FederationError(f"{member.name}: no token in {path} after {timeout}s (is the "
                              "member's kube-controller-manager running?)", retryable=True)

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
            role = f"kubefed-controller-manager:{sa}"
            for kind in ("clusterrolebindings", "clusterroles"):
                for obj in (role, f"kubefed-controller-manager:{ns}:healthcheck-{sa}"):
                    member.delete(f"/apis/rbac.authorization.k8s.io/v1/{kind}/{obj}")
            member.delete(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}")
            member.delete(f"/api/v1/namespaces/{ns}/secrets/{sa}")
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
            _set_placement(obj, sorted([*names, cluster]))
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
            _set_placement(obj, [n for n in names if n != cluster])
            return True

        before = self.host.get(self._fns_path())
        if before is None or cluster not in placement_clusters(before):
            return
        self.host.update(self._fns_path(), drop)
        if member is not None:  # KubeFed removes the namespace it made there
            member.wait_gone(f"/api/v1/namespaces/{self.namespace}", timeout=timeout,
                             poll_s=self.poll_s)

    # --- the Federation port ---

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool) -> None:
        """Add the instance's cluster to the service's FederatedDeployment. Idempotent.

        An instance placed while another cluster holds one carries the standby marker; its
        replicas are 0 until :meth:`start` when ``start`` is False.
        """
        service = service_of(instance)
        cluster = instance.cluster
        self._ensure_namespace(cluster)
        annotation = client_annotation(service, domain=self.domain)
        existing = self.host.get(self._fd_path(service))
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            self.host.wait_gone(self._fd_path(service), timeout=self.removal_timeout_s,
                                poll_s=self.poll_s)  # the service's previous life, going

        def add(obj: Obj) -> bool:
            names = placement_clusters(obj)
            overrides = _overrides_of(obj)
            current = InstanceSpec.read(cluster, overrides.get(cluster, []))
            if cluster in names and current is not None:
                if current.instance.pod != instance.pod:
                    raise FederationError(
                        f"cluster {cluster!r} already runs {current.instance.pod} of {service}")
                if start and current.replicas == 0:
                    overrides[cluster] = dataclasses.replace(current, replicas=1).overrides()
                    _set_overrides(obj, overrides)
                    return True
                return False
            standby = any(n != cluster for n in names)
            overrides[cluster] = InstanceSpec(instance=instance, replicas=1 if start else 0,
                                              standby=standby, annotation=annotation,
                                              env=params_env(params)).overrides()
            _set_placement(obj, sorted({*names, cluster}))
            _set_overrides(obj, overrides)
            return True

        if self.host.update(self._fd_path(service), add) is not None:
            return
        body: Obj = {
            "apiVersion": "types.kubefed.io/v1beta1", "kind": "FederatedDeployment",
            "metadata": {"name": service, "namespace": self.namespace,
                         "labels": {SERVICE_LABEL: service, MANAGED_BY[0]: MANAGED_BY[1]}},
            "spec": {"template": deployment_template(service=service, workload=workload,
                                                     params=params,
                                                     image=self.image_for(workload))},
        }
        add(body)
        if self.host.create(f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments",
                            body) is None:
            self.host.update(self._fd_path(service), add)  # lost a create race: merge into it
        log.info("placed %s in %s (FederatedDeployment %s)", instance.pod, cluster, service)

    def start(self, *, instance: Instance, workload: str, params: Params) -> None:
        """Scale the instance's cluster override from 0 to 1 replica. Idempotent."""
        service = service_of(instance)

        def scale(obj: Obj) -> bool:
            overrides = _overrides_of(obj)
            current = InstanceSpec.read(instance.cluster, overrides.get(instance.cluster, []))
            if current is None or current.instance.pod != instance.pod:
                raise FederationError(f"{instance.pod} is not placed in {instance.cluster}")
            if current.replicas >= 1:
                return False
            overrides[instance.cluster] = dataclasses.replace(current, replicas=1).overrides()
            _set_overrides(obj, overrides)
            return True

        if self.host.update(self._fd_path(service), scale) is None:
            raise FederationError(f"service {service} has no FederatedDeployment to start")

    def wait_ready(self, *, instance: Instance, timeout: float) -> None:
        """Return once KubeFed reports the instance propagated and the member runs it.

        Host side: the FederatedDeployment's status lists the cluster with no propagation
        error, for the current generation. Member side: the Deployment carries this
        instance's label, has observed its generation and has a ready replica, and a pod of
        this instance is Running and Ready. Unreachable clusters are polled until the deadline
        (a short partition may heal); then a retryable FederationError says what was missing.
        """
        service = service_of(instance)
        deadline = time.monotonic() + timeout
        last = "nothing checked yet"
        while True:
            remaining = deadline - time.monotonic()
            try:
                problem = self._not_ready(service, instance,
                                          timeout=max(0.5, min(self.host.timeout, remaining)))
            except FederationError as e:
                if not e.retryable:
                    raise
                problem = str(e)
            if problem is None:
                return
            last = problem
            if time.monotonic() >= deadline:
                raise FederationError(f"{instance.pod} not ready in {instance.cluster} after "
                                      f"{timeout}s: {last}", retryable=True)
            time.sleep(self.poll_s)

    def _not_ready(self, service: str, instance: Instance, *, timeout: float) -> str | None:
        """What keeps the instance from being ready, or None when it is.

        KubeFed must have reconciled the current generation and propagated to the cluster at
        least once; after that the member is the judge. A propagation error KubeFed reports
        for the cluster (say UpdateFailed after a 409 with the member's own controllers, which
        KubeFed retries) does not make a serving instance unready; it is named only when the
        member shows the instance is not serving.
        """
        fd = self.host.get(self._fd_path(service), timeout=timeout)
        if fd is None:
            return f"FederatedDeployment {service} does not exist"
        status = fd.get("status") or {}
        if int(status.get("observedGeneration") or 0) < int(fd["metadata"].get("generation", 1)):
            return "KubeFed has not yet reconciled the latest placement"
        entry = next((c for c in status.get("clusters") or []
                      if c.get("name") == instance.cluster), None)
        if entry is None:
            return f"KubeFed reports no propagation to {instance.cluster}"
        kubefed = str(entry.get("status") or "")
        problem = self._member_not_ready(service, instance, timeout=timeout)
        if problem is not None and kubefed:
            return f"{problem} (KubeFed reports {kubefed} for {instance.cluster})"
        if problem is None and kubefed:
            log.debug("%s serves in %s although KubeFed reports %s (it retries)",
                      instance.pod, instance.cluster, kubefed)
        return problem

    def _member_not_ready(self, service: str, instance: Instance, *,
                          timeout: float) -> str | None:
        """The member's view: this instance's Deployment, caught up, with a serving pod."""
        member = self.member(instance.cluster)
        dep = member.get(self._deployment_path(service), timeout=timeout)
        if dep is None:
            return f"no Deployment {service} in {instance.cluster} yet"
        tmpl_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        if tmpl_labels.get(INSTANCE_LABEL) != instance.pod:
            return f"the Deployment in {instance.cluster} is not {instance.pod}'s"
        dst = dep.get("status") or {}
        if int(dst.get("observedGeneration") or 0) < int(dep["metadata"].get("generation", 1)):
            return "the member's deployment controller has not caught up"
        if int(dst.get("readyReplicas") or 0) < 1:
            return f"Deployment {service} in {instance.cluster} has no ready replica"
        pods = member.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"{INSTANCE_LABEL}={instance.pod}"},
            timeout=timeout).get("items") or []
        for pod in pods:
            pst = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in pst.get("conditions") or [])
            if (pst.get("phase") == "Running" and ready
                    and not pod["metadata"].get("deletionTimestamp")):
                return None
        return f"no Running and Ready pod of {instance.pod} in {instance.cluster}"

    def quiesce(self, *, instance: Instance) -> None:
        """Ask a client instance to stop sending: ``mobility.io/paused: "true"`` on its pods.

        A container cannot be signalled through the API, so the pause travels as a pod
        annotation, which the workload sees through a downward-API volume (the kubelet
        refreshes it). That nothing is left in flight is the workload's promise; on KWOK no
        process runs, so only the annotation is checked (tested).
        """
        self._annotate_pods(instance, PAUSED_ANNOTATION, "true")

    def resume(self, *, instance: Instance) -> None:
        """Let a quiesced (or paused-at-start) client instance send again."""
        self._annotate_pods(instance, PAUSED_ANNOTATION, "false")

    def _annotate_pods(self, instance: Instance, key: str, value: str) -> None:
        member = self.member(instance.cluster)
        base = f"/api/v1/namespaces/{self.namespace}/pods"
        pods = member.request("GET", base, query={
            "labelSelector": f"{INSTANCE_LABEL}={instance.pod}"}).get("items") or []
        if not pods:
            raise FederationError(f"no pod of {instance.pod} in {instance.cluster}",
                                  retryable=True)
        for pod in pods:
            def note(obj: Obj) -> bool:
                notes = obj["metadata"].setdefault("annotations", {})
                if notes.get(key) == value:
                    return False
                notes[key] = value
                return True

            member.update(f"{base}/{pod['metadata']['name']}", note)

    def unplace(self, *, instance: Instance) -> None:
        """Take the instance's cluster out of the FederatedDeployment. Idempotent.

        The instances that remain lose their standby marker (they serve now). The last
        instance deletes the FederatedDeployment. Then the member Deployment's removal
        by KubeFed is waited for; when the member cannot be reached the removal is left to
        KubeFed (the host holds the desired state, and KubeFed deletes the Deployment when the
        member answers again), so a rollback can finish during a partition.
        """
        service = service_of(instance)
        cluster = instance.cluster
        outcome = "keep"  # "keep": not ours; "drop": cluster removed; "last": delete it all

        def drop(obj: Obj) -> bool:
            nonlocal outcome
            names = placement_clusters(obj)
            overrides = _overrides_of(obj)
            current = InstanceSpec.read(cluster, overrides.get(cluster, []))
            if current is not None and current.instance.pod != instance.pod:
                outcome = "keep"  # the cluster holds another instance of the service now
                return False
            rest = [n for n in names if n != cluster]
            outcome = "drop" if rest else "last"
            if not rest:
                # The last instance: the FederatedDeployment is deleted as it stands, since
                # KubeFed deletes from the clusters its placement lists (an emptied placement
                # would leave the member's Deployment behind, unmanaged).
                return False
            changed = cluster in names or cluster in overrides
            overrides.pop(cluster, None)
            for other in rest:
                spec = InstanceSpec.read(other, overrides.get(other, []))
                if spec is not None and spec.standby:
                    overrides[other] = dataclasses.replace(spec, standby=False).overrides()
                    changed = True
            _set_placement(obj, rest)
            _set_overrides(obj, overrides)
            return changed

        if self.host.update(self._fd_path(service), drop) is None or outcome == "keep":
            return
        last = outcome == "last"
        if last:
            self.host.delete(self._fd_path(service))
        try:
            member = self.member(cluster)
            self._wait_removed(member, service, instance)
        except ClusterUnreachable as e:
            log.warning("%s: removal from %s left to KubeFed (member unreachable): %s",
                        instance.pod, cluster, e)
            return
        # A deleted FederatedDeployment lingers until KubeFed's recheck lets its finalizer go
        # (about 10 s later); the member is clean already, so that is not waited for here
        # (place() waits for it when the same service comes back before then).

    def _wait_removed(self, member: KubeClient, service: str, instance: Instance) -> None:
        deadline = time.monotonic() + self.removal_timeout_s
        path = self._deployment_path(service)
        while True:
            dep = member.get(path)
            if dep is None or ((dep["spec"]["template"]["metadata"].get("labels") or {})
                               .get(INSTANCE_LABEL) != instance.pod):
                return
            if time.monotonic() > deadline:
                raise FederationError(f"KubeFed has not removed {instance.pod} from "
                                      f"{instance.cluster} after {self.removal_timeout_s}s",
                                      retryable=True)
            time.sleep(self.poll_s)

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

    def instances(self) -> Iterator[InstanceSpec]:
        """Every instance the FederatedDeployments hold, with its standby state."""
        try:
            items = self.host.request(
                "GET", f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments",
                query={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"}).get("items") or []
        except KubeError as e:
            if e.not_found:
                return
            raise
        for item in items:
            if item["metadata"].get("deletionTimestamp"):
                continue
            overrides = _overrides_of(item)
            for cluster in placement_clusters(item):
                spec = InstanceSpec.read(cluster, overrides.get(cluster, []))
                if spec is not None:
                    yield spec


def write_kubeconfig(path: Path, *, clusters: Mapping[str, tuple[str, str, bytes]]) -> None:
    """A kubeconfig with one context per cluster: name -> (endpoint, token, CA PEM).

    For tools and tests that start clusters with static tokens; written 0600 atomically.
    """
    doc: Obj = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                "clusters": [], "users": [], "contexts": [],
                "current-context": next(iter(clusters), "")}
    for name, (endpoint, token, ca) in clusters.items():
        doc["clusters"].append({"name": name, "cluster": {
            "server": endpoint, "certificate-authority-data": base64.b64encode(ca).decode()}})
        doc["users"].append({"name": name, "user": {"token": token}})
        doc["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(copy.deepcopy(doc), fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


if TYPE_CHECKING:  # mypy checks here that the adapter implements the engine's port

    def _is_federation(adapter: KubeFedFederation) -> Federation:
        return adapter
