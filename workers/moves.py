"""Move tasks: one per phase, the canvas that chains them, compensation, and the reaper.

A move's canvas is ``admit | place | wire | sync | cutover | release | complete``. A phase
that fails dispatches ``move.compensate`` (which undoes every started phase, newest first) and
then re-raises, which stops the chain. A phase whose error is retryable is retried in place a
couple of times first. After a confirmed cutover nothing is undone: RELEASE is retried.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from mobility.chains import Chain
from mobility.deploying import Deployer
from mobility.errors import Conflict, Invalid, MobilityError, NotFound
from mobility.models import Phase
from mobility.moving import Engine
from mobility.registry import Registry, StaleEpoch
from mobility.settings import get_settings
from workers.app import app
from workers.canvas import canvas
from workers.composition import build_engine
from workers.routing import ORCHESTRATION

log = logging.getLogger(__name__)

PHASE_RETRIES = 2


@functools.lru_cache(maxsize=1)
def engine() -> Engine:
    return build_engine(get_settings())


def registry() -> Registry:
    return engine().registry


@functools.lru_cache(maxsize=1)
def deployer() -> Deployer:
    e = engine()
    return Deployer(registry=e.registry, federation=e.federation, wiring=e.wiring,
                    settings=e.settings)


def _run_phase(task: Any, move_id: str, epoch: int, phase: Phase) -> bool:
    try:
        return engine().run_phase(move_id, epoch, phase)
    except StaleEpoch:
        log.info("move %s: %s belongs to an older epoch; stopping", move_id, phase)
        return False
    except MobilityError as exc:
        if exc.retryable and task.request.retries < PHASE_RETRIES:
            raise task.retry(exc=exc, countdown=0.2) from exc
        _fail(move_id, epoch, phase, exc)
        raise
    except Exception as exc:
        _fail(move_id, epoch, phase, exc)
        raise


def _fail(move_id: str, epoch: int, phase: Phase, exc: BaseException) -> None:
    log.error("move %s: %s failed: %s", move_id, phase, exc)
    reason = f"{phase} failed: {exc}"
    move = registry().get_move(move_id)
    if move.cutover_confirmed and phase == Phase.RELEASE:
        # Forward only: the target serves; leave the move for the reaper to retry RELEASE.
        return
    compensate.apply_async((move_id, epoch, reason), queue=ORCHESTRATION)


def _phase_task(phase: Phase) -> Any:
    @app.task(name=f"move.{phase}", bind=True, max_retries=PHASE_RETRIES, soft_time_limit=120)
    def run(self: Any, move_id: str, epoch: int) -> bool:
        return _run_phase(self, move_id, epoch, phase)

    return run


admit = _phase_task(Phase.ADMIT)
place = _phase_task(Phase.PLACE)
wire = _phase_task(Phase.WIRE)
sync = _phase_task(Phase.SYNC)
cutover = _phase_task(Phase.CUTOVER)
release = _phase_task(Phase.RELEASE)


@app.task(name="move.complete")
def complete(move_id: str, epoch: int) -> str:
    return str(engine().complete(move_id, epoch).status)


@app.task(name="move.compensate", soft_time_limit=120)
def compensate(move_id: str, epoch: int, reason: str) -> str:
    try:
        return str(engine().compensate(move_id, epoch, error=reason).status)
    except StaleEpoch:
        return "stale"


@app.task(name="orchestrator.ping")
def ping() -> str:
    return "pong"


@app.task(name="moves.reap")
def reap() -> list[str]:
    """Finish or roll back moves whose worker vanished (expired lease)."""
    out = []
    for r in engine().reap():
        if r.action == "forward":
            canvas(r.move_id, r.epoch, r.phases).apply_async(queue=ORCHESTRATION)
        else:
            compensate.apply_async((r.move_id, r.epoch, "orchestration worker lost mid-move"),
                                   queue=ORCHESTRATION)
        out.append(f"{r.move_id}:{r.action}")
    return out


def _error(exc: MobilityError) -> dict[str, Any]:
    kind = ("not_found" if isinstance(exc, NotFound) else "conflict"
            if isinstance(exc, Conflict) else "invalid" if isinstance(exc, Invalid) else "failed")
    return {"ok": False, "kind": kind, "error": str(exc)}


@app.task(name="services.deploy", soft_time_limit=120)
def deploy(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        svc = deployer().deploy(name=spec["name"], workload=spec["workload"],
                                params=dict(spec.get("params") or {}), cluster=spec["cluster"],
                                peers=list(spec.get("peers") or []))
    except MobilityError as exc:
        return _error(exc)
    return {"ok": True, "service": svc.to_dict()}


@app.task(name="chains.deploy", soft_time_limit=300)
def deploy_chain(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        chain = Chain.from_dict(spec)
        services = deployer().deploy_chain(chain, rate=float(spec.get("rate", 1000.0)))
    except MobilityError as exc:
        return _error(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "kind": "invalid", "error": f"malformed chain: {exc}"}
    return {"ok": True, "services": [s.to_dict() for s in services]}


@app.task(name="chains.remove", soft_time_limit=300)
def remove_chain(name: str) -> dict[str, Any]:
    try:
        deployer().remove_chain(name)
    except MobilityError as exc:
        return _error(exc)
    return {"ok": True}


@app.task(name="services.remove", soft_time_limit=120)
def remove(name: str) -> dict[str, Any]:
    try:
        deployer().remove(name)
    except MobilityError as exc:
        return _error(exc)
    return {"ok": True}
