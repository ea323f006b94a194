"""The composition root: the engine with the backend the settings choose.

``lab``: pods on lab nodes, reached through the node agents' Celery queues. ``kubefed`` and
``karmada``: Kubernetes, with NSM objects for the links; the Kubernetes client is imported only
here, when one of them is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mobility.backends.lab import AgentWiring, LabFederation, LabStateAgents, RelayStateAgents
from mobility.backends.unavailable import UnavailableStateAgents
from mobility.errors import Conflict
from mobility.moving import Engine
from mobility.ports import Federation
from mobility.settings import Settings
from mobility.store import Registry
from workers.agents import CeleryNodeAgent

if TYPE_CHECKING:
    from mobility.backends.kube.client import KubeClient
    from mobility.backends.kube.karmada import KarmadaFederation
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


def karmada(settings: Settings) -> KarmadaFederation:
    from dataplane.lab.pods import kube_pod_spec
    from mobility.backends.kube.karmada import KarmadaFederation

    return KarmadaFederation(karmada=kube_host(settings), namespace=settings.kube_namespace,
                             domain=settings.nsm_domain, pod_spec_for=kube_pod_spec)


def membership(settings: Settings) -> KubeFedFederation | KarmadaFederation:
    """The backend that joins and unjoins member clusters (KubeFed or Karmada)."""
    if settings.backend == "kubefed":
        return kubefed(settings)
    if settings.backend == "karmada":
        return karmada(settings)
    raise Conflict(f"joining and unjoining clusters needs MOBILITY_BACKEND=karmada or kubefed; "
                   f"this deployment runs the {settings.backend!r} backend")


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
    from mobility.backends.kube.nsm import NsmWiring

    fed: Federation
    members: Callable[[str], KubeClient]
    if settings.backend == "kubefed":
        kf = kubefed(settings)
        fed, members = kf, kf.member
    else:
        km = karmada(settings)
        # NSM's objects live in the members: reached with the credentials Karmada holds
        fed, members = km, km.member
    if settings.kube_wiring == "agents":
        agent = CeleryNodeAgent()
        timeout = settings.node_call_timeout_s
        return Engine(registry=reg, federation=fed,
                      wiring=AgentWiring(agent, reg.clusters, call_timeout=timeout),
                      state_agents=RelayStateAgents(agent, reg.clusters, call_timeout=timeout),
                      settings=settings)
    wiring = NsmWiring(registry=kube_host(settings), members=members, clusters=reg.clusters,
                       namespace=settings.kube_namespace)
    return Engine(registry=reg, federation=fed, wiring=wiring,
                  state_agents=UnavailableStateAgents(settings.backend), settings=settings)
