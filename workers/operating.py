"""Running a recorded operation (:mod:`mobility.operations`) on a worker: mark it running, do
the work, record the result or the error in the error wire form; the API's caller polls it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mobility.errors import MobilityError, Wire, to_wire
from workers.moves import registry

log = logging.getLogger(__name__)


def run_operation(op_id: str, work: Callable[[], Wire]) -> Wire:
    reg = registry()
    reg.start_operation(op_id)
    try:
        answer = work()
    except MobilityError as exc:
        answer = to_wire(exc)
    except Exception as exc:  # recorded, so the caller is not left polling a dead operation
        log.exception("operation %s failed", op_id)
        answer = {"ok": False, "kind": "failed", "error": f"internal error ({type(exc).__name__})"}
    if answer.get("ok"):
        reg.finish_operation(op_id, result={k: v for k, v in answer.items() if k != "ok"})
    else:
        reg.finish_operation(op_id, error=str(answer.get("error")),
                             error_kind=str(answer.get("kind")))
    return answer
