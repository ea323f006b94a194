"""The lab backend: instances are pods (network namespaces) on lab nodes, run by node agents.

Every call goes to the agent of the node that holds the pod, through the ``NodeAgent`` port,
because only that agent runs inside the node (it owns the node's namespace and pod network).
:class:`LabFederation` starts and stops pods, :class:`AgentWiring` makes link ends and switches
peers, :class:`LabStateAgents` reaches an application's state agent socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mobility.models import Cluster, ContainerSpec, Instance, Link, Node, Params
from mobility.node_ops import (
    CreateEnd,
    CreatePod,
    DeleteEnd,
    DeletePod,
    EnsureRelay,
    FdbDst,
    NodeOp,
    Quiesce,
    Resume,
    SetRoutes,
    StartWorkload,
    Switch,
    WaitReady,
)
from mobility.ports import NodeAgent
from state_transfer.control import AgentClient

if TYPE_CHECKING:
    from mobility.ports import Federation, StateAgents, Wiring

R = TypeVar("R")


class OnNodes:
    """A port carried out by node agents: each call goes to the node holding the instance."""

    def __init__(self, agent: NodeAgent, clusters: Callable[[], dict[str, Cluster]], *,
                 call_timeout: float) -> None:
        self.agent = agent
        self.clusters = clusters
        self.call_timeout = call_timeout

    def _node(self, instance: Instance, clusters: dict[str, Cluster] | None = None) -> Node:
        return (clusters or self.clusters())[instance.cluster].node(instance.node)

    def _on(self, instance: Instance, op: NodeOp[R], *,
            clusters: dict[str, Cluster] | None = None) -> R:
        """``op`` on the node of ``instance`` (``clusters``: the fleet already read for the
        operation, so a call on the move's path reads it once)."""
        return self.agent.call(self._node(instance, clusters), op, timeout=self.call_timeout)


class LabFederation(OnNodes):
    # ``place`` answers once the pod's network exists, its container still starting on the
    # node: the move makes the pod's links meanwhile and waits for readiness after them.
    wires_while_starting = True

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool,
              container: ContainerSpec | None = None) -> None:
        """Make the pod and start its workload without waiting for containerd (``detach``):
        :meth:`wait_ready` waits for the start and reports its failure."""
        spec = (container or ContainerSpec()).to_dict()
        self._on(instance, CreatePod(pod=instance.pod, workload=workload, params=params,
                                     start=start, container=spec, detach=start))

    def start(self, *, instance: Instance, workload: str, params: Params,
              container: ContainerSpec | None = None) -> None:
        spec = (container or ContainerSpec()).to_dict()
        self._on(instance, StartWorkload(pod=instance.pod, workload=workload, params=params,
                                         container=spec))

    def wait_ready(self, *, instance: Instance, timeout: float) -> None:
        self._on(instance, WaitReady(pod=instance.pod, timeout=timeout))

    def unplace(self, *, instance: Instance) -> None:
        self._on(instance, DeletePod(pod=instance.pod))

    def quiesce(self, *, instance: Instance) -> None:
        self._on(instance, Quiesce(pod=instance.pod))

    def resume(self, *, instance: Instance) -> None:
        self._on(instance, Resume(pod=instance.pod))


class AgentWiring(OnNodes):
    """Link ends made by the node agents themselves (on Kubernetes, NSM's forwarders would)."""

    def create_end(self, *, link: Link, service: str, instance: Instance,
                   peer_instance: Instance) -> None:
        clusters = self.clusters()
        self._on(instance, CreateEnd.for_link(link=link, service=service, instance=instance,
                                              peer_instance=peer_instance, clusters=clusters),
                 clusters=clusters)

    def delete_end(self, *, link: Link, service: str, instance: Instance) -> None:
        self._on(instance, DeleteEnd(pod=instance.pod, ifname=link.end_of(service).ifname))

    def switch(self, *, link: Link, moved: str, peer_instance: Instance,
               to_instance: Instance) -> None:
        clusters = self.clusters()
        self._on(peer_instance, Switch(pod=peer_instance.pod,
                                       ifname=link.peer_of(moved).ifname,
                                       mac=link.end_of(moved).mac,
                                       node_ip=self._node(to_instance, clusters).underlay_ip),
                 clusters=clusters)

    def set_routes(self, *, instance: Instance, routes: list[dict[str, str]]) -> None:
        if routes:
            self._on(instance, SetRoutes(pod=instance.pod, routes=tuple(routes)))

    def points_to(self, *, link: Link, moved: str, peer_instance: Instance) -> str | None:
        return self._on(peer_instance, FdbDst(pod=peer_instance.pod,
                                              ifname=link.peer_of(moved).ifname,
                                              mac=link.end_of(moved).mac))


class LabStateAgents:
    """State agents of lab pods: a Unix socket in each pod's directory, reachable from the host.

    In Kubernetes the same socket would sit in a volume shared with the node's agent.
    """

    def __init__(self, pods_dir: Path) -> None:
        self.pods_dir = pods_dir

    def agent(self, instance: Instance) -> AgentClient:
        return AgentClient(str(self.pods_dir / instance.pod / "state.sock"))


class RelayStateAgents:
    """State agents of a kubelet's pods: the node agent of the instance's node starts the
    state relay beside the pod (its SDK socket sits in a volume the agent reads) and names
    the socket; the orchestrator connects to it as to a lab pod's."""

    def __init__(self, agent: NodeAgent, clusters: Callable[[], dict[str, Cluster]], *,
                 call_timeout: float) -> None:
        self.nodes = OnNodes(agent, clusters, call_timeout=call_timeout)
        # instance -> its relay's socket: asked of the node agent once per instance, not in
        # every state call (several fall inside the freeze window); a relay that died makes
        # the next connection fail, and the phase's retry asks again
        self._sockets: dict[Instance, str] = {}

    def agent(self, instance: Instance) -> AgentClient:
        path = self._sockets.get(instance)
        if path is None or not os.path.exists(path):
            path = self.nodes._on(instance, EnsureRelay(pod=instance.pod))
            self._sockets[instance] = path
        return AgentClient(path)


if TYPE_CHECKING:  # mypy checks here that the adapters implement the engine's ports

    def _is_federation(adapter: LabFederation) -> Federation:
        return adapter

    def _is_wiring(adapter: AgentWiring) -> Wiring:
        return adapter

    def _are_state_agents(adapter: LabStateAgents) -> StateAgents:
        return adapter

    def _relay_agents(adapter: RelayStateAgents) -> StateAgents:
        return adapter
