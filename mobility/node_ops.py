"""Node operations: one frozen dataclass per thing a node's agent does, carrying its task name.

This is the Celery seam between the orchestrator and the node agents, typed at both ends (the
Temporal habit: one input dataclass per task). The caller builds an operation and hands it to
``NodeAgent.call(node, op)``; ``workers.node`` registers one task per class here and turns the
arguments back into the same class. On the queue an operation is a plain msgpack mapping
(:meth:`NodeOp.to_args`), never a pickled object.

:meth:`CreateEnd.for_link` is the one place a link end is built from the registry's records
(with the MTU rule: the smallest underlay MTU on the path), for WIRE and the reconciler alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from mobility.models import Cluster, Instance, Link, Params

R = TypeVar("R")
Op = TypeVar("Op", bound="NodeOp[Any]")

Route = Mapping[str, str]  # {"dst": cidr, "via": address, "ifname": device}


@dataclass(frozen=True)
class NodeOp(Generic[R]):
    """Base of every node operation. ``TASK`` is the Celery task name the agent serves."""

    TASK: ClassVar[str] = ""

    def to_args(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_args(cls: type[Op], args: Mapping[str, Any]) -> Op:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        if unknown:
            raise ValueError(f"{cls.TASK}: unknown arguments {unknown}")
        return cls(**{k: _frozen(v) for k, v in args.items()})

    def call_timeout(self, default: float) -> float:
        """How long the caller waits for the answer."""
        return default

    def decode(self, value: object) -> R:
        """The typed result from the agent's answer (None for operations that return none)."""
        return None  # type: ignore[return-value]


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _frozen(value: object) -> object:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class CreatePod(NodeOp[None]):
    """Make a pod (namespace, veth, address) and start its workload when ``start``.

    ``detach``: answer once the pod's network exists and its start is under way, not when
    containerd has started the task: the caller makes the pod's links meanwhile, and
    :class:`WaitReady` (or any later operation on the pod's workload) waits for the start,
    reporting its failure."""

    TASK: ClassVar[str] = "node.create_pod"
    pod: str
    workload: str
    params: Params
    start: bool = True
    container: Mapping[str, Any] | None = None  # ContainerSpec.to_dict()
    detach: bool = False


@dataclass(frozen=True)
class StartWorkload(NodeOp[None]):
    TASK: ClassVar[str] = "node.start_workload"
    pod: str
    workload: str
    params: Params
    container: Mapping[str, Any] | None = None  # ContainerSpec.to_dict()


@dataclass(frozen=True)
class WaitReady(NodeOp[None]):
    TASK: ClassVar[str] = "node.wait_ready"
    pod: str
    timeout: float

    def call_timeout(self, default: float) -> float:
        return self.timeout + 5  # the agent waits ``timeout`` itself, then answers


@dataclass(frozen=True)
class DeletePod(NodeOp[None]):
    TASK: ClassVar[str] = "node.delete_pod"
    pod: str


@dataclass(frozen=True)
class CreateEnd(NodeOp[None]):
    """One end of an NSM-style VxLAN link inside a pod, pointing at the peer's node."""

    TASK: ClassVar[str] = "node.create_end"
    pod: str
    ifname: str
    vni: int
    mac: str
    cidr: str
    peer_mac: str
    peer_ip: str
    peer_node_ip: str
    underlay_mtu: int

    @classmethod
    def for_link(cls, *, link: Link, service: str, instance: Instance,
                 peer_instance: Instance, clusters: Mapping[str, Cluster]) -> CreateEnd:
        """``service``'s end of ``link`` in ``instance``, its peer being in ``peer_instance``.

        The underlay MTU is the smallest on the path: both ends must fit through it.
        """
        mine, peer = link.end_of(service), link.peer_of(service)
        peer_node = clusters[peer_instance.cluster].node(peer_instance.node)
        return cls(pod=instance.pod, ifname=mine.ifname, vni=link.vni, mac=mine.mac,
                   cidr=mine.cidr, peer_mac=peer.mac, peer_ip=peer.ip,
                   peer_node_ip=peer_node.underlay_ip,
                   underlay_mtu=min(clusters[instance.cluster].underlay_mtu,
                                    clusters[peer_instance.cluster].underlay_mtu))


@dataclass(frozen=True)
class DeleteEnd(NodeOp[None]):
    TASK: ClassVar[str] = "node.delete_end"
    pod: str
    ifname: str


@dataclass(frozen=True)
class Switch(NodeOp[None]):
    """On a peer's end: send traffic for ``mac`` to the node at ``node_ip`` (one FDB replace)."""

    TASK: ClassVar[str] = "node.switch"
    pod: str
    ifname: str
    mac: str
    node_ip: str


@dataclass(frozen=True)
class FdbDst(NodeOp["str | None"]):
    """The underlay address a peer's end sends ``mac``'s traffic to now."""

    TASK: ClassVar[str] = "node.fdb_dst"
    pod: str
    ifname: str
    mac: str

    def decode(self, value: object) -> str | None:
        return None if value is None else str(value)


@dataclass(frozen=True)
class SetRoutes(NodeOp[None]):
    TASK: ClassVar[str] = "node.set_routes"
    pod: str
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Quiesce(NodeOp[None]):
    TASK: ClassVar[str] = "node.quiesce"
    pod: str


@dataclass(frozen=True)
class Resume(NodeOp[None]):
    TASK: ClassVar[str] = "node.resume"
    pod: str


@dataclass(frozen=True)
class EnsureRelay(NodeOp[str]):
    """Start (once) the state relay beside a kubelet's pod; the answer is the path of the
    socket the orchestrator's state agent client connects to."""

    TASK: ClassVar[str] = "node.ensure_relay"
    pod: str
    timeout: float = 10.0

    def call_timeout(self, default: float) -> float:
        return self.timeout + 5

    def decode(self, value: object) -> str:
        return str(value)


@dataclass(frozen=True)
class Ping(NodeOp["dict[str, object]"]):
    TASK: ClassVar[str] = "node.ping"

    def decode(self, value: object) -> dict[str, object]:
        return dict(value) if isinstance(value, Mapping) else {}


AnyOp = NodeOp[Any]

ALL: tuple[type[AnyOp], ...] = (
    CreatePod, StartWorkload, WaitReady, DeletePod, CreateEnd, DeleteEnd, Switch, FdbDst,
    SetRoutes, Quiesce, Resume, EnsureRelay, Ping,
)
