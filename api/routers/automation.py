"""Signals, policies (edge offloading) and rebalancing: the moves nobody asks for by hand."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RegistryDep, RequestsDep
from mobility import automation, keys
from mobility.errors import Conflict, Invalid, NotFound
from mobility.policies import Policy
from mobility.store.automation import constraints_from_dict, constraints_to_dict
from workers.canvas import start_move

router = APIRouter(tags=["automation"])

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: Annotated[str, Field(min_length=1, max_length=64)]
    cluster: Annotated[str, Field(min_length=1, max_length=63)]
    service: Annotated[str | None, Field(max_length=63)] = None
    region: Annotated[str | None, Field(max_length=63)] = None
    value: Finite
    ts: Finite | None = Field(default=None, description="seconds since the epoch; default now")


class SignalBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: list[Sample] = Field(min_length=1, max_length=automation.MAX_BATCH)


@router.post("/v1/signals", status_code=202)
def post_signals(body: SignalBatch, registry: RegistryDep) -> dict[str, int]:
    """Store a batch of measurements (each series keeps a bounded recent window)."""
    clusters = registry.clusters()
    services = registry.services()
    for i, s in enumerate(body.samples):
        if s.cluster not in clusters:
            raise NotFound(f"sample {i}: unknown cluster {s.cluster!r}")
        if s.service is not None and s.service not in services:
            raise NotFound(f"sample {i}: unknown service {s.service!r}")
    stored = automation.store_samples(
        registry, [s.model_dump(exclude_none=True) for s in body.samples])
    return {"stored": stored}


# --- policies ---

def _valid(raw: dict[str, Any]) -> Policy:
    try:
        return Policy.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise Invalid(f"malformed policy: {exc}") from exc


@router.post("/v1/policies", status_code=201)
def create_policy(body: dict[str, Any], registry: RegistryDep) -> dict[str, Any]:
    policy = _valid(body)
    if registry.get_policy(policy.id) is not None:
        raise Conflict(f"policy {policy.id!r} exists; PUT /v1/policies/{policy.id} replaces it")
    registry.put_policy(policy)
    return policy.to_dict()


@router.get("/v1/policies")
def list_policies(registry: RegistryDep) -> list[dict[str, Any]]:
    return [p.to_dict() for p in registry.policies()]


@router.get("/v1/policies/{policy_id}")
def get_policy(policy_id: str, registry: RegistryDep) -> dict[str, Any]:
    policy = registry.get_policy(policy_id)
    if policy is None:
        raise NotFound(f"policy {policy_id!r} does not exist")
    return policy.to_dict()


@router.put("/v1/policies/{policy_id}")
def replace_policy(policy_id: str, body: dict[str, Any], registry: RegistryDep) -> dict[str, Any]:
    if registry.get_policy(policy_id) is None:
        raise NotFound(f"policy {policy_id!r} does not exist; POST /v1/policies creates it")
    policy = _valid({**body, "id": policy_id})
    registry.put_policy(policy)
    return policy.to_dict()


@router.delete("/v1/policies/{policy_id}", status_code=204)
def delete_policy(policy_id: str, registry: RegistryDep) -> Response:
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

class Window(BaseModel):
    cluster: str
    start: Finite
    end: Finite


class RebalanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_moves: Annotated[int, Field(ge=0, le=1000)] = 4
    pinned: list[str] = Field(default_factory=list, max_length=10000)
    anti_affinity: dict[str, list[str]] = Field(default_factory=dict)
    windows: list[Window] = Field(default_factory=list, max_length=1000)


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(default=None, description="five fields, e.g. '*/5 * * * *'")
    every_s: Annotated[float | None, Field(gt=0, le=7 * 24 * 3600)] = None


@router.get("/v1/rebalance/plan")
def rebalance_plan(registry: RegistryDep) -> dict[str, Any]:
    """The plan the rebalancer would run now (nothing moves)."""
    return automation.plan(registry).to_dict()


@router.post("/v1/rebalance/run")
def rebalance_run(registry: RegistryDep, requests: RequestsDep) -> dict[str, Any]:
    plan = automation.plan(registry)
    started, refused = automation.run_plan(requests, plan, start_move)
    return {"plan": plan.to_dict(), "started": started, "refused": refused}


@router.get("/v1/rebalance/last")
def rebalance_last(registry: RegistryDep) -> dict[str, Any]:
    last = registry.last_rebalance()
    if last is None:
        raise NotFound("the scheduled rebalancer has not run yet")
    return last.to_dict()


@router.get("/v1/rebalance/config")
def get_config(registry: RegistryDep) -> RebalanceConfig:
    return RebalanceConfig.model_validate(constraints_to_dict(registry.rebalance_config()))


@router.put("/v1/rebalance/config")
def put_config(body: RebalanceConfig, registry: RegistryDep) -> RebalanceConfig:
    for w in body.windows:
        if w.end <= w.start:
            raise Invalid(f"maintenance window on {w.cluster!r} ends before it starts")
    registry.put_rebalance_config(constraints_from_dict(body.model_dump()))
    return body


def _entry(schedule: Any) -> Any:
    from redbeat import RedBeatSchedulerEntry

    from workers.app import app

    return RedBeatSchedulerEntry("rebalance", "rebalance.run", schedule, app=app,
                                 options={"queue": "orchestration", "expires": 600})


@router.put("/v1/rebalance/schedule")
def put_schedule(body: Schedule) -> dict[str, Any]:
    """Run the rebalancer on a cron (or every N seconds), through celery-redbeat."""
    from celery.schedules import crontab, schedule

    if (body.cron is None) == (body.every_s is None):
        raise Invalid("give exactly one of 'cron' and 'every_s'")
    if body.cron is not None:
        fields = body.cron.split()
        if len(fields) != 5:
            raise Invalid("cron takes five fields: minute hour day-of-month month day-of-week")
        try:
            sched: Any = crontab(*fields)
        except (ValueError, TypeError) as exc:
            raise Invalid(f"cron {body.cron!r}: {exc}") from exc
    else:
        sched = schedule(run_every=body.every_s)
    _entry(sched).save()
    return {"task": "rebalance.run", "cron": body.cron, "every_s": body.every_s,
            "set_at": time.time()}


@router.delete("/v1/rebalance/schedule", status_code=204)
def delete_schedule() -> Response:
    from redbeat import RedBeatSchedulerEntry

    from workers.app import app

    try:
        entry = RedBeatSchedulerEntry.from_key(f"{keys.REDBEAT_PREFIX}rebalance", app=app)
    except KeyError as exc:
        raise NotFound("no rebalance schedule is set") from exc
    entry.delete()
    return Response(status_code=204)
