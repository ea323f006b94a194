"""State agents where none can be reached: the Kubernetes backends, for now.

A stateful move needs the application's state agent (a Unix socket in the pod, see
``state_transfer.agent``). On the lab the orchestrator reaches it through the pod's directory;
on Kubernetes it would need the socket shared through a volume with a node-side relay, which
this project does not ship yet. Rather than pretend, a stateful move there fails in SYNC with
this message and rolls back; stateless moves are unaffected.
"""

from __future__ import annotations

from mobility.models import Instance
from mobility.ports import StateAgent
from state_transfer.errors import StateTransferError


class UnavailableStateAgents:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    def agent(self, instance: Instance) -> StateAgent:
        raise StateTransferError(
            f"{instance.pod}: the {self.backend} backend cannot reach state agents yet; "
            "move stateful services on the lab, or stateless ones here")
