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
and its ``status.aggregatedStatus`` entry applied, Healthy and with the replicas its rule asks
for ready. When it is not, the binding's ``Scheduled`` condition and the **Cluster** object
say why (Karmada reports the cluster not Ready, or has no such cluster). A removal is done
when Karmada's **Work** for the cluster is gone: its finalizer is lifted only once Karmada
deleted the Deployment from the member.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mobility.backends.kube.client import KubeClient, Obj
from mobility.backends.kube.membership import grant_access, nodes_of, revoke_access
from mobility.backends.kube.objects import (
    INSTANCE_LABEL,
    MANAGED_BY,
    SERVICE_LABEL,
    InstanceSpec,
    PodSpecFor,
    client_annotation,
    default_image,
    default_pod_spec,
    deployment_template,
    instance_env,
    pod_spec_of,
    service_of,
)
from mobility.errors import FederationError
from mobility.models import Cluster, ContainerSpec, Instance, Params

if TYPE_CHECKING:
    from mobility.ports import Federation

log = logging.getLogger(__name__)

POLICY_API = "/apis/policy.karmada.io/v1alpha1"
WORK_API = "/apis/work.karmada.io/v1alpha2"
WORKS_API = "/apis/work.karmada.io/v1alpha1"  # Work is v1alpha1 in Karmada v1.12
CLUSTER_API = "/apis/cluster.karmada.io/v1alpha1/clusters"
EXECUTION_SPACE = "karmada-es-"  # Karmada keeps a cluster's Works in karmada-es-<cluster>
MEMBERS_NAMESPACE = "karmada-cluster"  # the members' credentials in Karmada (push mode)


def _to_plaintext(overrides: list[Obj]) -> list[Obj]:
    """KubeFed's ``{op, path, value}`` as Karmada's ``{operator, path, value}``.

    ``replace`` is written as ``add``: the template is a real Deployment in Karmada's API
    server, which drops empty fields (an instance without parameters has no ``env``), and a
    JSON-patch ``replace`` of a missing member fails the whole override (Karmada then writes
    no Work at all). ``add`` on an object member sets it whether it is there or not.
    """
    return [{"operator": "add" if o["op"] == "replace" else o["op"], "path": o["path"],
             "value": o["value"]} for o in overrides]


def _from_plaintext(plaintext: list[Obj]) -> list[Obj]:
    return [{"op": p.get("operator"), "path": p.get("path"), "value": p.get("value")}
            for p in plaintext]


def _condition(obj: Obj, kind: str) -> Obj:
    """The ``status.conditions`` entry of type ``kind``, or an empty dict."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def _excerpt(message: object, limit: int = 200) -> str:
    """A Karmada condition message, bounded: it lands in errors that travel to API answers."""
    text = " ".join(str(message or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    # PLACE waits for readiness before WIRE: a link end may name the running pod
    wires_while_starting = False

    def __init__(self, *, karmada: KubeClient, namespace: str = "mobility",
                 domain: str = "cluster.local",
                 image_for: Callable[[str], str] = default_image,
                 pod_spec_for: PodSpecFor | None = None,
                 poll_s: float = 0.1, removal_timeout_s: float = 30.0,
                 members: Callable[[str], KubeClient] | None = None,
                 wait_on_unplace: bool = True) -> None:
        self.karmada = karmada
        self.namespace = namespace
        self.domain = domain
        self.image_for = image_for
        self.pod_spec_for = pod_spec_for or default_pod_spec(image_for)
        self.poll_s = poll_s
        self.removal_timeout_s = removal_timeout_s
        # RELEASE returns once the source is gone: Karmada's Work (and, with clients for the
        # members, the pod itself). Off only where no controller removes anything.
        self.members = members if members is not None else self.member
        self.wait_on_unplace = wait_on_unplace
        self._members: dict[str, KubeClient] = {}

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
        if self.karmada.get(f"{CLUSTER_API}/{cluster}") is None:
            # Karmada's scheduler would only say that no cluster fits, for ever
            raise FederationError(f"cannot place {instance.pod}: {cluster!r} is not a member "
                                  "cluster of Karmada (no Cluster object)")
        labels = {SERVICE_LABEL: service, MANAGED_BY[0]: MANAGED_BY[1]}
        # Karmada's namespace controller propagates the namespace to every member cluster
        self.karmada.create("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        pod_spec = pod_spec_of(self.pod_spec_for, workload, params, container)
        template = deployment_template(service=service, workload=workload, params=params,
                                       pod_spec=pod_spec)
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

        # A PropagationPolicy deleted by the last unplace lingers until Karmada's detector
        # lifts its finalizer; a placement written into it would go with it.
        lingering = self.karmada.get(self._pp_path(service))
        if lingering is not None and lingering["metadata"].get("deletionTimestamp"):
            self.karmada.wait_gone(self._pp_path(service), timeout=self.removal_timeout_s,
                                   poll_s=self.poll_s)
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
                    env=instance_env(pod_spec, params)).overrides()
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
        """Return once Karmada reports the instance scheduled, applied, Healthy and ready.

        Polled until the deadline, then a retryable FederationError says what was missing
        (a cluster Karmada reports not Ready may come back); a cluster Karmada does not know
        fails at once, not retryable.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                problem = self.not_ready(instance)
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

    def not_ready(self, instance: Instance) -> str | None:
        """What keeps the instance from serving, from Karmada's objects; None when it serves.

        The ResourceBinding's ``aggregatedStatus`` entry for the cluster must be applied and
        Healthy and show the ready replicas the instance's rule asks for: Karmada's health of a
        Deployment holds for a Deployment scaled to 0 too, and an entry can still describe the
        Deployment before the latest rule reached the member (a start from 0 to 1 replica).
        When the cluster is not scheduled or reports nothing, the reason is looked for in the
        binding's ``Scheduled`` condition and in the Cluster's ``Ready`` condition; a status
        entry counts only while Karmada reports the cluster Ready.
        """
        service, cluster = service_of(instance), instance.cluster
        op = self.karmada.get(self._op_path(service))
        spec = InstanceSpec.read(cluster, _rules(op or {}).get(cluster, []))
        if spec is None:
            return f"{instance.pod} is not placed in {cluster}"
        if spec.instance.pod != instance.pod:
            return f"{cluster} holds {spec.instance.pod} of {service}, not {instance.pod}"
        rb = self.karmada.get(self.binding_path(service))
        if rb is None:
            return f"no ResourceBinding for {service} yet"
        if cluster not in [c.get("name") for c in (rb.get("spec") or {}).get("clusters") or []]:
            scheduled = _condition(rb, "Scheduled")
            why = (f" (Scheduled {scheduled.get('status')}: {scheduled.get('reason', '')}: "
                   f"{_excerpt(scheduled.get('message'))})" if scheduled else "")
            return self._cluster_problem(cluster) or (
                f"Karmada has not scheduled {service} to {cluster}{why}")
        for entry in (rb.get("status") or {}).get("aggregatedStatus") or []:
            if entry.get("clusterName") != cluster:
                continue
            if not entry.get("applied"):
                return self._cluster_problem(cluster) or (
                    f"not applied in {cluster}: {_excerpt(entry.get('appliedMessage'))}")
            if entry.get("health") != "Healthy":
                return f"{service} in {cluster} is {entry.get('health', 'Unknown')}"
            ready = int((entry.get("status") or {}).get("readyReplicas") or 0)
            if ready < spec.replicas:
                return f"{service} in {cluster} has {ready}/{spec.replicas} ready replicas"
            # the entry is the last status Karmada collected: a cluster it has since found
            # unreachable keeps its last, Healthy, entry
            return self._cluster_problem(cluster)
        return self._cluster_problem(cluster) or f"no status from {cluster} yet"

    def _cluster_problem(self, cluster: str) -> str | None:
        """Why Karmada cannot run anything on the cluster, or None when it reports it Ready.

        No Cluster object: not retryable (nothing will schedule there until someone joins it).
        """
        obj = self.karmada.get(f"{CLUSTER_API}/{cluster}")
        if obj is None:
            raise FederationError(f"{cluster!r} is not a member cluster of Karmada (no Cluster "
                                  "object; unjoined?)")
        ready = _condition(obj, "Ready")
        if ready.get("status") == "True":
            return None
        if not ready:
            return f"Karmada has not reported cluster {cluster}'s health yet"
        return (f"Karmada reports cluster {cluster} not Ready ({ready.get('reason', '')}: "
                f"{_excerpt(ready.get('message'))})")

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
        Deployment from the member; this returns once they have (:meth:`wait_removed`) and,
        given clients for the members, once the pod is gone too. A cluster Karmada reports not
        Ready is not waited for (Karmada removes it when the member answers again).
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
            # The template first: its ResourceBinding (owned by it) and Works go with it. The
            # OverridePolicy deleted first would have Karmada re-render the last Work without
            # the rule, the bare template, before removing it.
            self.karmada.delete(self._deployment_path(service))
            self.karmada.delete(self._pp_path(service))
            self.karmada.delete(self._op_path(service))
        if not self.wait_on_unplace:
            return
        try:
            problem = self._cluster_problem(cluster)
        except FederationError:
            return  # unjoined: Karmada has nothing there to remove
        if problem:
            # as with KubeFed in a partition: Karmada holds the desired state and removes the
            # Deployment when the member answers again, so a rollback can finish meanwhile
            log.warning("%s: removal from %s left to Karmada: %s", instance.pod, cluster,
                        problem)
            return
        self.wait_removed(instance=instance, timeout=self.removal_timeout_s)
        if self.members is not None:
            self._wait_pod_gone(instance)

    def _wait_pod_gone(self, instance: Instance) -> None:
        """Until the member runs no pod of the instance any more: Karmada's Work is gone once
        the Deployment is deleted, but its pod may still run (and hold its address and its
        state) through its grace period."""
        assert self.members is not None
        deadline = time.monotonic() + self.removal_timeout_s
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        selector = {"labelSelector": f"{INSTANCE_LABEL}={instance.pod}"}
        while True:
            try:
                left = self.members(instance.cluster).request(
                    "GET", path, query=selector).get("items") or []
            except Exception as e:  # best effort: Karmada has removed the Deployment already
                # (a member without a client here, or unreachable right now)
                log.warning("%s: could not check its pod is gone from %s: %s", instance.pod,
                            instance.cluster, e)
                return
            if not left:
                return
            if time.monotonic() > deadline:
                raise FederationError(f"the pod of {instance.pod} still runs in "
                                      f"{instance.cluster} after {self.removal_timeout_s}s",
                                      retryable=True)
            time.sleep(self.poll_s)

    def wait_removed(self, *, instance: Instance, timeout: float) -> None:
        """Return once Karmada has removed the service's Deployment from the instance's cluster.

        The binding must no longer schedule or report the cluster, and the cluster's Work for
        the Deployment must be gone: Karmada excludes a Work from the binding's status as soon
        as it is being deleted, but lifts its finalizer only after deleting the Deployment
        from the member (for a cluster Karmada reports not Ready it waits; the timeout says
        so).
        """
        service = service_of(instance)
        deadline = time.monotonic() + timeout
        while True:
            rb = self.karmada.get(self.binding_path(service))
            spec_clusters = [c.get("name") for c in ((rb or {}).get("spec") or {})
                             .get("clusters") or []]
            reported = [e.get("clusterName") for e in ((rb or {}).get("status") or {})
                        .get("aggregatedStatus") or []]
            held = instance.cluster in spec_clusters + reported
            work = None if held else self._work(service, instance.cluster)
            if not held and work is None:
                return
            if time.monotonic() >= deadline:
                what = ("the binding still schedules it there" if held else
                        f"Work {work['metadata']['name'] if work else ''} is still there")
                try:
                    problem = self._cluster_problem(instance.cluster)
                except FederationError as e:  # an unjoined cluster: say so, as the cause
                    problem = str(e)
                raise FederationError(f"Karmada still holds {instance.pod} in "
                                      f"{instance.cluster} after {timeout}s: {what}"
                                      + (f"; {problem}" if problem else ""), retryable=True)
            time.sleep(self.poll_s)

    def _work(self, service: str, cluster: str) -> Obj | None:
        """Karmada's Work carrying the service's Deployment to the cluster, if any.

        Found by its manifest, not its name (Karmada names Works by a hash).
        """
        works = self.karmada.get(f"{WORKS_API}/namespaces/{EXECUTION_SPACE}{cluster}/works")
        for work in (works or {}).get("items") or []:
            for m in ((work.get("spec") or {}).get("workload") or {}).get("manifests") or []:
                meta = m.get("metadata") or {}
                if (m.get("kind") == "Deployment" and meta.get("name") == service
                        and meta.get("namespace") == self.namespace):
                    return dict(work)
        return None

    def placements(self) -> dict[str, list[str]]:
        """Service name -> clusters its PropagationPolicy places it on.

        A policy being deleted (Karmada's finalizer holds it a moment) places nothing.
        """
        items = self.karmada.request(
            "GET", self._pp_path(),
            query={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"}).get("items") or []
        return {str(i["metadata"]["name"]): _cluster_names(i) for i in items
                if not i["metadata"].get("deletionTimestamp")}

    # --- membership: what ``karmadactl join`` / ``unjoin`` do, in push mode ---

    def _secret_path(self, name: str = "") -> str:
        base = f"/api/v1/namespaces/{MEMBERS_NAMESPACE}/secrets"
        return f"{base}/{name}" if name else base

    def member(self, name: str) -> KubeClient:
        """A client for a joined cluster, with the credentials Karmada holds for it (its
        Cluster's endpoint, the token and CA in its secret)."""
        if name in self._members:
            return self._members[name]
        obj = self.karmada.get(f"{CLUSTER_API}/{name}")
        if obj is None:
            raise FederationError(f"cluster {name!r} is not joined to Karmada")
        spec = obj.get("spec") or {}
        ref = spec.get("secretRef") or {}
        secret = self.karmada.get(f"/api/v1/namespaces/{ref.get('namespace', '')}/secrets/"
                                  f"{ref.get('name', '')}")
        data = (secret or {}).get("data") or {}
        if "token" not in data:
            raise FederationError(f"cluster {name!r}: its Karmada secret has no token")
        client = KubeClient.from_token(
            str(spec["apiEndpoint"]), token=base64.b64decode(data["token"]).decode(),
            ca_data=base64.b64decode(data["caBundle"]) if data.get("caBundle") else None,
            name=name, insecure=bool(spec.get("insecureSkipTLSVerification")),
            timeout=self.karmada.timeout)
        self._members[name] = client
        return client

    def cluster_record(self, name: str, *, underlay_mtu: int = 1500) -> Cluster:
        """The engine's record of a member cluster: its nodes and their InternalIPs."""
        return nodes_of(self.member(name), name, underlay_mtu=underlay_mtu)

    def join(self, *, name: str, member: KubeClient, token_timeout_s: float = 30.0,
             ready_timeout_s: float | None = 60.0) -> None:
        """Register ``member`` with Karmada as ``name`` in push mode, as ``karmadactl join``
        does: in the member a service account with everything (its token filled by the
        member's token controller); in Karmada a secret with that token and the member's CA,
        and a Cluster naming the member's endpoint and the secret. Idempotent. Waits until
        Karmada reports the cluster Ready when ``ready_timeout_s`` is set."""
        account = f"karmada-{name}"
        token = grant_access(member, namespace=MEMBERS_NAMESPACE, account=account,
                             role=f"karmada-controller-manager:{account}",
                             timeout=token_timeout_s, poll_s=self.poll_s)
        self.karmada.create("/api/v1/namespaces", {"metadata": {"name": MEMBERS_NAMESPACE}})
        data: Obj = {"token": token}
        ca = member.ca_data()
        if ca:
            data["caBundle"] = base64.b64encode(ca).decode()
        secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": name, "namespace": MEMBERS_NAMESPACE}, "data": data}
        if self.karmada.create(self._secret_path(), secret) is None:
            def same(obj: Obj) -> bool:
                if obj.get("data") == data:
                    return False
                obj["data"] = data
                return True

            self.karmada.update(self._secret_path(name), same)
        spec: Obj = {"syncMode": "Push", "apiEndpoint": member.endpoint,
                     "secretRef": {"namespace": MEMBERS_NAMESPACE, "name": name}}
        if member.insecure:
            spec["insecureSkipTLSVerification"] = True
        cluster = {"apiVersion": "cluster.karmada.io/v1alpha1", "kind": "Cluster",
                   "metadata": {"name": name}, "spec": spec}
        if self.karmada.create(CLUSTER_API, cluster) is None:
            def same_spec(obj: Obj) -> bool:
                want = {**(obj.get("spec") or {}), **spec}
                if obj.get("spec") == want:
                    return False
                obj["spec"] = want
                return True

            self.karmada.update(f"{CLUSTER_API}/{name}", same_spec)
        self._members.pop(name, None)
        log.info("joined cluster %s (%s) to Karmada", name, member.endpoint)
        if ready_timeout_s is None:
            return
        deadline = time.monotonic() + ready_timeout_s
        while (problem := self._cluster_problem(name)) is not None:
            if time.monotonic() > deadline:
                raise FederationError(f"after {ready_timeout_s}s: {problem}", retryable=True)
            time.sleep(self.poll_s)

    def unjoin(self, *, name: str, member: KubeClient | None = None,
               timeout_s: float = 60.0) -> None:
        """Undo :meth:`join` (what ``karmadactl unjoin`` does). Idempotent. Refused while a
        policy still places a service on the cluster. The Cluster goes first (Karmada's
        finalizer removes its execution namespace), then its secret; with ``member`` (an admin
        client) the service account and its permissions in the member too."""
        busy = [svc for svc, clusters in self.placements().items() if name in clusters]
        if busy:
            raise FederationError(f"cluster {name!r} still runs {', '.join(sorted(busy))}; "
                                  "move them away before unjoining it")
        self.karmada.delete(f"{CLUSTER_API}/{name}")
        self.karmada.wait_gone(f"{CLUSTER_API}/{name}", timeout=timeout_s, poll_s=self.poll_s)
        self.karmada.delete(self._secret_path(name))
        if member is not None:
            account = f"karmada-{name}"
            revoke_access(member, namespace=MEMBERS_NAMESPACE, account=account,
                          role=f"karmada-controller-manager:{account}")
            member.delete(f"/api/v1/namespaces/{MEMBERS_NAMESPACE}")
        else:
            log.warning("unjoining %s without its credentials: its service account and role "
                        "stay in the member", name)
        self._members.pop(name, None)
        log.info("unjoined cluster %s from Karmada", name)


if TYPE_CHECKING:  # mypy checks here that the adapter implements the engine's port

    def _is_federation(adapter: KarmadaFederation) -> Federation:
        return adapter
