"""Karmada placement: the same moves as KubeFed, through Karmada's policy objects.

Per service, in the Karmada API server's workload namespace:
- the **Deployment** itself, as the resource template Karmada propagates;
- a **PropagationPolicy** selecting it, whose ``placement.clusterAffinity.clusterNames`` lists
  the clusters that run an instance (a move adds the target, RELEASE removes the source);
- an **OverridePolicy** with one rule per cluster carrying what differs per instance (the
  instance label, the planned node, replicas, the NSM annotation, the standby marker), the
  same JSON-patch overrides as KubeFed's, as Karmada ``plaintext`` overriders.

Readiness and placement are read from the **ResourceBinding** Karmada's controllers keep for
the Deployment (``<name>-deployment``): the cluster must be in ``spec.clusters`` (scheduled)
and its ``status.aggregatedStatus`` entry applied and Healthy.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mobility.backends.kube.client import KubeClient, Obj
from mobility.backends.kube.objects import (
    MANAGED_BY,
    SERVICE_LABEL,
    InstanceSpec,
    client_annotation,
    default_image,
    deployment_template,
    params_env,
    service_of,
)
from mobility.errors import FederationError
from mobility.models import ContainerSpec, Instance, Params

if TYPE_CHECKING:
    from mobility.ports import Federation

log = logging.getLogger(__name__)

POLICY_API = "/apis/policy.karmada.io/v1alpha1"
WORK_API = "/apis/work.karmada.io/v1alpha2"


def _to_plaintext(overrides: list[Obj]) -> list[Obj]:
    """KubeFed's ``{op, path, value}`` as Karmada's ``{operator, path, value}``."""
    return [{"operator": o["op"], "path": o["path"], "value": o["value"]} for o in overrides]


def _from_plaintext(plaintext: list[Obj]) -> list[Obj]:
    return [{"op": p.get("operator"), "path": p.get("path"), "value": p.get("value")}
            for p in plaintext]


def _cluster_names(pp: Obj) -> list[str]:
    affinity = (pp.get("spec") or {}).get("placement", {}).get("clusterAffinity") or {}
    return [str(n) for n in affinity.get("clusterNames") or []]


def _rules(op: Obj) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for rule in (op.get("spec") or {}).get("overrideRules") or []:
        for cluster in (rule.get("targetCluster") or {}).get("clusterNames") or []:
            out[str(cluster)] = _from_plaintext((rule.get("overriders") or {})
                                                .get("plaintext") or [])
    return out


def _set_rules(op: Obj, rules: dict[str, list[Obj]]) -> None:
    op.setdefault("spec", {})["overrideRules"] = [
        {"targetCluster": {"clusterNames": [c]}, "overriders": {"plaintext": _to_plaintext(o)}}
        for c, o in sorted(rules.items())]


class KarmadaFederation:
    """The ``Federation`` port over Karmada's PropagationPolicy and ResourceBinding.

    ``karmada`` reaches the Karmada API server (where the resource templates and policies
    live); member clusters are Karmada's business and are not contacted.
    """

    def __init__(self, *, karmada: KubeClient, namespace: str = "mobility",
                 domain: str = "cluster.local",
                 image_for: Callable[[str], str] = default_image,
                 poll_s: float = 0.1) -> None:
        self.karmada = karmada
        self.namespace = namespace
        self.domain = domain
        self.image_for = image_for
        self.poll_s = poll_s

    def _selector(self, service: str) -> list[Obj]:
        return [{"apiVersion": "apps/v1", "kind": "Deployment", "name": service,
                 "namespace": self.namespace}]

    def _pp_path(self, service: str = "") -> str:
        base = f"{POLICY_API}/namespaces/{self.namespace}/propagationpolicies"
        return f"{base}/{service}" if service else base

    def _op_path(self, service: str = "") -> str:
        base = f"{POLICY_API}/namespaces/{self.namespace}/overridepolicies"
        return f"{base}/{service}" if service else base

    def _deployment_path(self, service: str = "") -> str:
        base = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        return f"{base}/{service}" if service else base

    def binding_path(self, service: str) -> str:
        """Karmada names a Deployment's binding ``<name>-deployment``."""
        return f"{WORK_API}/namespaces/{self.namespace}/resourcebindings/{service}-deployment"

    # --- the Federation port ---

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool,
              container: ContainerSpec | None = None) -> None:
        """Add the cluster to the service's PropagationPolicy and its override rule. Idempotent.

        An instance placed while another cluster holds one carries the standby marker.
        """
        service = service_of(instance)
        cluster = instance.cluster
        labels = {SERVICE_LABEL: service, MANAGED_BY[0]: MANAGED_BY[1]}
        self.karmada.create("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        template = deployment_template(service=service, workload=workload, params=params,
                                       image=self.image_for(workload))
        template["apiVersion"], template["kind"] = "apps/v1", "Deployment"
        template["metadata"].update(name=service, namespace=self.namespace)
        template["spec"]["replicas"] = 0  # the per-cluster rules say how many
        self.karmada.create(self._deployment_path(), template)

        def add_cluster(pp: Obj) -> bool:
            names = _cluster_names(pp)
            if cluster in names:
                return False
            pp["spec"].setdefault("placement", {})["clusterAffinity"] = {
                "clusterNames": sorted([*names, cluster])}
            return True

        if self.karmada.update(self._pp_path(service), add_cluster) is None:
            pp: Obj = {"apiVersion": "policy.karmada.io/v1alpha1", "kind": "PropagationPolicy",
                       "metadata": {"name": service, "namespace": self.namespace,
                                    "labels": labels},
                       "spec": {"resourceSelectors": self._selector(service), "placement": {}}}
            add_cluster(pp)
            if self.karmada.create(self._pp_path(), pp) is None:
                self.karmada.update(self._pp_path(service), add_cluster)

        annotation = client_annotation(service, domain=self.domain)

        def add_rule(op: Obj) -> bool:
            rules = _rules(op)
            current = InstanceSpec.read(cluster, rules.get(cluster, []))
            if current is not None:
                if current.instance.pod != instance.pod:
                    raise FederationError(
                        f"cluster {cluster!r} already runs {current.instance.pod} of {service}")
                if not (start and current.replicas == 0):
                    return False
                rules[cluster] = dataclasses.replace(current, replicas=1).overrides()
            else:
                rules[cluster] = InstanceSpec(
                    instance=instance, replicas=1 if start else 0,
                    standby=any(c != cluster for c in rules), annotation=annotation,
                    env=params_env(params)).overrides()
            _set_rules(op, rules)
            return True

        if self.karmada.update(self._op_path(service), add_rule) is None:
            op: Obj = {"apiVersion": "policy.karmada.io/v1alpha1", "kind": "OverridePolicy",
                       "metadata": {"name": service, "namespace": self.namespace,
                                    "labels": labels},
                       "spec": {"resourceSelectors": self._selector(service),
                                "overrideRules": []}}
            add_rule(op)
            if self.karmada.create(self._op_path(), op) is None:
                self.karmada.update(self._op_path(service), add_rule)
        log.info("placed %s in %s (PropagationPolicy %s)", instance.pod, cluster, service)

    def start(self, *, instance: Instance, workload: str, params: Params,
              container: ContainerSpec | None = None) -> None:
        """Scale the instance's override rule from 0 to 1 replica. Idempotent."""
        self.place(instance=instance, workload=workload, params=params, start=True)

    def wait_ready(self, *, instance: Instance, timeout: float) -> None:
        """Return once the ResourceBinding shows the cluster scheduled, applied and Healthy."""
        service = service_of(instance)
        deadline = time.monotonic() + timeout
        while True:
            try:
                problem = self.not_ready(service, instance.cluster)
            except FederationError as e:
                if not e.retryable:
                    raise
                problem = str(e)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise FederationError(f"{instance.pod} not ready in {instance.cluster} after "
                                      f"{timeout}s: {problem}", retryable=True)
            time.sleep(self.poll_s)

    def not_ready(self, service: str, cluster: str) -> str | None:
        """What the ResourceBinding says keeps the cluster's instance from serving, or None."""
        rb = self.karmada.get(self.binding_path(service))
        if rb is None:
            return f"no ResourceBinding for {service} yet"
        if cluster not in [c.get("name") for c in (rb.get("spec") or {}).get("clusters") or []]:
            return f"Karmada has not scheduled {service} to {cluster}"
        for entry in (rb.get("status") or {}).get("aggregatedStatus") or []:
            if entry.get("clusterName") != cluster:
                continue
            if not entry.get("applied"):
                return f"not applied in {cluster}: {entry.get('appliedMessage', '')}"
            if entry.get("health") != "Healthy":
                return f"{service} in {cluster} is {entry.get('health', 'Unknown')}"
            return None
        return f"no status from {cluster} yet"

    def quiesce(self, *, instance: Instance) -> None:
        """Not possible here: pausing reaches the member's pods, which Karmada keeps to itself.

        Through Karmada the only lever would be the pod template, and changing it restarts
        the instance; so a client workload cannot be moved through this adapter.
        """
        raise FederationError(f"cannot quiesce {instance.pod}: the Karmada adapter does not "
                              "reach member clusters' pods")

    def resume(self, *, instance: Instance) -> None:
        """See :meth:`quiesce`; a no-op for an instance that was never paused by us."""
        log.info("resume %s: nothing to do through Karmada", instance.pod)

    def unplace(self, *, instance: Instance) -> None:
        """Take the cluster out of the policies; the last instance takes them all. Idempotent.

        The instances that remain lose their standby marker. Karmada's controllers remove the
        Deployment from the member; :meth:`wait_removed` watches the binding for it.
        """
        service = service_of(instance)
        cluster = instance.cluster
        mine = True

        def drop_rule(op: Obj) -> bool:
            nonlocal mine
            rules = _rules(op)
            current = InstanceSpec.read(cluster, rules.get(cluster, []))
            if current is not None and current.instance.pod != instance.pod:
                mine = False
                return False
            changed = rules.pop(cluster, None) is not None
            for other, overrides in list(rules.items()):
                spec = InstanceSpec.read(other, overrides)
                if spec is not None and spec.standby:
                    rules[other] = dataclasses.replace(spec, standby=False).overrides()
                    changed = True
            _set_rules(op, rules)
            return changed

        op = self.karmada.update(self._op_path(service), drop_rule)
        if not mine:
            return  # the cluster holds another instance of the service now

        def drop_cluster(pp: Obj) -> bool:
            names = _cluster_names(pp)
            if cluster not in names:
                return False
            pp["spec"]["placement"]["clusterAffinity"] = {
                "clusterNames": [n for n in names if n != cluster]}
            return True

        pp = self.karmada.update(self._pp_path(service), drop_cluster)
        if (pp is None or not _cluster_names(pp)) and (op is None or not _rules(op)):
            self.karmada.delete(self._pp_path(service))
            self.karmada.delete(self._op_path(service))
            self.karmada.delete(self._deployment_path(service))

    def wait_removed(self, *, instance: Instance, timeout: float) -> None:
        """Return once the binding no longer schedules or reports the instance's cluster."""
        service = service_of(instance)
        deadline = time.monotonic() + timeout
        while True:
            rb = self.karmada.get(self.binding_path(service))
            spec_clusters = [c.get("name") for c in ((rb or {}).get("spec") or {})
                             .get("clusters") or []]
            reported = [e.get("clusterName") for e in ((rb or {}).get("status") or {})
                        .get("aggregatedStatus") or []]
            if instance.cluster not in spec_clusters + reported:
                return
            if time.monotonic() >= deadline:
                raise FederationError(f"Karmada still holds {instance.pod} in "
                                      f"{instance.cluster} after {timeout}s", retryable=True)
            time.sleep(self.poll_s)

    def placements(self) -> dict[str, list[str]]:
        """Service name -> clusters its PropagationPolicy places it on."""
        items = self.karmada.request(
            "GET", self._pp_path(),
            query={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"}).get("items") or []
        return {str(i["metadata"]["name"]): _cluster_names(i) for i in items}


if TYPE_CHECKING:  # mypy checks here that the adapter implements the engine's port

    def _is_federation(adapter: KarmadaFederation) -> Federation:
        return adapter
