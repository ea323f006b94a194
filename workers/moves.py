"""Move tasks: one per phase, the canvas that chains them, compensation, and the reaper.

Deploy and removal tasks are in :mod:`workers.deploying`, cluster membership in
:mod:`workers.clusters`.

A move's canvas is ``run(admit .. cutover) | release | complete`` (:func:`workers.canvas.canvas`):
the phases up to the switch run back to back in one task, RELEASE (the clean-up) after it. A
phase that fails dispatches ``move.compensate`` (which undoes every started phase, newest
first) and then re-raises, which stops the chain. A phase whose error is retryable is retried
in place a couple of times first (a ``move.run`` task again: the phases it finished are
skipped). After a confirmed cutover nothing is undone: RELEASE is retried.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from mobility.errors import MobilityError, StaleEpoch
from mobility.models import Phase
from mobility.moving import Engine
from mobility.phases import ORDER
from mobility.settings import get_settings
from mobility.store import Registry
from workers.app import FINISH_PRIORITY, app
from workers.canvas import (
    COMPENSATE,
    COMPLETE,
    PHASE_EXPIRES_S,
    RUN_PHASES,
    canvas,
    phase_task,
)
from workers.composition import build_engine
from workers.notifying import Notifier
from workers.routing import ORCHESTRATION

log = logging.getLogger(__name__)

PHASE_RETRIES = 2


@functools.lru_cache(maxsize=1)
def engine() -> Engine:
    built = build_engine(get_settings())
    built.on_event(Notifier(built.registry))  # move notifications (workers.notifying)
    return built


def registry() -> Registry:
    return engine().registry


class _Task(Protocol):
    """What a bound Celery task offers a phase (Celery ships no types)."""

    request: Any

    def retry(self, *, exc: BaseException, countdown: float,
              priority: int | None = None) -> BaseException: ...


def _run_phase(task: _Task, move_id: str, epoch: int, phase: Phase) -> bool:
    try:
        return engine().run_phase(move_id, epoch, phase)
    except StaleEpoch:
        log.info("move %s: %s belongs to an older epoch; stopping", move_id, phase)
        return False
    except MobilityError as exc:
        if exc.retryable and task.request.retries < PHASE_RETRIES:
            # ahead of the queued starts (workers.app): the move's lease is only handed over
            # for lease_handoff_s, and behind a long queue of starts the reaper would take the
            # move over before its retry ran
            raise task.retry(exc=exc, countdown=0.2, priority=FINISH_PRIORITY) from exc
        _fail(move_id, epoch, phase, exc)
        raise
    except Exception as exc:
        _fail(move_id, epoch, phase, exc)
        raise


def _fail(move_id: str, epoch: int, phase: Phase, exc: BaseException) -> None:
    log.error("move %s: %s failed: %s", move_id, phase, exc)
    reason = f"{phase} failed: {exc}"
    move = registry().get_move(move_id)
    if move.cutover_confirmed or move.forward_only:
        # Forward only: the target serves (or may have); the reaper finishes the move when
        # the lease runs out, running the phase again (each is idempotent).
        return
    compensate.apply_async((move_id, epoch, reason), queue=ORCHESTRATION,
                           expires=PHASE_EXPIRES_S)


def _phase_task(phase: Phase) -> object:
    @app.task(name=phase_task(phase), bind=True, max_retries=PHASE_RETRIES)
    def run(self: _Task, move_id: str, epoch: int) -> bool:
        return _run_phase(self, move_id, epoch, phase)

    return run


PHASE_TASKS = {phase: _phase_task(phase) for phase in ORDER}


@app.task(name=RUN_PHASES, bind=True, max_retries=PHASE_RETRIES)
def run_phases(self: _Task, move_id: str, epoch: int, phases: list[str]) -> bool:
    """Several phases back to back in one task (no queue hop between them); the chain's
    next task runs only when all of them ended. A retry runs the task again, whose phases
    already done are skipped (:meth:`Engine.run_phase` is idempotent)."""
    # all() stops at the first phase that says the chain must stop (stale epoch, ended move)
    return all(_run_phase(self, move_id, epoch, Phase(name)) for name in phases)


@app.task(name=COMPLETE)
def complete(move_id: str, epoch: int) -> str:
    return str(engine().complete(move_id, epoch).status)


@app.task(name=COMPENSATE)
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
        if r.action == "forward":  # a move under way: ahead of the queued starts, as a retry
            canvas(r.move_id, r.epoch, r.phases).apply_async(queue=ORCHESTRATION,
                                                            priority=FINISH_PRIORITY)
        else:
            compensate.apply_async((r.move_id, r.epoch, "orchestration worker lost mid-move"),
                                   queue=ORCHESTRATION, expires=PHASE_EXPIRES_S)
        out.append(f"{r.move_id}:{r.action}")
    return out
