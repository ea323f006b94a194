"""What the Kubernetes adapters write on objects: labels, annotations, the per-instance spec and
the Deployment template every instance starts from.

KubeFed, Karmada and the NSM objects share these names, so they live here, in one place, and
none of the adapters imports another for them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from mobility.backends.kube.client import Obj
from mobility.errors import FederationError
from mobility.models import ContainerSpec, Instance, Params

SERVICE_LABEL = "mobility.io/service"
INSTANCE_LABEL = "mobility.io/instance"
STANDBY_ANNOTATION = "mobility.io/standby"
NODE_ANNOTATION = "mobility.io/node"
PAUSED_ANNOTATION = "mobility.io/paused"
MANAGED_BY = ("app.kubernetes.io/managed-by", "service-mobility")
NSM_ANNOTATION = "networkservicemesh.io"

_POD_SUFFIX = re.compile(r"^(?P<service>[a-z][a-z0-9-]*)-(?P<index>[0-9]+)$")


def client_annotation(service: str, *, domain: str, ifname: str = "nsm-1") -> str:
    """The value of a client pod's ``networkservicemesh.io`` annotation.

    ``kernel://<service>@<domain>/<ifname>``: a kernel interface ``ifname`` in the pod, on the
    network service ``service`` registered in ``domain`` (NSM's interdomain form).
    """
    return f"kernel://{service}@{domain}/{ifname}"


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


def escape(key: str) -> str:
    """A map key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def default_image(workload: str) -> str:
    """The image of a named workload. KWOK never pulls it; a real cluster needs it published."""
    return f"ghcr.io/service-mobility/{workload}:0.1"


def placement_clusters(obj: Obj) -> list[str]:
    clusters = (obj.get("spec") or {}).get("placement", {}).get("clusters") or []
    return [str(c["name"]) for c in clusters]


def set_placement(obj: Obj, names: list[str]) -> None:
    obj.setdefault("spec", {}).setdefault("placement", {})["clusters"] = [
        {"name": n} for n in names]


def annotations_of(obj: Obj) -> dict[str, str]:
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
            {"op": "add", "path": f"/spec/template/metadata/labels/{escape(INSTANCE_LABEL)}",
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
        pod = by_path.get(f"/spec/template/metadata/labels/{escape(INSTANCE_LABEL)}")
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


def overrides_of(obj: Obj) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for item in (obj.get("spec") or {}).get("overrides") or []:
        out[str(item["clusterName"])] = list(item.get("clusterOverrides") or [])
    return out


def set_overrides(obj: Obj, overrides: Mapping[str, list[Obj]]) -> None:
    obj.setdefault("spec", {})["overrides"] = [
        {"clusterName": c, "clusterOverrides": o} for c, o in sorted(overrides.items())]


def params_env(params: Params) -> tuple[tuple[str, str], ...]:
    """Workload parameters as ``MOBILITY_PARAM_<NAME>`` environment variables, sorted; a
    move's target also gets ``MOBILITY_RESTORE=1``, what a user's app is told on the lab."""
    env = [(f"MOBILITY_PARAM_{k.upper()}", str(v)) for k, v in sorted(params.items())]
    if params.get("restore"):
        env.append(("MOBILITY_RESTORE", "1"))
    return tuple(env)


PodSpecFor = Callable[[str, Params, "Mapping[str, object] | None"], Obj]
"""What a pod of a workload runs (its ``spec``: containers, volumes), from the workload, the
service's parameters and its container (``ContainerSpec.to_dict()``: a user's image with its
command, environment, ports, state mode and resources). Injected by the composition: the
engine does not know images or command lines; on real nodes it is
:func:`dataplane.lab.pods.kube_pod_spec`."""


def default_pod_spec(image_for: Callable[[str], str]) -> PodSpecFor:
    """A pod spec naming only the workload's image (KWOK never runs it)."""

    def spec(workload: str, params: Params, container: Mapping[str, object] | None) -> Obj:
        image = (container or {}).get("image") or image_for(workload)
        return {"containers": [{"name": workload, "image": str(image)}]}

    return spec


def pod_spec_of(pod_spec_for: PodSpecFor, workload: str, params: Params,
                container: ContainerSpec | None = None) -> Obj:
    """The pod spec the composition's function gives, or a FederationError (not retryable)
    saying why there is none: a workload it cannot run must be refused, not crash the
    phase."""
    try:
        return pod_spec_for(workload, params,
                            container.to_dict() if container and container.image else None)
    except Exception as e:
        raise FederationError(f"no pod spec for workload {workload!r} on Kubernetes: {e}",
                              retryable=False) from e


def instance_env(pod_spec: Obj, params: Params) -> tuple[tuple[str, str], ...]:
    """An instance's whole environment: its container's own (a user's ``env``, the state
    socket's name) then its parameters. The per-instance override replaces the container's
    ``env`` as a whole, so it must carry both."""
    own = pod_spec["containers"][0].get("env") or []
    return tuple((str(e["name"]), str(e.get("value", ""))) for e in own) + params_env(params)


def deployment_template(*, service: str, workload: str, params: Params,
                        pod_spec: Obj) -> Obj:
    """The Deployment every instance of a service starts from (KubeFed's ``spec.template``).

    Workload parameters become ``MOBILITY_PARAM_<NAME>`` environment variables of the first
    container: named parameters of a named workload, never a command from a request. The pod
    gets no service-account token (an instance never talks to the API server: it holds no
    credential a compromised workload could use) and no service-link variables.
    """
    labels = {"app": service, SERVICE_LABEL: service}
    env = [{"name": k, "value": v} for k, v in params_env(params)]
    spec = copy.deepcopy(dict(pod_spec))
    spec["containers"] = [dict(c) for c in spec["containers"]]
    spec["containers"][0]["env"] = [*spec["containers"][0].get("env", []), *env]
    spec.setdefault("automountServiceAccountToken", False)
    spec.setdefault("enableServiceLinks", False)
    spec.setdefault("terminationGracePeriodSeconds", 5)
    return {
        "metadata": {"labels": {**labels, MANAGED_BY[0]: MANAGED_BY[1]}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {SERVICE_LABEL: service}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": spec},
        },
    }
