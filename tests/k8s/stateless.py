"""The state-agent port for moves on KWOK: KWOK pods run no process, so no state agent.

Only stateless moves run on this control plane; the engine asks for a state agent only for a
stateful service, and this says plainly why there is none instead of pretending.
"""

from __future__ import annotations

from mobility.models import Instance
from mobility.ports import StateAgent
from state_transfer.errors import StateTransferError


class NoStateAgents:
    def agent(self, instance: Instance) -> StateAgent:
        raise StateTransferError(f"{instance.pod} runs on a KWOK node: no application, hence "
                                 "no state agent; only stateless moves run on this control plane")
