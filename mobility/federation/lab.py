"""The lab backend: instances are pods (network namespaces) on lab nodes, run by node agents.

Every call goes to the agent of the node that holds the pod, through the ``NodeAgent`` port,
because only that agent runs inside the node (it owns the node's namespace and pod network).
"""

from __future__ import annotations

from pathlib import Path

from mobility.models import Instance, Params
from mobility.wiring import OnNodes
from state_transfer.control import AgentClient


class LabFederation(OnNodes):

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool) -> None:
        self.agent.call(self._node(instance), "create_pod",
                        {"pod": instance.pod, "workload": workload, "params": params,
                         "start": start}, timeout=self.call_timeout)

    def start(self, *, instance: Instance, workload: str, params: Params) -> None:
        self.agent.call(self._node(instance), "start_workload",
                        {"pod": instance.pod, "workload": workload, "params": params},
                        timeout=self.call_timeout)

    def wait_ready(self, *, instance: Instance, timeout: float) -> None:
        self.agent.call(self._node(instance), "wait_ready",
                        {"pod": instance.pod, "timeout": timeout}, timeout=timeout + 5)

    def unplace(self, *, instance: Instance) -> None:
        self.agent.call(self._node(instance), "delete_pod", {"pod": instance.pod},
                        timeout=self.call_timeout)

    def quiesce(self, *, instance: Instance) -> None:
        self.agent.call(self._node(instance), "quiesce", {"pod": instance.pod},
                        timeout=self.call_timeout)

    def resume(self, *, instance: Instance) -> None:
        self.agent.call(self._node(instance), "resume", {"pod": instance.pod},
                        timeout=self.call_timeout)


class LabStateAgents:
    """State agents of lab pods: a Unix socket in each pod's directory, reachable from the host.

    In Kubernetes the same socket would sit in a volume shared with the node's agent.
    """

    def __init__(self, pods_dir: Path) -> None:
        self.pods_dir = pods_dir

    def agent(self, instance: Instance) -> AgentClient:
        return AgentClient(str(self.pods_dir / instance.pod / "state.sock"))
