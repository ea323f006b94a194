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

Membership (join, unjoin, member clients, the federated namespace) is in
:mod:`mobility.backends.kube.membership`; this module is placement only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mobility.backends.kube.client import KubeClient, Obj
from mobility.backends.kube.membership import TYPES_API, KubeFedMembership
from mobility.backends.kube.objects import (
    INSTANCE_LABEL,
    MANAGED_BY,
    PAUSED_ANNOTATION,
    SERVICE_LABEL,
    InstanceSpec,
    client_annotation,
    deployment_template,
    instance_env,
    overrides_of,
    placement_clusters,
    pod_spec_of,
    service_of,
    set_overrides,
    set_placement,
)
from mobility.errors import ClusterUnreachable, FederationError, KubeError
from mobility.models import ContainerSpec, Instance, Params

if TYPE_CHECKING:
    from mobility.ports import Federation

log = logging.getLogger(__name__)


class KubeFedFederation(KubeFedMembership):
    """The ``Federation`` port over KubeFed (placement); membership comes from its base."""

    # PLACE waits for readiness before WIRE: a link end may name the running pod
    wires_while_starting = False

    def _fd_path(self, service: str) -> str:
        return f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments/{service}"

    def _deployment_path(self, service: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{service}"

    # --- the Federation port ---

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool,
              container: ContainerSpec | None = None) -> None:
        """Add the instance's cluster to the service's FederatedDeployment. Idempotent.

        An instance placed while another cluster holds one carries the standby marker; its
        replicas are 0 until :meth:`start` when ``start`` is False.
        """
        service = service_of(instance)
        cluster = instance.cluster
        pod_spec = pod_spec_of(self.pod_spec_for, workload, params, container)
        self._ensure_namespace(cluster)
        annotation = client_annotation(service, domain=self.domain)
        existing = self.host.get(self._fd_path(service))
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            self.host.wait_gone(self._fd_path(service), timeout=self.removal_timeout_s,
                                poll_s=self.poll_s)  # the service's previous life, going

        def add(obj: Obj) -> bool:
            names = placement_clusters(obj)
            overrides = overrides_of(obj)
            current = InstanceSpec.read(cluster, overrides.get(cluster, []))
            if cluster in names and current is not None:
                if current.instance.pod != instance.pod:
                    raise FederationError(
                        f"cluster {cluster!r} already runs {current.instance.pod} of {service}")
                if start and current.replicas == 0:
                    overrides[cluster] = dataclasses.replace(current, replicas=1).overrides()
                    set_overrides(obj, overrides)
                    return True
                return False
            standby = any(n != cluster for n in names)
            overrides[cluster] = InstanceSpec(instance=instance, replicas=1 if start else 0,
                                              standby=standby, annotation=annotation,
                                              env=instance_env(pod_spec, params)).overrides()
            set_placement(obj, sorted({*names, cluster}))
            set_overrides(obj, overrides)
            return True

        if self.host.update(self._fd_path(service), add) is not None:
            return
        body: Obj = {
            "apiVersion": "types.kubefed.io/v1beta1", "kind": "FederatedDeployment",
            "metadata": {"name": service, "namespace": self.namespace,
                         "labels": {SERVICE_LABEL: service, MANAGED_BY[0]: MANAGED_BY[1]}},
            "spec": {"template": deployment_template(
                service=service, workload=workload, params=params,
                pod_spec=pod_spec)},
        }
        add(body)
        if self.host.create(f"{TYPES_API}/namespaces/{self.namespace}/federateddeployments",
                            body) is None:
            self.host.update(self._fd_path(service), add)  # lost a create race: merge into it
        log.info("placed %s in %s (FederatedDeployment %s)", instance.pod, cluster, service)

    def start(self, *, instance: Instance, workload: str, params: Params,
              container: ContainerSpec | None = None) -> None:
        """Scale the instance's cluster override from 0 to 1 replica. Idempotent."""
        service = service_of(instance)

        def scale(obj: Obj) -> bool:
            overrides = overrides_of(obj)
            current = InstanceSpec.read(instance.cluster, overrides.get(instance.cluster, []))
            if current is None or current.instance.pod != instance.pod:
                raise FederationError(f"{instance.pod} is not placed in {instance.cluster}")
            if current.replicas >= 1:
                return False
            overrides[instance.cluster] = dataclasses.replace(current, replicas=1).overrides()
            set_overrides(obj, overrides)
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
            overrides = overrides_of(obj)
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
            set_placement(obj, rest)
            set_overrides(obj, overrides)
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
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        while True:
            dep = member.get(path)
            if dep is None or ((dep["spec"]["template"]["metadata"].get("labels") or {})
                               .get(INSTANCE_LABEL) != instance.pod):
                # and its pod gone too: on a real node, until then its container may still
                # run (and hold its address, its state) for its grace period
                left = member.request("GET", pods, query={
                    "labelSelector": f"{INSTANCE_LABEL}={instance.pod}"}).get("items") or []
                if not left:
                    return
            if time.monotonic() > deadline:
                raise FederationError(f"KubeFed has not removed {instance.pod} (or its pod) "
                                      f"from {instance.cluster} after "
                                      f"{self.removal_timeout_s}s",
                                      retryable=True)
            time.sleep(self.poll_s)


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
            overrides = overrides_of(item)
            for cluster in placement_clusters(item):
                spec = InstanceSpec.read(cluster, overrides.get(cluster, []))
                if spec is not None:
                    yield spec



if TYPE_CHECKING:  # mypy checks here that the adapter implements the engine's port

    def _is_federation(adapter: KubeFedFederation) -> Federation:
        return adapter
