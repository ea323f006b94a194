"""The ``NodeAgent`` port over Celery: an operation is a task on the node's own queue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

from celery.exceptions import TimeoutError as CeleryTimeout

from mobility.errors import FederationError, NodeUnavailable, from_wire
from mobility.models import Node
from mobility.node_ops import NodeOp
from workers.app import app
from workers.routing import node_queue

log = logging.getLogger(__name__)

R = TypeVar("R")


class CeleryNodeAgent:
    def call(self, node: Node, op: NodeOp[R], *, timeout: float) -> R:
        queue = node_queue(node.cluster, node.name)
        limit = op.call_timeout(timeout)
        # ``expires``: an agent that comes back late drops the call instead of acting on a
        # request its caller has already given up on (and maybe compensated).
        result = app.send_task(op.TASK, args=[op.to_args()], queue=queue, expires=limit)
        try:
            answer = result.get(timeout=limit, disable_sync_subtasks=False)
        except CeleryTimeout as exc:
            raise NodeUnavailable(f"node {node.cluster}/{node.name} did not answer {op.TASK} "
                                  f"within {limit:g} s (is its agent running?)") from exc
        finally:
            result.forget()
        if not isinstance(answer, Mapping) or "ok" not in answer:
            raise FederationError(f"node {node.cluster}/{node.name}: malformed answer to "
                                  f"{op.TASK}")
        if not answer["ok"]:
            err = from_wire(dict(answer))
            raise FederationError(f"{op.TASK} on {node.cluster}/{node.name}: {err}",
                                  retryable=err.retryable)
        return op.decode(answer.get("value"))
