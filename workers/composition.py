"""The composition root: the engine with the backend the settings choose.

``lab``: pods on lab nodes, reached through the node agents' Celery queues. ``kubefed`` and
``karmada``: Kubernetes, with NSM objects for the links; the Kubernetes client is imported only
here, when one of them is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mobility.backends.lab import AgentWiring, LabFederation, LabStateAgents
from mobility.backends.unavailable import UnavailableStateAgents
from mobility.moving import Engine
from mobility.ports import Federation
from mobility.settings import Settings
from mobility.store import Registry
from workers.agents import CeleryNodeAgent

if TYPE_CHECKING:
    from mobility.backends.kube.client import KubeClient
    from mobility.backends.kube.kubefed import KubeFedFederation


def kube_host(settings: Settings) -> KubeClient:
    """A client for the KubeFed host (or the Karmada API server) from the settings."""
    from mobility.backends.kube.client import KubeClient

    return KubeClient.from_kubeconfig(settings.kubeconfig or "~/.kube/config",
                                      context=settings.kube_context,
                                      timeout=settings.kube_timeout_s)


def kubefed(settings: Settings) -> KubeFedFederation:
    from dataplane.lab.pods import kube_pod_spec
    from mobility.backends.kube.kubefed import KubeFedFederation

    return KubeFedFederation(host=kube_host(settings), namespace=settings.kube_namespace,
                             domain=settings.nsm_domain, pod_spec_for=kube_pod_spec)


def build_engine(settings: Settings) -> Engine:
    reg = Registry.from_url(settings.redis_url.get_secret_value())
    if settings.backend == "lab":
        agent = CeleryNodeAgent()
        timeout = settings.node_call_timeout_s
        return Engine(
            registry=reg,
            federation=LabFederation(agent, reg.clusters, call_timeout=timeout),
            wiring=AgentWiring(agent, reg.clusters, call_timeout=timeout),
            state_agents=LabStateAgents(Path(settings.run_root) / settings.lab_name / "pods"),
            settings=settings,
        )
    from mobility.backends.kube.client import KubeClient
    from mobility.backends.kube.nsm import NsmWiring

    host = kube_host(settings)
    fed: Federation
    members: Callable[[str], KubeClient]
    if settings.backend == "kubefed":
        kf = kubefed(settings)
        fed, members = kf, kf.member
    else:
        from dataplane.lab.pods import kube_pod_spec
        from mobility.backends.kube.karmada import KarmadaFederation

        def from_context(cluster: str) -> KubeClient:
            # Karmada keeps member credentials to itself: reach members through the
            # kubeconfig's contexts, named after the clusters.
            return KubeClient.from_kubeconfig(settings.kubeconfig or "~/.kube/config",
                                              context=cluster, timeout=settings.kube_timeout_s)

        fed = KarmadaFederation(karmada=host, namespace=settings.kube_namespace,
                                domain=settings.nsm_domain, pod_spec_for=kube_pod_spec,
                                members=from_context)

        members = from_context

    wiring = NsmWiring(registry=host, members=members, clusters=reg.clusters,
                       namespace=settings.kube_namespace)
    return Engine(registry=reg, federation=fed, wiring=wiring,
                  state_agents=UnavailableStateAgents(settings.backend), settings=settings)
