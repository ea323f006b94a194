"""Request and response schemas, separate from the domain records."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from mobility import freeze_budget, keys
from mobility.models import Cluster, ContainerSpec, Instance, Move, PathHealth, Service
from mobility.operations import Operation

NAME_PATTERN = r"^[a-z][a-z0-9-]*$"  # a cluster's, service's or chain's: within keys.SAFE_COMPONENT
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
# The same in a path: a name outside it can name nothing, so it is a 422, not a lookup.
NamePath = Annotated[str, Path(min_length=1, max_length=63, pattern=NAME_PATTERN)]
# What else becomes part of a key (a signal's region...): keys.SAFE_COMPONENT.
KeyPart = Annotated[str, Field(min_length=1, max_length=63, pattern=keys.SAFE_COMPONENT)]


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: Name
    to_cluster: Name
    strategy: Literal["precopy", "stop-and-copy"] = "precopy"
    faults: list[str] = Field(default_factory=list, max_length=6,
                              description="phases to fail on purpose (fault injection only)")
    max_freeze_ms: float | None = Field(
        default=None, gt=0, le=freeze_budget.MAX_FREEZE_MS_MAX, allow_inf_nan=False,
        description="the downtime budget: the longest freeze window allowed. SYNC predicts "
                    "the freeze from the pre-copy rounds; while it would exceed this, the move "
                    "waits (more rounds) up to deadline_s, then rolls back before freezing. "
                    "precopy only; a stateless service never freezes, so it is always met")
    deadline_s: float | None = Field(
        default=None, ge=0, le=freeze_budget.DEADLINE_S_MAX, allow_inf_nan=False,
        description="how long SYNC may wait for the predicted freeze to fit max_freeze_ms "
                    f"(0: not at all; default {freeze_budget.DEADLINE_S_DEFAULT:g} s with a "
                    "budget; needs max_freeze_ms)")


class OperationOut(BaseModel):
    id: str
    kind: str
    target: str
    status: Literal["pending", "running", "succeeded", "failed"]
    created_at: float
    expires_at: float = Field(description="a task no worker started by then is dropped")
    started_at: float | None
    finished_at: float | None
    result: dict[str, Any] = Field(description='on success: "location", the resource made')
    error: str | None
    error_kind: str | None = Field(description="not_found, conflict, invalid, federation...")
    links: dict[str, str]

    @classmethod
    def of(cls, op: Operation) -> OperationOut:
        return cls(id=op.id, kind=op.kind, target=op.target, status=str(op.status),  # type: ignore[arg-type]
                   created_at=op.created_at, expires_at=op.expires_at,
                   started_at=op.started_at, finished_at=op.finished_at,
                   result=dict(op.result), error=op.error, error_kind=op.error_kind,
                   links={"self": f"/v1/operations/{op.id}"})


class ErrorOut(BaseModel):
    """Every error answer but a 422: one sentence a person can act on."""

    detail: str


class Issue(BaseModel):
    """One thing wrong with a request's shape: where (``loc``: "body", "query", "path" or
    "header", then the field's path), what, and its kind (pydantic's error type)."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """422: a request's shape is wrong (``detail``: the issues, from its schema) or its content
    is (``detail``: a sentence, from a check the schema cannot state, such as a window that
    ends before it starts)."""

    detail: list[Issue] | str


_WHY: dict[int, str] = {
    400: "a malformed Content-Length, or a body that is not UTF-8 text",
    401: "no token, or an unknown, revoked or expired one",
    403: "the token's role is too low, or a state-changing request from a browser origin "
         "not allowed",
    404: "something the request names does not exist",
    409: "the request clashes with the current state",
    413: "the body is larger than MOBILITY_API_MAX_BODY_BYTES",
    422: "the request is malformed (the issues) or its content is refused (a sentence)",
    429: "too many requests of this kind for this token this minute (see Retry-After)",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI declaration of these error answers, with the bodies the handlers send."""
    return {c: {"model": ValidationErrorOut if c == 422 else ErrorOut, "description": _WHY[c]}
            for c in codes}


# The error answers every route may give, declared so the OpenAPI says what comes back.
ERRORS: dict[int | str, dict[str, Any]] = answers(404, 409)


class Accepted(BaseModel):
    """202: the work is queued; poll ``operation.links.self`` until it ends."""

    operation: OperationOut


class InstanceOut(BaseModel):
    cluster: str
    node: str
    pod: str

    @classmethod
    def of(cls, i: Instance | None) -> InstanceOut | None:
        return cls(cluster=i.cluster, node=i.node, pod=i.pod) if i else None


class MoveOut(BaseModel):
    id: str
    service: str
    status: str
    phase: str | None
    epoch: int = Field(description="0, or how many times the reaper took the move over")
    from_cluster: str
    to_cluster: str
    source: InstanceOut | None
    target: InstanceOut | None
    created_at: float
    finished_at: float | None
    total_ms: float | None
    phase_ms: dict[str, float]
    cutover_confirmed: bool
    cutover_steps: list[str] = Field(default_factory=list, description=(
        "CUTOVER's steps done: delta_shipped, target_resumed, switched"))
    forward_only: bool = Field(default=False, description=(
        "the target may have served: the move only goes forward now"))
    abort_requested: bool
    error: str | None
    origin: str
    policy_id: str | None = None
    trigger: dict[str, Any] | None = Field(
        default=None, description="what started the move: the policy's decision and the signal "
                                  "values, or the rebalance plan's reason")
    strategy: str
    stateful: bool
    precopy_rounds: int
    state_bytes: int
    freeze_ms: float | None
    max_freeze_ms: float | None = Field(default=None, description="the downtime budget asked for")
    deadline_s: float | None = Field(
        default=None, description="how long SYNC may wait for the budget to fit")
    predicted_freeze_ms: float | None = Field(
        default=None, description="SYNC's last prediction of the freeze window (stateful "
                                  "precopy moves), to set beside freeze_ms")
    cutover_ms: float | None = Field(default=None, description=(
        "ms from the API call until CUTOVER switched the peers (the client's traffic goes to "
        "the target from then on); total_ms adds the clean-up after it"))
    links: dict[str, str]

    @classmethod
    def of(cls, m: Move) -> MoveOut:
        return cls(
            id=m.id, service=m.service, status=str(m.status),
            phase=str(m.phase) if m.phase else None, epoch=m.epoch,
            from_cluster=m.from_cluster,
            to_cluster=m.to_cluster, source=InstanceOut.of(m.source),
            target=InstanceOut.of(m.target), created_at=m.created_at,
            finished_at=m.finished_at, total_ms=m.total_ms, phase_ms=dict(m.phase_ms),
            cutover_confirmed=m.cutover_confirmed, cutover_steps=list(m.cutover_steps),
            forward_only=m.forward_only, abort_requested=m.abort_requested,
            error=m.error, origin=m.origin, policy_id=m.policy_id, trigger=m.trigger,
            strategy=m.strategy, stateful=m.stateful,
            precopy_rounds=m.sync_rounds, state_bytes=m.state_bytes, freeze_ms=m.freeze_ms,
            max_freeze_ms=m.max_freeze_ms, deadline_s=m.deadline_s,
            predicted_freeze_ms=m.predicted_freeze_ms,
            cutover_ms=m.cutover_ms,
            links={"self": f"/v1/moves/{m.id}", "events": f"/v1/moves/{m.id}/events"},
        )


class PortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["udp", "tcp"] = "udp"


class ResourcesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float | Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="cores: 0.5, or millicores: '500m'")
    memory: int | Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="bytes, or a quantity: '256Mi', '1Gi'")


Arg = Annotated[str, Field(max_length=1024)]


class ServiceRequest(BaseModel):
    """A built-in ``workload`` with its ``params``, or an ``image`` of one's own with its
    ``command``, ``args``, ``env``, ``ports`` and ``state``; ``resources`` apply to both."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=23, pattern=r"^[a-z][a-z0-9-]*$")]
    workload: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    image: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="an imported image (GET /v1/images), e.g. 'counter:1'")
    command: list[Arg] = Field(default_factory=list, max_length=64,
                               description="replaces the image's entrypoint")
    args: list[Arg] = Field(default_factory=list, max_length=64,
                            description="replaces the image's cmd")
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64)
    ports: list[PortIn | Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, max_length=16,
        description="a number (UDP) or {port, protocol}; the image is ready once all listen")
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    state: Literal["none", "sdk"] = Field(
        default="none", description="'sdk': the application serves the state SDK on "
                                    "/run/mobility/state.sock, and a move carries its state")
    cluster: Name
    params: dict[str, float | int] = Field(default_factory=dict, max_length=16)
    peers: list[Name] = Field(default_factory=list, max_length=16)
    faults: list[Literal["pause:deploy"]] = Field(
        default_factory=list, max_length=1,
        description="hold the deploy with its pod placed (fault injection only)")


class LinkOut(BaseModel):
    id: str
    vni: int
    peer: str
    ifname: str
    mac: str
    ip: str


class HealthOut(BaseModel):
    ok: bool
    checked_at: float
    node: str
    links: dict[str, str] = Field(description='link id -> "ok", "repaired: ..." or "broken: ..."')

    @classmethod
    def of(cls, h: PathHealth) -> HealthOut:
        return cls(ok=h.ok, checked_at=h.checked_at, node=h.node, links=dict(h.links))


class ContainerOut(BaseModel):
    image: str | None = Field(description="None: the built-in workload's reference image")
    command: list[str]
    args: list[str]
    env: list[str] = Field(description="the names of the variables set (not their values)")
    ports: list[PortIn]
    state: str
    cpu: float | None
    memory: int | None

    @classmethod
    def of(cls, c: ContainerSpec) -> ContainerOut:
        return cls(image=c.image, command=list(c.command), args=list(c.args),
                   env=[k for k, _ in c.env],
                   ports=[PortIn(port=p.port, protocol=p.protocol)  # type: ignore[arg-type]
                          for p in c.ports],
                   state=c.state, cpu=c.cpu, memory=c.memory)


class ServiceOut(BaseModel):
    name: str
    workload: str
    params: dict[str, Any]
    container: ContainerOut
    instance: InstanceOut | None
    moving: str | None
    links: list[LinkOut]
    chain: str | None = None
    health: HealthOut | None = Field(
        default=None, description="path health from the node agent's last check (None: none "
                                  "in the last 10 s)")

    @classmethod
    def of(cls, s: Service, links: list[LinkOut],
           health: PathHealth | None = None) -> ServiceOut:
        return cls(name=s.name, workload=s.workload, params=dict(s.params),
                   container=ContainerOut.of(s.container),
                   instance=InstanceOut.of(s.instance), moving=s.moving, links=links,
                   chain=s.chain, health=HealthOut.of(health) if health else None)


class NodeOut(BaseModel):
    name: str
    underlay_ip: str
    instances: list[str]


class ClusterOut(BaseModel):
    name: str
    underlay_mtu: int
    labels: dict[str, str]
    nodes: list[NodeOut]

    @classmethod
    def of(cls, c: Cluster, services: dict[str, Service]) -> ClusterOut:
        def at(node: str) -> list[str]:
            return sorted(s.name for s in services.values()
                          if s.instance and (s.instance.cluster, s.instance.node) == (c.name, node))

        return cls(name=c.name, underlay_mtu=c.underlay_mtu, labels=dict(c.labels),
                   nodes=[NodeOut(name=n.name, underlay_ip=n.underlay_ip, instances=at(n.name))
                          for n in c.nodes])


class Health(BaseModel):
    status: str
    redis: bool
    detail: str = ""
