"""The move canvas, built from task *names*: whoever starts a move (the API, the reaper)
needs only the Celery app, not the worker's implementations and their dependencies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import chain

from mobility.models import Phase
from workers.app import app
from workers.routing import ORCHESTRATION


def phase_task(phase: Phase) -> str:
    return f"move.{phase}"


def canvas(move_id: str, epoch: int, phases: Sequence[Phase]) -> Any:
    """``phase | phase | ... | complete`` for one epoch of a move."""
    steps = [app.signature(phase_task(p), args=(move_id, epoch), immutable=True)
             for p in phases]
    steps.append(app.signature("move.complete", args=(move_id, epoch), immutable=True))
    return chain(*steps)


def start_move(move_id: str) -> None:
    canvas(move_id, 0, list(Phase)).apply_async(queue=ORCHESTRATION)


def compensate(move_id: str, epoch: int, reason: str) -> None:
    app.send_task("move.compensate", args=(move_id, epoch, reason), queue=ORCHESTRATION)


def run(task: str, *args: Any, timeout: float) -> Any:
    """Run a task on the orchestration worker and wait for its answer."""
    result = app.send_task(task, args=list(args), queue=ORCHESTRATION)
    try:
        return result.get(timeout=timeout)
    finally:
        result.forget()
