"""The ``NodeAgent`` port over Celery: a call is a task on the node's own queue."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout

from mobility.errors import FederationError, NodeUnavailable
from mobility.models import Node
from workers.app import app
from workers.routing import node_queue

log = logging.getLogger(__name__)


class CeleryNodeAgent:
    def call(self, node: Node, op: str, args: dict[str, Any], *, timeout: float) -> Any:
        queue = node_queue(node.cluster, node.name)
        # ``expires``: an agent that comes back late drops the call instead of acting on a
        # request its caller has already given up on (and maybe compensated).
        result = app.send_task(f"node.{op}", args=[args], queue=queue, expires=timeout)
        try:
            answer = result.get(timeout=timeout, disable_sync_subtasks=False)
        except CeleryTimeout as exc:
            raise NodeUnavailable(f"node {node.cluster}/{node.name} did not answer {op} within "
                                  f"{timeout:g} s (is its agent running?)") from exc
        finally:
            result.forget()
        if not isinstance(answer, dict) or "ok" not in answer:
            raise FederationError(f"node {node.cluster}/{node.name}: malformed answer to {op}")
        if not answer["ok"]:
            raise FederationError(f"{op} on {node.cluster}/{node.name}: {answer['error']}",
                                  retryable=bool(answer.get("retryable")))
        return answer.get("value")
