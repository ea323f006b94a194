"""The ports the engine needs. Adapters at the edges implement them.

``NodeAgent`` reaches the agent on one node (Celery queue ``dataplane.<cluster>.<node>`` in
``workers``) with a typed operation from :mod:`mobility.node_ops`; ``Federation`` starts and
stops instances (the lab, KubeFed or Karmada, in :mod:`mobility.backends`); ``Wiring`` makes
link ends and switches peers. Each adapter is checked against its Protocol under
``TYPE_CHECKING`` where it is defined.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from mobility.models import ContainerSpec, Instance, Link, Node, Params
from mobility.node_ops import NodeOp

R = TypeVar("R")


class NodeAgent(Protocol):
    def call(self, node: Node, op: NodeOp[R], *, timeout: float) -> R:
        """Run ``op`` on ``node``'s agent and return its result; raises FederationError.

        ``timeout`` is the caller's default; an operation may ask for longer
        (:meth:`NodeOp.call_timeout`)."""
        ...


class Federation(Protocol):
    # True when an instance's links can be made as soon as ``place`` returns, its workload
    # still starting (the lab: the pod's network exists first): WIRE then overlaps the start
    # and waits for readiness at its end. False: PLACE waits for readiness, WIRE follows.
    wires_while_starting: bool

    def place(self, *, instance: Instance, workload: str, params: Params, start: bool,
              container: ContainerSpec | None = None) -> None:
        """Create the instance; start its workload now when ``start``. Idempotent.

        ``container``: the user's image and its settings, or a built-in workload's limits."""
        ...

    def start(self, *, instance: Instance, workload: str, params: Params,
              container: ContainerSpec | None = None) -> None:
        """Start the workload of an instance placed with ``start=False``. Idempotent."""
        ...

    def wait_ready(self, *, instance: Instance, timeout: float) -> None:
        """Return once the instance serves; raises FederationError on timeout."""
        ...

    def unplace(self, *, instance: Instance) -> None:
        """Remove the instance and everything it holds. Idempotent."""
        ...

    def quiesce(self, *, instance: Instance) -> None:
        """A client workload stops sending and has nothing in flight (before its cutover)."""
        ...

    def resume(self, *, instance: Instance) -> None:
        """A quiesced (or paused) client workload sends again."""
        ...


class StateAgent(Protocol):
    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request to an application's state agent; raises StateTransferError."""
        ...

    def close(self) -> None: ...


class StateAgents(Protocol):
    def agent(self, instance: Instance) -> StateAgent:
        """A connection to the state agent of the application in ``instance``."""
        ...


class Wiring(Protocol):
    def create_end(self, *, link: Link, service: str, instance: Instance,
                   peer_instance: Instance) -> None:
        """Make ``service``'s end of ``link`` inside ``instance``, pointing at the peer."""
        ...

    def delete_end(self, *, link: Link, service: str, instance: Instance) -> None:
        """Remove ``service``'s end of ``link`` from ``instance``. Idempotent."""
        ...

    def switch(self, *, link: Link, moved: str, peer_instance: Instance,
               to_instance: Instance) -> None:
        """On the peer's side of ``link``, send ``moved``'s traffic to ``to_instance``."""
        ...

    def set_routes(self, *, instance: Instance, routes: list[dict[str, str]]) -> None:
        """Routes inside the instance (a chain's far ends through its neighbours)."""
        ...

    def points_to(self, *, link: Link, moved: str, peer_instance: Instance) -> str | None:
        """The underlay address the peer sends ``moved``'s traffic to now."""
        ...
