"""Signals, policies (edge offloading) and rebalancing: the moves nobody asks for by hand.

Everything a request names that ends up in a Redis key is held to a safe alphabet here (a
sample's cluster, service and region; a policy's id): see :mod:`mobility.keys`. The request
models are strict (a number is a JSON number, a flag a JSON boolean) and state what the
handlers check, so a request the schema allows is refused only for what no schema can say
(a maintenance window that ends before it starts, a cron field out of range).

A policy's body is checked against :class:`PolicyIn` here, by hand, so what is wrong with it
comes back as one sentence naming the field and the value (as the domain's own checks in
:meth:`mobility.policies.Policy.from_dict`, which still run after it, answer).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)
from pydantic.config import JsonDict

from api.deps import RegistryDep, RequestsDep, SettingsDep
from api.schemas import KeyPart, Name, answers
from mobility import automation, keys
from mobility.errors import Conflict, Invalid, NotFound
from mobility.policies import Aggregate, Comparator, Policy
from mobility.store.automation import constraints_from_dict, constraints_to_dict
from workers.canvas import start_move

router = APIRouter(tags=["automation"])

DAY_S = 24 * 3600.0
WEEK_S = 7 * DAY_S
BIG = 1e12  # thresholds and margins beyond this mean nothing, and could overflow together

Finite = Annotated[float, Field(allow_inf_nan=False)]
# The series a signal may carry (mobility.automation.SERIES; a unit test keeps them equal).
SeriesName = Literal["cpu", "free_capacity", "latency_ms", "load", "requests_per_s", "rtt_ms"]
SERIES_NAMES: tuple[str, ...] = get_args(SeriesName)


def _known_series(value: str) -> str:
    if value not in automation.SERIES:
        raise ValueError(f"unknown series {value!r}; known: {sorted(automation.SERIES)}")
    return value


# Kept as a string checked after parsing, so the refusal names the series and says "unknown".
Series = Annotated[str, Field(json_schema_extra={"enum": list(SERIES_NAMES)}),
                   AfterValidator(_known_series)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sample(Strict):
    series: Series
    cluster: Name
    service: Name | None = None
    region: KeyPart | None = None
    value: Finite
    ts: Finite | None = Field(default=None, description="seconds since the epoch; default now")


class SignalBatch(Strict):
    samples: list[Sample] = Field(min_length=1, max_length=automation.MAX_BATCH)


class Stored(BaseModel):
    stored: int


@router.post("/v1/signals", status_code=202, responses=answers(404, 409, 429))
def post_signals(body: SignalBatch, registry: RegistryDep, settings: SettingsDep) -> Stored:
    """Store a batch of measurements (each series keeps a bounded recent window), all or
    nothing: 404 an unknown cluster or service; 409 a service (or a cluster's own series)
    would hold more than MOBILITY_MAX_SERIES_PER_OWNER series; 429 too many batches."""
    clusters = registry.clusters()
    services = registry.services()
    for i, s in enumerate(body.samples):
        if s.cluster not in clusters:
            raise NotFound(f"sample {i}: unknown cluster {s.cluster!r}")
        if s.service is not None and s.service not in services:
            raise NotFound(f"sample {i}: unknown service {s.service!r}")
    stored = automation.store_samples(
        registry, [s.model_dump(exclude_none=True) for s in body.samples],
        max_series=settings.max_series_per_owner)
    return Stored(stored=stored)


# --- policies ---

PolicyId = Annotated[str, Field(pattern=keys.SAFE_POLICY_ID)]
PolicyIdPath = Annotated[str, Path(pattern=keys.SAFE_POLICY_ID)]
ServicePattern = Annotated[str, Field(min_length=1, max_length=63,
                                      pattern=r"^[a-z0-9*?\[\]!-]+$",
                                      description="a service name, or a shell-style pattern")]
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
# A key outside the pattern is refused: say so (pydantic leaves other keys open).
CLOSED: JsonDict = {"additionalProperties": False}
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=16, json_schema_extra=CLOSED)]
Distances = Annotated[dict[Name, Annotated[float, Field(ge=0, le=BIG, allow_inf_nan=False)]],
                      Field(max_length=256, json_schema_extra=CLOSED)]


class ConditionIn(Strict):
    series: Series
    aggregate: Aggregate
    comparator: Comparator
    threshold: Annotated[float, Field(ge=-BIG, le=BIG, allow_inf_nan=False)]
    duration_s: Annotated[float, Field(ge=0, le=WEEK_S, allow_inf_nan=False)]
    region: KeyPart | None = None
    window_s: Annotated[float, Field(gt=0, le=DAY_S, allow_inf_nan=False)] = 10.0
    hysteresis: Annotated[float, Field(ge=0, le=BIG, allow_inf_nan=False)] = 0.0
    stale_after_s: Annotated[float, Field(gt=0, le=DAY_S, allow_inf_nan=False)] = 15.0


class ByCapacity(Strict):
    """The labelled cluster with the most free capacity."""

    nearest_by: Literal["capacity"] = "capacity"
    labels: Labels = Field(default_factory=dict)
    series: None = None
    distances: Distances = Field(default_factory=dict)


class BySignal(Strict):
    """The labelled cluster whose cluster-level ``series`` (from the region) is lowest."""

    nearest_by: Literal["signal"]
    labels: Labels = Field(default_factory=dict)
    series: Series
    distances: Distances = Field(default_factory=dict)


class ByDistance(Strict):
    """The labelled cluster nearest by the static ``distances``."""

    nearest_by: Literal["distance"]
    labels: Labels = Field(default_factory=dict)
    series: None = None
    distances: Annotated[Distances, Field(min_length=1)]


def _nearest_by(value: Any) -> str | None:
    raw = value.get("nearest_by", "capacity") if isinstance(value, dict) else getattr(
        value, "nearest_by", None)
    return raw if isinstance(raw, str) else None


TargetIn = Annotated[Annotated[ByCapacity, Tag("capacity")] | Annotated[BySignal, Tag("signal")]
                     | Annotated[ByDistance, Tag("distance")], Discriminator(_nearest_by)]


class PolicyBody(Strict):
    """A policy as PUT takes it: the id comes from the path (and must match, if given)."""

    id: PolicyId | None = None
    name: Annotated[str, Field(max_length=200)] | None = Field(
        default=None, description="default: the id")
    services: list[ServicePattern] = Field(min_length=1, max_length=64)
    condition: ConditionIn
    target: TargetIn = Field(default_factory=ByCapacity)
    cooldown_s: Annotated[float, Field(ge=0, le=30 * DAY_S, allow_inf_nan=False)] = 300.0
    enabled: bool = True


class PolicyIn(PolicyBody):
    id: PolicyId


class ConditionOut(BaseModel):
    series: str
    aggregate: str
    comparator: str
    threshold: float
    duration_s: float
    region: str | None
    window_s: float
    hysteresis: float
    stale_after_s: float


class TargetOut(BaseModel):
    labels: dict[str, str]
    nearest_by: str
    series: str | None
    distances: dict[str, float]


class PolicyOut(BaseModel):
    id: str
    name: str
    services: list[str]
    condition: ConditionOut
    target: TargetOut
    cooldown_s: float
    enabled: bool

    @classmethod
    def of(cls, p: Policy) -> PolicyOut:
        return cls.model_validate(p.to_dict())


def _body_of(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that checks ``model`` by hand (see the module
    docstring); ``api.errors.declare`` moves the ``$defs`` among the components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _policy(raw: Any, model: type[PolicyBody], *, policy_id: str | None = None) -> Policy:
    """The policy ``raw`` describes, or Invalid in a sentence: what, where, and the value."""
    try:
        spec = model.model_validate(raw)
    except ValidationError as exc:
        issues = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']} "
                  f"(got {_short(e.get('input'))})" for e in exc.errors()[:5]]
        raise Invalid("malformed policy: " + "; ".join(issues)) from exc
    if policy_id is not None and spec.id not in (None, policy_id):
        raise Invalid(f"the body's id {spec.id!r} is not the path's {policy_id!r}")
    data = spec.model_dump(exclude_none=True)
    if policy_id is not None:
        data["id"] = policy_id
    try:
        return Policy.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise Invalid(f"malformed policy: {exc}") from exc


PolicyJson = Annotated[Any, Body()]


@router.post("/v1/policies", status_code=201, responses=answers(409),
             openapi_extra=_body_of(PolicyIn))
def create_policy(body: PolicyJson, registry: RegistryDep) -> PolicyOut:
    policy = _policy(body, PolicyIn)
    if registry.get_policy(policy.id) is not None:
        raise Conflict(f"policy {policy.id!r} exists; PUT /v1/policies/{policy.id} replaces it")
    registry.put_policy(policy)
    return PolicyOut.of(policy)


@router.get("/v1/policies")
def list_policies(registry: RegistryDep) -> list[PolicyOut]:
    return [PolicyOut.of(p) for p in registry.policies()]


@router.get("/v1/policies/{policy_id}", responses=answers(404))
def get_policy(policy_id: PolicyIdPath, registry: RegistryDep) -> PolicyOut:
    policy = registry.get_policy(policy_id)
    if policy is None:
        raise NotFound(f"policy {policy_id!r} does not exist")
    return PolicyOut.of(policy)


@router.put("/v1/policies/{policy_id}", responses=answers(404),
            openapi_extra=_body_of(PolicyBody))
def replace_policy(policy_id: PolicyIdPath, body: PolicyJson,
                   registry: RegistryDep) -> PolicyOut:
    if registry.get_policy(policy_id) is None:
        raise NotFound(f"policy {policy_id!r} does not exist; POST /v1/policies creates it")
    policy = _policy(body, PolicyBody, policy_id=policy_id)
    registry.put_policy(policy)
    return PolicyOut.of(policy)


@router.delete("/v1/policies/{policy_id}", status_code=204, responses=answers(404))
def delete_policy(policy_id: PolicyIdPath, registry: RegistryDep) -> Response:
    if not registry.delete_policy(policy_id):
        raise NotFound(f"policy {policy_id!r} does not exist")
    return Response(status_code=204)


@router.post("/v1/policies/evaluate")
def evaluate(registry: RegistryDep, requests: RequestsDep,
             dry_run: Annotated[bool, Query()] = True) -> dict[str, Any]:
    """What every policy would do now and why; with ``dry_run=false``, do it."""
    decisions = automation.evaluate(registry)
    out: dict[str, Any] = {"dry_run": dry_run, "decisions": [d.to_dict() for d in decisions]}
    if not dry_run:
        out["started"], out["refused"] = automation.start_decided(requests, decisions,
                                                                  start_move)
    return out


# --- rebalancing ---

class Window(Strict):
    cluster: Name
    start: Finite
    end: Finite = Field(description="after start")


class RebalanceConfig(Strict):
    max_moves: Annotated[int, Field(ge=0, le=1000)] = 4
    pinned: list[Name] = Field(default_factory=list, max_length=10000)
    anti_affinity: dict[KeyPart, Annotated[list[Name], Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=1000, json_schema_extra=CLOSED)
    windows: list[Window] = Field(default_factory=list, max_length=1000)


class WindowOut(BaseModel):
    cluster: str
    start: float
    end: float


class RebalanceConfigOut(BaseModel):
    max_moves: int
    pinned: list[str]
    anti_affinity: dict[str, list[str]]
    windows: list[WindowOut]


Cron = Annotated[str, Field(max_length=200, pattern=r"^[0-9A-Za-z*/,-]+( [0-9A-Za-z*/,-]+){4}$",
                            description="five fields, e.g. '*/5 * * * *'")]


class CronSchedule(Strict):
    cron: Cron
    every_s: None = None


class IntervalSchedule(Strict):
    cron: None = None
    every_s: Annotated[float, Field(ge=1, le=WEEK_S, allow_inf_nan=False,
                                    description="seconds between runs, at least 1")]


Schedule = CronSchedule | IntervalSchedule


class ScheduleOut(BaseModel):
    task: str
    cron: str | None
    every_s: float | None
    set_at: float


@router.get("/v1/rebalance/plan")
def rebalance_plan(registry: RegistryDep) -> dict[str, Any]:
    """The plan the rebalancer would run now (nothing moves)."""
    return automation.plan(registry).to_dict()


@router.post("/v1/rebalance/run")
def rebalance_run(registry: RegistryDep, requests: RequestsDep) -> dict[str, Any]:
    plan = automation.plan(registry)
    started, refused = automation.run_plan(requests, plan, start_move)
    return {"plan": plan.to_dict(), "started": started, "refused": refused}


@router.get("/v1/rebalance/last", responses=answers(404))
def rebalance_last(registry: RegistryDep) -> dict[str, Any]:
    last = registry.last_rebalance()
    if last is None:
        raise NotFound("the scheduled rebalancer has not run yet")
    return last.to_dict()


@router.get("/v1/rebalance/config")
def get_config(registry: RegistryDep) -> RebalanceConfigOut:
    return RebalanceConfigOut.model_validate(constraints_to_dict(registry.rebalance_config()))


@router.put("/v1/rebalance/config")
def put_config(body: RebalanceConfig, registry: RegistryDep) -> RebalanceConfigOut:
    for w in body.windows:
        if w.end <= w.start:
            raise Invalid(f"maintenance window on {w.cluster!r} ends before it starts")
    constraints = constraints_from_dict(body.model_dump())
    registry.put_rebalance_config(constraints)
    return RebalanceConfigOut.model_validate(constraints_to_dict(constraints))


def _entry(schedule: Any) -> Any:
    from redbeat import RedBeatSchedulerEntry

    from workers.app import app

    return RedBeatSchedulerEntry("rebalance", "rebalance.run", schedule, app=app,
                                 options={"queue": "orchestration", "expires": 600})


@router.put("/v1/rebalance/schedule")
def put_schedule(body: Schedule) -> ScheduleOut:
    """Run the rebalancer on a cron (or every N >= 1 seconds), through celery-redbeat."""
    from celery.schedules import ParseException, crontab, schedule

    if body.cron is not None:
        try:
            sched: Any = crontab(*body.cron.split())
        except (ParseException, ValueError, TypeError, KeyError) as exc:
            raise Invalid(f"cron {body.cron!r}: {exc}") from exc
    else:
        sched = schedule(run_every=body.every_s)
    _entry(sched).save()
    return ScheduleOut(task="rebalance.run", cron=body.cron, every_s=body.every_s,
                       set_at=time.time())


@router.delete("/v1/rebalance/schedule", status_code=204, responses=answers(404))
def delete_schedule() -> Response:
    from redbeat import RedBeatSchedulerEntry

    from workers.app import app

    try:
        entry = RedBeatSchedulerEntry.from_key(f"{keys.REDBEAT_PREFIX}rebalance", app=app)
    except KeyError as exc:
        raise NotFound("no rebalance schedule is set") from exc
    entry.delete()
    return Response(status_code=204)
