"""The move canvas, built from task *names*: whoever starts a move (the API, the reaper)
needs only the Celery app, not the worker's implementations and their dependencies.

Every task name the API or a tool sends is spelled here, once; :func:`run` is the one way to
run a task and wait for its answer, with the error wire form turned back into an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import chain

from mobility.errors import NodeUnavailable, from_wire
from mobility.models import Phase
from mobility.operations import Operation
from mobility.phases import ORDER
from mobility.store import OperationStore
from workers.app import app
from workers.routing import ORCHESTRATION

# Every task carries an expiry: a task no worker took in time is dropped, never run late on a
# request its caller has given up on. Moves survive it (the reaper finishes or undoes a move
# whose next phase never ran); an operation shows it as failed.
PHASE_EXPIRES_S = 600.0
OPERATION_EXPIRES_S = 300.0

COMPLETE = "move.complete"
COMPENSATE = "move.compensate"
DEPLOY_SERVICE = "services.deploy"
REMOVE_SERVICE = "services.remove"
DEPLOY_CHAIN = "chains.deploy"
REMOVE_CHAIN = "chains.remove"
REAP_JOBS = "jobs.reap"
JOIN_CLUSTER = "clusters.join"
IMPORT_IMAGE = "images.import"
REMOVE_IMAGE = "images.remove"
UNJOIN_CLUSTER = "clusters.unjoin"


RUN_PHASES = "move.run"


def phase_task(phase: Phase) -> str:
    return f"move.{phase}"


def canvas(move_id: str, epoch: int, phases: Sequence[Phase]) -> Any:
    """``run(admit .. cutover) | release | complete`` for one epoch of a move.

    The phases up to CUTOVER run back to back in one task (:data:`RUN_PHASES`): each is
    still its own idempotent step under the move's lease and epoch, with its events and
    timing, but no queue hop lies between the API call and the switch of the client's
    traffic. RELEASE, the clean-up after the switch, is a task of its own after it: off the
    client's path, and ``complete`` marks the move succeeded only once RELEASE has ended.
    """
    opts = {"expires": PHASE_EXPIRES_S}
    critical = [str(p) for p in phases if p != Phase.RELEASE]
    steps = []
    if critical:
        steps.append(app.signature(RUN_PHASES, args=(move_id, epoch, critical), immutable=True,
                                   options=opts))
    if Phase.RELEASE in phases:
        steps.append(app.signature(phase_task(Phase.RELEASE), args=(move_id, epoch),
                                   immutable=True, options=opts))
    steps.append(app.signature(COMPLETE, args=(move_id, epoch), immutable=True, options=opts))
    return chain(*steps)


def start_move(move_id: str) -> None:
    canvas(move_id, 0, ORDER).apply_async(queue=ORCHESTRATION)


def compensate(move_id: str, epoch: int, reason: str) -> None:
    app.send_task(COMPENSATE, args=(move_id, epoch, reason), queue=ORCHESTRATION,
                  expires=PHASE_EXPIRES_S)


def submit(store: OperationStore, task: str, *, target: str, args: Sequence[Any],
           expires_s: float = OPERATION_EXPIRES_S) -> Operation:
    """Record an operation and send its task (``task(op_id, *args)``); the caller polls it."""
    op = Operation.new(kind=task, target=target, expires_s=expires_s)
    store.put_operation(op)
    app.send_task(task, args=[op.id, *args], queue=ORCHESTRATION, expires=expires_s)
    return op


def run(task: str, *args: Any, timeout: float) -> dict[str, Any]:
    """Run a task on the orchestration worker and wait for its answer.

    The answer is ``{"ok": True, ...}``; a failed one is raised as the error it stands for
    (:func:`mobility.errors.from_wire`), and no answer in time as ``NodeUnavailable``.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    result = app.send_task(task, args=list(args), queue=ORCHESTRATION, expires=timeout)
    try:
        answer = result.get(timeout=timeout)
    except CeleryTimeout as exc:
        raise NodeUnavailable(f"no orchestration worker answered {task} within {timeout:g} s; "
                              "is one running?") from exc
    finally:
        result.forget()
    if not isinstance(answer, Mapping) or not answer.get("ok"):
        raise from_wire(dict(answer) if isinstance(answer, Mapping) else {})
    return dict(answer)
