"""Domain records: clusters, services, links, moves and their events.

Plain dataclasses with explicit ``to_dict``/``from_dict`` so the registry can store them as
msgpack without pickle, and the API can map them to its own schemas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Params = dict[str, str | int | float | bool]


class Phase(StrEnum):
    ADMIT = "admit"
    PLACE = "place"
    WIRE = "wire"
    SYNC = "sync"
    CUTOVER = "cutover"
    RELEASE = "release"


class MoveStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (MoveStatus.SUCCEEDED, MoveStatus.FAILED, MoveStatus.ROLLED_BACK)


@dataclass(frozen=True)
class Node:
    name: str
    cluster: str
    underlay_ip: str
    namespace: str | None = None  # the lab's node namespace; None on a real host


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[Node, ...]
    underlay_mtu: int = 1500
    labels: tuple[tuple[str, str], ...] = ()

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"cluster {self.name} has no node {name}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "underlay_mtu": self.underlay_mtu,
            "labels": dict(self.labels),
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cluster:
        return cls(
            name=d["name"],
            underlay_mtu=int(d.get("underlay_mtu", 1500)),
            labels=tuple(sorted(dict(d.get("labels", {})).items())),
            nodes=tuple(Node(**n) for n in d["nodes"]),
        )


@dataclass(frozen=True)
class Instance:
    """Where one copy of a service runs."""

    cluster: str
    node: str
    pod: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(cluster=d["cluster"], node=d["node"], pod=d["pod"])


@dataclass(frozen=True)
class LinkEnd:
    """One side of a link: which service, which interface, which identity."""

    service: str
    ifname: str
    mac: str
    ip: str  # without prefix
    prefixlen: int = 30

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


@dataclass(frozen=True)
class Link:
    """An NSM-style point-to-point link; its identity never changes while services move."""

    id: str
    vni: int
    ends: tuple[LinkEnd, LinkEnd]

    def end_of(self, service: str) -> LinkEnd:
        for e in self.ends:
            if e.service == service:
                return e
        raise KeyError(f"link {self.id} does not touch {service}")

    def peer_of(self, service: str) -> LinkEnd:
        a, b = self.ends
        if a.service == service:
            return b
        if b.service == service:
            return a
        raise KeyError(f"link {self.id} does not touch {service}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "vni": self.vni, "ends": [dataclasses.asdict(e) for e in self.ends]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Link:
        a, b = (LinkEnd(**e) for e in d["ends"])
        return cls(id=d["id"], vni=int(d["vni"]), ends=(a, b))


@dataclass(frozen=True)
class Port:
    """A port the application serves on; a user image is ready once all of them listen."""

    port: int
    protocol: str = "udp"  # "udp" or "tcp"


# The workload name of a service that runs a user's image (not a built-in workload).
IMAGE_WORKLOAD = "image"


@dataclass(frozen=True)
class ContainerSpec:
    """What a service's container runs, beyond a built-in workload's name and parameters.

    ``image`` None means the built-in workload's reference image, whose command the node
    agent builds from the workload's checked parameters. ``state`` is ``"sdk"`` when the
    application embeds the state SDK and serves it on ``/run/mobility/state.sock`` (the
    socket the platform mounts into every container), ``"none"`` otherwise. ``cpu`` is in
    cores, ``memory`` in bytes; None is no limit.
    """

    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    state: str = "none"
    cpu: float | None = None
    memory: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "command": list(self.command), "args": list(self.args),
                "env": {k: v for k, v in self.env},
                "ports": [{"port": p.port, "protocol": p.protocol} for p in self.ports],
                "state": self.state, "cpu": self.cpu, "memory": self.memory}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ContainerSpec:
        if not d:
            return cls()
        env = d.get("env") or {}
        return cls(image=d.get("image"), command=tuple(d.get("command") or ()),
                   args=tuple(d.get("args") or ()),
                   env=tuple((str(k), str(v)) for k, v in dict(env).items()),
                   ports=tuple(Port(port=int(p["port"]), protocol=str(p.get("protocol", "udp")))
                               for p in d.get("ports") or ()),
                   state=str(d.get("state") or "none"),
                   cpu=None if d.get("cpu") is None else float(d["cpu"]),
                   memory=None if d.get("memory") is None else int(d["memory"]))


@dataclass
class Service:
    name: str
    workload: str
    params: Params = field(default_factory=dict)
    container: ContainerSpec = field(default_factory=ContainerSpec)
    instance: Instance | None = None
    links: list[str] = field(default_factory=list)  # link ids
    moving: str | None = None  # id of the move in progress, if any
    # routes inside the instance: {"dst": CIDR, "via": next hop, "ifname": link interface}
    routes: list[dict[str, str]] = field(default_factory=list)
    chain: str | None = None  # the chain this service is an element of

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workload": self.workload,
            "params": dict(self.params),
            "container": self.container.to_dict(),
            "instance": self.instance.to_dict() if self.instance else None,
            "links": list(self.links),
            "moving": self.moving,
            "routes": [dict(r) for r in self.routes],
            "chain": self.chain,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Service:
        inst = d.get("instance")
        return cls(
            name=d["name"],
            workload=d["workload"],
            params=dict(d.get("params") or {}),
            container=ContainerSpec.from_dict(d.get("container")),
            instance=Instance.from_dict(inst) if inst else None,
            links=list(d.get("links") or []),
            moving=d.get("moving"),
            routes=[dict(r) for r in d.get("routes") or []],
            chain=d.get("chain"),
        )


@dataclass
class Move:
    id: str
    service: str
    from_cluster: str
    to_cluster: str
    status: MoveStatus = MoveStatus.PENDING
    phase: Phase | None = None
    epoch: int = 0  # bumped whenever the reaper takes the move over; stale tasks then stop
    created_at: float = 0.0
    finished_at: float | None = None
    source: Instance | None = None
    target: Instance | None = None
    phases_started: list[str] = field(default_factory=list)
    phases_done: list[str] = field(default_factory=list)
    phase_ms: dict[str, float] = field(default_factory=dict)
    cutover_confirmed: bool = False
    abort_requested: bool = False
    faults: list[str] = field(default_factory=list)
    error: str | None = None
    origin: str = "api"
    strategy: str = "precopy"  # or "stop-and-copy"; a stateless service has nothing to copy
    stateful: bool = False
    policy_id: str | None = None  # the policy that started the move, if one did
    trigger: dict[str, Any] | None = None  # what made it start: the decision, signal values
    sync_rounds: int = 0
    sync_since: int = 0  # the source state version the pre-copy rounds reached
    state_bytes: int = 0
    freeze_ms: float | None = None
    # From the API call (created_at) to the moment CUTOVER switched the peers: when the
    # client's traffic goes to the target. What follows (RELEASE) is clean-up off that path.
    cutover_ms: float | None = None
    # The downtime budget (mobility.freeze_budget): the longest freeze asked for, how long
    # SYNC may wait for the prediction to fit it, SYNC's last prediction of the freeze, and
    # the fixed cost that prediction assumed (later moves learn it from freeze_ms against it).
    max_freeze_ms: float | None = None
    deadline_s: float | None = None
    predicted_freeze_ms: float | None = None
    freeze_overhead_ms: float | None = None
    # CUTOVER's steps done so far ("delta_shipped", "target_resumed", "switched"): a CUTOVER
    # run again (a retry, a takeover) skips what is done and never re-ships a delta.
    cutover_steps: list[str] = field(default_factory=list)
    # Set once the target may have served (its peers were switched to it): from then on the
    # move only goes forward, as after a confirmed cutover, so nothing the target took is lost.
    forward_only: bool = False
    compensation_passes: int = 0  # compensation passes that left something undone

    @property
    def total_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.created_at) * 1000, 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = str(self.status)
        d["phase"] = str(self.phase) if self.phase else None
        d["source"] = self.source.to_dict() if self.source else None
        d["target"] = self.target.to_dict() if self.target else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Move:
        d = dict(d)
        d["status"] = MoveStatus(d["status"])
        d["phase"] = Phase(d["phase"]) if d.get("phase") else None
        d["source"] = Instance.from_dict(d["source"]) if d.get("source") else None
        d["target"] = Instance.from_dict(d["target"]) if d.get("target") else None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Event:
    """One entry of a move's event stream."""

    move_id: str
    # status, phase_started, phase_ended, precopy_round, freeze_predicted, freeze_over_budget,
    # final_delta, freeze_window, cutover_confirmed, compensated, compensation_failed, reaped,
    # fault_paused
    kind: str
    ts: float
    phase: str | None = None
    detail: str = ""
    id: str = ""  # the stream entry id, filled in when read back

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PathHealth:
    """A service's paths as its node agent last checked them (``links``: link id -> "ok",
    "repaired: ..." or "broken: ...")."""

    ok: bool
    checked_at: float
    node: str
    links: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked_at": self.checked_at, "node": self.node,
                "links": dict(self.links)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PathHealth:
        return cls(ok=bool(d["ok"]), checked_at=float(d["checked_at"]), node=str(d["node"]),
                   links={str(k): str(v) for k, v in dict(d.get("links") or {}).items()})
