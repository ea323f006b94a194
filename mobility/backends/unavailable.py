"""State agents where none can be reached: the Kubernetes backends, for now.

A stateful move needs the application's state relay (``state_transfer.relay``, beside the
application's container, talking to its SDK socket). On the lab the node agent starts it and
the orchestrator reaches it through the pod's directory; the Kubernetes backends do not start
one yet (the relay and the SDK socket would sit in a volume shared with the node's agent).
Rather than pretend, a stateful move there fails in SYNC with this message and rolls back;
stateless moves are unaffected.
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
